#include "model/config.h"

#include <cmath>
#include <set>

#include "base/error.h"
#include "io/files.h"

namespace hymba {

using json = nlohmann::json;

namespace {

// Typed accessors: absent or null -> default; wrong type -> error naming the key.
struct Reader {
  const json& j;
  const std::string& where;

  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    fail(where + ": key '" + key + "' " + what);
  }
  const json* get(const std::string& key) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
  int64_t as_int(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    // Accept integral floats (2.0) as some exporters write them.
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::floor(d) == d && std::fabs(d) < 9e15) return int64_t(d);
    }
    bad(key, "must be an integer (got " + v.dump() + ")");
  }
  int64_t i(const std::string& key, int64_t def) const {
    const json* v = get(key);
    return v ? as_int(key, *v) : def;
  }
  int64_t required_i(const std::string& key) const {
    const json* v = get(key);
    if (!v) bad(key, "is missing");
    return as_int(key, *v);
  }
  double d(const std::string& key, double def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_number()) bad(key, "must be a number (got " + v->dump() + ")");
    return v->get<double>();
  }
  bool b(const std::string& key, bool def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_boolean()) bad(key, "must be true or false (got " + v->dump() + ")");
    return v->get<bool>();
  }
  std::string s(const std::string& key, const std::string& def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_string()) bad(key, "must be a string (got " + v->dump() + ")");
    return v->get<std::string>();
  }
  std::vector<int> int_list(const std::string& key) const {
    std::vector<int> r;
    const json* v = get(key);
    if (!v) return r;
    if (!v->is_array()) bad(key, "must be a list of integers");
    for (auto& e : *v) {
      if (!e.is_number_integer()) bad(key, "must be a list of integers (got " + e.dump() + ")");
      r.push_back(int(e.get<int64_t>()));
    }
    return r;
  }
};

}  // namespace

