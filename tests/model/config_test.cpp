#include "model/config.h"
#include "model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <set>

#include "base/error.h"

using namespace hymba;
using ::testing::HasSubstr;
using json = nlohmann::json;

namespace {

const std::string k15b = std::string(HYMBA_SOURCE_DIR) + "/tests/configs/hymba-1.5b.json";

json small_cfg() {
  return json::parse(R"({
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 48, "num_memory_tokens": 3,
    "rope": true, "rope_theta": 10000.0, "rope_type": null, "sliding_window": 8,
    "global_attn_idx": [0, 3], "kv_reuse_group": [[1, 2]], "mamba_dt_rank": "auto",
    "conv_dim": {"0": 64, "1": 64, "2": 64, "3": 64}, "custom_key": {"x": 1}})");
}

// The error message config_from_json gives for `j` ("" if accepted).
std::string err(const json& j) {
  try {
    config_from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ModelConfig, Hymba15BDerivedSizesAndLayerMap) {
  const Config c = load_config(k15b);
  EXPECT_EQ(c.hidden_size, 1600);
  EXPECT_EQ(c.d_inner, 3200);
  EXPECT_EQ(c.d_qk, 64);
  EXPECT_EQ(c.d_v, 128);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.attn_hidden_size, 1600);
  EXPECT_EQ(c.dt_rank, 100);
  EXPECT_EQ(c.num_memory_tokens, 128);
  EXPECT_EQ(c.sliding_window, 1024);
  EXPECT_NEAR(c.rope_base, 10000.0 * std::pow(7.0, 64.0 / 62.0), 1e-6);
  EXPECT_NEAR(c.rope_base, 74534.83, 0.01);
  ASSERT_EQ(c.conv_dim.size(), 32u);
  for (auto d : c.conv_dim) EXPECT_EQ(d, 3200);

  const auto plan = make_layer_plan(c);
  ASSERT_EQ(plan.size(), 32u);
  const std::set<int> producers = {0, 1, 3, 5, 7, 9, 11, 13, 15, 16, 19, 21, 23, 25, 27, 29, 31};
  const std::set<int> global = {0, 15, 31};
  int np = 0, nc = 0;
  for (int i = 0; i < 32; ++i) {
    const LayerPlan& p = plan[size_t(i)];
    EXPECT_EQ(p.index, i);
    EXPECT_TRUE(p.has_attn && p.has_ssm);
    EXPECT_EQ(p.global, global.count(i) == 1) << i;
    EXPECT_EQ(p.producer(), producers.count(i) == 1) << i;
    if (p.producer()) {
      ++np;
      EXPECT_EQ(p.kv_source, i);
      EXPECT_EQ(p.in_proj_rows, 8960) << i;
    } else {
      ++nc;
      const int want = (i == 17 || i == 18) ? 16 : i - 1;
      EXPECT_EQ(p.kv_source, want) << i;
      EXPECT_EQ(p.in_proj_rows, 8000) << i;
    }
  }
  EXPECT_EQ(np, 17);
  EXPECT_EQ(nc, 15);
}

TEST(ModelConfig, DefaultsAndDerivation) {
  json j = small_cfg();
  Config c = config_from_json(j);
  EXPECT_EQ(c.d_qk, 8);
  EXPECT_EQ(c.d_inner, 64);
  EXPECT_EQ(c.d_v, 16);
  EXPECT_EQ(c.dt_rank, 2);  // ceil(32 / 16)
  EXPECT_DOUBLE_EQ(c.rope_base, 10000.0);  // rope_type null = plain theta
  ASSERT_EQ(c.layer_type.size(), 4u);
  for (auto& t : c.layer_type) EXPECT_EQ(t, "h");

  j["mamba_dt_rank"] = -1;
  j["hidden_size"] = 40;
  j["conv_dim"] = json::array({80, 80, 80, 80});  // list form
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  c = config_from_json(j);
  EXPECT_EQ(c.dt_rank, 3);  // ceil(40 / 16)
  EXPECT_EQ(c.d_qk, 8);

  j = small_cfg();
  j["rope"] = false;
  EXPECT_EQ(config_from_json(j).rope_base, 0.0);
  j = small_cfg();
  j["sliding_window"] = nullptr;
  j["kv_reuse_group"] = json::array();
  c = config_from_json(j);
  EXPECT_EQ(c.sliding_window, -1);
  for (auto& p : make_layer_plan(c)) EXPECT_TRUE(p.global);
  j = small_cfg();
  j["kq_head_dim"] = 6;
  j["rope_type"] = "ntk";
  j["max_position_embeddings"] = 4096;
  j["orig_max_position_embeddings"] = 1024;
  c = config_from_json(j);
  EXPECT_NEAR(c.rope_base, 10000.0 * std::pow(7.0, 6.0 / 4.0), 1e-6);
}

