// selective_scan_forward / selective_scan_backward against naive double loops.
// Tolerances: forward within 1e-5 of the double reference (relative to the largest magnitude);
// chunked == whole bit for bit; backward within 1e-5 of central differences of the double forward
// (measured ~3e-7); thread count: bit-identical.
#include <gtest/gtest.h>

#include <limits>
#include <vector>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "ops/ssm_scan.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

struct ScanIn {
  int64_t L, D, N;
  std::vector<float> x, delta, A, B, C, Dskip, z, h0;
};

ScanIn make(int64_t L, int64_t D, int64_t N, bool gate, uint64_t seed) {
  Rng rng(seed);
  ScanIn s{L, D, N, {}, {}, {}, {}, {}, {}, {}, {}};
  s.x = rng.vec(size_t(L * D));
  s.delta = rng.vec(size_t(L * D), 0.05f, 0.6f);  // softplus outputs
  s.A = rng.vec(size_t(D * N), -2.0f, -0.1f);
  s.B = rng.vec(size_t(L * N));
  s.C = rng.vec(size_t(L * N));
  s.Dskip = rng.vec(size_t(D), 0.5f, 1.5f);
  if (gate) s.z = rng.vec(size_t(L * D), -2, 2);
  s.h0 = rng.vec(size_t(D * N), -0.5f, 0.5f);
  return s;
}

// Double reference; h (in/out) [D, N].
std::vector<double> naive(std::vector<double>& h, const std::vector<double>& x,
                          const std::vector<double>& delta, const std::vector<double>& A,
                          const std::vector<double>& B, const std::vector<double>& C,
                          const std::vector<double>& Dskip, const std::vector<double>& z, int64_t L,
                          int64_t D, int64_t N) {
  std::vector<double> out(size_t(L * D));
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < D; ++c) {
      const double dt = delta[size_t(t * D + c)], xv = x[size_t(t * D + c)];
      double y = Dskip[size_t(c)] * xv;
      for (int64_t n = 0; n < N; ++n) {
        double& hv = h[size_t(c * N + n)];
        hv = std::exp(dt * A[size_t(c * N + n)]) * hv + dt * B[size_t(t * N + n)] * xv;
        y += C[size_t(t * N + n)] * hv;
      }
      if (!z.empty()) {
        const double zv = z[size_t(t * D + c)];
        y *= zv / (1 + std::exp(-zv));
      }
      out[size_t(t * D + c)] = y;
    }
  return out;
}

TEST(SelectiveScan, ForwardMatchesDouble) {
  for (auto [L, D, N] : {std::tuple<int64_t, int64_t, int64_t>{23, 19, 16}, {9, 5, 3}, {50, 200, 16}, {4, 37, 7}})
    for (bool gate : {true, false}) {
      ScanIn s = make(L, D, N, gate, uint64_t(L * 1000 + D));
      std::vector<float> out(size_t(L * D)), h = s.h0;
      selective_scan_forward(out.data(), h.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(),
                             s.C.data(), s.Dskip.data(), gate ? s.z.data() : nullptr, L, D, N);
      std::vector<double> hd = test::to_d(s.h0);
      const auto ref = naive(hd, test::to_d(s.x), test::to_d(s.delta), test::to_d(s.A), test::to_d(s.B),
                             test::to_d(s.C), test::to_d(s.Dskip), test::to_d(s.z), L, D, N);
      const double eo = test::norm_err(out, ref), eh = test::norm_err(h, hd);
      std::printf("  L%ld D%ld N%ld gate%d: out err %.2e, state err %.2e\n", long(L), long(D), long(N),
                  int(gate), eo, eh);
      EXPECT_LT(eo, 1e-5);
      EXPECT_LT(eh, 1e-5);
    }
}

