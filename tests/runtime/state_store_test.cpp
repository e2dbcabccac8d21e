// State-store entries (runtime/state_store.h) read back from Redis: damaged, foreign and forged
// entries are misses that leave the sequence as it was (no Redis needed: the codec alone).
#include "runtime/state_store.h"

#include <gtest/gtest.h>

#include <cstring>

#include "base/error.h"
#include "base/hash.h"
#include "model/config.h"

namespace hymba {
namespace {

constexpr uint64_t kTag = 0x1234abcdull;

struct Tiny {
  Config c = load_config(std::string(HYMBA_SOURCE_DIR) + "/tests/configs/tiny-hymba.json");
  std::vector<LayerPlan> plan = make_layer_plan(c);
  SequenceState fresh() const {
    SequenceState s = make_empty_state(c, plan, CacheOptions{});
    s.n_pos = c.num_memory_tokens;
    return s;
  }
  // A state after n tokens, as the model leaves it (one K/V row per producer and position);
  // skip_layer >= 0 leaves that producer's cache out (what no model writes).
  SequenceState after(int n, int skip_layer = -1) const {
    SequenceState s = fresh();
    const int64_t kw = c.num_key_value_heads * c.d_qk, vw = c.num_key_value_heads * c.d_v;
    for (int t = 0; t < n; ++t) {
      std::vector<float> k(size_t(kw), 0.5f + float(t)), v(size_t(vw), -0.25f * float(t));
      const int32_t pos = int32_t(s.n_pos);
      for (size_t l = 0; l < plan.size(); ++l)
        if (plan[l].producer() && int(l) != skip_layer) s.kv[l].append(k.data(), v.data(), &pos, 1);
      ++s.n_pos;
    }
    for (auto& x : s.ssm)
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) * 0.125f;
    return s;
  }
};

// The entry with its checksum made to fit the (edited) state bytes, as a forger would.
std::string reseal(std::string e, size_t n_tokens) {
  const size_t at = 24 + 4 * n_tokens;
  const uint64_t sum = fnv1a64(std::string_view(e).substr(at + 8));
  std::memcpy(e.data() + at, &sum, 8);
  return e;
}

void expect_refused(const Tiny& t, const std::string& e, const std::vector<int32_t>& toks, const char* what) {
  SequenceState into = t.fresh();
  const std::string before = serialize_state(into);
  EXPECT_FALSE(decode_state_entry(e, kTag, toks, into)) << what;
  EXPECT_EQ(serialize_state(into), before) << what << ": the sequence changed";
}

TEST(StateStoreBadInput, RejectsDamagedForeignAndForgedEntries) {
  const Tiny t;
  const std::vector<int32_t> toks = {5, 9, 2, 7};
  const SequenceState s = t.after(4);
  const std::string e = encode_state_entry(kTag, toks, s);
  {
    SequenceState into = t.fresh();
    ASSERT_TRUE(decode_state_entry(e, kTag, toks, into));
    EXPECT_EQ(serialize_state(into), serialize_state(s));
  }
  expect_refused(t, "", toks, "empty");
  for (size_t cut : {size_t(7), size_t(20), size_t(40), e.size() - 1}) expect_refused(t, e.substr(0, cut), toks, "truncated");
  std::string flipped = e;
  flipped[flipped.size() / 2] ^= 0x10;
  expect_refused(t, flipped, toks, "a damaged state byte");
  SequenceState other;
  ASSERT_FALSE(decode_state_entry(e, kTag + 1, toks, other = t.fresh()));
  expect_refused(t, e, {5, 9, 2, 8}, "another prefix of the same length");
  expect_refused(t, e, {5, 9, 2}, "a shorter prefix");

  // Found by fuzz/state_store_fuzz.cpp: a forged entry (checksum recomputed) whose state is at
  // another position than its tokens was restored; the sequence then ran at a wrong position.
  std::string forged = e;
  const size_t n_pos_at = 24 + 4 * toks.size() + 8 + 12;  // state magic 8 + version 4
  int64_t n_pos;
  std::memcpy(&n_pos, forged.data() + n_pos_at, 8);
  ASSERT_EQ(n_pos, t.c.num_memory_tokens + 4);
  ++n_pos;
  std::memcpy(forged.data() + n_pos_at, &n_pos, 8);
  expect_refused(t, reseal(forged, toks.size()), toks, "a state one position past its tokens");

  // A consistent position, but one producer's cache lacks the rows of those positions.
  int producer = -1;
  for (size_t l = 0; l < t.plan.size() && producer < 0; ++l)
    if (t.plan[l].producer()) producer = int(l);
  ASSERT_GE(producer, 0);
  const std::string missing = encode_state_entry(kTag, toks, t.after(4, producer));
  expect_refused(t, missing, toks, "a producer cache without the rows of its positions");
  SequenceState into = t.fresh();
  try {
    deserialize_state(into, missing.substr(24 + 4 * toks.size() + 8));
    ADD_FAILURE() << "deserialize_state accepted a cache without its rows";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("K/V rows do not match the position"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace hymba
