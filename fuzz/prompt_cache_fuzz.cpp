// A prompt-cache file (generate --prompt-cache), i.e. the token ids + serialize_state bytes, loaded
// into a fresh sequence of tests/configs/tiny-hymba.json (bf16 K/V, as the default). The tag
// check is passed on purpose (seeds carry kTag) so that the state parser behind it is reached.
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/prompt_cache.h"
#include "tiny_state.h"

using namespace hymba;

namespace {
constexpr uint64_t kTag = 0x6675a2a2a2a2a2a2ull;  // the seeds' tag field (fuzz/corpus/prompt_cache)
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fuzz::TinyState fx;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  SequenceState s = fx.fresh();
  std::vector<int32_t> tokens;
  try {
    decode_prompt_cache(kTag, bytes, &tokens, &s);
  } catch (const Error&) {
    fuzz::require(s.n_pos == fx.c.num_memory_tokens && tokens.empty(), "a refused file changes nothing");
    return 0;
  }
  fuzz::require(s.n_pos == fx.c.num_memory_tokens + int64_t(tokens.size()), "position matches the tokens");
  for (size_t l = 0; l < s.kv.size(); ++l) {
    (void)s.kv[l].segment();
    (void)s.kv[l].bytes_used();
  }
  fuzz::require(encode_prompt_cache(kTag, tokens, s) == bytes, "an accepted file re-encodes to itself");
  return 0;
}