// One token (the decode step's own kernel, vectorised over the state index) against the double
// reference and against the same token inside a longer run: the same state bits, out within 1e-6.
TEST(SelectiveScan, OneTokenMatchesDoubleAndLongerRun) {
  for (auto [D, N] : {std::pair<int64_t, int64_t>{37, 16}, {8, 32}, {200, 16}, {19, 7}})
    for (bool gate : {true, false}) {
      SCOPED_TRACE("D " + std::to_string(D) + " N " + std::to_string(N) + " gate " + std::to_string(gate));
      const int64_t L = 2;  // a 2-token run takes the general kernel; its first token is the step's
      ScanIn s = make(L, D, N, gate, uint64_t(D * 10 + N));
      std::vector<float> one(static_cast<size_t>(D)), h1 = s.h0;
      selective_scan_forward(one.data(), h1.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(),
                             s.C.data(), s.Dskip.data(), gate ? s.z.data() : nullptr, 1, D, N);
      std::vector<double> hd = test::to_d(s.h0);
      std::vector<double> zd = gate ? test::to_d(std::vector<float>(s.z.begin(), s.z.begin() + D)) : std::vector<double>{};
      const auto ref = naive(hd, test::to_d(s.x), test::to_d(s.delta), test::to_d(s.A), test::to_d(s.B),
                             test::to_d(s.C), test::to_d(s.Dskip), zd, 1, D, N);
      const double eo = test::norm_err(one, ref), eh = test::norm_err(h1, hd);
      std::printf("  one token D%ld N%ld gate%d: out err %.2e, state err %.2e\n", long(D), long(N), int(gate), eo, eh);
      EXPECT_LT(eo, 1e-5);
      EXPECT_LT(eh, 1e-5);
      // The first token of a 2-token run: the general (channel-vectorised) kernel.
      std::vector<float> two(size_t(L * D)), h2 = s.h0;
      std::vector<float> x2 = s.x, d2 = s.delta;
      for (int64_t c = 0; c < D; ++c) d2[size_t(D + c)] = 0.0f, x2[size_t(D + c)] = 0.0f;  // token 2 leaves h as is
      selective_scan_forward(two.data(), h2.data(), x2.data(), d2.data(), s.A.data(), s.B.data(), s.C.data(),
                             s.Dskip.data(), gate ? s.z.data() : nullptr, L, D, N);
      EXPECT_EQ(h1, h2);
      std::vector<float> first(two.begin(), two.begin() + D);
      double e = 0, m = 1e-6;
      for (int64_t c = 0; c < D; ++c)
        e = std::max(e, double(std::abs(first[size_t(c)] - one[size_t(c)]))), m = std::max(m, double(std::abs(first[size_t(c)])));
      EXPECT_LT(e / m, 1e-6);
    }
}

// Feeding L in two pieces with the carried state gives the whole run's output and state exactly.
TEST(SelectiveScan, ChunkedEqualsWhole) {
  const int64_t L = 23, D = 37, N = 16, L1 = 9;
  ScanIn s = make(L, D, N, true, 7);
  std::vector<float> whole(size_t(L * D)), hw = s.h0;
  selective_scan_forward(whole.data(), hw.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(),
                         s.C.data(), s.Dskip.data(), s.z.data(), L, D, N);
  std::vector<float> parts(size_t(L * D)), hp = s.h0;
  for (auto [t0, n] : {std::pair<int64_t, int64_t>{0, L1}, {L1, L - L1}})
    selective_scan_forward(parts.data() + t0 * D, hp.data(), s.x.data() + t0 * D, s.delta.data() + t0 * D,
                           s.A.data(), s.B.data() + t0 * N, s.C.data() + t0 * N, s.Dskip.data(),
                           s.z.data() + t0 * D, n, D, N);
  EXPECT_EQ(whole, parts);
  EXPECT_EQ(hw, hp);
}

