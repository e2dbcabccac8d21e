// Hymba's parameters as views: big matrices stay in the checkpoint's dtype (mmap), the small
// vectors are F32. Training points the same views into its F32 parameter arena.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/imatrix.h"
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

// The seven matrices of a layer, in one fixed order (adapter slots follow it), with their module
// paths after "model.layers.N." (the tensor is "<module>.weight").
inline constexpr std::array<const char*, 7> kLayerMatrixModules = {
    "mamba.in_proj", "mamba.x_proj.0", "mamba.dt_proj.0", "mamba.out_proj",
    "moe.experts.0.gate_proj", "moe.experts.0.up_proj", "moe.experts.0.down_proj"};
template <class LW>  // LayerWeights or const LayerWeights
auto layer_matrix_ptrs(LW& L) {
  return std::array{&L.in_proj, &L.x_proj, &L.dt_proj, &L.out_proj, &L.gate, &L.up, &L.down};
}

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

// Every matrix view of `w` with its tensor name (the head as "lm_head.weight" even when tied).
std::vector<std::pair<std::string, const MatView*>> named_matrices(const Weights& w);

// Q4_0 layer matrices held in this process's memory (a file read into memory, or quantized at
// load) -> the x8 layout of src/ops/quant.h, where the dispatched decode GEMV streams it fastest
// (matmul_q4_0x8_preferred(): AVX2); each one's previous copy is dropped. Matrices in a mapped file
// keep its layout. load_checkpoint calls it; so does the engine after quantizing at load (not
// `hymba quantize`: files are written in the plain layout). Returns how many were repacked.
int repack_q4_0x8_matrices(Checkpoint& ck);

// A MatView of quantized bytes (Q8: planar codes then scales; Q4_0/Q4_K: blocks; src/ops/quant.h).
MatView quantized_view(const void* data, DType t, int64_t rows, int64_t cols);

// The metadata key naming a quantized tensor's format in a safetensors file ("q8_0", "q4_0", "q4_k").
inline constexpr const char* kQuantMetaPrefix = "hymba.quant.";

// Replaces matrices by block-quantized copies (DType::Q8, Q4_0 or Q4_K), releasing the stored
// ones' pages. The one rule for --quantize at load and for `hymba quantize`:
//   in_proj, out_proj, gate/up/down (93% of Hymba-1.5B's weights): in `type`;
//   x_proj, dt_proj (they produce Δ, B, C for every step of the scan): Q8 in q8_0 where the width
//     allows (not dt_proj: its width is the dt rank), kept as stored in q4_0 and q4_k;
//   the LM head: Q8 in every format (llama.cpp also keeps its output layer above 4 bits); a tied
//     head gets its own copy, the embedding lookup reads the stored table;
//   kept as stored: the embedding table and every vector (norms, biases, A_log, D, conv, meta
//     tokens). Returns the number of matrices quantized.
// `imatrix` (null = none): the 4-bit formats weight each matrix's error by its entry
// (model/imatrix.h), which must exist for every matrix they quantize (throws hymba::Error
// otherwise); Q8 ignores it (its rounding error is ~16x smaller and llama.cpp's q8_0 ignores it too).
int quantize_weights(Checkpoint& ck, DType type, const ImportanceMatrix* imatrix = nullptr);

}  // namespace hymba
