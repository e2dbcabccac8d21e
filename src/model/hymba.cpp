#include "model/hymba.h"

#include <cmath>
#include <cstring>

#include "base/error.h"
#include "ops/lora.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace hymba {

HymbaModel::HymbaModel(const Config& c, const Weights& w)
    : cfg_(c), plan_(make_layer_plan(c)), w_(w), own_meta_(w.meta) {
  if (c.rope) inv_freq_ = rope_inv_freq(c.rope_base, c.d_qk);
}

void HymbaModel::freeze_weights() {
  const int64_t n = cfg_.d_inner * cfg_.mamba_d_state;
  frozen_A_.assign(plan_.size(), {});
  for (size_t l = 0; l < plan_.size(); ++l) {
    if (!plan_[l].has_ssm) continue;
    frozen_A_[l].resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) frozen_A_[l][size_t(i)] = -std::exp(w_.layers[l].A_log[i]);
  }
}

void HymbaModel::embed(float* x, const int32_t* ids, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) {
    HYMBA_CHECK(ids[i] >= 0 && ids[i] < cfg_.vocab_size,
                "token id " + std::to_string(ids[i]) + " out of range [0, " +
                    std::to_string(cfg_.vocab_size) + ")");
    matrow_to_f32(x + i * cfg_.hidden_size, w_.embed, ids[i]);
  }
}

void HymbaModel::forward(float* x, std::span<const ForwardItem> items, ModelActs* acts) {
  int64_t T = 0;
  for (auto& it : items) T += it.n;
  if (T == 0) return;
  const int64_t H = cfg_.hidden_size;

  // Absolute positions: meta tokens occupy 0..M-1, so a sequence's first real token is at M.
  std::vector<int32_t> pos_local;
  std::vector<int32_t>& pos = acts ? acts->pos : pos_local;
  pos.resize(size_t(T));
  int64_t r0 = 0;
  for (auto& it : items) {
    const int64_t p0 = it.state ? it.state->n_pos : 0;
    for (int64_t i = 0; i < it.n; ++i) pos[size_t(r0 + i)] = int32_t(p0 + i);
    r0 += it.n;
  }

  // Producer K/V of this chunk ([2l] = K, [2l+1] = V), read by consumer layers and appended to
  // the caches only after every layer ran (a consumer must not see the chunk twice).
  std::vector<std::vector<float>> chunk_kv(2 * plan_.size());
  const bool ckpt = acts && grad_ckpt_;
  if (acts) {
    // A reused ModelActs keeps its buffers: layer l always fills the same fields, resized to T.
    if (ckpt || acts->checkpointed || acts->layers.size() != plan_.size())
      acts->layers.assign(plan_.size(), LayerActs{});
    acts->checkpointed = ckpt;
  }
  for (size_t l = 0; l < plan_.size(); ++l) {
    LayerActs& a = acts ? (ckpt ? acts->work : acts->layers[l]) : scratch_;
    if (acts) a.x_in.assign(x, x + T * H);
    if (ckpt) acts->layers[l].x_in = a.x_in;
    layer_forward(int(l), x, items, pos.data(), a, chunk_kv);
  }
  if (acts) {
    acts->x_final.assign(x, x + T * H);
    acts->work = LayerActs{};  // the backward rebuilds it layer by layer
    acts->kv = chunk_kv;
  }

  r0 = 0;
  const int64_t kw = cfg_.num_key_value_heads * cfg_.d_qk, vw = cfg_.num_key_value_heads * cfg_.d_v;
  for (auto& it : items) {
    if (it.state) {
      for (size_t l = 0; l < plan_.size(); ++l) {
        if (!plan_[l].producer()) continue;
        it.state->kv[l].append(chunk_kv[2 * l].data() + r0 * kw, chunk_kv[2 * l + 1].data() + r0 * vw,
                               pos.data() + r0, it.n);
      }
      it.state->n_pos += it.n;
    }
    r0 += it.n;
  }
}