// A decode step of S sequences (each its own state, rows on the threads) gives each sequence the
// bits of its own one-row scan, with and without the gate, on 1 and 2+ threads.
TEST(SelectiveScan, StepsEqualEachSequenceAlone) {
  const int64_t S = 5, D = 37, N = 16;
  const int nt = omp_get_max_threads();
  for (bool gate : {true, false})
    for (int threads : {1, std::max(2, nt)}) {
      omp_set_num_threads(threads);
      ScanIn s = make(S, D, N, gate, 11);  // rows t = sequences
      Rng rng(13);
      std::vector<std::vector<float>> hs(static_cast<size_t>(S));
      for (auto& h : hs) h = rng.vec(size_t(D * N), -0.5f, 0.5f);
      std::vector<std::vector<float>> alone_h = hs;
      std::vector<float*> hp;
      for (auto& h : hs) hp.push_back(h.data());
      std::vector<float> out(size_t(S * D), 7.0f), alone(size_t(S * D), -7.0f);
      selective_scan_forward_steps(out.data(), hp.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(),
                                   s.C.data(), s.Dskip.data(), gate ? s.z.data() : nullptr, S, D, N);
      for (int64_t q = 0; q < S; ++q)
        selective_scan_forward(alone.data() + q * D, alone_h[size_t(q)].data(), s.x.data() + q * D,
                               s.delta.data() + q * D, s.A.data(), s.B.data() + q * N, s.C.data() + q * N,
                               s.Dskip.data(), gate ? s.z.data() + q * D : nullptr, 1, D, N);
      EXPECT_EQ(out, alone) << "gate " << gate << " threads " << threads;
      EXPECT_EQ(hs, alone_h) << "gate " << gate << " threads " << threads;
      EXPECT_NE(hs[0], hs[1]);  // the states really moved, each its own way
    }
  omp_set_num_threads(nt);
}

// Backward against central differences of the double forward, loss = Σ dout · out, through
// x, delta, A, B, C, Dskip, z; with and without h0 and the gate; N = 6: a group of 4 states
// and 2 single ones.
TEST(SelectiveScan, BackwardFiniteDifferences) {
  struct Case {
    int64_t L, D, N;
    bool gate, h0;
    size_t sample;  // 0 = every coordinate
  };
  for (const Case& c : {Case{7, 5, 3, true, true, 0}, Case{6, 19, 16, true, false, 0},
                        Case{5, 11, 4, false, true, 0},
                        Case{9, 13, 6, true, true, 0}, Case{40, 300, 16, true, true, 60}}) {
    ScanIn s = make(c.L, c.D, c.N, c.gate, uint64_t(c.D));
    Rng rng(99);
    const auto dout = rng.vec(size_t(c.L * c.D));
    // Gradients accumulate (+=): start from a known offset and subtract it.
    const float off = 0.375f;
    std::vector<float> g[7] = {std::vector<float>(s.x.size(), off),     std::vector<float>(s.delta.size(), off),
                               std::vector<float>(s.A.size(), off),     std::vector<float>(s.B.size(), off),
                               std::vector<float>(s.C.size(), off),     std::vector<float>(s.Dskip.size(), off),
                               std::vector<float>(s.z.size(), off)};
    selective_scan_backward(g[0].data(), g[1].data(), g[2].data(), g[3].data(), g[4].data(), g[5].data(),
                            c.gate ? g[6].data() : nullptr, dout.data(), c.h0 ? s.h0.data() : nullptr,
                            s.x.data(), s.delta.data(), s.A.data(), s.B.data(), s.C.data(), s.Dskip.data(),
                            c.gate ? s.z.data() : nullptr, c.L, c.D, c.N);
    std::vector<double> in[7] = {test::to_d(s.x), test::to_d(s.delta), test::to_d(s.A), test::to_d(s.B),
                                 test::to_d(s.C), test::to_d(s.Dskip), test::to_d(s.z)};
    const auto dod = test::to_d(dout);
    const char* names[7] = {"x", "delta", "A", "B", "C", "Dskip", "z"};
    std::printf("  L%ld D%ld N%ld gate%d h0%d:", long(c.L), long(c.D), long(c.N), int(c.gate), int(c.h0));
    for (int which = 0; which < (c.gate ? 7 : 6); ++which) {
      auto f = [&](const std::vector<double>& v) {
        std::vector<double> a[7];
        for (int i = 0; i < 7; ++i) a[i] = i == which ? v : in[i];
        std::vector<double> h = c.h0 ? test::to_d(s.h0) : std::vector<double>(size_t(c.D * c.N), 0.0);
        return test::dotd(naive(h, a[0], a[1], a[2], a[3], a[4], a[5], a[6], c.L, c.D, c.N), dod);
      };
      const auto idx = test::sample_indices(in[which].size(), c.sample, rng.g);
      const auto fd = test::fd_grad(f, in[which], idx);
      std::vector<float> got;
      for (size_t i : idx) got.push_back(g[which][i] - off);
      const double e = test::norm_err(got, fd);
      std::printf(" %s %.1e", names[which], e);
      EXPECT_LT(e, 1e-5) << names[which];
    }
    std::printf("\n");
  }
}

