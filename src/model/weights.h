// Hymba's parameters as views: big matrices stay in the checkpoint's dtype (mmap), the small
// vectors are F32. Training points the same views into its F32 parameter arena.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "ops/matmul.h"

namespace hymba {

struct LayerWeights {
  const float* input_norm = nullptr;  // [H]            input_layernorm.weight
  MatView in_proj;                    // [in_proj_rows, H]  mamba.in_proj.weight
  const float* in_proj_bias = nullptr;  // [in_proj_rows] only when mamba_proj_bias
  // SSM heads (null / empty when the layer has none)
  const float* conv_w = nullptr;      // [D_in, K]       mamba.conv1d.weight ([D_in,1,K] in file)
  const float* conv_b = nullptr;      // [D_in]          mamba.conv1d.bias (null if no conv bias)
  MatView x_proj;                     // [R + 2N, D_in]  mamba.x_proj.0.weight
  MatView dt_proj;                    // [D_in, R]       mamba.dt_proj.0.weight
  const float* dt_bias = nullptr;     // [D_in]          mamba.dt_proj.0.bias
  const float* A_log = nullptr;       // [D_in, N]       mamba.A_log.0
  const float* D = nullptr;           // [D_in]          mamba.D.0
  const float* dt_norm = nullptr;     // [R]             mamba.dt_layernorm.weight
  const float* B_norm = nullptr;      // [N]             mamba.B_layernorm.weight
  const float* C_norm = nullptr;      // [N]             mamba.C_layernorm.weight
  // fusion
  const float* pre_avg_norm1 = nullptr;  // [D_in] on the attention heads' output
  const float* pre_avg_norm2 = nullptr;  // [D_in] on the SSM heads' output
  MatView out_proj;                      // [H, D_in]     mamba.out_proj.weight
  const float* out_proj_bias = nullptr;  // [H] only when mamba_proj_bias
  // MLP
  const float* pre_mlp_norm = nullptr;  // [H]            pre_moe_layernorm.weight
  MatView gate, up, down;               // moe.experts.0.{gate,up,down}_proj.weight
};

struct Weights {
  MatView embed;                  // [V, H] model.embed_tokens.weight
  const float* meta = nullptr;    // [M, H] model.memory_tokens (null when M == 0)
  const float* final_norm = nullptr;  // [H] model.final_layernorm.weight
  MatView lm_head;                // [V, H] lm_head.weight, or the embedding when tied/absent
  std::vector<LayerWeights> layers;
};

// One parameter tensor of the official layout: its name, shape, and whether it is a "matrix"
// (kept in file dtype) or a small vector (widened to F32). The single list of names and shapes a
// config implies (spec §2): used by the loader's validation, by `hymba init`, and by training.
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool matrix = false;
  bool no_decay = false;  // norms, biases, meta tokens, A_log, D: no weight decay in AdamW
};
std::vector<ParamSpec> param_specs(const Config& c);  // lm_head excluded when tied
std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]" for messages

// Points every view of `w` at the tensors in `data`, indexed like param_specs(c); data[i] must
// hold param_specs(c)[i] (matrices in any dtype via MatView, vectors as F32).
struct ParamRef {
  const void* data;
  DType dtype;
};
Weights bind_weights(const Config& c, const std::vector<ParamRef>& data);

// A loaded checkpoint folder: config + mmap'd safetensors + F32 copies of the small tensors.
struct Checkpoint {
  Config config;
  std::unique_ptr<SafetensorsFile> file;
  std::vector<std::vector<float>> f32_store;     // owned widened copies
  std::vector<std::vector<uint16_t>> bf16_store;  // owned bf16 matrices (random models for bench)
  std::vector<HugeBuffer> q_store;                // owned quantized matrices (Q8 scales in f32_store)
  Weights weights;
  ~Checkpoint();
};
// Loads and validates (every name and shape of param_specs; error names the tensor). `io` picks
// reading into huge-page memory (default) or mmap, and mlock (src/io/safetensors.h).
std::unique_ptr<Checkpoint> load_checkpoint(const std::string& dir, const LoadOptions& io = {});

// 8-bit weights for inference: replaces every linear layer whose width is a multiple of
// kQ8Block (for Hymba-1.5B all but dt_proj, whose width is the dt rank 100) and the LM head by a
// Q8 copy (src/ops/quant.h). The embedding lookup keeps the stored table, so a tied head gets its
// own copy. Small vectors stay F32. Returns the number of matrices quantized.
int quantize_weights_q8(Checkpoint& ck);

}  // namespace hymba
