// matmul_forward / matmul_backward / matrow_to_f32 against naive double loops.
#include "ops/matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "test_util.h"
#include "ops/threads.h"

namespace hymba {
namespace {

using test::norm_err;
using test::Rng;

// Weights stored in `dt`, plus the exact values they hold (rounded) as double for the reference.
struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<double> exact;
  MatView view;
};

Weights make_weights(DType dt, int64_t N, int64_t K, Rng& rng) {
  Weights w;
  const std::vector<float> f = rng.vec(size_t(N * K));
  w.bytes.resize(size_t(N * K) * dtype_size(dt));
  from_f32(w.bytes.data(), dt, f.data(), f.size());
  std::vector<float> back(f.size());
  to_f32(back.data(), w.bytes.data(), dt, f.size());
  w.exact.assign(back.begin(), back.end());
  w.view = MatView{w.bytes.data(), dt, N, K};
  return w;
}

std::vector<double> ref_forward(const std::vector<float>& in, const std::vector<double>& W,
                                const float* bias, const std::vector<float>* init, int64_t M,
                                int64_t N, int64_t K) {
  std::vector<double> out(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = init ? double((*init)[size_t(m * N + n)]) : 0.0;
      if (bias) s += bias[n];
      for (int64_t k = 0; k < K; ++k) s += double(in[size_t(m * K + k)]) * W[size_t(n * K + k)];
      out[size_t(m * N + n)] = s;
    }
  return out;
}

// F32 sums of K <= 129 products of values in [-1, 1]: relative error ~1e-6; 1e-5 leaves margin
// while catching any wrong index or dropped tail (those give errors ~1e-2 and up).
constexpr double kTol = 1e-5;

class MatmulForward : public ::testing::TestWithParam<std::tuple<DType, MatmulPath>> {};

TEST_P(MatmulForward, MatchesNaiveDouble) {
  const auto [dt, path] = GetParam();
  Rng rng(42);
  for (int64_t M : {1, 2, 3, 7, 33, 100}) {
    for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 129}, {129, 37}, {5, 16}, {70, 3}}) {
      const Weights w = make_weights(dt, N, K, rng);
      const std::vector<float> in = rng.vec(size_t(M * K));
      const std::vector<float> bias = rng.vec(size_t(N));
      const std::vector<float> init = rng.vec(size_t(M * N));
      for (int variant = 0; variant < 4; ++variant) {
        const bool use_bias = variant & 1, accumulate = variant & 2;
        std::vector<float> out = accumulate ? init : std::vector<float>(size_t(M * N), 123.0f);
        matmul_forward_path(path, out.data(), in.data(), w.view, use_bias ? bias.data() : nullptr,
                            M, accumulate);
        const auto ref = ref_forward(in, w.exact, use_bias ? bias.data() : nullptr,
                                     accumulate ? &init : nullptr, M, N, K);
        EXPECT_LT(norm_err(out, ref), kTol) << "dtype " << dtype_name(dt) << " M=" << M
                                            << " N=" << N << " K=" << K << " bias=" << use_bias
                                            << " accumulate=" << accumulate;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, MatmulForward,
    ::testing::Combine(::testing::Values(DType::F32, DType::BF16, DType::F16),
                       ::testing::Values(MatmulPath::Auto, MatmulPath::Gemv, MatmulPath::Blas)));

// The two kernels agree on realistic shapes (K large enough for the vector loop to dominate),
// and Auto picks one of them.
TEST(Matmul, GemvAndBlasPathsAgree) {
  Rng rng(7);
  const int64_t N = 301, K = 1600;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Weights w = make_weights(dt, N, K, rng);
    for (int64_t M : {1, 4, 9, 64}) {
      const std::vector<float> in = rng.vec(size_t(M * K));
      const std::vector<float> bias = rng.vec(size_t(N));
      std::vector<float> a(size_t(M * N)), b(size_t(M * N));
      matmul_forward_path(MatmulPath::Gemv, a.data(), in.data(), w.view, bias.data(), M);
      matmul_forward_path(MatmulPath::Blas, b.data(), in.data(), w.view, bias.data(), M);
      const std::vector<double> bd(b.begin(), b.end());
      EXPECT_LT(norm_err(a, bd), 1e-5) << dtype_name(dt) << " M=" << M;
      const auto ref = ref_forward(in, w.exact, bias.data(), nullptr, M, N, K);
      EXPECT_LT(norm_err(a, ref), 1e-5);
    }
  }
}

