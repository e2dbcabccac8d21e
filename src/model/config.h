// The model configuration as plain data: parsed from a Hugging Face config.json, validated, with
// the derived sizes computed as the official code does (hymba-spec.md §1).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hymba {

struct Config {
  // --- keys of config.json (spec §1); -1 where the file says "derive it" ---
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t attn_hidden_size = -1;
  int64_t kq_head_dim = -1;
  int64_t v_head_dim = -1;  // overwritten by d_inner / num_attention_heads, as the official code
  int64_t intermediate_size = 0;
  std::string hidden_act = "silu";
  std::string mlp_hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  double initializer_range = 0.02;
  bool tie_word_embeddings = true;
  bool rope = false;
  double rope_theta = 10000.0;
  std::string rope_type;  // "" / "default" (plain) or "ntk" (static NTK, factor 2)
  int64_t max_position_embeddings = 0;
  int64_t orig_max_position_embeddings = 0;
  std::string kq_norm = "none";
  int64_t num_memory_tokens = 0;  // the meta tokens
  int64_t memory_tokens_interspersed_every = 0;
  int64_t sliding_window = -1;  // -1 (null / absent): every layer global
  std::vector<int> global_attn_idx;
  std::vector<std::vector<int>> kv_reuse_group;
  int64_t kv_reuse_every_i_layer = -1;
  bool kv_weight_reuse = false;
  int64_t mamba_d_state = 16;
  int64_t mamba_d_conv = 4;
  int64_t mamba_expand = 2;
  int64_t mamba_dt_rank = -1;  // "auto" -> ceil(hidden_size / 16)
  bool mamba_conv_bias = true;
  bool mamba_proj_bias = false;
  bool mamba_inner_layernorms = true;
  int64_t num_mamba = 1;
  std::vector<int64_t> conv_dim;  // per layer, from {"0": 3200, ...} (string or int keys)
  // Per layer: "h" = hybrid heads (official), and our extensions for the paper's baselines:
  // "a" = attention heads only, "m" = Mamba heads only (see docs/ARCHITECTURE.md).
  std::vector<std::string> layer_type;
  // Fusion of the two kinds of heads in "h" layers (our extension for the paper's Table 9):
  // "mean" (official): out_proj((norm1(attn) + norm2(ssm)) / 2); "concat": out_proj([norm1(attn);
  // norm2(ssm)]), so out_proj's input width is 2 * d_inner in those layers.
  std::string fusion = "mean";
  int64_t num_experts = 1;
  int64_t pad_token_id = 0, bos_token_id = 1, eos_token_id = 2;

  // --- derived (spec §1.1) ---
  int64_t d_inner = 0;   // mamba_expand * hidden_size; also the attention output width
  int64_t d_qk = 0;      // q/k head dim
  int64_t d_v = 0;       // v head dim = d_inner / num_attention_heads
  int64_t dt_rank = 0;
  double rope_base = 0;  // NTK-scaled base actually used for inv_freq

  nlohmann::json raw;  // the parsed file, so a save keeps unknown keys
};

// Parses and validates; throws hymba::Error naming the offending key. `where` names the source
// (file path) in messages.
Config config_from_json(const nlohmann::json& j, const std::string& where = "config.json");
Config load_config(const std::string& path);
// The JSON to write next to a checkpoint (raw keys updated with the fields above).
nlohmann::json config_to_json(const Config& c);

// Per-layer roles: the one home of the sliding-window/global rule and of cross-layer KV sharing.
struct LayerPlan {
  bool has_attn = true;   // layer_type "h" or "a"
  bool has_ssm = true;    // layer_type "h" or "m"
  bool global = true;     // global (causal) attention, else sliding window
  int kv_source = 0;      // layer whose K/V this layer attends over (== own index: producer)
  bool producer() const;  // defined in config.cpp: has_attn && kv_source == own index
  int index = 0;
  int64_t in_proj_rows = 0;  // Q [+K+V] [+x+z]
  bool concat = false;        // fusion "concat" in a layer with both kinds of heads
  int64_t out_proj_cols = 0;  // d_inner, or 2 * d_inner when concat
};
std::vector<LayerPlan> make_layer_plan(const Config& c);

}  // namespace hymba
