// rope_inv_freq / rope_forward / rope_backward against naive double loops.
// Tolerances: inv_freq within 1 float ulp-ish (2e-7 relative); forward within 1e-6 of the double
// rotation with float cos/sin as the header specifies; backward within 1e-6 of central
// differences of the double forward (the op is linear).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "ops/rope.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

std::vector<double> naive(const std::vector<double>& x, const std::vector<int32_t>& pos, int64_t H, int64_t hd,
                          const std::vector<float>& inv) {
  std::vector<double> y(x.size());
  const int64_t half = hd / 2;
  for (size_t t = 0; t < pos.size(); ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(pos[t]) * double(inv[size_t(i)]);
        const double c = float(std::cos(a)), s = float(std::sin(a));
        const size_t o = (t * size_t(H) + size_t(h)) * size_t(hd);
        y[o + size_t(i)] = x[o + size_t(i)] * c - x[o + size_t(i + half)] * s;
        y[o + size_t(i + half)] = x[o + size_t(i + half)] * c + x[o + size_t(i)] * s;
      }
  return y;
}

TEST(Rope, InvFreq) {
  const double base = 10000.0 * std::pow(7.0, 64.0 / 62.0);  // Hymba's NTK base
  const auto f = rope_inv_freq(base, 64);
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i < 32; ++i) {
    const double want = std::pow(base, -2.0 * i / 64.0);
    EXPECT_NEAR(f[size_t(i)], want, 2e-7 * want);
  }
  EXPECT_EQ(f[0], 1.0f);
}

TEST(Rope, ForwardAndBackward) {
  Rng rng(1);
  for (auto [n, H, hd] : {std::tuple<int64_t, int64_t, int64_t>{7, 3, 10}, {5, 5, 64}, {200, 25, 64}}) {
    const auto inv = rope_inv_freq(74534.83, hd);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(t * 37 + 3);  // large, unsorted-ish
    if (n > 2) std::swap(pos[0], pos[2]);
    auto x = rng.vec(size_t(n * H * hd));
    auto y = x;
    rope_forward(y.data(), pos.data(), n, H, hd, inv.data());
    const auto ref = naive(test::to_d(x), pos, H, hd, inv);
    const double ef = test::norm_err(y, ref);
    // Backward: the transpose; check ⟨dy, R x⟩ gradient against finite differences on small cases,
    // and that backward(forward(x)) == x (rotation) on all.
    auto dy = rng.vec(x.size());
    auto dx = dy;
    rope_backward(dx.data(), pos.data(), n, H, hd, inv.data());
    double eb = 0;
    if (n * H * hd < 2000) {
      const auto dyd = test::to_d(dy);
      const auto g = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(v, pos, H, hd, inv), dyd); },
                                   test::to_d(x));
      eb = test::norm_err(dx, g);
      EXPECT_LT(eb, 1e-6);
    }
    auto back = y;
    rope_backward(back.data(), pos.data(), n, H, hd, inv.data());
    const double er = test::norm_err(back, test::to_d(x));
    std::printf("  n%ld H%ld hd%ld: forward err %.2e, backward err %.2e, roundtrip err %.2e\n", long(n), long(H),
                long(hd), ef, eb, er);
    EXPECT_LT(ef, 1e-6);
    EXPECT_LT(er, 1e-6);
  }
}

// A batch whose sequences repeat positions (rows share one angle table) rotates every row as a
// row of its own does, to the bit.
TEST(Rope, RepeatedPositionsAsSingleRows) {
  Rng rng(2);
  const int64_t B = 6, L = 40, H = 4, hd = 64, n = B * L;
  const auto inv = rope_inv_freq(10000.0, hd);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(5 + t % L);
  auto x = rng.vec(size_t(n * H * hd));
  for (bool fwd : {true, false}) {
    auto y = x;
    (fwd ? rope_forward : rope_backward)(y.data(), pos.data(), n, H, hd, inv.data());
    for (int64_t t = 0; t < n; ++t) {
      std::vector<float> row(x.begin() + t * H * hd, x.begin() + (t + 1) * H * hd);
      (fwd ? rope_forward : rope_backward)(row.data(), &pos[size_t(t)], 1, H, hd, inv.data());
      ASSERT_TRUE(std::equal(row.begin(), row.end(), y.begin() + t * H * hd)) << "row " << t;
    }
    if (fwd) EXPECT_LT(test::norm_err(y, naive(test::to_d(x), pos, H, hd, inv)), 1e-6);
  }
}

}  // namespace
}  // namespace hymba
