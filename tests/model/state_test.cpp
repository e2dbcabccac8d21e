// Sequence-state bytes (serialize_state / deserialize_state) against damaged input.
#include "model/state.h"

#include <gtest/gtest.h>

#include <cstring>

#include "base/error.h"

namespace hymba {
namespace {

// One layer with a global K/V cache (no ring) and no SSM: the smallest state with a row count.
SequenceState one_layer_state() {
  SequenceState s;
  s.kv.resize(1), s.conv.resize(1), s.ssm.resize(1);
  s.kv[0].init(2, 4, 4, DType::BF16, -1);
  return s;
}

// Found by fuzz/prompt_cache_fuzz.cpp: a huge K/V row count overflowed rows x heads x dim (signed,
// UB) before the size check; it must be refused as truncated, leaving the target untouched.
TEST(StateBadInput, RejectsHugeRowCountWithoutOverflow) {
  SequenceState s = one_layer_state();
  const float k[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int32_t pos = 0;
  s.kv[0].append(k, k, &pos, 1);
  s.n_pos = 1;
  std::string b = serialize_state(s);
  SequenceState ok = one_layer_state();
  deserialize_state(ok, b);
  EXPECT_EQ(ok.n_pos, 1);
  EXPECT_EQ(ok.kv[0].rows_held(), 1);
  // magic 8 + version 4 + n_pos 8 + dtype 1 + layer count 8, then n_kv, d_qk, d_v, cap, stored.
  const size_t stored_at = 29 + 4 * 8;
  int64_t stored;
  std::memcpy(&stored, b.data() + stored_at, 8);
  ASSERT_EQ(stored, 1);
  for (int64_t bad : {int64_t(0x7200000000000000), int64_t(1) << 40, int64_t(2)}) {
    std::memcpy(b.data() + stored_at, &bad, 8);
    SequenceState into = one_layer_state();
    try {
      deserialize_state(into, b);
      FAIL() << "accepted " << bad << " rows";
    } catch (const Error& e) {
      const std::string why = bad == 2 ? "16 elements where this model has 32" : "truncated";
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
    EXPECT_EQ(into.n_pos, 0);
    EXPECT_TRUE(into.kv[0].empty());
  }
}

}  // namespace
}  // namespace hymba
