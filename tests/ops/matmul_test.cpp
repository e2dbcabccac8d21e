// matmul_forward / matmul_backward / matrow_to_f32 against naive double loops.
#include "ops/matmul.h"

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
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

// x rounded to bf16 and back (nearest-even): what the bf16 GEMM multiplies.
std::vector<float> bf16_rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = bf16_to_f32(f32_to_bf16(x[i]));
  return r;
}
// Whether matmul_forward_path(path, ...) with these weights rounds its activations to bf16.
bool rounds_acts(DType dt, MatmulPath path, int64_t M) {
  if (dt != DType::BF16 || !matmul_bf16_gemm()) return false;
  return path == MatmulPath::Blas || (path == MatmulPath::Auto && M > matmul_gemv_max_m(dt));
}

struct TargetGuard {
  ~TargetGuard() { hwy::SetSupportedTargetsForTest(0); }
};

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
        // The bf16 GEMM's reference: the product of the bf16-rounded activations.
        const auto ref = ref_forward(rounds_acts(dt, path, M) ? bf16_rounded(in) : in, w.exact,
                                     use_bias ? bias.data() : nullptr, accumulate ? &init : nullptr, M, N, K);
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
                       ::testing::Values(MatmulPath::Auto, MatmulPath::Gemv, MatmulPath::Blas,
                                         MatmulPath::Sgemm)));

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
      const auto ref = ref_forward(in, w.exact, bias.data(), nullptr, M, N, K);
      EXPECT_LT(norm_err(a, ref), 1e-5);
      if (rounds_acts(dt, MatmulPath::Blas, M)) {  // the bf16 GEMM: checked in MatmulBf16Gemm.*
        EXPECT_LT(norm_err(b, ref_forward(bf16_rounded(in), w.exact, bias.data(), nullptr, M, N, K)), 1e-5);
        continue;
      }
      const std::vector<double> bd(b.begin(), b.end());
      EXPECT_LT(norm_err(a, bd), 1e-5) << dtype_name(dt) << " M=" << M;
    }
  }
}

// The output of `path` on 1 thread; expects the same bits on 2 (or all) threads.
std::vector<float> same_on_any_thread_count(MatmulPath path, const Weights& w, const std::vector<float>& in, int64_t M) {
  const int saved = num_threads();
  std::vector<float> a(size_t(M * w.view.rows)), b(a.size());
  set_num_threads(1);
  matmul_forward_path(path, a.data(), in.data(), w.view, nullptr, M);
  set_num_threads(std::max(2, saved));
  matmul_forward_path(path, b.data(), in.data(), w.view, nullptr, M);
  set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  return a;
}

// GEMV rows are each summed by one thread in a fixed order: bit-identical for any thread count
// (M = 8: several input passes per row block, with the next block prefetched in between).
TEST(Matmul, GemvIndependentOfThreadCount) {
  Rng rng(3);
  const int64_t N = 517, K = 333;
  const Weights w = make_weights(DType::BF16, N, K, rng);
  for (int64_t M : {3, 8}) same_on_any_thread_count(MatmulPath::Gemv, w, rng.vec(size_t(M * K)), M);
}

// The GEMV on every target (the portable one included) against the double product, for each
// batch size 1..9 (every mix of register tiles and input passes: 4 x 3, 4 x 2, 4 x 1, 2 x 4, and
// AVX-512's 4 x 4) on shapes with odd N, K not a multiple of any vector width, several row
// blocks (N = 301, K = 1601) and bias / accumulate; and input m of a batch gets the same bits
// as alone (each output is one fixed-order sum whatever the tile), so batched decode equals
// unbatched decode.
TEST(Matmul, GemvEveryTargetAndBatchSizeMatchesNaiveDouble) {
  TargetGuard guard;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    Rng rng(23);
    for (DType dt : {DType::BF16, DType::F16, DType::F32})
      for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 129}, {301, 1601}, {9, 7}, {13, 40}}) {
        const Weights w = make_weights(dt, N, K, rng);
        for (int64_t M = 1; M <= 9; ++M) {
          const std::vector<float> in = rng.vec(size_t(M * K)), bias = rng.vec(size_t(N)), init = rng.vec(size_t(M * N));
          for (int variant = 0; variant < 4; ++variant) {
            const bool use_bias = variant & 1, accumulate = variant & 2;
            std::vector<float> out = accumulate ? init : std::vector<float>(size_t(M * N), 123.0f);
            matmul_forward_path(MatmulPath::Gemv, out.data(), in.data(), w.view, use_bias ? bias.data() : nullptr, M,
                                accumulate);
            const auto ref = ref_forward(in, w.exact, use_bias ? bias.data() : nullptr, accumulate ? &init : nullptr,
                                         M, N, K);
            ASSERT_LT(norm_err(out, ref), kTol) << dtype_name(dt) << " M=" << M << " N=" << N << " K=" << K
                                                << " bias=" << use_bias << " accumulate=" << accumulate;
            if (variant != 1) continue;
            for (int64_t m = 0; m < M; ++m) {
              std::vector<float> one(static_cast<size_t>(N));
              matmul_forward_path(MatmulPath::Gemv, one.data(), in.data() + m * K, w.view, bias.data(), 1);
              ASSERT_EQ(0, std::memcmp(one.data(), out.data() + m * N, size_t(N) * sizeof(float)))
                  << dtype_name(dt) << " M=" << M << " m=" << m << " N=" << N << " K=" << K;
            }
          }
        }
      }
  }
}

