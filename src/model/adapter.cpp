#include "model/adapter.h"

#include <cmath>
#include <cctype>
#include <filesystem>

#include "base/error.h"
#include "io/files.h"
#include "io/safetensors.h"

namespace hymba {

namespace {
static_assert(kLayerMatrixModules.size() == kNumSlots, "adapter slots are the layer matrices");
constexpr const char* kTarget[kNumSlots] = {"in_proj",   "x_proj.0", "dt_proj.0", "out_proj",
                                            "gate_proj", "up_proj",  "down_proj"};
constexpr const char* kPrefix = "base_model.model.model.layers.";
}  // namespace

const char* slot_module(Slot s) { return kLayerMatrixModules[int(s)]; }
const char* slot_target(Slot s) { return kTarget[int(s)]; }

const MatView& slot_matrix(const LayerWeights& w, Slot s) { return *layer_matrix_ptrs(w)[size_t(s)]; }

std::vector<Slot> parse_targets(const std::string& list) {
  bool on[kNumSlots] = {};
  size_t i = 0;
  while (i <= list.size()) {
    size_t j = list.find(',', i);
    if (j == std::string::npos) j = list.size();
    const std::string t = list.substr(i, j - i);
    i = j + 1;
    if (t.empty()) continue;
    if (t == "mlp") {
      on[int(Slot::Gate)] = on[int(Slot::Up)] = on[int(Slot::Down)] = true;
      continue;
    }
    if (t == "all" || t == "all-linear") {
      for (bool& b : on) b = true;
      continue;
    }
    bool found = false;
    for (int s = 0; s < kNumSlots; ++s) {
      const std::string full = kTarget[s];
      const std::string bare = full.substr(0, full.find('.'));
      if (t == full || t == bare || t == kLayerMatrixModules[s]) on[s] = found = true;
    }
    HYMBA_CHECK(found, "unknown adapter target '" + t +
                           "' (in_proj, out_proj, x_proj, dt_proj, gate_proj, up_proj, down_proj, mlp, all)");
  }
  std::vector<Slot> out;
  for (int s = 0; s < kNumSlots; ++s)
    if (on[s]) out.push_back(Slot(s));
  HYMBA_CHECK(!out.empty(), "no adapter targets given");
  return out;
}

float AdapterConfig::scale() const {
  return float(rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank));
}

std::string adapter_key(int layer, Slot s, char kind) {
  std::string k = kPrefix + std::to_string(layer) + "." + slot_module(s);
  if (kind == 'A') return k + ".lora_A.weight";
  if (kind == 'B') return k + ".lora_B.weight";
  return k + ".lora_magnitude_vector";
}

void AdapterSet::enable_grad() {
  grad.assign(data.size(), 0.0f);
  bind();
}

void AdapterSet::bind() {
  const bool g = !grad.empty();
  HYMBA_CHECK(!g || grad.size() == data.size(), "adapter gradients: wrong size");
  for (auto& layer : view.layers)
    for (auto& v : layer) v.A = v.B = v.magnitude = nullptr;
  gview.layers.assign(g ? view.layers.size() : 0, {});
  meta = nullptr, gmeta = nullptr;
  for (const auto& t : tensors) {
    float* d = data.data() + t.offset;
    float* gd = g ? grad.data() + t.offset : nullptr;
    if (t.kind == 'M') {
      meta = d, gmeta = gd;
      continue;
    }
    LoraView& v = view.layers[size_t(t.layer)][size_t(t.slot)];
    LoraGrad scratch;
    LoraGrad& gr = g ? gview.layers[size_t(t.layer)][size_t(t.slot)] : scratch;
    if (t.kind == 'A') v.A = d, gr.A = gd;
    else if (t.kind == 'B') v.B = d, gr.B = gd;
    else v.magnitude = d, gr.magnitude = gd;
  }
}

