// Trainable parameters: every tensor of the official layout (param_specs) in one F32 arena, a
// gradient arena of the same layout, and Weights views over both for the forward/backward.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "train/optimizer.h"

namespace hymba {

struct ParamArena {
  Config config;
  std::vector<ParamSpec> specs;
  std::vector<int64_t> offset, size;  // per spec, into data/grad
  std::vector<float> data, grad;
  Weights w;  // views into data
  Weights g;  // views into grad (written through by HymbaModel::backward)

  int64_t numel() const { return int64_t(data.size()); }
  void zero_grad();
};

// From a checkpoint folder (any float dtype; widened to F32).
ParamArena arena_from_checkpoint(const std::string& dir);
// Official initialisation (spec §3.10) with a seed.
ParamArena arena_from_init(const Config& c, uint64_t seed);
// Writes config.json + model.safetensors (+ generation_config.json) in the official layout,
// each file atomically. dtype F32 or BF16.
void save_arena_checkpoint(const ParamArena& a, const std::string& dir, DType dtype);
// One AdamW group per tensor, without weight decay where the spec says so (ParamSpec::no_decay).
std::vector<ParamGroup> param_groups(const ParamArena& a);
// Parameters that go through matrix multiplies (the `matrix` tensors: projections, MLP, head),
// for FLOP counts.
int64_t matmul_params_per_layer_row(const ParamArena& a);

// Copies the tokenizer files found in `from` (tokenizer.model, tokenizer_config.json, ...) to `to`.
void copy_tokenizer_files(const std::string& from, const std::string& to);

}  // namespace hymba
