#include "eval/quant_quality.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>

#include "base/error.h"

namespace hymba {

namespace {
// log-softmax of one row in double.
void log_softmax(std::vector<double>& out, const float* x, int64_t V) {
  const double m = *std::max_element(x, x + V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[i]) - m);
  const double lse = m + std::log(s);
  out.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) out[size_t(i)] = double(x[i]) - lse;
}

std::vector<float> chunk_logits(Engine& e, const std::vector<int32_t>& chunk) {
  SequenceState s = e.new_sequence();
  SequenceState* sp = &s;
  std::vector<std::vector<float>> all;
  e.eval(std::span<SequenceState* const>(&sp, 1), std::span<const std::vector<int32_t>>(&chunk, 1),
         nullptr, &all);
  return std::move(all[0]);
}
}  // namespace

PerplexityResult collect_imatrix(Engine& eng, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                                 ImportanceMatrix* out, const std::function<void(const PerplexityResult&)>& progress) {
  HymbaModel& m = eng.model();
  m.set_linear_tap([out](int l, Slot s, const float* in, int64_t T, int64_t K) {
    out->add("model.layers." + std::to_string(l) + "." + slot_module(s) + ".weight", in, T, K);
  });
  struct Untap {
    HymbaModel& m;
    ~Untap() { m.set_linear_tap(nullptr); }
  } untap{m};
  return perplexity(eng, tokens, o, progress);
}

QuantQuality compare_models(Engine& base, Engine& test, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& o) {
  const int64_t V = base.config().vocab_size;
  HYMBA_CHECK(test.config().vocab_size == V, "compare_models: the models' vocabularies differ");
  const int64_t ctx = o.ctx, chunks = perplexity_chunks(int64_t(tokens.size()), o);
  const int64_t first = o.score_all ? 0 : ctx / 2;
  QuantQuality q;
  std::vector<double> lp, lq;
  for (int64_t k = 0; k < chunks; ++k) {
    std::vector<int32_t> chunk(tokens.begin() + k * ctx, tokens.begin() + (k + 1) * ctx);
    chunk[0] = base.config().bos_token_id;
    const auto a = chunk_logits(base, chunk), b = chunk_logits(test, chunk);
    for (int64_t j = first; j + 1 < ctx; ++j) {  // row j predicts token j + 1
      const float *ra = a.data() + j * V, *rb = b.data() + j * V;
      log_softmax(lp, ra, V);
      log_softmax(lq, rb, V);
      double kl = 0;
      for (int64_t i = 0; i < V; ++i) kl += std::exp(lp[size_t(i)]) * (lp[size_t(i)] - lq[size_t(i)]);
      q.kl_sum += std::max(0.0, kl);  // >= 0 up to rounding
      const size_t t = size_t(chunk[size_t(j + 1)]);
      for (auto [r, l] : {std::pair{&q.base, -lp[t]}, std::pair{&q.test, -lq[t]}})
        r->nll += l, r->nll2 += l * l, ++r->scored;
      q.top1_same += (std::max_element(ra, ra + V) - ra) == (std::max_element(rb, rb + V) - rb);
    }
    ++q.base.chunks, ++q.test.chunks;
  }
  return q;
}

}  // namespace hymba
