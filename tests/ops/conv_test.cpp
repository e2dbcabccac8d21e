// causal_conv1d_forward / causal_conv1d_backward against naive double loops.
// Tolerances: forward within 1e-6 of the double reference (relative to the largest magnitude);
// chunked with state == whole bit for bit; backward within 1e-6 of central differences of the
// double forward (the op is linear, so differences are exact up to rounding).
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include <cstdio>

#include "ops/conv.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

// y[t,c] = b[c] + Σ_k w[c,k] x[t-K+1+k, c], history from st[K-1, C] (empty = zeros).
std::vector<double> naive(const std::vector<double>& x, const std::vector<double>& w,
                          const std::vector<double>& b, const std::vector<double>& st, int64_t L,
                          int64_t C, int64_t K) {
  std::vector<double> y(size_t(L * C));
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < C; ++c) {
      double s = b.empty() ? 0.0 : b[size_t(c)];
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t - (K - 1) + k;
        if (src >= 0) s += w[size_t(c * K + k)] * x[size_t(src * C + c)];
        else if (!st.empty()) s += w[size_t(c * K + k)] * st[size_t((K - 1 + src) * C + c)];
      }
      y[size_t(t * C + c)] = s;
    }
  return y;
}

TEST(CausalConv1d, ForwardMatchesDouble) {
  Rng rng(1);
  for (auto [L, C, K] : {std::tuple<int64_t, int64_t, int64_t>{13, 7, 4}, {3, 9, 4}, {50, 3200, 4}, {6, 5, 1}, {5, 11, 3}})
    for (bool with_state : {false, true}) {
      auto x = rng.vec(size_t(L * C)), w = rng.vec(size_t(C * K)), b = rng.vec(size_t(C));
      auto st = rng.vec(size_t((K - 1) * C));
      std::vector<float> y(size_t(L * C)), s2 = st;
      causal_conv1d_forward(y.data(), x.data(), w.data(), b.data(), with_state ? s2.data() : nullptr, L, C, K);
      const auto ref = naive(test::to_d(x), test::to_d(w), test::to_d(b),
                             with_state ? test::to_d(st) : std::vector<double>{}, L, C, K);
      const double e = test::norm_err(y, ref);
      std::printf("  L%ld C%ld K%ld state%d: err %.2e\n", long(L), long(C), long(K), int(with_state), e);
      EXPECT_LT(e, 1e-6);
      if (with_state) {  // the new state = the last K-1 inputs of history + x
        std::vector<float> all = st;
        all.insert(all.end(), x.begin(), x.end());
        std::vector<float> want(all.end() - (K - 1) * C, all.end());
        EXPECT_EQ(s2, want);
      }
    }
}

TEST(CausalConv1d, ChunkedWithStateEqualsWhole) {
  Rng rng(2);
  const int64_t L = 17, C = 21, K = 4;
  auto x = rng.vec(size_t(L * C)), w = rng.vec(size_t(C * K)), b = rng.vec(size_t(C));
  std::vector<float> whole(size_t(L * C)), sw(size_t((K - 1) * C), 0.0f);
  causal_conv1d_forward(whole.data(), x.data(), w.data(), b.data(), sw.data(), L, C, K);
  std::vector<float> nostate(size_t(L * C));
  causal_conv1d_forward(nostate.data(), x.data(), w.data(), b.data(), nullptr, L, C, K);
  EXPECT_EQ(whole, nostate);  // a zero state is the zero padding
  // Pieces of 1, 2 (shorter than K-1: the state shifts), 5 and the rest.
  std::vector<float> parts(size_t(L * C)), sp(size_t((K - 1) * C), 0.0f);
  int64_t t0 = 0;
  for (int64_t n : {int64_t(1), int64_t(2), int64_t(5), L - 8}) {
    causal_conv1d_forward(parts.data() + t0 * C, x.data() + t0 * C, w.data(), b.data(), sp.data(), n, C, K);
    t0 += n;
  }
  EXPECT_EQ(whole, parts);
  EXPECT_EQ(sw, sp);
}

TEST(CausalConv1d, BackwardFiniteDifferences) {
  Rng rng(3);
  for (auto [L, C, K] : {std::tuple<int64_t, int64_t, int64_t>{11, 7, 4}, {3, 70, 4}, {9, 5, 1}, {6, 130, 3}}) {
    auto x = rng.vec(size_t(L * C)), w = rng.vec(size_t(C * K)), b = rng.vec(size_t(C)), dy = rng.vec(size_t(L * C));
    std::vector<float> dx(x.size(), 1.0f), dw(w.size(), 1.0f), db(b.size(), 1.0f);
    causal_conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), L, C, K);
    for (auto* v : {&dx, &dw, &db})
      for (auto& e : *v) e -= 1.0f;
    const auto xd = test::to_d(x), wd = test::to_d(w), bd = test::to_d(b), dyd = test::to_d(dy);
    const auto gx = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(v, wd, bd, {}, L, C, K), dyd); }, xd);
    const auto gw = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(xd, v, bd, {}, L, C, K), dyd); }, wd);
    const auto gb = test::fd_grad([&](const std::vector<double>& v) { return test::dotd(naive(xd, wd, v, {}, L, C, K), dyd); }, bd);
    const double ex = test::norm_err(dx, gx), ew = test::norm_err(dw, gw), eb = test::norm_err(db, gb);
    std::printf("  L%ld C%ld K%ld: dx %.2e dw %.2e db %.2e\n", long(L), long(C), long(K), ex, ew, eb);
    EXPECT_LT(ex, 1e-6);
    EXPECT_LT(ew, 1e-6);
    EXPECT_LT(eb, 1e-6);
  }
}


// accumulate = false overwrites dx (dw, db still add): the same bits as adding into zeros.
TEST(CausalConv1d, BackwardOverwriteEqualsAddIntoZeros) {
  Rng rng(12);
  for (int64_t L : {2, 300}) {  // L < K leaves rows that only the last taps reach
    const int64_t C = 130, K = 4;
    const auto x = rng.vec(size_t(L * C)), w = rng.vec(size_t(C * K)), dy = rng.vec(size_t(L * C));
    std::vector<float> dx0(size_t(L * C), 0.0f), dw0(size_t(C * K), 0.25f), db0(size_t(C), 0.5f);
    std::vector<float> dx1(size_t(L * C), std::numeric_limits<float>::quiet_NaN()), dw1 = dw0, db1 = db0;
    causal_conv1d_backward(dx0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), L, C, K);
    causal_conv1d_backward(dx1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data(), L, C, K,
                           false);
    EXPECT_EQ(dx1, dx0) << "L=" << L;
    EXPECT_EQ(dw1, dw0) << "L=" << L;
    EXPECT_EQ(db1, db0) << "L=" << L;
  }
}

}  // namespace
}  // namespace hymba
