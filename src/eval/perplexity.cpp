#include "eval/perplexity.h"

#include <cmath>
#include <string>

#include "base/error.h"
#include "ops/loss.h"

namespace hymba {

double PerplexityResult::ppl() const { return scored ? std::exp(nll / double(scored)) : NAN; }

double PerplexityResult::ppl_error() const {
  if (scored < 2) return NAN;
  const double n = double(scored), mean = nll / n;
  const double var = std::max(0.0, nll2 / n - mean * mean);
  return ppl() * std::sqrt(var / (n - 1));
}

int64_t perplexity_chunks(int64_t n, const PerplexityOptions& o) {
  HYMBA_CHECK(o.ctx >= 2, "perplexity: the context (--ctx) must be at least 2 tokens");
  HYMBA_CHECK(n >= o.ctx, "perplexity: the text has " + std::to_string(n) +
                              " tokens, fewer than one chunk of " + std::to_string(o.ctx) + " (--ctx)");
  const int64_t chunks = o.max_chunks > 0 ? std::min(n / o.ctx, o.max_chunks) : n / o.ctx;
  HYMBA_CHECK(o.first_chunk >= 0 && o.first_chunk < chunks,
              "perplexity: no chunk left after the first " + std::to_string(o.first_chunk) + " of " +
                  std::to_string(chunks));
  return chunks;
}

PerplexityResult perplexity(Engine& eng, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& o,
                            const std::function<void(const PerplexityResult&)>& progress) {
  const int64_t ctx = o.ctx, chunks = perplexity_chunks(int64_t(tokens.size()), o);
  const int64_t V = eng.config().vocab_size, first = o.score_all ? 0 : ctx / 2;
  PerplexityResult r;
  std::vector<int32_t> targets(static_cast<size_t>(ctx));
  std::vector<float> losses(static_cast<size_t>(ctx));
  for (int64_t k = o.first_chunk; k < chunks; ++k) {
    std::vector<int32_t> chunk(tokens.begin() + k * ctx, tokens.begin() + (k + 1) * ctx);
    chunk[0] = eng.config().bos_token_id;
    // Row j predicts token j+1; rows before `first` and the last row are not scored.
    for (int64_t j = 0; j < ctx; ++j) targets[size_t(j)] = j >= first && j + 1 < ctx ? chunk[size_t(j + 1)] : -1;
    SequenceState s = eng.new_sequence();
    SequenceState* sp = &s;
    std::vector<std::vector<float>> all;
    eng.eval(std::span<SequenceState* const>(&sp, 1), std::span<const std::vector<int32_t>>(&chunk, 1),
             nullptr, &all);
    cross_entropy_forward(losses.data(), all[0].data(), targets.data(), ctx, V);
    for (int64_t j = 0; j < ctx; ++j) {
      if (targets[size_t(j)] < 0) continue;
      const double l = losses[size_t(j)];
      r.nll += l, r.nll2 += l * l, ++r.scored;
    }
    ++r.chunks;
    if (progress) progress(r);
  }
  return r;
}

}  // namespace hymba
