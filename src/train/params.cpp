#include "train/params.h"

#include <filesystem>

#include "base/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "model/init.h"

namespace hymba {

namespace {

void layout(ParamArena& a) {
  a.specs = param_specs(a.config);
  int64_t off = 0;
  for (const auto& s : a.specs) {
    int64_t n = 1;
    for (auto d : s.shape) n *= d;
    a.offset.push_back(off), a.size.push_back(n);
    off += n;
  }
  a.data.assign(size_t(off), 0.0f);
  a.grad.assign(size_t(off), 0.0f);
}

void bind(ParamArena& a) {
  std::vector<ParamRef> d, g;
  for (size_t i = 0; i < a.specs.size(); ++i) {
    d.push_back({a.data.data() + a.offset[i], DType::F32});
    g.push_back({a.grad.data() + a.offset[i], DType::F32});
  }
  a.w = bind_weights(a.config, d);
  a.g = bind_weights(a.config, g);
}

}  // namespace

void ParamArena::zero_grad() { std::fill(grad.begin(), grad.end(), 0.0f); }

ParamArena arena_from_checkpoint(const std::string& dir) {
  auto ck = load_checkpoint(dir);  // validates every name and shape
  ParamArena a;
  a.config = ck->config;
  layout(a);
  for (size_t i = 0; i < a.specs.size(); ++i) {
    const TensorInfo* t = ck->file->find(a.specs[i].name);
    HYMBA_CHECK(t, "checkpoint " + dir + ": missing tensor " + a.specs[i].name);
    to_f32(a.data.data() + a.offset[i], t->data, t->dtype, size_t(a.size[i]));
  }
  bind(a);
  return a;
}

ParamArena arena_from_init(const Config& c, uint64_t seed) {
  ParamArena a;
  a.config = c;
  layout(a);
  auto p = init_params(c, seed);
  HYMBA_CHECK(p.size() == a.specs.size(), "init_params: wrong number of tensors");
  for (size_t i = 0; i < p.size(); ++i) {
    HYMBA_CHECK(int64_t(p[i].size()) == a.size[i], "init_params: wrong size for " + a.specs[i].name);
    std::copy(p[i].begin(), p[i].end(), a.data.begin() + a.offset[i]);
  }
  bind(a);
  return a;
}

void save_arena_checkpoint(const ParamArena& a, const std::string& dir, DType dtype) {
  HYMBA_CHECK(dtype == DType::F32 || dtype == DType::BF16, "checkpoint dtype must be f32 or bf16");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  HYMBA_CHECK(!ec, "cannot create folder " + dir + ": " + ec.message());
  std::vector<std::vector<uint16_t>> half(a.specs.size());
  std::vector<TensorOut> out;
  for (size_t i = 0; i < a.specs.size(); ++i) {
    const float* src = a.data.data() + a.offset[i];
    const void* ptr = src;
    if (dtype == DType::BF16) {
      half[i].resize(size_t(a.size[i]));
      from_f32(half[i].data(), DType::BF16, src, size_t(a.size[i]));
      ptr = half[i].data();
    }
    out.push_back({a.specs[i].name, dtype, a.specs[i].shape, ptr});
  }
  write_safetensors(dir + "/model.safetensors", out);
  nlohmann::json cj = config_to_json(a.config);
  cj["torch_dtype"] = dtype == DType::BF16 ? "bfloat16" : "float32";
  write_file_atomic(dir + "/config.json", cj.dump(2) + "\n");
  write_file_atomic(dir + "/generation_config.json", generation_config_json(a.config).dump(2) + "\n");
}

std::vector<ParamGroup> param_groups(const ParamArena& a) {
  std::vector<ParamGroup> g;
  for (size_t i = 0; i < a.specs.size(); ++i)
    g.push_back({a.specs[i].name, a.offset[i], a.size[i], !a.specs[i].no_decay});
  return g;
}

int64_t matmul_params_per_layer_row(const ParamArena& a) {
  int64_t n = 0;
  for (size_t i = 0; i < a.specs.size(); ++i)
    if (a.specs[i].matrix && a.specs[i].name.rfind("model.layers.", 0) == 0) n += a.size[i];
  return n;
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "added_tokens.json",
                        "special_tokens_map.json"}) {
    const std::string src = from + "/" + f;
    if (file_exists(src)) write_file_atomic(to + "/" + f, read_file(src));
  }
}

}  // namespace hymba
