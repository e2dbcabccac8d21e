// Self-consistency of the inference runtime: every way of feeding a sequence (whole, chunked,
// token by token, batched with others, from the shared meta prefix or recomputed from scratch)
// gives the same logits. (The float64 Python reference checks the values themselves.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "base/error.h"
#include "model/adapter.h"
#include "model/init.h"
#include "runtime/engine.h"

namespace hymba {
namespace {

const char* kConfig = R"({
  "model_type": "hymba", "vocab_size": 97, "hidden_size": 48, "num_hidden_layers": 5,
  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 80,
  "attn_hidden_size": -1, "kq_head_dim": -1, "v_head_dim": -1,
  "rms_norm_eps": 1e-5, "rope": true, "rope_theta": 10000.0, "rope_type": "ntk",
  "max_position_embeddings": 256, "orig_max_position_embeddings": 64,
  "num_memory_tokens": 6, "sliding_window": 5, "global_attn_idx": [0, 4],
  "kv_reuse_group": [[1, 2, 3]], "mamba_d_state": 4, "mamba_d_conv": 4, "mamba_expand": 2,
  "mamba_dt_rank": "auto", "mamba_conv_bias": true, "mamba_proj_bias": false,
  "mamba_inner_layernorms": true, "layer_type": ["h", "h", "h", "h", "h"],
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0
})";

std::string make_model() {
  static std::string dir;
  if (!dir.empty()) return dir;
  dir = (std::filesystem::temp_directory_path() / ("hymba-engine-test-" + std::to_string(getpid()))).string();
  Config c = config_from_json(nlohmann::json::parse(kConfig));
  init_checkpoint(c, dir, 1234, DType::F32);
  return dir;
}

std::vector<int32_t> random_ids(int n, int vocab, unsigned seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = int32_t(g() % unsigned(vocab));
  return v;
}

double max_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// All logits of a prompt fed in chunks of `chunk` tokens.
std::vector<float> logits_chunked(Engine& e, const std::vector<int32_t>& ids, size_t chunk) {
  auto s = e.new_sequence();
  const size_t V = size_t(e.config().vocab_size);
  std::vector<float> out(ids.size() * V);
  for (size_t i = 0; i < ids.size(); i += chunk) {
    std::vector<int32_t> part(ids.begin() + long(i), ids.begin() + long(std::min(ids.size(), i + chunk)));
    std::vector<std::vector<float>> all;
    SequenceState* sp = &s;
    e.eval(std::span<SequenceState* const>(&sp, 1), std::span<const std::vector<int32_t>>(&part, 1),
           nullptr, &all);
    std::copy(all[0].begin(), all[0].end(), out.begin() + long(i * V));
  }
  return out;
}

TEST(Engine, ChunkedAndTokenByTokenEqualWhole) {
  EngineOptions o;
  o.cache_dtype = DType::F32;
  auto e = Engine::load(make_model(), o);
  auto ids = random_ids(23, 97, 1);  // longer than the window (5) plus meta tokens (6)
  auto whole = logits_chunked(*e, ids, ids.size());
  for (size_t chunk : {1, 2, 3, 7}) {
    auto part = logits_chunked(*e, ids, chunk);
    EXPECT_LT(max_diff(whole.data(), part.data(), whole.size()), 1e-4) << "chunk " << chunk;
  }
}

TEST(Engine, SmallMaxChunkEqualsWhole) {
  EngineOptions o;
  o.cache_dtype = DType::F32;
  auto e1 = Engine::load(make_model(), o);
  o.max_chunk = 4;
  auto e2 = Engine::load(make_model(), o);
  auto ids = random_ids(19, 97, 2);
  auto a = logits_chunked(*e1, ids, ids.size()), b = logits_chunked(*e2, ids, ids.size());
  EXPECT_LT(max_diff(a.data(), b.data(), a.size()), 1e-4);
}

TEST(Engine, SharedPrefixEqualsRecomputedMetaTokens) {
  EngineOptions o;
  o.cache_dtype = DType::F32;
  auto shared = Engine::load(make_model(), o);
  o.use_prefix = false;
  auto own = Engine::load(make_model(), o);
  auto ids = random_ids(17, 97, 3);
  auto a = logits_chunked(*shared, ids, ids.size()), b = logits_chunked(*own, ids, 4);
  EXPECT_LT(max_diff(a.data(), b.data(), a.size()), 1e-4);

  // And the stateless official-style forward over [meta; prompt].
  auto& m = shared->model();
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, n = int64_t(ids.size());
  std::vector<float> x(size_t((M + n) * H)), lg(size_t(n * c.vocab_size));
  std::copy_n(m.weights().meta, M * H, x.data());
  m.embed(x.data() + M * H, ids.data(), n);
  ForwardItem item{nullptr, M + n};
  m.forward(x.data(), std::span<const ForwardItem>(&item, 1));
  m.logits(lg.data(), x.data() + M * H, n);
  EXPECT_LT(max_diff(a.data(), lg.data(), a.size()), 1e-4);
}

