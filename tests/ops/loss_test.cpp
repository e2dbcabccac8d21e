// softmax_rows / cross_entropy_forward / cross_entropy_backward against double formulas.
// Tolerances: softmax and per-row losses within 1e-6 relative; backward within 1e-6 of central
// differences of the double mean loss.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "ops/loss.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

// -log softmax(row)[target] in double.
double ce_row(const double* r, int64_t V, int32_t target) {
  double m = -INFINITY;
  for (int64_t i = 0; i < V; ++i) m = std::max(m, r[i]);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(r[i] - m);
  return std::log(s) + m - r[target];
}

TEST(Loss, SoftmaxRows) {
  Rng rng(1);
  const int64_t n = 5, V = 1003;
  auto x = rng.vec(size_t(n * V), -20, 20);
  auto y = x;
  softmax_rows(y.data(), n, V);
  double e = 0;
  for (int64_t t = 0; t < n; ++t) {
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < V; ++i) m = std::max(m, double(x[size_t(t * V + i)]));
    for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[size_t(t * V + i)]) - m);
    for (int64_t i = 0; i < V; ++i) {
      const double p = std::exp(double(x[size_t(t * V + i)]) - m) / s;
      e = std::max(e, std::abs(y[size_t(t * V + i)] - p) / std::max(p, 1e-30));
    }
  }
  std::printf("  softmax max rel err %.2e\n", e);
  EXPECT_LT(e, 1e-5);  // relative per probability, including tiny ones
}

TEST(Loss, CrossEntropyForwardBackward) {
  Rng rng(2);
  const int64_t n = 7, V = 311;
  auto logits = rng.vec(size_t(n * V), -8, 8);
  std::vector<int32_t> tg = {3, -1, 310, 0, 17, -1, 200};
  std::vector<float> losses(size_t(n), NAN);
  const double mean = cross_entropy_forward(losses.data(), logits.data(), tg.data(), n, V);
  const auto ld = test::to_d(logits);
  double ref_sum = 0, e = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (tg[size_t(t)] < 0) {
      EXPECT_EQ(losses[size_t(t)], 0.0f);
      continue;
    }
    const double l = ce_row(&ld[size_t(t * V)], V, tg[size_t(t)]);
    ref_sum += l;
    e = std::max(e, std::abs(losses[size_t(t)] - l) / l);
  }
  const double ref_mean = ref_sum / 5.0;
  EXPECT_LT(e, 1e-6);
  EXPECT_NEAR(mean, ref_mean, 1e-6 * ref_mean);

  std::vector<float> dl(size_t(n * V), NAN);  // written, not accumulated
  cross_entropy_backward(dl.data(), logits.data(), tg.data(), n, V, 1.0f / 5.0f);
  auto f = [&](const std::vector<double>& x) {
    double s = 0;
    for (int64_t t = 0; t < n; ++t)
      if (tg[size_t(t)] >= 0) s += ce_row(&x[size_t(t * V)], V, tg[size_t(t)]);
    return s / 5.0;
  };
  const auto g = test::fd_grad(f, ld);
  const double eg = test::norm_err(dl, g);
  std::printf("  loss rel err %.2e, mean %.8f vs %.8f, grad err %.2e\n", e, mean, ref_mean, eg);
  EXPECT_LT(eg, 1e-6);
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(dl[size_t(V + i)], 0.0f);  // ignored row
  std::vector<float> inplace = logits;  // dlogits == logits (the training step does this)
  cross_entropy_backward(inplace.data(), inplace.data(), tg.data(), n, V, 1.0f / 5.0f);
  EXPECT_EQ(inplace, dl);

  std::vector<int32_t> none(size_t(n), -1);
  EXPECT_EQ(cross_entropy_forward(losses.data(), logits.data(), none.data(), n, V), 0.0);
  std::vector<int32_t> bad = tg;
  bad[0] = int32_t(V);
  EXPECT_THROW(cross_entropy_forward(losses.data(), logits.data(), bad.data(), n, V), Error);
}

}  // namespace
}  // namespace hymba