Config config_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": config is not a JSON object");
  Reader r{j, where};
  Config c;
  c.raw = j;

  c.vocab_size = r.required_i("vocab_size");
  c.hidden_size = r.required_i("hidden_size");
  c.num_hidden_layers = r.required_i("num_hidden_layers");
  c.num_attention_heads = r.required_i("num_attention_heads");
  c.num_key_value_heads = r.i("num_key_value_heads", c.num_attention_heads);
  c.attn_hidden_size = r.i("attn_hidden_size", -1);
  c.kq_head_dim = r.i("kq_head_dim", -1);
  c.v_head_dim = r.i("v_head_dim", -1);
  c.intermediate_size = r.required_i("intermediate_size");
  c.hidden_act = r.s("hidden_act", "silu");
  c.mlp_hidden_act = r.s("mlp_hidden_act", "silu");
  c.rms_norm_eps = r.d("rms_norm_eps", 1e-6);
  c.initializer_range = r.d("initializer_range", 0.02);
  c.tie_word_embeddings = r.b("tie_word_embeddings", true);
  c.rope = r.b("rope", false);
  c.rope_theta = r.d("rope_theta", 10000.0);
  c.rope_type = r.s("rope_type", "");
  c.max_position_embeddings = r.i("max_position_embeddings", 0);
  c.orig_max_position_embeddings = r.i("orig_max_position_embeddings", 0);
  c.kq_norm = r.s("kq_norm", "none");
  c.num_memory_tokens = r.i("num_memory_tokens", 0);
  c.memory_tokens_interspersed_every = r.i("memory_tokens_interspersed_every", 0);
  c.sliding_window = r.i("sliding_window", -1);
  c.global_attn_idx = r.int_list("global_attn_idx");
  if (const json* v = r.get("kv_reuse_group")) {
    if (!v->is_array()) r.bad("kv_reuse_group", "must be a list of lists of layer indices");
    for (auto& g : *v) {
      if (!g.is_array()) r.bad("kv_reuse_group", "must be a list of lists of layer indices");
      std::vector<int> grp;
      for (auto& e : g) {
        if (!e.is_number_integer())
          r.bad("kv_reuse_group", "must be a list of lists of layer indices (got " + e.dump() + ")");
        grp.push_back(int(e.get<int64_t>()));
      }
      c.kv_reuse_group.push_back(grp);
    }
  }
  c.kv_reuse_every_i_layer = r.i("kv_reuse_every_i_layer", -1);
  c.kv_weight_reuse = r.b("kv_weight_reuse", false);
  c.fusion = r.s("fusion", "mean");
  c.mamba_d_state = r.i("mamba_d_state", 16);
  c.mamba_d_conv = r.i("mamba_d_conv", 4);
  c.mamba_expand = r.i("mamba_expand", 2);
  if (const json* v = r.get("mamba_dt_rank")) {
    if (v->is_string()) {
      if (v->get<std::string>() != "auto") r.bad("mamba_dt_rank", "must be \"auto\" or an integer");
      c.mamba_dt_rank = -1;
    } else {
      c.mamba_dt_rank = r.as_int("mamba_dt_rank", *v);
    }
  }
  c.mamba_conv_bias = r.b("mamba_conv_bias", true);
  c.mamba_proj_bias = r.b("mamba_proj_bias", false);
  c.mamba_inner_layernorms = r.b("mamba_inner_layernorms", true);
  c.num_mamba = r.i("num_mamba", 1);
  c.num_experts = r.i("num_experts", 1);
  c.pad_token_id = r.i("pad_token_id", -1);
  c.bos_token_id = r.i("bos_token_id", -1);
  c.eos_token_id = r.i("eos_token_id", -1);

  auto bad = [&](const std::string& key, const std::string& what) { r.bad(key, what); };
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) bad(key, "must be positive (got " + std::to_string(v) + ")");
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("intermediate_size", c.intermediate_size);
  positive("mamba_d_state", c.mamba_d_state);
  positive("mamba_d_conv", c.mamba_d_conv);
  positive("mamba_expand", c.mamba_expand);
  if (!(c.rms_norm_eps > 0)) bad("rms_norm_eps", "must be positive");
  if (!(c.initializer_range >= 0)) bad("initializer_range", "must be >= 0");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    bad("num_key_value_heads", "must divide num_attention_heads (" +
                                   std::to_string(c.num_attention_heads) + " % " +
                                   std::to_string(c.num_key_value_heads) + " != 0)");
  if (c.hidden_act != "silu") bad("hidden_act", "'" + c.hidden_act + "' is not supported (only \"silu\")");
  if (c.mlp_hidden_act != "silu")
    bad("mlp_hidden_act", "'" + c.mlp_hidden_act + "' is not supported (only \"silu\")");
  if (c.kq_norm != "none") bad("kq_norm", "'" + c.kq_norm + "' is not supported (only \"none\" or null)");
  if (c.num_memory_tokens < 0) bad("num_memory_tokens", "must be >= 0");
  if (c.memory_tokens_interspersed_every != 0)
    bad("memory_tokens_interspersed_every", "must be 0 (interspersed meta tokens are not supported)");
  if (c.kv_weight_reuse) bad("kv_weight_reuse", "true is not supported");
  if (c.fusion != "mean" && c.fusion != "concat") bad("fusion", "must be \"mean\" or \"concat\" (got \"" + c.fusion + "\")");
  // Its meaning is not confirmed in the official code paths the 1.5B model uses.
  if (c.kv_reuse_every_i_layer > 0)
    bad("kv_reuse_every_i_layer", "> 0 is not supported (use kv_reuse_group)");
  if (c.num_mamba != 1) bad("num_mamba", "must be 1");
  if (c.num_experts != 1) bad("num_experts", "must be 1 (mixture of experts is not supported)");
  if (!c.mamba_inner_layernorms)
    bad("mamba_inner_layernorms", "false is not supported (the dt/B/C RMSNorms are always present)");
  if (c.sliding_window <= 0 && r.get("sliding_window"))
    bad("sliding_window", "must be positive or null (got " + std::to_string(c.sliding_window) + ")");
  for (auto [key, id] : {std::pair<const char*, int64_t>{"pad_token_id", c.pad_token_id},
                         {"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id}})
    if (id < -1 || id >= c.vocab_size)
      bad(key, "is outside the vocabulary (got " + std::to_string(id) + ", vocab_size " +
                   std::to_string(c.vocab_size) + ")");
  const std::string model_type = r.s("model_type", "hymba");
  if (model_type != "hymba")
    bad("model_type", "is \"" + model_type + "\": this engine runs Hymba models only (\"hymba\")");

  // Derived sizes (spec §1.1).
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  if (c.attn_hidden_size == -1) c.attn_hidden_size = H;
  positive("attn_hidden_size", c.attn_hidden_size);
  if (c.kq_head_dim == -1) {
    if (c.attn_hidden_size % nh != 0)
      bad("attn_hidden_size", "must be divisible by num_attention_heads");
    c.kq_head_dim = c.attn_hidden_size / nh;
  }
  positive("kq_head_dim", c.kq_head_dim);
  c.d_qk = c.kq_head_dim;
  c.d_inner = c.mamba_expand * H;
  if (c.d_inner % nh != 0)
    bad("num_attention_heads", "must divide d_inner = mamba_expand * hidden_size = " +
                                   std::to_string(c.d_inner));
  c.d_v = c.d_inner / nh;
  c.v_head_dim = c.d_v;  // the official code overwrites it the same way
  if (c.mamba_dt_rank == -1) c.mamba_dt_rank = (H + 15) / 16;
  positive("mamba_dt_rank", c.mamba_dt_rank);
  c.dt_rank = c.mamba_dt_rank;

  if (c.rope) {
    if (c.rope_type.empty() || c.rope_type == "default") {
      c.rope_base = c.rope_theta;
    } else if (c.rope_type == "ntk") {
      positive("max_position_embeddings", c.max_position_embeddings);
      positive("orig_max_position_embeddings", c.orig_max_position_embeddings);
      const double f = 2.0 * double(c.max_position_embeddings) / double(c.orig_max_position_embeddings) - 1.0;
      if (!(f > 0)) bad("orig_max_position_embeddings", "gives a non-positive NTK factor");
      if (c.d_qk <= 2) bad("kq_head_dim", "must be > 2 for NTK rope");
      const double d = double(c.d_qk);
      c.rope_base = c.rope_theta * std::pow(f, d / (d - 2.0));
    } else {
      bad("rope_type", "'" + c.rope_type + "' is not supported (\"default\", \"ntk\" or null)");
    }
    if (!(c.rope_theta > 0)) bad("rope_theta", "must be positive");
    if (c.d_qk % 2 != 0) bad("kq_head_dim", "must be even for rotary embeddings");
  } else {
    c.rope_base = 0;
  }

  // Per-layer lists.
  const int L = int(c.num_hidden_layers);
  if (const json* v = r.get("layer_type")) {
    if (!v->is_array()) bad("layer_type", "must be a list of strings");
    for (auto& e : *v) {
      if (!e.is_string()) bad("layer_type", "must be a list of strings (got " + e.dump() + ")");
      std::string t = e.get<std::string>();
      if (t != "h" && t != "a" && t != "m")
        bad("layer_type", "unknown layer type '" + t + "' (\"h\", \"a\" or \"m\")");
      c.layer_type.push_back(t);
    }
    if (int64_t(c.layer_type.size()) != L)
      bad("layer_type", "has " + std::to_string(c.layer_type.size()) + " entries, num_hidden_layers is " +
                            std::to_string(L));
  } else {
    c.layer_type.assign(size_t(L), "h");
  }
  c.conv_dim.assign(size_t(L), c.d_inner);
  if (const json* v = r.get("conv_dim")) {
    auto set = [&](int64_t layer, const json& val) {
      if (layer < 0 || layer >= L) bad("conv_dim", "layer " + std::to_string(layer) + " out of range");
      int64_t x = r.as_int("conv_dim", val);
      if (x != c.d_inner)
        bad("conv_dim", "entry for layer " + std::to_string(layer) + " is " + std::to_string(x) +
                            ", must equal d_inner = " + std::to_string(c.d_inner));
      c.conv_dim[size_t(layer)] = x;
    };
    if (v->is_object()) {
      for (auto it = v->begin(); it != v->end(); ++it) {
        const std::string& k = it.key();
        size_t pos = 0;
        int64_t layer = -1;
        try {
          layer = std::stoll(k, &pos);
        } catch (...) {
          pos = 0;
        }
        if (k.empty() || pos != k.size()) bad("conv_dim", "key '" + k + "' is not a layer index");
        set(layer, it.value());
      }
    } else if (v->is_array()) {
      if (int64_t(v->size()) != L) bad("conv_dim", "list length must equal num_hidden_layers");
      for (int i = 0; i < L; ++i) set(i, (*v)[size_t(i)]);
    } else {
      bad("conv_dim", "must be an object {\"layer\": dim} or a list");
    }
  }
  for (int g : c.global_attn_idx)
    if (g < 0 || g >= L) bad("global_attn_idx", "layer " + std::to_string(g) + " out of range");

  // KV reuse groups: consumers share K/V with the group's first layer, so both must be attention
  // layers of the same window type (a global consumer would need keys that a window producer's
  // ring has dropped). The 1.5B config shares only between window layers; sharing
  // between global layers (the paper's all-global ablation with KV sharing) is well defined too.
  auto is_global = [&](int i) {
    if (c.sliding_window < 0) return true;
    for (int g : c.global_attn_idx)
      if (g == i) return true;
    return false;
  };
  std::vector<int> seen(size_t(L), 0);
  for (auto& g : c.kv_reuse_group) {
    if (g.empty()) bad("kv_reuse_group", "has an empty group");
    for (int i : g) {
      if (i < 0 || i >= L) bad("kv_reuse_group", "layer " + std::to_string(i) + " out of range");
      if (seen[size_t(i)]++) bad("kv_reuse_group", "layer " + std::to_string(i) + " is in two groups");
      if (c.layer_type[size_t(i)] == "m")
        bad("kv_reuse_group", "layer " + std::to_string(i) + " has no attention heads (layer_type \"m\")");
    }
    const int p = g[0];
    for (size_t k = 1; k < g.size(); ++k) {
      const int q = g[k];
      if (q < p)
        bad("kv_reuse_group", "consumer layer " + std::to_string(q) + " comes before its producer " +
                                  std::to_string(p));
      if (is_global(p) != is_global(q))
        bad("kv_reuse_group", "layers " + std::to_string(p) + " and " + std::to_string(q) +
                                  " have different attention windows (layer " +
                                  std::to_string(is_global(p) ? p : q) + " is global)");
    }
  }
  return c;
}

Config load_config(const std::string& path) {
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail(path + ": not valid JSON: " + e.what());
  }
  return config_from_json(j, path);
}

json config_to_json(const Config& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  if (!j.contains("model_type")) j["model_type"] = "hymba";
  if (!j.contains("architectures")) j["architectures"] = {"HymbaForCausalLM"};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  // Keep "-1 = derive" where the source said so: the official loader derives the same values.
  const bool ahs_derived = !c.raw.contains("attn_hidden_size") || c.raw["attn_hidden_size"] == -1;
  j["attn_hidden_size"] = ahs_derived && c.attn_hidden_size == c.hidden_size ? -1 : c.attn_hidden_size;
  const bool kq_derived = !c.raw.contains("kq_head_dim") || c.raw["kq_head_dim"] == -1;
  j["kq_head_dim"] = kq_derived && c.kq_head_dim * c.num_attention_heads == c.attn_hidden_size
                         ? -1 : c.kq_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["hidden_act"] = c.hidden_act;
  j["mlp_hidden_act"] = c.mlp_hidden_act;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["initializer_range"] = c.initializer_range;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["rope"] = c.rope;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_type.empty()) j["rope_type"] = nullptr; else j["rope_type"] = c.rope_type;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["orig_max_position_embeddings"] = c.orig_max_position_embeddings;
  j["kq_norm"] = c.kq_norm;
  j["num_memory_tokens"] = c.num_memory_tokens;
  j["memory_tokens_interspersed_every"] = c.memory_tokens_interspersed_every;
  if (c.sliding_window < 0) j["sliding_window"] = nullptr; else j["sliding_window"] = c.sliding_window;
  j["global_attn_idx"] = c.global_attn_idx;
  j["kv_reuse_group"] = c.kv_reuse_group;
  j["kv_reuse_every_i_layer"] = c.kv_reuse_every_i_layer;
  j["kv_weight_reuse"] = c.kv_weight_reuse;
  j["mamba_d_state"] = c.mamba_d_state;
  j["mamba_d_conv"] = c.mamba_d_conv;
  j["mamba_expand"] = c.mamba_expand;
  j["mamba_dt_rank"] = c.dt_rank;
  j["mamba_conv_bias"] = c.mamba_conv_bias;
  j["mamba_proj_bias"] = c.mamba_proj_bias;
  j["mamba_inner_layernorms"] = c.mamba_inner_layernorms;
  j["num_mamba"] = c.num_mamba;
  json cd = json::object();  // string keys, as the current HF config.json
  for (size_t i = 0; i < c.conv_dim.size(); ++i) cd[std::to_string(i)] = c.conv_dim[i];
  j["conv_dim"] = cd;
  j["layer_type"] = c.layer_type;
  if (c.fusion != "mean" || j.contains("fusion")) j["fusion"] = c.fusion;  // official files lack the key
  j["num_experts"] = c.num_experts;
  auto id = [](int64_t v) { return v < 0 ? json(nullptr) : json(v); };
  j["pad_token_id"] = id(c.pad_token_id);
  j["bos_token_id"] = id(c.bos_token_id);
  j["eos_token_id"] = id(c.eos_token_id);
  return j;
}

