// Block-quantized weights (Q8, Q4_0): the quantizers' error bounds, and matmul_forward /
// matrow_to_f32 over quantized views against naive double loops over the dequantized values
// (decoded here from the bytes, independently of the library's dequantizers), on every Highway
// target.
#include "ops/quant.h"

#include <gtest/gtest.h>

#include <hwy/targets.h>

#include <cmath>
#include <limits>
#include <vector>

#include "base/error.h"
#include "ops/matmul.h"
#include "test_util.h"

namespace hymba {
namespace {

using test::norm_err;
using test::Rng;

struct TargetGuard {
  ~TargetGuard() { hwy::SetSupportedTargetsForTest(0); }
};

TEST(QuantQ8, ErrorWithinHalfAStep) {
  Rng rng(5);
  const int64_t n = 64 * kQ8Block;
  std::vector<float> x = rng.vec(size_t(n), -3.0f, 3.0f);
  for (int64_t i = 0; i < kQ8Block; ++i) x[size_t(i)] = 0.0f;               // an all-zero block
  for (int64_t i = kQ8Block; i < 2 * kQ8Block; ++i) x[size_t(i)] *= 1e-30f;  // a tiny one
  std::vector<int8_t> q(static_cast<size_t>(n));
  std::vector<float> sc(static_cast<size_t>(n / kQ8Block)), back(static_cast<size_t>(n));
  quantize_q8(q.data(), sc.data(), x.data(), n);
  dequantize_q8(back.data(), q.data(), sc.data(), n);
  EXPECT_EQ(sc[0], 0.0f);
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    float amax = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(x[size_t(b * kQ8Block + i)]));
    EXPECT_FLOAT_EQ(sc[size_t(b)], amax / 127.0f) << "block " << b;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      const size_t k = size_t(b * kQ8Block + i);
      EXPECT_LE(std::fabs(x[k] - back[k]), 0.5f * sc[size_t(b)] * (1.0f + 1e-5f)) << k;
      EXPECT_GE(q[k], -127);
    }
  }
}

TEST(QuantQ8, RejectsBadInput) {
  std::vector<float> x(40, 1.0f);
  std::vector<int8_t> q(40);
  std::vector<float> sc(2);
  EXPECT_THROW(quantize_q8(q.data(), sc.data(), x.data(), 40), Error);  // not a multiple of 32
  x[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_q8(q.data(), sc.data(), x.data(), 32), Error);
  // A Q8 view needs scales and a width that is a multiple of the block.
  std::vector<float> out(4), in(40);
  EXPECT_THROW(matmul_forward(out.data(), in.data(), MatView{q.data(), DType::Q8, 1, 32, nullptr}, nullptr, 1), Error);
  EXPECT_THROW(matmul_forward(out.data(), in.data(), MatView{q.data(), DType::Q8, 1, 40, sc.data()}, nullptr, 1), Error);
}

struct Q8Matrix {
  std::vector<int8_t> q;
  std::vector<float> sc;
  std::vector<double> exact;  // the dequantized values
  MatView view;
};

Q8Matrix make_q8(int64_t N, int64_t K, Rng& rng) {
  Q8Matrix m;
  const std::vector<float> f = rng.vec(size_t(N * K));
  m.q.resize(f.size());
  m.sc.resize(f.size() / kQ8Block);
  quantize_q8(m.q.data(), m.sc.data(), f.data(), N * K);
  m.exact.resize(f.size());
  for (size_t i = 0; i < f.size(); ++i) m.exact[i] = double(m.sc[i / kQ8Block] * float(m.q[i]));  // as F32 holds it
  m.view = MatView{m.q.data(), DType::Q8, N, K, m.sc.data()};
  return m;
}

// Q4_0 blocks and their values, decoded from the bytes by the layout's definition.
Q8Matrix make_q4_0(int64_t N, int64_t K, Rng& rng) {
  Q8Matrix m;
  const std::vector<float> f = rng.vec(size_t(N * K));
  m.q.resize(size_t(N * K / kQ4Block) * sizeof(BlockQ4_0));
  quantize_q4_0(reinterpret_cast<BlockQ4_0*>(m.q.data()), f.data(), N * K);
  m.exact.resize(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(m.q.data()) + (i / 32) * 18;
    const size_t j = i % 32;
    const int code = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    m.exact[i] = double(f16_to_f32(uint16_t(b[0] | b[1] << 8))) * (code - 8);
  }
  m.view = MatView{m.q.data(), DType::Q4_0, N, K};
  return m;
}

