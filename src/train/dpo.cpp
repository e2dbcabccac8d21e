#include "train/dpo.h"

#include <cmath>

namespace hymba {

namespace {
double log_sigmoid(double z) { return z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z)); }
double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }
}  // namespace

void DpoStats::add(const DpoStats& o) {
  const int64_t n = pairs + o.pairs;
  if (n == 0) return;
  const double a = double(pairs) / double(n), b = double(o.pairs) / double(n);
  loss = a * loss + b * o.loss;
  reward_chosen = a * reward_chosen + b * o.reward_chosen;
  reward_rejected = a * reward_rejected + b * o.reward_rejected;
  accuracy = a * accuracy + b * o.accuracy;
  margin = a * margin + b * o.margin;
  logp_chosen = a * logp_chosen + b * o.logp_chosen;
  logp_rejected = a * logp_rejected + b * o.logp_rejected;
  pairs = n;
}

double sequence_logp(HymbaModel& m, const SeqRef& s) {
  int64_t k = 0;
  const double ce = loss_only(m, std::span<const SeqRef>(&s, 1), &k);
  return -ce * double(k);
}

DpoStats dpo_loss_and_grads(HymbaModel& m, const Weights& grads, std::span<const DpoPair> pairs,
                            double beta, float grad_scale) {
  DpoStats st;
  const double inv = 1.0 / double(pairs.size());
  for (const auto& p : pairs) {
    const double pc = sequence_logp(m, p.chosen), pr = sequence_logp(m, p.rejected);
    const double rc = beta * (pc - p.ref_chosen), rr = beta * (pr - p.ref_rejected);
    const double z = rc - rr;
    st.loss += -log_sigmoid(z) * inv;
    st.reward_chosen += rc * inv, st.reward_rejected += rr * inv;
    st.accuracy += (rc > rr ? 1.0 : 0.0) * inv, st.margin += z * inv;
    st.logp_chosen += pc * inv, st.logp_rejected += pr * inv;
    // dloss/dπ_c = -β σ(-z) = -dloss/dπ_r, and π = -count · mean CE: the CE gradient of a
    // sequence is weighted by -dloss/dπ · count.
    const double g = beta * sigmoid(-z) * inv * grad_scale;
    int64_t kc = 0, kr = 0;
    for (int64_t i = 0; i < p.chosen.n; ++i) kc += p.chosen.targets[i] >= 0;
    for (int64_t i = 0; i < p.rejected.n; ++i) kr += p.rejected.targets[i] >= 0;
    loss_and_grads(m, grads, std::span<const SeqRef>(&p.chosen, 1), float(g * double(kc)));
    loss_and_grads(m, grads, std::span<const SeqRef>(&p.rejected, 1), float(-g * double(kr)));
  }
  st.pairs = int64_t(pairs.size());
  return st;
}

}  // namespace hymba