// The BF16 GEMM paths (Blas: the default; Bf16Dot: vdpbf16ps where the CPU has AVX512-BF16;
// Bf16F32: F32 FMAs on AVX-512; widen + sgemm elsewhere) on every target against the naive double
// product of the weights and the activations (bf16-rounded where the path rounds them), element
// by element within F32 summation rounding: vdpbf16ps sums the K/2 pairs in order ((K/2 + 8)
// ulps of Σ|terms|), the F32 kernel and sgemm the K terms (K + 8), on shapes that end mid-tile,
// mid-pair (odd K), past a K block (K > 192) and a 64-column block; and against the sgemm path on
// the same activations.
const char* path_name(MatmulPath p) {
  return p == MatmulPath::Blas ? "Blas" : p == MatmulPath::Bf16Dot ? "Bf16Dot" : "Bf16F32";
}
TEST(MatmulBf16Gemm, MatchesNaiveDoubleOfRoundedActivationsOnEveryTarget) {
  TargetGuard guard;
  bool dot_seen = false, f32_seen = false;
  for (int64_t target : hwy::SupportedAndGeneratedTargets())
   for (MatmulPath path : {MatmulPath::Blas, MatmulPath::Bf16Dot, MatmulPath::Bf16F32}) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    SCOPED_TRACE(path_name(path));
    const Bf16Kernel kernel = matmul_bf16_kernel(path);
    const bool gemm = kernel == Bf16Kernel::Dot;
    if (path == MatmulPath::Blas) EXPECT_EQ(gemm, matmul_bf16_gemm());
    dot_seen |= gemm;
    f32_seen |= kernel == Bf16Kernel::F32;
    Rng rng(17);
    double worst_unrounded = 0.0;  // the same check without the rounding: must fail somewhere
    for (int64_t M : {1, 3, 7, 65, 130})
      for (int64_t N : {1, 5, 37, 101})
        for (int64_t K : {1, 2, 31, 33, 64, 129, 257, 451}) {
          const Weights w = make_weights(DType::BF16, N, K, rng);
          const std::vector<float> in = rng.vec(size_t(M * K)), bias = rng.vec(size_t(N));
          const std::vector<float> xr = bf16_rounded(in);
          const std::vector<float>& x = gemm ? xr : in;
          std::vector<float> out(size_t(M * N)), port(size_t(M * N));
          matmul_forward_path(path, out.data(), in.data(), w.view, bias.data(), M);
          matmul_forward_path(MatmulPath::Sgemm, port.data(), x.data(), w.view, bias.data(), M);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double ref = bias[size_t(n)], mag = std::fabs(bias[size_t(n)]), ref_in = bias[size_t(n)];
              for (int64_t k = 0; k < K; ++k) {
                const double wk = w.exact[size_t(n * K + k)];
                ref += double(x[size_t(m * K + k)]) * wk;
                ref_in += double(in[size_t(m * K + k)]) * wk;
                mag += std::fabs(double(x[size_t(m * K + k)]) * wk);
              }
              const int64_t sums = gemm ? K / 2 : K;
              const double tol = double(sums + 8) * 0x1p-24 * mag, o = out[size_t(m * N + n)];
              ASSERT_LE(std::fabs(o - ref), tol) << "M=" << M << " N=" << N << " K=" << K << " m=" << m << " n=" << n;
              ASSERT_LE(std::fabs(port[size_t(m * N + n)] - o), 2e-6 * mag + 1e-30) << "vs sgemm, K=" << K;
              worst_unrounded = std::max(worst_unrounded, std::fabs(o - ref_in) / tol);
            }
        }
    if (gemm) EXPECT_GT(worst_unrounded, 10.0) << "activations not rounded to bf16?";
  }
  if (!dot_seen && __builtin_cpu_supports("avx512bf16")) ADD_FAILURE() << "AVX512-BF16 CPU without the bf16 GEMM";
  if (!f32_seen && __builtin_cpu_supports("avx512bf16")) ADD_FAILURE() << "AVX-512 CPU without the F32 packed GEMM";
}