void check_matmul(DType t) {
  Rng rng(42);
  for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 128}, {129, 32}, {5, 64}, {11, 96}, {301, 1600}}) {
    const Q8Matrix w = t == DType::Q8 ? make_q8(N, K, rng) : make_q4_0(N, K, rng);
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r : {int64_t(0), N / 2, N - 1}) {
      matrow_to_f32(row.data(), w.view, r);
      for (int64_t k = 0; k < K; ++k) ASSERT_EQ(double(row[size_t(k)]), w.exact[size_t(r * K + k)]);
    }
    for (int64_t M : {1, 2, 3, 5, 33, 100}) {
      const std::vector<float> in = rng.vec(size_t(M * K)), bias = rng.vec(size_t(N)),
                               init = rng.vec(size_t(M * N));
      // The product is defined on the 8-bit activations (quantize_act_q8), on either path.
      std::vector<int8_t> aq(in.size());
      std::vector<float> ad(in.size() / kQ8Block);
      quantize_act_q8(aq.data(), ad.data(), in.data(), M * K);
      for (MatmulPath path : {MatmulPath::Auto, MatmulPath::Gemv, MatmulPath::Blas}) {
        for (int variant = 0; variant < 4; ++variant) {
          const bool use_bias = variant & 1, accumulate = variant & 2;
          std::vector<float> out = accumulate ? init : std::vector<float>(size_t(M * N), 123.0f);
          matmul_forward_path(path, out.data(), in.data(), w.view, use_bias ? bias.data() : nullptr, M, accumulate);
          std::vector<double> ref(size_t(M * N));
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double s = accumulate ? double(init[size_t(m * N + n)]) : 0.0;
              if (use_bias) s += bias[size_t(n)];
              for (int64_t k = 0; k < K; ++k)
                s += double(ad[size_t((m * K + k) / kQ8Block)]) * aq[size_t(m * K + k)] * w.exact[size_t(n * K + k)];
              ref[size_t(m * N + n)] = s;
            }
          // F32 sums of up to 1600 products: ~1e-6 relative; a wrong scale index gives ~1e-1.
          EXPECT_LT(norm_err(out, ref), 1e-5) << "M=" << M << " N=" << N << " K=" << K
                                              << " path=" << int(path) << " variant=" << variant;
        }
      }
    }
  }
}

TEST(QuantQ8, MatmulMatchesNaiveDoubleOnEveryTarget) {
  TargetGuard guard;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    check_matmul(DType::Q8);
  }
}

TEST(QuantAct, NearestWithTiesToEvenAndNonFiniteBlocks) {
  Rng rng(11);
  const int64_t n = 8 * kQ8Block;
  std::vector<float> x = rng.vec(size_t(n), -5.0f, 5.0f);
  for (int64_t i = 0; i < kQ8Block; ++i) x[size_t(i)] = 0.0f;  // block 0: all zero
  x[size_t(kQ8Block)] = 127.0f;                                 // block 1: scale 1, exact ties
  x[size_t(kQ8Block + 1)] = 2.5f, x[size_t(kQ8Block + 2)] = -3.5f, x[size_t(kQ8Block + 3)] = 0.5f;
  x[size_t(2 * kQ8Block + 7)] = std::numeric_limits<float>::quiet_NaN();
  x[size_t(3 * kQ8Block + 9)] = -std::numeric_limits<float>::infinity();
  std::vector<int8_t> q(static_cast<size_t>(n));
  std::vector<float> d(static_cast<size_t>(n / kQ8Block));
  quantize_act_q8(q.data(), d.data(), x.data(), n);
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(d[1], 1.0f);
  EXPECT_EQ(q[size_t(kQ8Block)], 127);
  EXPECT_EQ(q[size_t(kQ8Block + 1)], 2);   // 2.5 -> 2 (even)
  EXPECT_EQ(q[size_t(kQ8Block + 2)], -4);  // -3.5 -> -4 (even)
  EXPECT_EQ(q[size_t(kQ8Block + 3)], 0);
  EXPECT_TRUE(std::isnan(d[2]) && std::isnan(d[3]));
  for (int64_t i = 2 * kQ8Block; i < 4 * kQ8Block; ++i) EXPECT_EQ(q[size_t(i)], 0);
  for (int64_t k = 4 * kQ8Block; k < n; ++k)  // within half a step
    EXPECT_LE(std::fabs(x[size_t(k)] - d[size_t(k / kQ8Block)] * q[size_t(k)]), 0.5f * d[size_t(k / kQ8Block)] * 1.0001f);
}

