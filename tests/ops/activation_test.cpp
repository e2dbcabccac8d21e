// silu / softplus / swiglu forward and backward against double formulas.
// Tolerances: forward within 1e-6 relative (per element, floor 1); backward within 5e-6 of
// central differences of the double function (float derivative formulas: measured ~1e-6).
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include <cmath>
#include <cstdio>

#include "ops/activation.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

double silu_d(double x) { return x / (1 + std::exp(-x)); }
double softplus_d(double x) { return std::log1p(std::exp(x)); }

double rel(float a, double b) { return std::abs(double(a) - b) / std::max(1.0, std::abs(b)); }

TEST(Activation, ForwardAndBackward) {
  Rng rng(1);
  const int64_t n = 1001;
  auto x = rng.vec(size_t(n), -25, 25), u = rng.vec(size_t(n), -3, 3), dy = rng.vec(size_t(n));
  x[0] = 0.0f, x[1] = 20.5f, x[2] = -90.0f;
  std::vector<float> y(static_cast<size_t>(n));
  double e_silu = 0, e_sp = 0, e_sw = 0, g_silu = 0, g_sp = 0, g_g = 0, g_u = 0;
  const double h = 1e-5;
  silu_forward(y.data(), x.data(), n);
  for (int64_t i = 0; i < n; ++i) e_silu = std::max(e_silu, rel(y[size_t(i)], silu_d(x[size_t(i)])));
  softplus_forward(y.data(), x.data(), n);
  for (int64_t i = 0; i < n; ++i) e_sp = std::max(e_sp, rel(y[size_t(i)], softplus_d(x[size_t(i)])));
  swiglu_forward(y.data(), x.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) e_sw = std::max(e_sw, rel(y[size_t(i)], silu_d(x[size_t(i)]) * u[size_t(i)]));

  std::vector<float> d1(size_t(n), 1.0f), d2(size_t(n), 1.0f), dg(size_t(n), 1.0f), du(size_t(n), 1.0f);
  silu_backward(d1.data(), dy.data(), x.data(), n);
  softplus_backward(d2.data(), dy.data(), x.data(), n);
  swiglu_backward(dg.data(), du.data(), dy.data(), x.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[size_t(i)], ui = u[size_t(i)], g = dy[size_t(i)];
    g_silu = std::max(g_silu, rel(d1[size_t(i)] - 1.0f, g * (silu_d(xi + h) - silu_d(xi - h)) / (2 * h)));
    g_sp = std::max(g_sp, rel(d2[size_t(i)] - 1.0f, g * (softplus_d(xi + h) - softplus_d(xi - h)) / (2 * h)));
    g_g = std::max(g_g, rel(dg[size_t(i)] - 1.0f, g * ui * (silu_d(xi + h) - silu_d(xi - h)) / (2 * h)));
    g_u = std::max(g_u, rel(du[size_t(i)] - 1.0f, g * silu_d(xi)));
  }
  std::printf("  forward: silu %.2e softplus %.2e swiglu %.2e; backward: silu %.2e softplus %.2e "
              "dgate %.2e dup %.2e\n", e_silu, e_sp, e_sw, g_silu, g_sp, g_g, g_u);
  EXPECT_LT(e_silu, 1e-6);
  EXPECT_LT(e_sp, 1e-6);
  EXPECT_LT(e_sw, 1e-6);
  EXPECT_LT(g_silu, 5e-6);
  EXPECT_LT(g_sp, 5e-6);
  EXPECT_LT(g_g, 5e-6);
  EXPECT_LT(g_u, 5e-6);
  // In place.
  auto z = x;
  silu_forward(z.data(), z.data(), n);
  silu_forward(y.data(), x.data(), n);
  EXPECT_EQ(z, y);
}


// accumulate = false overwrites: the same bits as adding into zeros (checked against the double
// formulas above), from an output full of NaN that must not be read.
TEST(Activation, BackwardOverwriteEqualsAddIntoZeros) {
  Rng rng(2);
  const int64_t n = 40000 + 13;  // several threads' pieces and a SIMD tail
  const auto x = rng.vec(size_t(n), -25, 25), u = rng.vec(size_t(n), -3, 3), dy = rng.vec(size_t(n));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> a1(size_t(n), 0.0f), a2 = a1, ag = a1, au = a1;
  std::vector<float> o1(size_t(n), nan), o2 = o1, og = o1, ou = o1;
  silu_backward(a1.data(), dy.data(), x.data(), n);
  silu_backward(o1.data(), dy.data(), x.data(), n, false);
  softplus_backward(a2.data(), dy.data(), x.data(), n);
  softplus_backward(o2.data(), dy.data(), x.data(), n, false);
  swiglu_backward(ag.data(), au.data(), dy.data(), x.data(), u.data(), n);
  swiglu_backward(og.data(), ou.data(), dy.data(), x.data(), u.data(), n, false);
  EXPECT_EQ(o1, a1);
  EXPECT_EQ(o2, a2);
  EXPECT_EQ(og, ag);
  EXPECT_EQ(ou, au);
  double e = 0;  // and against the double derivative of silu directly
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[size_t(i)], s = 1 / (1 + std::exp(-xi));
    e = std::max(e, rel(o1[size_t(i)], dy[size_t(i)] * s * (1 + xi * (1 - s))));
  }
  EXPECT_LT(e, 5e-6);
}

}  // namespace
}  // namespace hymba
