// A token file (.tok) as training and perplexity read it: header checks, every id inside the
// header's vocab, random and sequential windows.
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "train/data.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::put_file("data.tok", data, size);
  try {
    TokenWindows w(path);
    const int L = 4;
    std::vector<int32_t> in(2 * L), tg(2 * L);
    uint64_t rng = 1;
    if (w.num_tokens() > L) {
      w.sample(2, L, rng, in.data(), tg.data());
      for (int32_t id : in) fuzz::require(id >= 0 && id < w.vocab_size(), "sampled ids in the vocab");
    }
    const int64_t n = w.num_sequential(L);
    for (int64_t i = 0; i < n && i < 64; ++i) {
      w.sequential(i, L, in.data(), tg.data());
      for (int k = 0; k < L; ++k) fuzz::require(tg[k] >= 0 && tg[k] < w.vocab_size(), "window ids in the vocab");
    }
  } catch (const Error&) {
  }
  return 0;
}