TEST(QuantAct, NonFiniteActivationsGiveNaNNotUB) {
  TargetGuard guard;
  Rng rng(12);
  for (DType t : {DType::Q8, DType::Q4_0}) {
    const Q8Matrix w = t == DType::Q8 ? make_q8(8, 64, rng) : make_q4_0(8, 64, rng);
    std::vector<float> in = rng.vec(64 * 3), out(8 * 3);
    in[40] = std::numeric_limits<float>::infinity();  // row 0 only: rows 1, 2 stay finite
    for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
      hwy::SetSupportedTargetsForTest(target);
      for (MatmulPath path : {MatmulPath::Gemv, MatmulPath::Blas}) {  // GEMV and the int8 GEMM
        matmul_forward_path(path, out.data(), in.data(), w.view, nullptr, 3);
        for (int64_t i = 0; i < 24; ++i)
          EXPECT_EQ(std::isnan(out[size_t(i)]), i < 8) << hwy::TargetName(target) << " path " << int(path) << " " << i;
      }
    }
  }
}

TEST(QuantQ4_0, ErrorWithinHalfAStepAndExtremeExact) {
  Rng rng(6);
  const int64_t n = 64 * kQ4Block;
  std::vector<float> x = rng.vec(size_t(n), -3.0f, 3.0f);
  for (int64_t i = 0; i < kQ4Block; ++i) x[size_t(i)] = 0.0f;  // an all-zero block
  x[size_t(kQ4Block + 5)] = 7.0f;                                 // a positive extreme
  std::vector<BlockQ4_0> b(size_t(n / kQ4Block));
  std::vector<float> back(static_cast<size_t>(n));
  quantize_q4_0(b.data(), x.data(), n);
  dequantize_q4_0(back.data(), b.data(), n);
  EXPECT_EQ(f16_to_f32(b[0].d), 0.0f);
  EXPECT_FLOAT_EQ(f16_to_f32(b[1].d), f16_to_f32(f32_to_f16(-7.0f / 8)));
  for (int64_t k = 0; k < n; ++k) {
    const float d = std::fabs(f16_to_f32(b[size_t(k / kQ4Block)].d));
    // Codes span [-8, 7] steps: values up to 7.5 steps on the far side of the extreme round
    // within half a step; beyond that (at most one step) is the clamp.
    EXPECT_LE(std::fabs(x[size_t(k)] - back[size_t(k)]), d * (1.0f + 1e-3f)) << k;
    if (std::fabs(x[size_t(k)]) <= 7.5f * d)
      EXPECT_LE(std::fabs(x[size_t(k)] - back[size_t(k)]), 0.5f * d * (1.0f + 1e-3f)) << k;
  }
  // The extreme element is reproduced up to the F16 rounding of d.
  EXPECT_NEAR(back[size_t(kQ4Block + 5)], 7.0f, 7.0f * 1e-3f);
}

TEST(QuantQ4_0, RejectsBadInput) {
  std::vector<float> x(40, 1.0f);
  std::vector<BlockQ4_0> b(2);
  EXPECT_THROW(quantize_q4_0(b.data(), x.data(), 40), Error);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_q4_0(b.data(), x.data(), 32), Error);
  std::vector<float> out(4), in(40);
  EXPECT_THROW(matmul_forward(out.data(), in.data(), MatView{b.data(), DType::Q4_0, 1, 40}, nullptr, 1), Error);
}

TEST(QuantQ4_0, MatmulMatchesNaiveDoubleOnEveryTarget) {
  TargetGuard guard;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    check_matmul(DType::Q4_0);
  }
}

}  // namespace
}  // namespace hymba