// Each output is one tile's sum: bit-identical for any thread count, for both packed kernels. A
// non-finite activation makes its own output row non-finite and no other. Where the path is
// widen + OpenBLAS sgemm, whose sums may split differently with the thread count (seen on Zen 3),
// only the non-finite rows are checked.
TEST(MatmulBf16Gemm, IndependentOfThreadCountNonFiniteStaysInItsRow) {
  Rng rng(19);
  const int64_t M = 70, N = 259, K = 333;
  const Weights w = make_weights(DType::BF16, N, K, rng);
  std::vector<float> in = rng.vec(size_t(M * K));
  in[size_t(5 * K + 100)] = std::numeric_limits<float>::quiet_NaN();
  in[size_t(9 * K + 7)] = std::numeric_limits<float>::infinity();
  for (MatmulPath path : {MatmulPath::Blas, MatmulPath::Bf16Dot, MatmulPath::Bf16F32}) {
    SCOPED_TRACE(path_name(path));
    std::vector<float> a(size_t(M * N));
    if (matmul_bf16_kernel(path) != Bf16Kernel::Sgemm) {
      a = same_on_any_thread_count(path, w, in, M);
    } else {
      matmul_forward_path(path, a.data(), in.data(), w.view, nullptr, M);
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        ASSERT_EQ(std::isfinite(a[size_t(m * N + n)]), m != 5 && m != 9) << "m=" << m << " n=" << n;
  }
}

// matmul_backward's sums in double: rdinp += dout·W, rdW += doutᵀ·inp, rdbias += Σ_m dout.
void naive_backward_add(std::vector<double>& rdinp, std::vector<double>& rdW, std::vector<double>& rdbias,
                        const std::vector<float>& dout, const std::vector<float>& inp,
                        const std::vector<float>& W, int64_t M, int64_t N, int64_t K) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double g = dout[size_t(m * N + n)];
      rdbias[size_t(n)] += g;
      for (int64_t k = 0; k < K; ++k) {
        rdinp[size_t(m * K + k)] += g * W[size_t(n * K + k)];
        rdW[size_t(n * K + k)] += g * inp[size_t(m * K + k)];
      }
    }
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
    naive_backward_add(rdinp, rdW, rdbias, dout, inp, W, M, N, K);
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


// accumulate = false: dinp overwritten (sgemm's beta 0; never read, so NaN in it stays out) and
// checked against the double loop; dW, dbias still add. N = 0: dinp is all zeros.
TEST(Matmul, BackwardOverwriteMatchesNaiveDouble) {
  Rng rng(13);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t M : {1, 3, 65}) {
    const int64_t N = 37, K = 129;
    const std::vector<float> W = rng.vec(size_t(N * K)), inp = rng.vec(size_t(M * K));
    const std::vector<float> dout = rng.vec(size_t(M * N));
    std::vector<float> dinp(size_t(M * K), nan), dW = rng.vec(size_t(N * K)), dbias = rng.vec(size_t(N));
    std::vector<double> rdinp(size_t(M * K), 0.0), rdW(dW.begin(), dW.end()), rdbias(dbias.begin(), dbias.end());
    naive_backward_add(rdinp, rdW, rdbias, dout, inp, W, M, N, K);
    matmul_backward(dinp.data(), dW.data(), dbias.data(), dout.data(), inp.data(), W.data(), M, N, K,
                    false);
    EXPECT_LT(norm_err(dinp, rdinp), 1e-5) << "dinp M=" << M;
    EXPECT_LT(norm_err(dW, rdW), 1e-5) << "dW M=" << M;
    EXPECT_LT(norm_err(dbias, rdbias), 1e-5) << "dbias M=" << M;
  }
  std::vector<float> dinp(6, nan);
  matmul_backward(dinp.data(), nullptr, nullptr, nullptr, nullptr, nullptr, 2, 0, 3, false);
  EXPECT_EQ(dinp, std::vector<float>(6, 0.0f));
}

}  // namespace
}  // namespace hymba