TEST(SelectiveScan, IndependentOfThreadCount) {
  const int64_t L = 64, D = 400, N = 16;
  ScanIn s = make(L, D, N, true, 3);
  Rng rng(5);
  const auto dout = rng.vec(size_t(L * D));
  auto go = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> out(size_t(L * D)), h = s.h0;
    selective_scan_forward(out.data(), h.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(),
                           s.C.data(), s.Dskip.data(), s.z.data(), L, D, N);
    std::vector<float> g(size_t(3 * L * D + D * N + 2 * L * N + D), 0.0f);
    float* p = g.data();
    float *dx = p, *dd = p + L * D, *dz = p + 2 * L * D, *dA = p + 3 * L * D, *dB = dA + D * N,
          *dC = dB + L * N, *dD = dC + L * N;
    selective_scan_backward(dx, dd, dA, dB, dC, dD, dz, dout.data(), s.h0.data(), s.x.data(),
                            s.delta.data(), s.A.data(), s.B.data(), s.C.data(), s.Dskip.data(),
                            s.z.data(), L, D, N);
    out.insert(out.end(), g.begin(), g.end());
    return out;
  };
  const int nt = omp_get_max_threads();
  EXPECT_EQ(go(1), go(std::max(2, nt)));
  omp_set_num_threads(nt);
}


// accumulate = false overwrites dx, ddelta, dz, dB, dC (dA, dDskip still add): the same bits as
// adding into zeros (checked against finite differences above), from outputs full of NaN.
TEST(SelectiveScan, BackwardOverwriteEqualsAddIntoZeros) {
  for (bool gate : {true, false}) {
    const int64_t L = 37, D = 300, N = 16;  // a partial SIMD group of channels, several chunks
    ScanIn s = make(L, D, N, gate, 7);
    Rng rng(6);
    const auto dout = rng.vec(size_t(L * D));
    auto go = [&](bool acc) {
      const float fill = acc ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      std::vector<float> dx(size_t(L * D), fill), dd = dx, dz = dx, dB(size_t(L * N), fill), dC = dB;
      std::vector<float> dA(size_t(D * N), 0.25f), dD(size_t(D), 0.5f);
      selective_scan_backward(dx.data(), dd.data(), dA.data(), dB.data(), dC.data(), dD.data(),
                              dz.data(), dout.data(), s.h0.data(), s.x.data(), s.delta.data(),
                              s.A.data(), s.B.data(), s.C.data(), s.Dskip.data(),
                              gate ? s.z.data() : nullptr, L, D, N, acc);
      for (auto* v : {&dd, &dz, &dB, &dC, &dA, &dD}) dx.insert(dx.end(), v->begin(), v->end());
      return dx;
    };
    EXPECT_EQ(go(false), go(true)) << "gate " << gate;
  }
}