void add_meta_tokens(AdapterSet& a, const Config& c, const Weights& base) {
  const int64_t n = c.num_memory_tokens * c.hidden_size;
  HYMBA_CHECK(n > 0 && base.meta, "this model has no meta tokens (num_memory_tokens 0)");
  for (const auto& t : a.tensors) HYMBA_CHECK(t.kind != 'M', "the adapter has meta tokens already");
  AdapterTensor t{kMetaTokensKey, {c.num_memory_tokens, c.hidden_size}, -1, Slot::InProj, 'M',
                  int64_t(a.data.size()), n};
  a.tensors.push_back(t);
  a.data.insert(a.data.end(), base.meta, base.meta + n);
  if (!a.grad.empty()) a.grad.resize(a.data.size(), 0.0f);
  a.bind();
}

void AdapterSet::zero_grad() { std::fill(grad.begin(), grad.end(), 0.0f); }

void AdapterSet::set_user_scale(float s) {
  for (auto& layer : view.layers)
    for (auto& v : layer)
      if (v.active()) v.scale = cfg.scale() * s;
}

AdapterSet adapter_layout(const Config& c, const Weights& base, const AdapterConfig& cfg) {
  HYMBA_CHECK(cfg.rank >= 1, "adapter rank must be >= 1");
  HYMBA_CHECK(!cfg.targets.empty(), "no adapter targets");
  AdapterSet a;
  a.cfg = cfg;
  const int n_layers = int(base.layers.size());
  HYMBA_CHECK(n_layers == c.num_hidden_layers, "adapters: base has the wrong number of layers");
  int64_t off = 0;
  for (int l = 0; l < n_layers; ++l) {
    for (Slot s : cfg.targets) {
      const MatView& W = slot_matrix(base.layers[size_t(l)], s);
      if (!W.data || W.rows == 0 || W.cols == 0) continue;
      auto add = [&](char kind, std::vector<int64_t> shape) {
        AdapterTensor t{adapter_key(l, s, kind), shape, l, s, kind, off, 1};
        for (auto d : shape) t.size *= d;
        off += t.size;
        a.tensors.push_back(std::move(t));
      };
      add('A', {cfg.rank, W.cols});
      add('B', {W.rows, cfg.rank});
      if (cfg.dora) add('m', {W.rows});
    }
  }
  HYMBA_CHECK(!a.tensors.empty(), "adapters: none of the target modules exist in this model");
  a.data.assign(size_t(off), 0.0f);
  a.view.layers.assign(size_t(n_layers), {});
  for (const auto& t : a.tensors) {
    LoraView& v = a.view.layers[size_t(t.layer)][size_t(t.slot)];
    v.rank = cfg.rank, v.scale = cfg.scale();
  }
  a.bind();
  return a;
}

