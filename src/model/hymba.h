// Hymba's forward pass over a batch of sequence chunks. One code path serves the meta-prefix
// computation, prefill (whole or chunked), batched decode and training (which also keeps every
// intermediate in LayerActs for the backward, llm.c style).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/adapter.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"

namespace hymba {

// One sequence's rows in a batch. state == null: a stateless pass (training, the meta prefix
// itself): the rows are a whole sequence starting at position 0, from zero conv/SSM states.
struct ForwardItem {
  SequenceState* state = nullptr;
  int64_t n = 0;  // rows of this item, consecutive in the batch
};

// Intermediates of one layer for T rows (training keeps one per layer; inference reuses one).
// Shapes: H hidden, D d_inner, R dt_rank, N d_state, F intermediate; P in_proj rows.
struct LayerActs {
  std::vector<float> x_in;                    // [T, H] residual stream entering the layer
  std::vector<float> xn, rstd_in;             // [T, H], [T] input RMSNorm
  std::vector<float> proj;                    // [T, P] in_proj output
  std::vector<float> q, k, v;                 // [T, nq·dqk], [T, nkv·dqk], [T, nkv·dv] post-RoPE
  std::vector<float> attn, lse;               // [T, nq·dv], [T, nq]
  std::vector<float> xs, z;                   // [T, D] SSM input (pre-conv) and gate
  std::vector<float> xc_pre, xc;              // [T, D] conv output, after SiLU
  std::vector<float> xdbl;                    // [T, R+2N] x_proj output
  std::vector<float> dtn, dt_rstd;            // [T, R], [T]
  std::vector<float> Bn, B_rstd, Cn, C_rstd;  // [T, N], [T]
  std::vector<float> delta_pre, delta;        // [T, D] dt_proj output, softplus of it
  std::vector<float> A;                       // [D, N] = -exp(A_log)
  std::vector<float> ssm;                     // [T, D] gated scan output
  std::vector<float> n1, rstd1, n2, rstd2;    // [T, D] fusion norms (+ rstd [T])
  std::vector<float> fused;                   // [T, D] (n1 + n2) / 2 ([T, 2D] concat), out_proj input
  std::vector<float> h_mid;                   // [T, H] after the block's residual add
  std::vector<float> xm, rstd_m;              // [T, H], [T] pre-MLP RMSNorm
  std::vector<float> gate, up, act;           // [T, F]
};

struct ModelActs {
  // With activation checkpointing (HymbaModel::set_grad_checkpointing) layers[l] keeps only x_in
  // and the backward recomputes the rest of layer l from it, one layer at a time in `work`.
  std::vector<LayerActs> layers;
  LayerActs work;
  bool checkpointed = false;
  std::vector<std::vector<float>> kv;  // [2l], [2l+1]: producer l's post-RoPE K, V (consumers read them)
  std::vector<int32_t> pos;  // [T] absolute position of each row
  std::vector<float> x_final, rstd_final;  // [T, H] residual stream after the last layer, [T]
};

// Gradients inside one layer's backward (hybrid_block.cpp), reused by every layer and step: each
// is written whole by its first op (accumulate = false) instead of being zero-filled and added to.
struct LayerGradScratch {
  std::vector<float> dact, dgate, dup, dxm, dfused, dfused2, dproj;
  std::vector<float> dssm, dxc, ddelta, dA, dB, dC, dz, ddelta_pre, ddtn, dxdbl, raw, draw;
  std::vector<float> dxc_pre, dxs, dattn, dq, dxn;
};

// Buffers of a training step (src/train/step.cpp) kept from one step to the next: fresh vectors
// are zero-filled on every resize before the ops overwrite them (~2% of a bench --train step).
struct TrainScratch {
  ModelActs acts;
  std::vector<float> x, xt, xn, rstd, logits, losses, dxn, dxt, dx;
  LayerGradScratch layer_grads;
};

class HymbaModel {
 public:
  HymbaModel(const Config& c, const Weights& w);

