// Official random initialisation (spec §3.10) and writing it as a checkpoint folder.
// RNG: each tensor gets its own std::mt19937_64 seeded with splitmix64(seed ^ fnv1a64(name)), so a
// tensor's values depend only on (seed, name, shape), not on which other tensors exist; normals
// come from Box-Muller on 53-bit uniforms (both outputs used). Same seed => same bits everywhere.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "model/config.h"
#include "model/weights.h"

namespace hymba {

// Values of one parameter of param_specs(c) (F32, row-major, numel of spec.shape).
std::vector<float> init_param(const Config& c, const ParamSpec& spec, uint64_t seed);
// All parameters, indexed like param_specs(c).
std::vector<std::vector<float>> init_params(const Config& c, uint64_t seed);

// Creates out_dir (and parents) and writes config.json, model.safetensors (dtype F32, BF16 or
// F16) and generation_config.json, each atomically.
void init_checkpoint(const Config& c, const std::string& out_dir, uint64_t seed, DType dtype);

// generation_config.json content (bos/eos/pad from the config), shared with checkpoint savers.
nlohmann::json generation_config_json(const Config& c);

}  // namespace hymba
