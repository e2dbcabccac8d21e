// rmsnorm_forward / rmsnorm_backward against naive double loops.
// Tolerances: forward and rstd within 1e-6 of the double reference (relative to the largest
// magnitude); backward within 1e-5 of central differences of the double forward.
#include <gtest/gtest.h>

#include <limits>
#include <vector>
#include <omp.h>

#include <cmath>
#include <cstdio>

#include "ops/norm.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

std::vector<double> naive(const std::vector<double>& x, const std::vector<double>& w, int64_t n, int64_t d,
                          double eps, std::vector<double>* rstd = nullptr) {
  std::vector<double> y(size_t(n * d));
  if (rstd) rstd->resize(size_t(n));
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += x[size_t(r * d + i)] * x[size_t(r * d + i)];
    const double rs = 1.0 / std::sqrt(ss / double(d) + eps);
    if (rstd) (*rstd)[size_t(r)] = rs;
    for (int64_t i = 0; i < d; ++i) y[size_t(r * d + i)] = x[size_t(r * d + i)] * rs * w[size_t(i)];
  }
  return y;
}

TEST(RmsNorm, ForwardMatchesDouble) {
  Rng rng(1);
  for (auto [n, d] : {std::pair<int64_t, int64_t>{7, 37}, {3, 16}, {5, 100}, {40, 1600}, {1, 3}}) {
    auto x = rng.vec(size_t(n * d), -3, 3), w = rng.vec(size_t(d), 0.5, 1.5);
    std::vector<float> y(x.size()), rstd(static_cast<size_t>(n));
    rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, d, 1e-6f);
    std::vector<double> rref;
    const auto ref = naive(test::to_d(x), test::to_d(w), n, d, 1e-6, &rref);
    const double ey = test::norm_err(y, ref), er = test::norm_err(rstd, rref);
    std::printf("  n%ld d%ld: y err %.2e rstd err %.2e\n", long(n), long(d), ey, er);
    EXPECT_LT(ey, 1e-6);
    EXPECT_LT(er, 1e-6);
    std::vector<float> inplace = x;  // y may alias x
    rmsnorm_forward(inplace.data(), nullptr, inplace.data(), w.data(), n, d, 1e-6f);
    EXPECT_EQ(inplace, y);
  }
}

TEST(RmsNorm, BackwardFiniteDifferences) {
  Rng rng(2);
  for (auto [n, d] : {std::pair<int64_t, int64_t>{5, 37}, {3, 16}, {9, 300}}) {
    auto x = rng.vec(size_t(n * d), -2, 2), w = rng.vec(size_t(d), 0.5, 1.5), dy = rng.vec(size_t(n * d));
    std::vector<float> y(x.size()), rstd(static_cast<size_t>(n));
    rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, d, 1e-6f);
    std::vector<float> dx(x.size(), 2.0f), dw(w.size(), 2.0f);  // accumulates
    rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, d);
    for (auto& v : dx) v -= 2.0f;
    for (auto& v : dw) v -= 2.0f;
    const auto xd = test::to_d(x), wd = test::to_d(w), dyd = test::to_d(dy);
    const auto gx = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(v, wd, n, d, 1e-6), dyd); }, xd);
    const auto gw = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(xd, v, n, d, 1e-6), dyd); }, wd);
    const double ex = test::norm_err(dx, gx), ew = test::norm_err(dw, gw);
    std::printf("  n%ld d%ld: dx err %.2e dw err %.2e\n", long(n), long(d), ex, ew);
    EXPECT_LT(ex, 1e-5);
    EXPECT_LT(ew, 1e-5);
  }
}

TEST(RmsNorm, BackwardIndependentOfThreadCount) {
  Rng rng(3);
  const int64_t n = 300, d = 1600;
  auto x = rng.vec(size_t(n * d)), w = rng.vec(size_t(d)), dy = rng.vec(size_t(n * d));
  std::vector<float> y(x.size()), rstd(static_cast<size_t>(n));
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, d, 1e-6f);
  auto go = [&](int t) {
    omp_set_num_threads(t);
    std::vector<float> g(size_t(n * d + d), 0.0f);
    rmsnorm_backward(g.data(), g.data() + n * d, dy.data(), x.data(), w.data(), rstd.data(), n, d);
    return g;
  };
  const int nt = omp_get_max_threads();
  EXPECT_EQ(go(1), go(std::max(2, nt)));
  omp_set_num_threads(nt);
}


// accumulate = false overwrites dx (dw still adds): the same bits as adding into zeros.
TEST(RmsNorm, BackwardOverwriteEqualsAddIntoZeros) {
  Rng rng(8);
  const int64_t n = 300, d = 257;  // threaded (n·d > 32768)
  const auto x = rng.vec(size_t(n * d)), w = rng.vec(size_t(d)), dy = rng.vec(size_t(n * d));
  std::vector<float> y(static_cast<size_t>(n * d)), rstd(static_cast<size_t>(n));
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, d, 1e-6f);
  std::vector<float> dx0(size_t(n * d), 0.0f), dw0(size_t(d), 0.5f);
  std::vector<float> dx1(size_t(n * d), std::numeric_limits<float>::quiet_NaN()), dw1 = dw0;
  rmsnorm_backward(dx0.data(), dw0.data(), dy.data(), x.data(), w.data(), rstd.data(), n, d);
  rmsnorm_backward(dx1.data(), dw1.data(), dy.data(), x.data(), w.data(), rstd.data(), n, d, false);
  EXPECT_EQ(dx1, dx0);
  EXPECT_EQ(dw1, dw0);
}

}  // namespace
}  // namespace hymba