  const Config& config() const { return cfg_; }
  const std::vector<LayerPlan>& plan() const { return plan_; }
  const Weights& weights() const { return w_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // Embeds token ids into rows x[n, H] (ids must be in [0, vocab)).
  void embed(float* x, const int32_t* ids, int64_t n) const;

  // Runs every layer on x[T, H] in place (T = Σ items.n); on return x is the residual stream
  // after the last layer (before the final norm). Each item's state (if any) is advanced:
  // caches appended, conv/SSM states updated, n_pos += n. With acts, every intermediate is kept.
  void forward(float* x, std::span<const ForwardItem> items, ModelActs* acts = nullptr);

  // logits[n, V] = lm_head(final_norm(x[n, H])). rstd[n] is written when non-null.
  void logits(float* out, const float* x, int64_t n, float* x_normed = nullptr,
              float* rstd = nullptr) const;

  // Inference only: precomputes A = -exp(A_log) of every layer once (weights must not change
  // afterwards; training leaves this off and recomputes A each forward).
  void freeze_weights();

  // The shared meta-token prefix: the state after the M meta tokens (keep_all caches).
  std::shared_ptr<const SequenceState> compute_prefix(DType cache_dtype);

  // Training. `grads` is bind_weights() over the gradient arena (same layout as the parameters;
  // its views are written through). Given the activations of a stateless forward(x, items,
  // &acts) and dx[T, H] = dLoss/d(residual stream after the last layer), accumulates every
  // parameter's gradient and leaves in dx the gradient w.r.t. the input rows (embeddings, meta
  // tokens). Weights must be F32.
  void backward(float* dx, std::span<const ForwardItem> items, const ModelActs& acts,
                const Weights& grads);

  // Low-rank adapters beside the base linears (src/model/adapter.h; null = none). With grads,
  // backward also accumulates the adapters' gradients. `grads` of backward may then have null
  // views (a frozen base: only input gradients flow). The caller keeps both alive.
  // `norms`: where the adapters' DoRA norms are cached (the caller's, so that switching between
  // several adapters keeps each one's); null = the model's own, cleared here.
  void set_adapters(const Adapters* a, const AdapterGrads* g = nullptr,
                    std::vector<std::vector<float>>* norms = nullptr);
  // Meta tokens [M, H] used instead of the weights' (an adapter's trained ones; null = the
  // weights' own). The caller keeps them alive.
  void set_meta_tokens(const float* meta) { w_.meta = meta ? meta : own_meta_; }
  // Training: PEFT's lora_dropout on the LoRA adapters' input (the base path sees the input
  // as is), in forwards that keep activations and their backward; the mask of every (layer,
  // module, element) comes from `seed`, so a backward sees its forward's. p = 0: off.
  void set_adapter_dropout(float p, uint64_t seed) { dropout_p_ = p, dropout_seed_ = seed; }
  // Called with every linear layer's input rows [T, K] just before its product (null = none):
  // `hymba imatrix` sums the squared activations per column here (src/model/imatrix.h).
  using LinearTap = std::function<void(int l, Slot s, const float* in, int64_t T, int64_t K)>;
  void set_linear_tap(LinearTap tap) { tap_ = std::move(tap); }
  // Activation checkpointing for training forwards (ModelActs): keep each layer's input only and
  // recompute the layer's forward in the backward (one extra forward; gradients unchanged).
  void set_grad_checkpointing(bool on) { grad_ckpt_ = on; }
  bool grad_checkpointing() const { return grad_ckpt_; }
  // Bytes a non-checkpointed training forward keeps per row (all layers; for the auto choice).
  int64_t activation_bytes_per_row() const;
  // The training step's buffers, reused across steps (one step at a time per model).
  TrainScratch& train_scratch() { return train_scratch_; }

 private:
  void layer_forward(int l, float* x, std::span<const ForwardItem> items, const int32_t* pos,
                     LayerActs& a, std::vector<std::vector<float>>& chunk_kv);
  void layer_backward(int l, float* dx, std::span<const ForwardItem> items, const int32_t* pos,
                      const LayerActs& a, const std::vector<std::vector<float>>& kv,
                      const LayerWeights& g, std::vector<std::vector<float>>& dkv);

  // The linear layer (layer l, slot s) with its adapter, if any. fresh: recompute DoRA norms
  // (weights may have changed: every training forward); otherwise they are computed once.
  void linear_forward(int l, Slot s, float* out, const float* in, const MatView& W,
                      const float* bias, int64_t T, bool accumulate, bool fresh);
  // Two linear layers without bias reading the same input (gate and up): one parallel region at
  // decode when neither has an adapter; the same values as two linear_forward calls.
  void linear_forward2(int l, Slot s0, Slot s1, float* out0, float* out1, const float* in,
                       const MatView& W0, const MatView& W1, int64_t T, bool fresh);
  void linear_backward(int l, Slot s, float* dinp, float* dW, float* dbias, const float* dout,
                       const float* inp, const MatView& W, int64_t T, bool accumulate = true);

  Config cfg_;
  std::vector<LayerPlan> plan_;
  Weights w_;
  const float* own_meta_ = nullptr;  // the weights' meta tokens (set_meta_tokens)
  float dropout_p_ = 0.0f;
  bool grad_ckpt_ = false;
  uint64_t dropout_seed_ = 0;
  // out[n] = in[n] dropped out (zero or / (1 - p)) with the mask of (l, s); false when off.
  bool adapter_dropout(std::vector<float>& out, const float* in, int l, Slot s, int64_t n) const;
  std::vector<float> inv_freq_;
  LayerActs scratch_;  // reused across layers at inference
  LinearTap tap_;
  TrainScratch train_scratch_;
  std::vector<std::vector<float>> frozen_A_;  // [layer] -> [D, N] after freeze_weights()
  const Adapters* adapters_ = nullptr;
  const AdapterGrads* adapter_grads_ = nullptr;
  std::vector<std::vector<float>> own_dora_norm_;  // [l * kNumSlots + s] -> [out]
  std::vector<std::vector<float>>* ext_dora_norm_ = nullptr;  // set_adapters(.., norms)
  std::vector<std::vector<float>>& dora_norm() { return ext_dora_norm_ ? *ext_dora_norm_ : own_dora_norm_; }
};

}  // namespace hymba