TEST(ModelConfig, LayerTypesAndPlan) {
  json j = small_cfg();
  j["layer_type"] = json::array({"h", "a", "a", "m"});
  const Config c = config_from_json(j);
  const auto plan = make_layer_plan(c);
  // Q = 4*8 = 32, K = 2*8 = 16, V = 2*16 = 32, x+z = 128
  EXPECT_EQ(plan[0].in_proj_rows, 32 + 16 + 32 + 128);
  EXPECT_TRUE(plan[1].has_attn && !plan[1].has_ssm);
  EXPECT_EQ(plan[1].in_proj_rows, 32 + 16 + 32);
  EXPECT_EQ(plan[2].kv_source, 1);
  EXPECT_FALSE(plan[2].producer());
  EXPECT_EQ(plan[2].in_proj_rows, 32);
  EXPECT_TRUE(!plan[3].has_attn && plan[3].has_ssm);
  EXPECT_FALSE(plan[3].producer());
  EXPECT_EQ(plan[3].in_proj_rows, 128);
  EXPECT_TRUE(plan[3].global);
  EXPECT_FALSE(plan[1].global);
}

TEST(ModelConfig, ConcatFusionWidensOutProjOfHybridLayersOnly) {
  json j = small_cfg();
  j["layer_type"] = json::array({"h", "a", "a", "m"});
  EXPECT_EQ(config_from_json(j).fusion, "mean");
  EXPECT_FALSE(config_to_json(config_from_json(j)).contains("fusion"));  // official files round-trip
  j["fusion"] = "concat";
  const Config c = config_from_json(j);
  const auto plan = make_layer_plan(c);
  EXPECT_TRUE(plan[0].concat);
  EXPECT_EQ(plan[0].out_proj_cols, 2 * c.d_inner);
  for (int i = 1; i < 4; ++i) EXPECT_EQ(plan[size_t(i)].out_proj_cols, c.d_inner) << i;
  EXPECT_EQ(config_to_json(c)["fusion"], "concat");
  for (const ParamSpec& s : param_specs(c))
    if (s.name == "model.layers.0.mamba.out_proj.weight") EXPECT_EQ(s.shape[1], 2 * c.d_inner);
}

TEST(ModelConfig, JsonRoundTripKeepsUnknownKeys) {
  const Config c = load_config(k15b);
  const json j = config_to_json(c);
  EXPECT_EQ(j["attn_implementation"], "flex");
  EXPECT_EQ(j["conv_dim"]["31"], 3200);
  EXPECT_EQ(j["attn_hidden_size"], -1);
  EXPECT_EQ(j["kq_head_dim"], -1);
  const Config d = config_from_json(j);
  EXPECT_EQ(d.kv_reuse_group, c.kv_reuse_group);
  EXPECT_EQ(d.global_attn_idx, c.global_attn_idx);
  EXPECT_EQ(d.rope_base, c.rope_base);
  EXPECT_EQ(d.dt_rank, c.dt_rank);
  EXPECT_EQ(d.sliding_window, c.sliding_window);
  EXPECT_EQ(d.layer_type, c.layer_type);
  EXPECT_EQ(config_to_json(d), j);

  json s = small_cfg();
  s["sliding_window"] = nullptr;
  s["kv_reuse_group"] = json::array();
  const json t = config_to_json(config_from_json(s));
  EXPECT_TRUE(t["sliding_window"].is_null());
  EXPECT_EQ(t["custom_key"]["x"], 1);
}