AdapterSet load_peft_adapter(const std::string& dir, const Config& c, const Weights& base) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(cfg_path + ": " + e.what());
  }
  auto need = [&](const char* k) -> const nlohmann::json& {
    HYMBA_CHECK(j.contains(k) && !j[k].is_null(), cfg_path + ": missing \"" + std::string(k) + "\"");
    return j[k];
  };
  AdapterConfig cfg;
  bool with_meta = false;  // modules_to_save: ["memory_tokens"]
  try {
    const std::string type = need("peft_type").get<std::string>();
    HYMBA_CHECK(type == "LORA", cfg_path + ": peft_type " + type + " is not supported (LORA only)");
    HYMBA_CHECK(need("r").is_number_integer(), cfg_path + ": r must be an integer (got " + j["r"].dump() + ")");
    cfg.rank = j["r"].get<int64_t>();
    cfg.alpha = j.value("lora_alpha", double(cfg.rank));
    cfg.dora = j.value("use_dora", false);
    cfg.rslora = j.value("use_rslora", false);
    cfg.dropout = j.value("lora_dropout", 0.0);
    HYMBA_CHECK(!j.value("fan_in_fan_out", false), cfg_path + ": fan_in_fan_out is not supported");
    HYMBA_CHECK(j.value("bias", std::string("none")) == "none", cfg_path + ": only bias \"none\" is supported");
    for (const char* k : {"rank_pattern", "alpha_pattern"})
      HYMBA_CHECK(!j.contains(k) || j[k].is_null() || j[k].empty(),
                  cfg_path + ": " + k + " is not supported");
    if (j.contains("modules_to_save") && !j["modules_to_save"].is_null())
      for (const auto& m : j["modules_to_save"]) {
        const std::string name = m.get<std::string>();
        HYMBA_CHECK(name == "memory_tokens" || name == "model.memory_tokens",
                    cfg_path + ": modules_to_save \"" + name + "\" is not supported (memory_tokens only)");
        with_meta = true;
      }
  } catch (const nlohmann::json::exception& e) {
    throw Error(cfg_path + ": " + e.what());
  }
  HYMBA_CHECK(cfg.rank >= 1, cfg_path + ": r must be >= 1");
  HYMBA_CHECK(std::isfinite(cfg.alpha) && cfg.alpha > 0,
              cfg_path + ": lora_alpha must be a finite number > 0 (got " + std::to_string(cfg.alpha) + ")");
  HYMBA_CHECK(cfg.dropout >= 0 && cfg.dropout < 1,
              cfg_path + ": lora_dropout must be in [0, 1) (got " + std::to_string(cfg.dropout) + ")");

  const std::string st_path = (fs::path(dir) / "adapter_model.safetensors").string();
  auto file = SafetensorsFile::open(st_path);
  // Which (layer, slot) pairs the file adapts; every key must name one of them.
  std::vector<std::array<bool, kNumSlots>> present(base.layers.size());
  std::vector<std::array<int, kNumSlots>> has_ab(base.layers.size());  // bit 0: lora_A, bit 1: lora_B
  bool slot_used[kNumSlots] = {};
  for (const auto& [name, info] : file->tensors()) {
    if (name == kMetaTokensKey) {
      HYMBA_CHECK(with_meta, st_path + ": tensor " + name + " is there but adapter_config.json's "
                                       "modules_to_save does not list memory_tokens");
      continue;
    }
    bool ok = name.rfind(kPrefix, 0) == 0;
    if (ok) {
      size_t p = std::string(kPrefix).size(), q = p;
      while (q < name.size() && std::isdigit(static_cast<unsigned char>(name[q]))) ++q;
      ok = q > p && q < name.size() && name[q] == '.';
      HYMBA_CHECK(!ok || q - p <= 6, st_path + ": tensor " + name + ": layer index out of range");
      if (ok) {
        const int l = std::stoi(name.substr(p, q - p));
        const std::string rest = name.substr(q + 1);
        ok = false;
        for (int s = 0; s < kNumSlots && !ok; ++s)
          for (const char* suf : {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector",
                                  ".lora_magnitude_vector.weight"})
            if (rest == std::string(kLayerMatrixModules[s]) + suf) {
              HYMBA_CHECK(l < int(base.layers.size()),
                          st_path + ": tensor " + name + ": the model has only " +
                              std::to_string(base.layers.size()) + " layers");
              present[size_t(l)][size_t(s)] = slot_used[s] = ok = true;
              // The rank of every A and B must be r before anything of size r is allocated
              // (a huge r in the config would otherwise ask for that much memory first).
              const std::string what = st_path + ": tensor " + name;
              const std::string suffix = suf;
              if (suffix == ".lora_A.weight" || suffix == ".lora_B.weight") {
                const bool is_a = suffix == ".lora_A.weight";
                HYMBA_CHECK(info.shape.size() == 2 && info.shape[is_a ? 0 : 1] == cfg.rank,
                            what + " has shape " + shape_str(info.shape) + ", r is " + std::to_string(cfg.rank) +
                                " (adapter_config.json)");
                has_ab[size_t(l)][size_t(s)] |= is_a ? 1 : 2;
              } else {
                HYMBA_CHECK(cfg.dora, what + " is a DoRA magnitude but adapter_config.json has no use_dora: true");
              }
              break;
            }
      }
    }
    HYMBA_CHECK(ok, st_path + ": tensor " + name + " is not a LoRA tensor of a Hymba linear layer");
  }
  for (int s = 0; s < kNumSlots; ++s)
    if (slot_used[s]) cfg.targets.push_back(Slot(s));
  HYMBA_CHECK(!cfg.targets.empty(), st_path + ": no adapter tensors");
  for (size_t l = 0; l < present.size(); ++l)
    for (int s = 0; s < kNumSlots; ++s)
      HYMBA_CHECK(!present[l][size_t(s)] || has_ab[l][size_t(s)] == 3,
                  st_path + ": incomplete adapter for " + adapter_key(int(l), Slot(s), has_ab[l][size_t(s)] & 1 ? 'B' : 'A') +
                      " (missing)");
  AdapterSet a = adapter_layout(c, base, cfg);
  // Modules targeted in some layers only: drop the others from the layout (keeps the views null).
  std::vector<AdapterTensor> kept;
  for (const auto& t : a.tensors)
    if (present[size_t(t.layer)][size_t(t.slot)]) kept.push_back(t);
    else a.view.layers[size_t(t.layer)][size_t(t.slot)] = LoraView{};
  a.tensors = kept;
  auto read = [&](const AdapterTensor& t, const TensorInfo* ti) {
    HYMBA_CHECK(ti->shape == t.shape, st_path + ": tensor " + t.name + " has shape " + shape_str(ti->shape) +
                                          ", the base model needs " + shape_str(t.shape));
    HYMBA_CHECK(ti->dtype == DType::F32 || ti->dtype == DType::BF16 || ti->dtype == DType::F16,
                st_path + ": tensor " + t.name + ": unsupported dtype");
    to_f32(a.data.data() + t.offset, ti->data, ti->dtype, size_t(t.size));
    for (int64_t i = 0; i < t.size; ++i)
      HYMBA_CHECK(std::isfinite(a.data[size_t(t.offset + i)]), st_path + ": tensor " + t.name + " has NaN or Inf values");
  };
  for (const auto& t : a.tensors) {
    const TensorInfo* ti = file->find(t.name);
    if (!ti && t.kind == 'm') ti = file->find(t.name + ".weight");
    HYMBA_CHECK(ti, st_path + ": missing tensor " + t.name);
    read(t, ti);
  }
  if (with_meta) {
    const TensorInfo* ti = file->find(kMetaTokensKey);
    HYMBA_CHECK(ti, st_path + ": missing tensor " + std::string(kMetaTokensKey) +
                        " (adapter_config.json lists memory_tokens in modules_to_save)");
    add_meta_tokens(a, c, base);
    read(a.tensors.back(), ti);
  }
  for (const auto& t : a.tensors)  // a module with B but no A etc.
    HYMBA_CHECK(t.kind == 'M' || (a.view.layers[size_t(t.layer)][size_t(t.slot)].B &&
                    (!cfg.dora || a.view.layers[size_t(t.layer)][size_t(t.slot)].magnitude)),
                st_path + ": incomplete adapter for " + t.name);
  return a;
}

void save_peft_adapter(const AdapterSet& a, const std::string& dir,
                       const std::string& base_model_name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  HYMBA_CHECK(!ec, "cannot create " + dir + ": " + ec.message());
  std::vector<TensorOut> out;
  for (const auto& t : a.tensors) out.push_back({t.name, DType::F32, t.shape, a.data.data() + t.offset});
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), out, {{"format", "pt"}});
  nlohmann::json targets = nlohmann::json::array();
  for (Slot s : a.cfg.targets) targets.push_back(slot_target(s));
  nlohmann::json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_name},
      {"r", a.cfg.rank},
      {"lora_alpha", a.cfg.alpha},
      {"lora_dropout", a.cfg.dropout},
      {"target_modules", targets},
      {"use_dora", a.cfg.dora},
      {"use_rslora", a.cfg.rslora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"modules_to_save", a.meta ? nlohmann::json::array({"memory_tokens"}) : nlohmann::json()},
      {"layers_to_transform", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
  };
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), j.dump(2) + "\n");
}

}  // namespace hymba
