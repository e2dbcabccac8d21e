#include "model/init.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "base/error.h"
#include "base/hash.h"
#include "io/files.h"
#include "io/safetensors.h"

namespace hymba {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// N(0, std) into v; Box-Muller, explicit so results do not depend on the standard library.
void fill_normal(std::vector<float>& v, double std, std::mt19937_64& rng) {
  auto uni = [&] { return double(rng() >> 11) * 0x1.0p-53; };  // [0, 1)
  for (size_t i = 0; i < v.size(); i += 2) {
    const double u1 = 1.0 - uni();  // (0, 1]: log is finite
    const double u2 = uni();
    const double r = std::sqrt(-2.0 * std::log(u1));
    v[i] = float(std * r * std::cos(2.0 * M_PI * u2));
    if (i + 1 < v.size()) v[i + 1] = float(std * r * std::sin(2.0 * M_PI * u2));
  }
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: return "float32";
  }
}

}  // namespace

std::vector<float> init_param(const Config& c, const ParamSpec& s, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  std::vector<float> v(size_t(n), 0.0f);
  std::mt19937_64 rng(splitmix64(seed ^ fnv1a64(s.name)));
  const std::string& nm = s.name;
  if (nm == "model.memory_tokens") {
    fill_normal(v, 1.0, rng);  // torch.randn, never re-initialised
  } else if (nm == "model.embed_tokens.weight") {
    fill_normal(v, c.initializer_range, rng);
    if (c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size)  // nn.Embedding padding_idx row
      std::fill_n(v.begin() + c.pad_token_id * c.hidden_size, c.hidden_size, 0.0f);
  } else if (nm.find(".A_log.") != std::string::npos) {
    const int64_t N = s.shape[1];
    for (int64_t r = 0; r < s.shape[0]; ++r)
      for (int64_t j = 0; j < N; ++j) v[size_t(r * N + j)] = float(std::log(double(j + 1)));
  } else if (nm.find(".D.") != std::string::npos || (nm.find("layernorm") != std::string::npos && ends_with(nm, ".weight"))) {
    std::fill(v.begin(), v.end(), 1.0f);  // D = 1 and every RMSNorm weight = 1
  } else if (ends_with(nm, ".bias")) {
    // Linear / Conv1d biases are zeroed (dt_proj bias too, unlike stock Mamba)
  } else if (ends_with(nm, ".weight")) {
    fill_normal(v, c.initializer_range, rng);  // Linear and Conv1d weights (incl. lm_head)
  } else {
    fail("init: no rule for parameter '" + nm + "'");
  }
  return v;
}

std::vector<std::vector<float>> init_params(const Config& c, uint64_t seed) {
  std::vector<std::vector<float>> out;
  for (const ParamSpec& s : param_specs(c)) out.push_back(init_param(c, s, seed));
  return out;
}

nlohmann::json generation_config_json(const Config& c) {
  nlohmann::json g = {{"_from_model_config", true}, {"use_cache", false}};
  auto id = [](int64_t v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
  g["bos_token_id"] = id(c.bos_token_id);
  g["eos_token_id"] = id(c.eos_token_id);
  g["pad_token_id"] = id(c.pad_token_id);
  return g;
}

void init_checkpoint(const Config& c, const std::string& out_dir, uint64_t seed, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    fail(std::string("init: unsupported checkpoint dtype ") + dtype_name(dtype));
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) fail("cannot create folder " + out_dir + ": " + ec.message());
  const auto specs = param_specs(c);
  // One tensor at a time, stored only in the target dtype (the 1.5B model fits in 3 GB as bf16).
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorOut> outs;
  bufs.reserve(specs.size());
  for (const ParamSpec& s : specs) {
    std::vector<float> f = init_param(c, s, seed);
    auto& b = bufs.emplace_back(f.size() * dtype_size(dtype));
    from_f32(b.data(), dtype, f.data(), f.size());
    outs.push_back({s.name, dtype, s.shape, b.data()});
  }
  write_safetensors(out_dir + "/model.safetensors", outs, {{"format", "pt"}});
  nlohmann::json cj = config_to_json(c);
  cj["torch_dtype"] = torch_dtype_name(dtype);
  write_file_atomic(out_dir + "/config.json", cj.dump(2) + "\n");
  write_file_atomic(out_dir + "/generation_config.json", generation_config_json(c).dump(2) + "\n");
}

}  // namespace hymba
