// A Redis state-store entry (server --state-store) as a replica reads it back: magic, model tag,
// token prefix, checksum, serialize_state bytes, decoded into a fresh sequence of
// tests/configs/tiny-hymba.json. The first byte steers the target: bit 0 recomputes the checksum
// (a forged entry, so that the state parser behind it is reached), bit 1 asks for another model
// tag, bit 2 for a prefix one token shorter than the entry's, bit 3 sends the entry through a
// keyed store (--state-store-key: sealed with an HMAC-SHA256, opened again) before the parser, as
// a replica with a key reads it; the parser behind the MAC is what is fuzzed either way. A refused
// entry must leave the sequence as it was; an accepted one must be exactly the entry for the
// asked prefix and model.
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/hash.h"
#include "runtime/state_store.h"
#include "tiny_state.h"

using namespace hymba;

namespace {
constexpr uint64_t kTag = 0x6675a2a2a2a2a2a2ull;  // the seeds' tag field (fuzz/corpus/state_store)
constexpr size_t kHead = 24;                      // magic, tag, token count
struct Fixture : fuzz::TinyState {
  std::string fresh_bytes = serialize_state(fresh());
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Fixture fx;
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::string v(reinterpret_cast<const char*>(data + 1), size - 1);
  // The prefix the replica asks for: the entry's own tokens when it announces a readable count.
  std::vector<int32_t> tokens;
  if (v.size() >= kHead) {
    uint64_t n = 0;
    std::memcpy(&n, v.data() + 16, 8);
    if (n <= (v.size() - kHead) / sizeof(int32_t)) {
      tokens.resize(size_t(n));
      if (n) std::memcpy(tokens.data(), v.data() + kHead, size_t(n) * sizeof(int32_t));
      const size_t sum_at = kHead + size_t(n) * sizeof(int32_t);
      if ((mode & 1) && v.size() >= sum_at + 8) {
        const uint64_t sum = fnv1a64(std::string_view(v).substr(sum_at + 8));
        std::memcpy(v.data() + sum_at, &sum, 8);
      }
    }
  }
  if ((mode & 8) && state_mac_available()) {
    static const std::string key = "fuzz-state-store-key-0123456789";
    const auto opened = open_state_entry(key, seal_state_entry(key, v));
    fuzz::require(opened && *opened == v, "a sealed entry opens to itself");
    std::string flipped = seal_state_entry(key, v);
    flipped[size_t(mode) % flipped.size()] ^= 0x20;
    fuzz::require(!open_state_entry(key, flipped), "a flipped byte fails the MAC");
  }
  const bool other_tag = mode & 2, shorter = (mode & 4) && !tokens.empty();
  if (shorter) tokens.pop_back();
  SequenceState s = fx.fresh();
  if (!decode_state_entry(v, other_tag ? ~kTag : kTag, tokens, s)) {
    fuzz::require(s.n_pos == fx.c.num_memory_tokens && serialize_state(s) == fx.fresh_bytes,
                  "a refused entry changes nothing");
    return 0;
  }
  fuzz::require(!other_tag && !shorter, "an entry of another model or prefix is refused");
  fuzz::require(s.n_pos == fx.c.num_memory_tokens + int64_t(tokens.size()), "position matches the tokens");
  for (size_t l = 0; l < s.kv.size(); ++l) {
    (void)s.kv[l].segment();
    (void)s.kv[l].bytes_used();
  }
  fuzz::require(encode_state_entry(kTag, tokens, s) == v, "an accepted entry re-encodes to itself");
  return 0;
}