TEST(ModelConfig, InconsistentConfigsNameTheKey) {
  struct Case {
    std::function<void(json&)> edit;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j["hidden_size"] = 0; }, {"hidden_size", "positive"}},
      {[](json& j) { j["hidden_size"] = "32"; }, {"hidden_size", "integer"}},
      {[](json& j) { j.erase("vocab_size"); }, {"vocab_size", "missing"}},
      {[](json& j) { j["num_key_value_heads"] = 3; }, {"num_key_value_heads"}},
      {[](json& j) { j["attn_hidden_size"] = 30; }, {"attn_hidden_size"}},
      {[](json& j) { j["num_attention_heads"] = 3; j["num_key_value_heads"] = 3; j["kq_head_dim"] = 8; },
       {"num_attention_heads", "d_inner"}},
      {[](json& j) { j["global_attn_idx"] = json::parse("[0,4]"); }, {"global_attn_idx", "4"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[[1,2],[2,3]]"); }, {"kv_reuse_group", "two groups"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[[1,5]]"); }, {"kv_reuse_group", "5"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[[2,3]]"); }, {"kv_reuse_group", "3", "global"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[[0,1]]"); }, {"kv_reuse_group", "global"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[[2,1]]"); }, {"kv_reuse_group", "before"}},
      {[](json& j) { j["layer_type"] = json::array({"h", "h", "m", "h"}); }, {"kv_reuse_group", "2"}},
      {[](json& j) { j["layer_type"] = json::array({"h", "h", "x", "h"}); }, {"layer_type", "'x'"}},
      {[](json& j) { j["layer_type"] = json::array({"h", "h"}); }, {"layer_type"}},
      {[](json& j) { j["conv_dim"]["2"] = 32; }, {"conv_dim", "layer 2"}},
      {[](json& j) { j["conv_dim"]["zz"] = 64; }, {"conv_dim", "zz"}},
      {[](json& j) { j["conv_dim"] = 5; }, {"conv_dim"}},
      {[](json& j) { j["num_experts"] = 4; }, {"num_experts"}},
      {[](json& j) { j["memory_tokens_interspersed_every"] = 16; }, {"memory_tokens_interspersed_every"}},
      {[](json& j) { j["kq_norm"] = "rms"; }, {"kq_norm"}},
      {[](json& j) { j["kv_weight_reuse"] = true; }, {"kv_weight_reuse"}},
      {[](json& j) { j["kv_weight_reuse"] = "no"; }, {"kv_weight_reuse"}},
      {[](json& j) { j["fusion"] = "sum"; }, {"fusion", "sum"}},
      {[](json& j) { j["fusion"] = 1; }, {"fusion"}},
      {[](json& j) { j["hidden_act"] = "gelu"; }, {"hidden_act", "gelu"}},
      {[](json& j) { j["mlp_hidden_act"] = "relu"; }, {"mlp_hidden_act"}},
      {[](json& j) { j["num_mamba"] = 2; }, {"num_mamba"}},
      {[](json& j) { j["kv_reuse_every_i_layer"] = 2; }, {"kv_reuse_every_i_layer"}},
      {[](json& j) { j["rope_type"] = "yarn"; }, {"rope_type", "yarn"}},
      {[](json& j) { j["rope_type"] = "ntk"; }, {"max_position_embeddings"}},
      {[](json& j) { j["rope"] = 1; }, {"rope"}},
      {[](json& j) { j["mamba_dt_rank"] = "big"; }, {"mamba_dt_rank"}},
      {[](json& j) { j["global_attn_idx"] = "0"; }, {"global_attn_idx"}},
      {[](json& j) { j["kv_reuse_group"] = json::parse("[1,2]"); }, {"kv_reuse_group"}},
      {[](json& j) { j["num_memory_tokens"] = -1; }, {"num_memory_tokens"}},
      {[](json& j) { j["rms_norm_eps"] = "tiny"; }, {"rms_norm_eps"}},
      {[](json& j) { j["sliding_window"] = 0; }, {"sliding_window"}},
      {[](json& j) { j["sliding_window"] = -5; }, {"sliding_window", "-5"}},  // used to mean global
      {[](json& j) { j["eos_token_id"] = 99999; }, {"eos_token_id", "99999"}},
      {[](json& j) { j["bos_token_id"] = -7; }, {"bos_token_id"}},
      {[](json& j) { j["pad_token_id"] = 1 << 20; }, {"pad_token_id"}},
      {[](json& j) { j["model_type"] = "llama"; }, {"model_type", "llama"}},
      {[](json& j) { j["mamba_inner_layernorms"] = false; }, {"mamba_inner_layernorms"}},
  };
  EXPECT_EQ(err(small_cfg()), "");
  for (size_t i = 0; i < cases.size(); ++i) {
    json j = small_cfg();
    cases[i].edit(j);
    const std::string e = err(j);
    ASSERT_FALSE(e.empty()) << "case " << i << " accepted: " << j.dump();
    EXPECT_THAT(e, HasSubstr("cfg.json")) << i;
    for (auto& s : cases[i].expect) EXPECT_THAT(e, HasSubstr(s)) << "case " << i;
  }
  EXPECT_THAT(err(json::array()), HasSubstr("not a JSON object"));
}

namespace hymba {
namespace {

// The paper's all-global ablation with KV sharing: consumers of a global producer are global too.
TEST(ModelConfig, KvSharingBetweenGlobalLayersIsAccepted) {
  json j = small_cfg();
  j["sliding_window"] = nullptr;
  const Config c = config_from_json(j);
  const auto plan = make_layer_plan(c);
  EXPECT_TRUE(plan[2].global);
  EXPECT_EQ(plan[2].kv_source, 1);
  EXPECT_FALSE(plan[2].producer());
}

}  // namespace
}  // namespace hymba
