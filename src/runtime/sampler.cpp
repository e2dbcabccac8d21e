#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <unordered_set>

#include "base/error.h"

namespace hymba {
namespace {

struct Cand {
  int32_t id;
  float logit;
};

// Logits after the repeat penalty (llama.cpp: each distinct token of the last n once).
std::vector<float> penalised(const SamplerParams& p, const float* logits, int64_t vocab,
                             std::span<const int32_t> history) {
  HYMBA_CHECK(logits != nullptr && vocab > 0, "sampler: empty logits");
  std::vector<float> l(logits, logits + vocab);
  for (int64_t i = 0; i < vocab; ++i)
    HYMBA_CHECK(!std::isnan(l[i]), "sampler: logit " + std::to_string(i) + " is NaN");
  if (p.repeat_penalty != 1.0f && p.repeat_last_n > 0) {
    const size_t n = std::min<size_t>(history.size(), static_cast<size_t>(p.repeat_last_n));
    std::unordered_set<int32_t> seen;
    for (size_t i = history.size() - n; i < history.size(); ++i) {
      const int32_t t = history[i];
      HYMBA_CHECK(t >= 0 && t < vocab, "sampler: history token " + std::to_string(t) + " outside the vocab [0, " +
                                           std::to_string(vocab) + ")");
      if (!seen.insert(t).second) continue;
      l[t] = l[t] > 0 ? l[t] / p.repeat_penalty : l[t] * p.repeat_penalty;
    }
  }
  return l;
}

int32_t argmax(const std::vector<float>& l) {
  // First maximum wins, so ties resolve to the lowest id (reproducible).
  return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
}

// Softmax of logits/temp over the candidates, in their order, in double.
std::vector<double> softmax(const std::vector<Cand>& c, double temp) {
  std::vector<double> pr(c.size());
  const double mx = c.front().logit;  // candidates are sorted, largest first
  double sum = 0;
  for (size_t i = 0; i < c.size(); ++i) sum += pr[i] = std::exp((c[i].logit - mx) / temp);
  for (auto& v : pr) v /= sum;
  return pr;
}

}  // namespace

Sampler::Sampler(SamplerParams p) : p_(p), rng_(p.seed) {
  HYMBA_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, "sampler: temperature must be >= 0");
  HYMBA_CHECK(p.top_k >= 0, "sampler: top_k must be >= 0 (0 = off)");
  HYMBA_CHECK(p.top_p > 0 && p.top_p <= 1, "sampler: top_p must be in (0, 1] (1 = off)");
  HYMBA_CHECK(p.min_p >= 0 && p.min_p <= 1, "sampler: min_p must be in [0, 1] (0 = off)");
  HYMBA_CHECK(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0, "sampler: repeat_penalty must be > 0 (1 = off)");
  HYMBA_CHECK(p.repeat_last_n >= 0, "sampler: repeat_last_n must be >= 0");
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits, int64_t vocab,
                                                              std::span<const int32_t> history) const {
  const std::vector<float> l = penalised(p_, logits, vocab, history);
  std::vector<std::pair<int32_t, double>> out;
  if (p_.temperature <= 0) {
    out.emplace_back(argmax(l), 1.0);
    return out;
  }
  std::vector<Cand> c;
  c.reserve(vocab);
  for (int64_t i = 0; i < vocab; ++i)
    if (l[i] != -INFINITY) c.push_back({static_cast<int32_t>(i), l[i]});
  HYMBA_CHECK(!c.empty(), "sampler: every logit is -inf");
  auto by_logit = [](const Cand& a, const Cand& b) { return a.logit != b.logit ? a.logit > b.logit : a.id < b.id; };
  // top-k: partial sort is enough; later steps need the candidates sorted anyway.
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < c.size()) {
    std::partial_sort(c.begin(), c.begin() + p_.top_k, c.end(), by_logit);
    c.resize(p_.top_k);
  } else {
    std::sort(c.begin(), c.end(), by_logit);
  }
  // top-p: smallest prefix whose probability mass reaches p (at least one token).
  if (p_.top_p < 1.0f) {
    const auto pr = softmax(c, 1.0);
    double cum = 0;
    size_t keep = c.size();
    for (size_t i = 0; i < c.size(); ++i) {
      cum += pr[i];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    c.resize(keep);
  }
  // min-p: drop tokens whose probability is below min_p times the top one (before temperature).
  if (p_.min_p > 0.0f) {
    const double cut = c.front().logit + std::log(static_cast<double>(p_.min_p));
    size_t keep = 1;
    while (keep < c.size() && c[keep].logit >= cut) ++keep;
    c.resize(keep);
  }
  const auto pr = softmax(c, p_.temperature);
  out.reserve(c.size());
  for (size_t i = 0; i < c.size(); ++i) out.emplace_back(c[i].id, pr[i]);
  return out;
}

int32_t Sampler::sample(const float* logits, int64_t vocab, std::span<const int32_t> history) {
  if (p_.temperature <= 0) return argmax(penalised(p_, logits, vocab, history));
  const auto d = distribution(logits, vocab, history);
  // Own inverse-CDF draw (not std::discrete_distribution) so results do not depend on the
  // standard library's implementation: 53 random bits -> u in [0, 1).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  double cum = 0;
  for (const auto& [id, prob] : d) {
    cum += prob;
    if (u < cum) return id;
  }
  return d.back().first;  // rounding left u >= the summed mass
}

}  // namespace hymba