TEST(Engine, BatchedSequencesEqualAlone) {
  EngineOptions o;
  o.cache_dtype = DType::F32;
  o.max_chunk = 16;  // forces prompts to be split across steps and mixed in one batch
  auto e = Engine::load(make_model(), o);
  const size_t V = size_t(e->config().vocab_size);
  std::vector<std::vector<int32_t>> prompts = {random_ids(3, 97, 10), random_ids(14, 97, 11),
                                               random_ids(9, 97, 12)};
  // Greedy decode 8 tokens, all three sequences in one batch per step.
  std::vector<SequenceState> states;
  for (size_t i = 0; i < prompts.size(); ++i) states.push_back(e->new_sequence());
  std::vector<SequenceState*> sp;
  for (auto& s : states) sp.push_back(&s);
  std::vector<std::vector<int32_t>> feed = prompts, gen(prompts.size());
  std::vector<float> last;
  for (int step = 0; step < 8; ++step) {
    e->eval(sp, feed, &last);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const float* l = last.data() + i * V;
      int32_t best = int32_t(std::max_element(l, l + V) - l);
      gen[i].push_back(best);
      feed[i] = {best};
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto s = e->new_sequence();
    std::vector<int32_t> alone;
    auto l = e->eval_one(s, prompts[i]);
    for (int step = 0; step < 8; ++step) {
      int32_t best = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
      alone.push_back(best);
      l = e->eval_one(s, {best});
    }
    EXPECT_EQ(alone, gen[i]) << "sequence " << i;
  }
}

TEST(Engine, Bf16CacheIsCloseToF32) {
  EngineOptions o;
  o.cache_dtype = DType::F32;
  auto e32 = Engine::load(make_model(), o);
  o.cache_dtype = DType::BF16;
  auto e16 = Engine::load(make_model(), o);
  auto ids = random_ids(20, 97, 4);
  auto a = logits_chunked(*e32, ids, 1), b = logits_chunked(*e16, ids, 1);
  double scale = 0;
  for (float v : a) scale = std::max(scale, double(std::fabs(v)));
  const double d = max_diff(a.data(), b.data(), a.size());
  EXPECT_GT(d, 0.0);                // bf16 rounding is really used
  EXPECT_LT(d, 2e-2 * std::max(1.0, scale));
}

TEST(Engine, RejectsOutOfRangeToken) {
  auto e = Engine::load(make_model());
  auto s = e->new_sequence();
  EXPECT_THROW(e->eval_one(s, {97}), Error);
  EXPECT_THROW(e->eval_one(s, {-1}), Error);
}

TEST(Engine, StateStaysConstantSizeForWindowLayers) {
  auto e = Engine::load(make_model());
  auto s = e->new_sequence();
  e->eval_one(s, random_ids(30, 97, 5));
  const size_t b1 = s.bytes();
  e->eval_one(s, random_ids(30, 97, 6));
  const size_t b2 = s.bytes();
  // Only the two global layers grow: 30 rows x n_kv(2) x (d_qk 12 + d_v 24) x 2 bytes + pos.
  const auto& c = e->config();
  const size_t row = size_t(c.num_key_value_heads * (c.d_qk + c.d_v) * 2 + 4);
  EXPECT_EQ(b2 - b1, 2 * 30 * row);
}

}  // namespace
}  // namespace hymba

namespace hymba {
namespace {

// The state a sequence really holds equals the analytic figure `hymba info` prints.
TEST(Engine, HeldStateEqualsAnalyticStateBytes) {
  auto e = Engine::load(make_model());
  auto s = e->new_sequence();
  const int n = 25;  // past the window, so every ring is full
  e->eval_one(s, random_ids(n, 97, 9));
  const auto& c = e->config();
  EXPECT_EQ(int64_t(s.bytes()), state_bytes(c, e->model().plan(), n, DType::BF16).total());
}

}  // namespace
}  // namespace hymba

namespace hymba {
namespace {

// A state saved and restored into a fresh sequence continues exactly as the original does, in
// this engine and in a second one loaded from the same folder; bytes that do not fit are
// refused and leave the target as it was.
TEST(Engine, SerializedStateContinuesIdentically) {
  auto e = Engine::load(make_model());
  auto s = e->new_sequence();
  e->eval_one(s, random_ids(23, 97, 11));  // past the window: the rings have wrapped
  const std::string bytes = serialize_state(s);
  const auto next = random_ids(9, 97, 12);
  const auto want = e->eval_one(s, next);
  auto e2 = Engine::load(make_model());
  EXPECT_EQ(e->model_tag(), e2->model_tag());
  auto r = e2->new_sequence();
  deserialize_state(r, bytes);
  const auto got = e2->eval_one(r, next);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)));
}