void HymbaModel::set_adapters(const Adapters* a, const AdapterGrads* g,
                              std::vector<std::vector<float>>* norms) {
  HYMBA_CHECK(!a || a->layers.size() == plan_.size(), "adapters: wrong number of layers");
  HYMBA_CHECK(!g || (a && g->layers.size() == plan_.size()), "adapter gradients: wrong number of layers");
  adapters_ = a, adapter_grads_ = g;
  ext_dora_norm_ = norms;
  if (!norms) own_dora_norm_.clear();
  dora_norm().resize(a ? plan_.size() * kNumSlots : 0);
}

bool HymbaModel::adapter_dropout(std::vector<float>& out, const float* in, int l, Slot s, int64_t n) const {
  if (dropout_p_ <= 0.0f) return false;
  out.resize(size_t(n));
  const float keep = 1.0f / (1.0f - dropout_p_);
  HYMBA_CHECK(dropout_p_ < 1.0f, "adapter dropout must be in [0, 1)");
  const uint64_t threshold = uint64_t(double(dropout_p_) * 0x1.0p64);  // P(z < threshold) = p
  const uint64_t key = dropout_seed_ ^ (uint64_t(l) << 40) ^ (uint64_t(s) << 56);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = key + uint64_t(i) * 0x9E3779B97F4A7C15ull;  // splitmix64 of (key, i)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    out[size_t(i)] = z < threshold ? 0.0f : in[i] * keep;
  }
  return true;
}

void HymbaModel::linear_forward(int l, Slot s, float* out, const float* in, const MatView& W,
                                const float* bias, int64_t T, bool accumulate, bool fresh) {
  if (tap_) tap_(l, s, in, T, W.cols);
  if (!adapters_) return matmul_forward(out, in, W, bias, T, accumulate);
  const LoraView& a = adapters_->layers[size_t(l)][size_t(s)];
  std::vector<float>& norm = dora_norm()[size_t(l) * kNumSlots + size_t(s)];
  if (a.dora() && (fresh || norm.empty())) {
    norm.resize(size_t(W.rows));
    dora_row_norms(norm.data(), W, a);
  }
  std::vector<float> dropped;
  if (fresh && a.active() && adapter_dropout(dropped, in, l, s, T * W.cols))
    return adapted_forward(out, in, W, bias, a, norm.data(), T, accumulate, dropped.data());
  adapted_forward(out, in, W, bias, a, norm.data(), T, accumulate);
}

void HymbaModel::linear_forward2(int l, Slot s0, Slot s1, float* out0, float* out1, const float* in,
                                 const MatView& W0, const MatView& W1, int64_t T, bool fresh) {
  if (adapters_) {
    linear_forward(l, s0, out0, in, W0, nullptr, T, false, fresh);
    linear_forward(l, s1, out1, in, W1, nullptr, T, false, fresh);
    return;
  }
  if (tap_) tap_(l, s0, in, T, W0.cols), tap_(l, s1, in, T, W1.cols);
  matmul_forward2(out0, out1, in, W0, W1, T);
}

void HymbaModel::linear_backward(int l, Slot s, float* dinp, float* dW, float* dbias,
                                 const float* dout, const float* inp, const MatView& W, int64_t T,
                                 bool accumulate) {
  static const LoraView kNone;
  const LoraView& a = adapters_ ? adapters_->layers[size_t(l)][size_t(s)] : kNone;
  const LoraGrad ga = adapter_grads_ ? adapter_grads_->layers[size_t(l)][size_t(s)] : LoraGrad{};
  const float* norm = adapters_ ? dora_norm()[size_t(l) * kNumSlots + size_t(s)].data() : nullptr;
  std::vector<float> dropped;
  if (a.active() && adapter_dropout(dropped, inp, l, s, T * W.cols)) {
    // d(dropout(x))/dx is the mask / (1 - p): dropping out dL/d(dropout(x)) with it applies it.
    std::vector<float> dd(dropped.size(), 0.0f);
    adapted_backward(dinp, dW, dbias, ga, dout, inp, W, a, norm, T, dropped.data(), dd.data(),
                     accumulate);
    if (!dinp) return;
    std::vector<float> ones(dd.size(), 1.0f), mask;
    adapter_dropout(mask, ones.data(), l, s, T * W.cols);
    for (size_t i = 0; i < dd.size(); ++i) dinp[i] += mask[i] * dd[i];
    return;
  }
  adapted_backward(dinp, dW, dbias, ga, dout, inp, W, a, norm, T, nullptr, nullptr, accumulate);
}