// Several sequences in one call: the same bits as one selective_scan_backward per sequence (dA,
// dDskip summed over the sequences in order), with and without the gate, adding or overwriting.
TEST(SelectiveScan, BackwardOfSequencesEqualsOneCallEach) {
  const int64_t D = 300, N = 16;
  const std::vector<int64_t> lens = {37, 1, 64, 5};
  int64_t T = 0;
  for (int64_t L : lens) T += L;
  for (bool gate : {true, false})
    for (bool acc : {true, false}) {
      ScanIn s = make(T, D, N, gate, 9);  // T rows; each sequence starts from a zero state
      Rng rng(10);
      const auto dout = rng.vec(size_t(T * D));
      auto grads = [&](bool batched) {
        const float fill = acc ? 0.125f : std::numeric_limits<float>::quiet_NaN();
        std::vector<float> dx(size_t(T * D), fill), dd = dx, dz = dx, dB(size_t(T * N), fill), dC = dB;
        std::vector<float> dA(size_t(D * N), 0.25f), dD(size_t(D), 0.5f);
        const float* zp = gate ? s.z.data() : nullptr;
        if (batched) {
          selective_scan_backward_seqs(dx.data(), dd.data(), dA.data(), dB.data(), dC.data(), dD.data(),
                                       dz.data(), dout.data(), s.x.data(), s.delta.data(), s.A.data(),
                                       s.B.data(), s.C.data(), s.Dskip.data(), zp, lens, D, N, acc);
        } else {
          int64_t r = 0;
          for (int64_t L : lens) {
            selective_scan_backward(dx.data() + r * D, dd.data() + r * D, dA.data(), dB.data() + r * N,
                                    dC.data() + r * N, dD.data(), dz.data() + r * D, dout.data() + r * D,
                                    nullptr, s.x.data() + r * D, s.delta.data() + r * D, s.A.data(),
                                    s.B.data() + r * N, s.C.data() + r * N, s.Dskip.data(),
                                    gate ? zp + r * D : nullptr, L, D, N, acc);
            r += L;
          }
        }
        for (auto* v : {&dd, &dz, &dB, &dC, &dA, &dD}) dx.insert(dx.end(), v->begin(), v->end());
        return dx;
      };
      EXPECT_EQ(grads(true), grads(false)) << "gate " << gate << " accumulate " << acc;
    }
  const std::vector<int64_t> bad = {3, 0};
  float f = 0;
  EXPECT_THROW(selective_scan_backward_seqs(&f, &f, &f, &f, &f, &f, &f, &f, &f, &f, &f, &f, &f, &f,
                                            nullptr, bad, 1, 1),
               Error);
}


// Several sequences in one forward call: the same bits as one call per sequence from zero states
// (a one-row sequence alone takes the one-step kernel: rounded differently, so none here).
TEST(SelectiveScan, ForwardOfSequencesEqualsOneCallEach) {
  const int64_t D = 300, N = 16;
  const std::vector<int64_t> lens = {37, 2, 64, 5};
  int64_t T = 0;
  for (int64_t L : lens) T += L;
  for (bool gate : {true, false}) {
    ScanIn s = make(T, D, N, gate, 11);
    const float* zp = gate ? s.z.data() : nullptr;
    std::vector<float> one(size_t(T * D), std::numeric_limits<float>::quiet_NaN()), each = one;
    selective_scan_forward_seqs(one.data(), s.x.data(), s.delta.data(), s.A.data(), s.B.data(), s.C.data(),
                                s.Dskip.data(), zp, lens, D, N);
    int64_t r = 0;
    for (int64_t L : lens) {
      std::vector<float> h(size_t(D * N), 0.0f);
      selective_scan_forward(each.data() + r * D, h.data(), s.x.data() + r * D, s.delta.data() + r * D,
                             s.A.data(), s.B.data() + r * N, s.C.data() + r * N, s.Dskip.data(),
                             gate ? zp + r * D : nullptr, L, D, N);
      r += L;
    }
    EXPECT_EQ(one, each) << "gate " << gate;
  }
  const std::vector<int64_t> bad = {0};
  float f = 0;
  EXPECT_THROW(selective_scan_forward_seqs(&f, &f, &f, &f, &f, &f, &f, nullptr, bad, 1, 1), Error);
}

}  // namespace
}  // namespace hymba