TEST(Engine, RejectsSerializedStateThatDoesNotFit) {
  auto e = Engine::load(make_model());
  auto s = e->new_sequence();
  e->eval_one(s, random_ids(12, 97, 13));
  const std::string bytes = serialize_state(s);
  auto fresh = e->new_sequence();
  const std::string before = serialize_state(fresh);
  EXPECT_THROW(deserialize_state(fresh, bytes.substr(0, bytes.size() - 7)), Error);  // truncated
  EXPECT_THROW(deserialize_state(fresh, "HYMBASEQ"), Error);
  EXPECT_THROW(deserialize_state(fresh, "not a state at all"), Error);
  EXPECT_THROW(deserialize_state(fresh, bytes + "x"), Error);  // trailing bytes
  EXPECT_EQ(serialize_state(fresh), before);                   // untouched by the failures
  EngineOptions f32;
  f32.cache_dtype = DType::F32;
  auto e32 = Engine::load(make_model(), f32);
  EXPECT_NE(e32->model_tag(), e->model_tag());
  auto other = e32->new_sequence();
  EXPECT_THROW(deserialize_state(other, bytes), Error);  // saved with a bf16 cache
}

}  // namespace
}  // namespace hymba

namespace hymba {
namespace {

// An adapter with random A, B (DoRA magnitudes, meta tokens) saved as a PEFT folder.
std::string random_adapter(const std::string& model, bool dora, unsigned seed, bool meta = false) {
  auto ck = load_checkpoint(model);
  AdapterConfig cfg;
  cfg.rank = 2, cfg.alpha = 4, cfg.dora = dora, cfg.targets = parse_targets("all");
  AdapterSet a = adapter_layout(ck->config, ck->weights, cfg);
  if (meta) add_meta_tokens(a, ck->config, ck->weights);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (const auto& t : a.tensors)
    for (int64_t i = 0; i < t.size; ++i) a.data[size_t(t.offset + i)] = t.kind == 'm' ? 1.0f + u(rng) : u(rng);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("hymba-engine-adapter-" + std::to_string(getpid()) + "-" + std::to_string(seed));
  save_peft_adapter(a, dir.string(), "base");
  return dir.string();
}

// One engine holding several adapters (the server's --lora NAME=DIR) computes, for a sequence
// of each variant, exactly what an engine with only that adapter (--lora DIR) computes, with the
// variants' evals interleaved (DoRA norms, meta tokens and prefixes are per variant); the state tags differ
// per adapter and scale, so kept states never cross adapters.
TEST(Engine, AdapterVariantsEqualSingleAdapterEngines) {
  const std::string model = make_model();
  const std::string da = random_adapter(model, false, 21), db = random_adapter(model, true, 22, true);
  EngineOptions multi;
  multi.adapters = {{"a", da, 1.0f}, {"b", db, 0.5f}};
  auto e = Engine::load(model, multi);
  ASSERT_EQ(e->num_variants(), 3);
  EngineOptions oa, ob, ob1;
  oa.lora = da;
  ob.lora = db, ob.lora_scale = 0.5f;
  ob1.lora = db;
  std::vector<std::unique_ptr<Engine>> single;
  single.push_back(Engine::load(model));
  single.push_back(Engine::load(model, oa));
  single.push_back(Engine::load(model, ob));
  std::vector<SequenceState> s, r;
  for (int v = 0; v < 3; ++v) s.push_back(e->new_sequence(v)), r.push_back(single[size_t(v)]->new_sequence());
  std::vector<std::vector<float>> got(3), want(3);
  for (int round = 0; round < 3; ++round)
    for (int v = 0; v < 3; ++v) {
      const auto ids = random_ids(round == 0 ? 9 : 1, 97, unsigned(30 + 3 * round + v));
      got[size_t(v)] = e->eval_one(s[size_t(v)], ids, v);
      want[size_t(v)] = single[size_t(v)]->eval_one(r[size_t(v)], ids);
      ASSERT_EQ(got[size_t(v)].size(), want[size_t(v)].size());
      EXPECT_EQ(0, std::memcmp(got[size_t(v)].data(), want[size_t(v)].data(), got[size_t(v)].size() * sizeof(float)))
          << "variant " << v << " round " << round;
    }
  EXPECT_NE(got[0], got[1]);
  EXPECT_NE(got[1], got[2]);
  for (int v = 0; v < 3; ++v) EXPECT_EQ(e->model_tag(v), single[size_t(v)]->model_tag()) << v;
  EXPECT_NE(e->model_tag(0), e->model_tag(1));
  EXPECT_NE(e->model_tag(1), e->model_tag(2));
  EXPECT_NE(e->model_tag(2), Engine::load(model, ob1)->model_tag());  // same adapter, other scale
  EXPECT_THROW(e->new_sequence(3), Error);
  std::filesystem::remove_all(da), std::filesystem::remove_all(db);
}

}  // namespace
}  // namespace hymba