bool LayerPlan::producer() const { return has_attn && kv_source == index; }

std::vector<LayerPlan> make_layer_plan(const Config& c) {
  const int L = int(c.num_hidden_layers);
  std::vector<LayerPlan> plan(static_cast<size_t>(L));
  for (int i = 0; i < L; ++i) {
    LayerPlan& p = plan[size_t(i)];
    const std::string& t = c.layer_type.empty() ? std::string("h") : c.layer_type[size_t(i)];
    p.index = i;
    p.has_attn = t != "m";
    p.has_ssm = t != "a";
    p.global = c.sliding_window < 0;
    for (int g : c.global_attn_idx)
      if (g == i) p.global = true;
    p.kv_source = i;
  }
  for (auto& g : c.kv_reuse_group)
    for (size_t k = 1; k < g.size(); ++k) plan[size_t(g[k])].kv_source = g[0];
  for (auto& p : plan) {
    int64_t rows = 0;
    if (p.has_attn) {
      rows += c.num_attention_heads * c.d_qk;
      if (p.producer()) rows += c.num_key_value_heads * (c.d_qk + c.d_v);
    }
    if (p.has_ssm) rows += 2 * c.d_inner;
    p.in_proj_rows = rows;
    p.concat = c.fusion == "concat" && p.has_attn && p.has_ssm;
    p.out_proj_cols = p.concat ? 2 * c.d_inner : c.d_inner;
  }
  return plan;
}

}  // namespace hymba