void HymbaModel::logits(float* out, const float* x, int64_t n, float* x_normed, float* rstd) const {
  std::vector<float> tmp;
  if (!x_normed) {
    tmp.resize(size_t(n * cfg_.hidden_size));
    x_normed = tmp.data();
  }
  rmsnorm_forward(x_normed, rstd, x, w_.final_norm, n, cfg_.hidden_size, float(cfg_.rms_norm_eps));
  matmul_forward(out, x_normed, w_.lm_head, nullptr, n);
}

}  // namespace hymba

namespace hymba {

void HymbaModel::backward(float* dx, std::span<const ForwardItem> items, const ModelActs& acts,
                          const Weights& grads) {
  for (const auto& it : items)
    HYMBA_CHECK(it.state == nullptr, "backward needs a stateless (training) forward");
  HYMBA_CHECK(acts.layers.size() == plan_.size(), "backward: activations were not kept");
  std::vector<std::vector<float>> dkv(2 * plan_.size());
  if (!acts.checkpointed) {
    for (int l = int(plan_.size()) - 1; l >= 0; --l)
      layer_backward(l, dx, items, acts.pos.data(), acts.layers[size_t(l)], acts.kv,
                     grads.layers[size_t(l)], dkv);
    return;
  }
  // Checkpointed: rerun layer l's forward from its kept input (same weights, same dropout masks,
  // so the same intermediates), then its backward; only one layer's intermediates live at a time.
  // A consumer's recomputation reads its producer's K/V, kept from the forward.
  const int64_t T = int64_t(acts.pos.size()), H = cfg_.hidden_size;
  LayerActs a;
  std::vector<float> x(size_t(T * H));
  std::vector<std::vector<float>> kv(2 * plan_.size());
  for (int l = int(plan_.size()) - 1; l >= 0; --l) {
    const auto& xin = acts.layers[size_t(l)].x_in;
    HYMBA_CHECK(int64_t(xin.size()) == T * H, "backward: layer inputs were not kept");
    a.x_in = xin;
    std::copy(xin.begin(), xin.end(), x.begin());
    const int src = plan_[size_t(l)].kv_source;
    if (plan_[size_t(l)].has_attn && src != l) kv[size_t(2 * src)] = acts.kv[size_t(2 * src)],
                                              kv[size_t(2 * src + 1)] = acts.kv[size_t(2 * src + 1)];
    layer_forward(l, x.data(), items, acts.pos.data(), a, kv);
    layer_backward(l, dx, items, acts.pos.data(), a, acts.kv, grads.layers[size_t(l)], dkv);
    kv[size_t(2 * l)].clear(), kv[size_t(2 * l + 1)].clear();
    if (plan_[size_t(l)].has_attn && src != l) kv[size_t(2 * src)].clear(), kv[size_t(2 * src + 1)].clear();
  }
}

int64_t HymbaModel::activation_bytes_per_row() const {
  const Config& c = cfg_;
  int64_t f = 0;
  for (const auto& p : plan_) {
    f += 4 * c.hidden_size + 2 * p.in_proj_rows + 3 * c.intermediate_size;  // x_in xn h_mid xm, proj, gate up act
    if (p.has_attn) f += 2 * (c.num_attention_heads * c.d_qk + c.num_key_value_heads * (c.d_qk + c.d_v)) +
                         2 * c.num_attention_heads * c.d_v + c.d_inner;  // q k v (and their takes), attn, n1
    if (p.has_ssm) f += 11 * c.d_inner + 2 * (c.dt_rank + 2 * c.mamba_d_state);
    f += c.d_inner;  // fused
  }
  return f * int64_t(sizeof(float));
}

}  // namespace hymba