// GEMV rows are each summed by one thread in a fixed order: bit-identical for any thread count.
TEST(Matmul, GemvIndependentOfThreadCount) {
  Rng rng(3);
  const int64_t N = 517, K = 333, M = 3;
  const Weights w = make_weights(DType::BF16, N, K, rng);
  const std::vector<float> in = rng.vec(size_t(M * K));
  const int saved = num_threads();
  std::vector<float> a(size_t(M * N)), b(size_t(M * N));
  set_num_threads(1);
  matmul_forward_path(MatmulPath::Gemv, a.data(), in.data(), w.view, nullptr, M);
  set_num_threads(std::max(2, saved));
  matmul_forward_path(MatmulPath::Gemv, b.data(), in.data(), w.view, nullptr, M);
  set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST(Matmul, BackwardMatchesNaiveDouble) {
  Rng rng(11);
  for (int64_t M : {1, 3, 33}) {
    const int64_t N = 37, K = 129;
    const std::vector<float> W = rng.vec(size_t(N * K)), inp = rng.vec(size_t(M * K));
    const std::vector<float> dout = rng.vec(size_t(M * N));
    std::vector<float> dinp = rng.vec(size_t(M * K)), dW = rng.vec(size_t(N * K)),
                       dbias = rng.vec(size_t(N));
    std::vector<double> rdinp(dinp.begin(), dinp.end()), rdW(dW.begin(), dW.end()),
        rdbias(dbias.begin(), dbias.end());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const double g = dout[size_t(m * N + n)];
        rdbias[size_t(n)] += g;
        for (int64_t k = 0; k < K; ++k) {
          rdinp[size_t(m * K + k)] += g * W[size_t(n * K + k)];
          rdW[size_t(n * K + k)] += g * inp[size_t(m * K + k)];
        }
      }
    // Each pointer null in turn: the others still accumulate.
    for (int skip = -1; skip < 3; ++skip) {
      std::vector<float> a = dinp, b = dW, c = dbias;
      matmul_backward(skip == 0 ? nullptr : a.data(), skip == 1 ? nullptr : b.data(),
                      skip == 2 ? nullptr : c.data(), dout.data(), inp.data(), W.data(), M, N, K);
      // Sums of <= 37 (dinp) or <= 33 (dW) products plus the initial value: F32 rounding ~1e-6.
      if (skip != 0) EXPECT_LT(norm_err(a, rdinp), kTol) << "dinp M=" << M;
      else EXPECT_EQ(a, dinp);
      if (skip != 1) EXPECT_LT(norm_err(b, rdW), kTol) << "dW M=" << M;
      else EXPECT_EQ(b, dW);
      if (skip != 2) EXPECT_LT(norm_err(c, rdbias), kTol) << "dbias M=" << M;
      else EXPECT_EQ(c, dbias);
    }
  }
}

TEST(Matmul, RowToF32) {
  Rng rng(5);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Weights w = make_weights(dt, 9, 37, rng);
    std::vector<float> row(37);
    matrow_to_f32(row.data(), w.view, 8);
    for (int k = 0; k < 37; ++k) EXPECT_EQ(double(row[size_t(k)]), w.exact[size_t(8 * 37 + k)]);
    EXPECT_THROW(matrow_to_f32(row.data(), w.view, 9), Error);
  }
}

TEST(Matmul, RejectsUnsupportedDtype) {
  std::vector<double> d(4);
  const MatView W{d.data(), DType::F64, 2, 2};
  std::vector<float> in(2), out(2);
  EXPECT_THROW(matmul_forward(out.data(), in.data(), W, nullptr, 1), Error);
}

TEST(Threads, SetAndGet) {
  const int saved = num_threads();
  EXPECT_GE(saved, 1);
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(0);
  EXPECT_EQ(num_threads(), default_num_threads());
  set_num_threads(saved);
}

}  // namespace
}  // namespace hymba
