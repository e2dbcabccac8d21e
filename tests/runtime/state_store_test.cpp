// State-store entries (runtime/state_store.h) read back from Redis: damaged, foreign and forged
// entries are misses that leave the sequence as it was (no Redis needed: the codec alone).
#include "runtime/state_store.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

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

// --state-store-key: the MAC in front of the codec above (OpenSSL HMAC-SHA256).
TEST(StateStoreBadInput, KeyedStoreRefusesEntriesWithoutTheRightMac) {
  if (!state_mac_available()) GTEST_SKIP() << "built without OpenSSL (libssl-dev)";
  // RFC 4231 test case 2: it is HMAC-SHA256, not a look-alike.
  const std::string kat = seal_state_entry("Jefe", "what do ya want for nothing?");
  std::string hexmac;
  for (size_t i = kat.size() - kStateMacBytes; i < kat.size(); ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", static_cast<unsigned char>(kat[i]));
    hexmac += b;
  }
  EXPECT_EQ(hexmac, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");

  struct Mem : StateStore {
    std::map<std::string, std::string> m;
    void put(const std::string& k, const std::string& v) override { m[k] = v; }
    std::optional<std::string> get(const std::string& k) override {
      auto it = m.find(k);
      return it == m.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
  };
  auto owned = std::make_unique<Mem>();
  Mem& raw = *owned;
  const std::string key(32, 'k');
  auto store = keyed_state_store(std::move(owned), key);
  const std::string value = "an entry: magic, tag, tokens, checksum, state";
  store->put("e", value);
  ASSERT_EQ(raw.m["e"].size(), value.size() + kStateMacBytes);
  EXPECT_EQ(store->get("e"), value);
  EXPECT_EQ(store->get("missing"), std::nullopt);
  EXPECT_EQ(store->rejected(), 0);
  const std::string sealed = raw.m["e"];
  for (size_t i = 0; i < sealed.size(); i += 7) {  // any flipped byte, value or MAC
    std::string f = sealed;
    f[i] ^= 0x01;
    raw.m["e"] = f;
    EXPECT_EQ(store->get("e"), std::nullopt) << "byte " << i;
  }
  raw.m["e"] = value;  // written without a key
  EXPECT_EQ(store->get("e"), std::nullopt);
  raw.m["e"] = seal_state_entry(std::string(32, 'o'), value);  // with another key
  EXPECT_EQ(store->get("e"), std::nullopt);
  raw.m["e"] = sealed.substr(0, kStateMacBytes - 1);  // shorter than a MAC
  EXPECT_EQ(store->get("e"), std::nullopt);
  raw.m["e"] = "";
  EXPECT_EQ(store->get("e"), std::nullopt);
  EXPECT_GE(store->rejected(), 5);
  EXPECT_THROW(keyed_state_store(std::make_unique<Mem>(), "short"), Error);

  // The key file: trailing whitespace dropped, at least 16 bytes.
  const std::string path = (std::filesystem::temp_directory_path() / "hymba-state-key-test").string();
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("0123456789abcdef0123\n", f);
  std::fclose(f);
  EXPECT_EQ(read_state_store_key(path), "0123456789abcdef0123");
  f = std::fopen(path.c_str(), "w");
  std::fputs("0123456789\n", f);
  std::fclose(f);
  EXPECT_THROW(read_state_store_key(path), Error);
  std::filesystem::remove(path);
  EXPECT_THROW(read_state_store_key(path), Error);
}

}  // namespace
}  // namespace hymba
