// Sampler: picks the next token from logits. Filter order as llama.cpp's default chain:
// repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw. temperature 0 means greedy
// (argmax after the penalty). Deterministic: a seed reproduces the same draws.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace hymba {

struct SamplerParams {
  float temperature = 0.8f;     // 0 => greedy
  int32_t top_k = 40;           // 0 => off
  float top_p = 0.95f;          // 1 => off
  float min_p = 0.05f;          // 0 => off
  float repeat_penalty = 1.0f;  // 1 => off; logit/penalty if > 0, logit*penalty if < 0
  int32_t repeat_last_n = 64;   // how many of the latest history tokens are penalised (0 => none)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams p);  // throws hymba::Error on out-of-range parameters
  // logits: `vocab` floats; history: tokens so far (prompt + generated), newest last.
  int32_t sample(const float* logits, int64_t vocab, std::span<const int32_t> history);
  const SamplerParams& params() const { return p_; }

  // The candidate set and probabilities that would be drawn from (after all filters), for tests
  // and diagnostics: pairs (token, probability), probabilities summing to 1.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits, int64_t vocab,
                                                       std::span<const int32_t> history) const;

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
};

}  // namespace hymba
