#include "model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "base/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "model/init.h"

using namespace hymba;
using ::testing::HasSubstr;
using json = nlohmann::json;

namespace {

const std::string k15b = std::string(HYMBA_SOURCE_DIR) + "/tests/configs/hymba-1.5b.json";

std::string fresh_dir(const std::string& tag) {
  std::string d = ::testing::TempDir() + "/hymba_w_" + tag + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

json tiny_json() {
  return json::parse(R"({
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 24, "num_memory_tokens": 3,
    "rope": true, "rope_theta": 10000.0, "rope_type": "ntk", "max_position_embeddings": 256,
    "orig_max_position_embeddings": 128, "sliding_window": 8, "global_attn_idx": [0, 3],
    "kv_reuse_group": [[1, 2]], "mamba_d_state": 4, "mamba_d_conv": 4, "mamba_expand": 2,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": true})");
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string load_error(const std::string& dir) {
  try {
    load_checkpoint(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Rewrites dir/model.safetensors through `edit` (tensors as F32 copies).
void rewrite(const std::string& dir,
             const std::function<void(std::map<std::string, std::pair<std::vector<int64_t>,
                                                                       std::vector<float>>>&)>& edit) {
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> m;
  {
    auto f = SafetensorsFile::open(dir);
    for (auto& [n, t] : f->tensors()) {
      std::vector<float> v(size_t(t.numel()));
      to_f32(v.data(), t.data, t.dtype, v.size());
      m[n] = {t.shape, v};
    }
  }
  edit(m);
  std::vector<TensorOut> outs;
  for (auto& [n, p] : m) outs.push_back({n, DType::F32, p.first, p.second.data()});
  write_safetensors(dir + "/model.safetensors", outs);
}

}  // namespace

TEST(ModelWeights, Hymba15BParameterCount) {
  const Config c = load_config(k15b);
  const auto specs = param_specs(c);
  int64_t total = 0;
  for (auto& s : specs) total += numel(s.shape);
  EXPECT_EQ(total, 1522797824);
  // Spot checks of spec §2.
  std::map<std::string, std::vector<int64_t>> by;
  for (auto& s : specs) by[s.name] = s.shape;
  EXPECT_EQ(by.count("lm_head.weight"), 0u);
  EXPECT_EQ(by["model.embed_tokens.weight"], (std::vector<int64_t>{32001, 1600}));
  EXPECT_EQ(by["model.memory_tokens"], (std::vector<int64_t>{128, 1600}));
  EXPECT_EQ(by["model.layers.0.mamba.in_proj.weight"], (std::vector<int64_t>{8960, 1600}));
  EXPECT_EQ(by["model.layers.2.mamba.in_proj.weight"], (std::vector<int64_t>{8000, 1600}));
  EXPECT_EQ(by["model.layers.18.mamba.in_proj.weight"], (std::vector<int64_t>{8000, 1600}));
  EXPECT_EQ(by["model.layers.5.mamba.conv1d.weight"], (std::vector<int64_t>{3200, 1, 4}));
  EXPECT_EQ(by["model.layers.5.mamba.x_proj.0.weight"], (std::vector<int64_t>{132, 3200}));
  EXPECT_EQ(by["model.layers.5.mamba.dt_proj.0.weight"], (std::vector<int64_t>{3200, 100}));
  EXPECT_EQ(by["model.layers.5.mamba.A_log.0"], (std::vector<int64_t>{3200, 16}));
  EXPECT_EQ(by["model.layers.31.moe.experts.0.down_proj.weight"], (std::vector<int64_t>{1600, 5504}));
  EXPECT_EQ(by.count("model.layers.0.mamba.in_proj.bias"), 0u);
  EXPECT_EQ(by.count("model.layers.0.mamba.conv1d.bias"), 1u);
  EXPECT_EQ(specs.size(), 3u + 32u * 19u);
}

TEST(ModelWeights, SpecsFollowLayerTypeAndBiasFlags) {
  json j = tiny_json();
  j["layer_type"] = json::array({"h", "a", "a", "m"});
  j["mamba_proj_bias"] = true;
  j["mamba_conv_bias"] = false;
  j["tie_word_embeddings"] = false;
  std::map<std::string, std::vector<int64_t>> by;
  for (auto& s : param_specs(config_from_json(j))) by[s.name] = s.shape;
  EXPECT_EQ(by.count("lm_head.weight"), 1u);
  EXPECT_EQ(by.count("model.layers.0.mamba.conv1d.bias"), 0u);
  EXPECT_EQ(by["model.layers.0.mamba.in_proj.bias"], (std::vector<int64_t>{16 + 8 + 16 + 64}));
  EXPECT_EQ(by["model.layers.1.mamba.out_proj.bias"], (std::vector<int64_t>{16}));
  // "a": no SSM tensors, no pre_avg_layernorm2
  EXPECT_EQ(by.count("model.layers.1.mamba.A_log.0"), 0u);
  EXPECT_EQ(by.count("model.layers.1.mamba.x_proj.0.weight"), 0u);
  EXPECT_EQ(by.count("model.layers.1.mamba.pre_avg_layernorm2.weight"), 0u);
  EXPECT_EQ(by.count("model.layers.1.mamba.pre_avg_layernorm1.weight"), 1u);
  EXPECT_EQ(by["model.layers.2.mamba.in_proj.weight"], (std::vector<int64_t>{16, 16}));
  // "m": no attention part
  EXPECT_EQ(by["model.layers.3.mamba.in_proj.weight"], (std::vector<int64_t>{64, 16}));
  EXPECT_EQ(by.count("model.layers.3.mamba.pre_avg_layernorm1.weight"), 0u);
  EXPECT_EQ(by.count("model.layers.3.mamba.pre_avg_layernorm2.weight"), 1u);
  EXPECT_EQ(by.count("model.layers.3.mamba.dt_layernorm.weight"), 1u);
}

TEST(ModelWeights, InitValuesFollowSpec) {
  const Config c = config_from_json(tiny_json());
  const auto specs = param_specs(c);
  const auto p = init_params(c, 7);
  ASSERT_EQ(p.size(), specs.size());
  std::map<std::string, const std::vector<float>*> by;
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(int64_t(p[i].size()), numel(specs[i].shape)) << specs[i].name;
    by[specs[i].name] = &p[i];
  }
  const auto& emb = *by["model.embed_tokens.weight"];
  for (int k = 0; k < 16; ++k) EXPECT_EQ(emb[size_t(k)], 0.0f);  // pad row 0
  double s2 = 0;
  for (size_t k = 16; k < emb.size(); ++k) s2 += double(emb[k]) * emb[k];
  EXPECT_NEAR(std::sqrt(s2 / double(emb.size() - 16)), 0.02, 0.003);  // 784 samples
  const auto& A = *by["model.layers.0.mamba.A_log.0"];
  for (int r = 0; r < 32; ++r)  // d_inner = 2 * 16
    for (int n = 0; n < 4; ++n) EXPECT_FLOAT_EQ(A[size_t(r * 4 + n)], std::log(float(n + 1)));
  for (float x : *by["model.layers.0.mamba.D.0"]) EXPECT_EQ(x, 1.0f);
  for (float x : *by["model.layers.0.mamba.pre_avg_layernorm1.weight"]) EXPECT_EQ(x, 1.0f);
  for (float x : *by["model.final_layernorm.weight"]) EXPECT_EQ(x, 1.0f);
  for (float x : *by["model.layers.0.mamba.dt_proj.0.bias"]) EXPECT_EQ(x, 0.0f);
  for (float x : *by["model.layers.0.mamba.conv1d.bias"]) EXPECT_EQ(x, 0.0f);
  const auto& meta = *by["model.memory_tokens"];
  double m2 = 0;
  for (float x : meta) m2 += double(x) * x;
  EXPECT_GT(m2 / double(meta.size()), 0.3);  // N(0, 1), 48 samples: far above 0.02^2
  // Deterministic per seed; a different seed differs.
  EXPECT_EQ(init_params(c, 7), p);
  EXPECT_NE(init_params(c, 8)[0], p[0]);
}

TEST(ModelWeights, InitThenLoadRoundTrip) {
  const Config c = config_from_json(tiny_json());
  const auto specs = param_specs(c);
  const auto ref = init_params(c, 42);
  for (DType t : {DType::BF16, DType::F32, DType::F16}) {
    const std::string dir = fresh_dir(std::string("rt_") + dtype_name(t)) + "/ckpt/sub";
    init_checkpoint(c, dir, 42, t);
    EXPECT_TRUE(file_exists(dir + "/generation_config.json"));
    const json g = json::parse(read_file(dir + "/generation_config.json"));
    EXPECT_EQ(g["bos_token_id"], 1);
    EXPECT_EQ(g["eos_token_id"], 2);
    EXPECT_EQ(g["pad_token_id"], 0);
    auto ck = load_checkpoint(dir);
    EXPECT_EQ(ck->config.rope_base, c.rope_base);
    EXPECT_EQ(ck->config.kv_reuse_group, c.kv_reuse_group);
    const Weights& w = ck->weights;
    EXPECT_EQ(w.embed.dtype, t);
    EXPECT_EQ(w.embed.rows, 50);
    EXPECT_EQ(w.embed.cols, 16);
    EXPECT_EQ(w.lm_head.data, w.embed.data);  // tied
    ASSERT_EQ(w.layers.size(), 4u);
    EXPECT_EQ(w.layers[0].in_proj.rows, 16 + 8 + 16 + 64);
    EXPECT_EQ(w.layers[2].in_proj.rows, 16 + 64);
    EXPECT_EQ(w.layers[1].x_proj.rows, 1 + 8);  // dt_rank ceil(16/16) = 1, + 2N
    EXPECT_EQ(w.layers[1].dt_proj.cols, 1);
    ASSERT_NE(w.meta, nullptr);
    // Values survive the dtype round trip (matrices compared after the same rounding).
    std::map<std::string, size_t> idx;
    for (size_t i = 0; i < specs.size(); ++i) idx[specs[i].name] = i;
    auto rounded = [&](float x) {
      float y;
      uint16_t h;
      if (t == DType::F32) return x;
      from_f32(&h, t, &x, 1);
      to_f32(&y, &h, t, 1);
      return y;
    };
    const auto& up = ref[idx["model.layers.3.moe.experts.0.up_proj.weight"]];
    std::vector<float> got(up.size());
    to_f32(got.data(), w.layers[3].up.data, w.layers[3].up.dtype, got.size());
    for (size_t k = 0; k < up.size(); ++k) ASSERT_EQ(got[k], rounded(up[k])) << k;
    const auto& conv = ref[idx["model.layers.1.mamba.conv1d.weight"]];
    for (size_t k = 0; k < conv.size(); ++k) ASSERT_EQ(w.layers[1].conv_w[k], rounded(conv[k]));
    const auto& meta = ref[idx["model.memory_tokens"]];
    for (size_t k = 0; k < meta.size(); ++k) ASSERT_EQ(w.meta[k], rounded(meta[k]));
    EXPECT_EQ(w.layers[0].A_log[5], rounded(std::log(2.0f)));
    EXPECT_EQ(w.final_norm[3], 1.0f);
  }
}

TEST(ModelWeights, LoaderRefusesBadCheckpoints) {
  const Config c = config_from_json(tiny_json());
  const std::string dir = fresh_dir("bad");
  init_checkpoint(c, dir, 1, DType::F32);
  ASSERT_EQ(load_error(dir), "");

  // Tied lm_head saved anyway: ignored.
  rewrite(dir, [](auto& m) { m["lm_head.weight"] = m["model.embed_tokens.weight"]; });
  EXPECT_EQ(load_error(dir), "");

  rewrite(dir, [](auto& m) { m.erase("model.layers.2.mamba.D.0"); });
  std::string e = load_error(dir);
  EXPECT_THAT(e, HasSubstr("model.layers.2.mamba.D.0"));
  EXPECT_THAT(e, HasSubstr("missing"));

  init_checkpoint(c, dir, 1, DType::F32);
  rewrite(dir, [](auto& m) { m["model.layers.1.mamba.out_proj.weight"] = {{16, 63}, std::vector<float>(16 * 63)}; });
  e = load_error(dir);
  EXPECT_THAT(e, HasSubstr("model.layers.1.mamba.out_proj.weight"));
  EXPECT_THAT(e, HasSubstr("[16, 63]"));
  EXPECT_THAT(e, HasSubstr("[16, 32]"));

  init_checkpoint(c, dir, 1, DType::F32);
  rewrite(dir, [](auto& m) { m["model.layers.1.mamba.q_proj.weight"] = {{2}, {1, 2}}; });
  EXPECT_THAT(load_error(dir), HasSubstr("model.layers.1.mamba.q_proj.weight"));

  // A consumer given a producer-sized in_proj.
  init_checkpoint(c, dir, 1, DType::F32);
  rewrite(dir, [](auto& m) { m["model.layers.2.mamba.in_proj.weight"] = m["model.layers.1.mamba.in_proj.weight"]; });
  EXPECT_THAT(load_error(dir), HasSubstr("model.layers.2.mamba.in_proj.weight"));

  // Integer dtype.
  init_checkpoint(c, dir, 1, DType::F32);
  {
    std::vector<TensorOut> outs;
    std::vector<std::vector<uint8_t>> keep;
    auto f = SafetensorsFile::open(dir);
    for (auto& [n, t] : f->tensors()) {
      keep.emplace_back((const uint8_t*)t.data, (const uint8_t*)t.data + t.nbytes);
      outs.push_back({n, n == "model.final_layernorm.weight" ? DType::I32 : t.dtype, t.shape, keep.back().data()});
    }
    f.reset();
    write_safetensors(dir + "/model.safetensors", outs);
  }
  e = load_error(dir);
  EXPECT_THAT(e, HasSubstr("model.final_layernorm.weight"));
  EXPECT_THAT(e, HasSubstr("I32"));

  // Untied config needs lm_head.
  json j = tiny_json();
  j["tie_word_embeddings"] = false;
  const Config u = config_from_json(j);
  init_checkpoint(c, dir, 1, DType::F32);
  write_file_atomic(dir + "/config.json", config_to_json(u).dump());
  EXPECT_THAT(load_error(dir), HasSubstr("lm_head.weight"));
  init_checkpoint(u, dir, 1, DType::BF16);
  auto ck = load_checkpoint(dir);
  EXPECT_NE(ck->weights.lm_head.data, ck->weights.embed.data);
  EXPECT_EQ(ck->weights.lm_head.rows, 50);

  // Bad config.json is reported with its path.
  write_file_atomic(dir + "/config.json", std::string("{\"hidden_size\": 16"));
  EXPECT_THAT(load_error(dir), HasSubstr(dir + "/config.json"));
}

TEST(ModelWeights, BindWeightsChecksCount) {
  const Config c = config_from_json(tiny_json());
  try {
    bind_weights(c, {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("bind_weights"));
  }
}
