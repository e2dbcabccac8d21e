// Block-quantized weights (Q8, Q4_0, Q4_K): the quantizers' error bounds, and matmul_forward /
// matrow_to_f32 over quantized views against naive double loops over the dequantized values
// (decoded here from the bytes, independently of the library's dequantizers), on every Highway
// target.
#include "ops/quant.h"

#include <gtest/gtest.h>

#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "base/error.h"
#include "ops/matmul.h"
#include "ops/threads.h"
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

std::vector<double> decode_q4_k(const uint8_t* row, int64_t n);

// Q4_K rows (short last super-blocks where K is not a multiple of 256) and their values.
Q8Matrix make_q4_k(int64_t N, int64_t K, Rng& rng) {
  Q8Matrix m;
  const std::vector<float> f = rng.vec(size_t(N * K));
  const size_t stride = q4_k_row_bytes(K);
  m.q.resize(size_t(N) * stride);
  m.exact.resize(f.size());
  for (int64_t r = 0; r < N; ++r) {
    uint8_t* row = reinterpret_cast<uint8_t*>(m.q.data()) + size_t(r) * stride;
    quantize_q4_k(row, f.data() + r * K, K);
    const std::vector<double> v = decode_q4_k(row, K);
    std::copy(v.begin(), v.end(), m.exact.begin() + r * K);
  }
  m.view = MatView{m.q.data(), DType::Q4_K, N, K};
  return m;
}

Q8Matrix make_quant(DType t, int64_t N, int64_t K, Rng& rng) {
  return t == DType::Q8 ? make_q8(N, K, rng) : t == DType::Q4_0 ? make_q4_0(N, K, rng) : make_q4_k(N, K, rng);
}

// The product on the 8-bit activations (aq, ad from quantize_act_q8) in double:
// [init +] [bias +] Σ_k ad·aq·w, w the dequantized weights [N, K].
std::vector<double> ref_on_q8_acts(const std::vector<int8_t>& aq, const std::vector<float>& ad,
                                   const std::vector<double>& w, const float* init, const float* bias,
                                   int64_t M, int64_t N, int64_t K) {
  std::vector<double> ref(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = init ? double(init[m * N + n]) : 0.0;
      if (bias) s += bias[n];
      for (int64_t k = 0; k < K; ++k)
        s += double(ad[size_t((m * K + k) / kQ8Block)]) * aq[size_t(m * K + k)] * w[size_t(n * K + k)];
      ref[size_t(m * N + n)] = s;
    }
  return ref;
}

void check_matmul(DType t) {
  Rng rng(42);
  std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 128}, {129, 32}, {5, 64}, {11, 96}, {301, 1600}};
  if (t == DType::Q4_K) shapes.insert(shapes.end(), {{19, 512}, {23, 864}, {6, 224}});  // whole, and 3 / 7 sub-blocks over
  for (auto [N, K] : shapes) {
    const Q8Matrix w = make_quant(t, N, K, rng);
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r : {int64_t(0), N / 2, N - 1}) {
      matrow_to_f32(row.data(), w.view, r);
      for (int64_t k = 0; k < K; ++k)  // Q4_K: d·sc·q - dmin·m rounded in F32
        ASSERT_NEAR(double(row[size_t(k)]), w.exact[size_t(r * K + k)], t == DType::Q4_K ? 1e-6 : 0.0);
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
          const std::vector<double> ref = ref_on_q8_acts(aq, ad, w.exact, accumulate ? init.data() : nullptr,
                                                         use_bias ? bias.data() : nullptr, M, N, K);
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

// matmul_forward2 (gate and up in one parallel region at decode) gives the bits of two
// matmul_forward calls for every weight type, target, thread count and path (GEMV for small M,
// two separate products past it), with row counts that end mid-tile and mid-range; mixed
// dtypes or widths take two separate products.
TEST(Matmul2, SameBitsAsTwoCallsOnEveryTarget) {
  TargetGuard guard;
  const int saved = num_threads();
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    Rng rng(5);
    const int64_t K = 160;
    for (DType t : {DType::Q8, DType::Q4_0, DType::Q4_K, DType::BF16, DType::F32}) {
      std::vector<uint8_t> fb0, fb1;
      auto make = [&](int64_t N, std::vector<uint8_t>& fb) {
        if (is_block_quant(t)) return make_quant(t, N, t == DType::Q4_K ? 256 : K, rng);
        Q8Matrix m;
        const std::vector<float> f = rng.vec(size_t(N * K));
        fb.resize(f.size() * dtype_size(t));
        from_f32(fb.data(), t, f.data(), f.size());
        m.view = MatView{fb.data(), t, N, K};
        return m;
      };
      const Q8Matrix w0 = make(301, fb0), w1 = make(67, fb1);
      const int64_t Kw = w0.view.cols;
      for (int64_t M : {1, 3, 100}) {
        const std::vector<float> in = rng.vec(size_t(M * Kw));
        for (int nt : {1, 2}) {
          set_num_threads(nt);
          std::vector<float> a0(size_t(M * 301)), a1(size_t(M * 67)), b0(a0.size(), 7.0f), b1(a1.size(), 7.0f);
          matmul_forward(a0.data(), in.data(), w0.view, nullptr, M);
          matmul_forward(a1.data(), in.data(), w1.view, nullptr, M);
          matmul_forward2(b0.data(), b1.data(), in.data(), w0.view, w1.view, M);
          ASSERT_EQ(0, std::memcmp(a0.data(), b0.data(), a0.size() * sizeof(float))) << dtype_name(t) << " M=" << M;
          ASSERT_EQ(0, std::memcmp(a1.data(), b1.data(), a1.size() * sizeof(float))) << dtype_name(t) << " M=" << M;
        }
      }
    }
    // Different dtypes: two separate products.
    const Q8Matrix q = make_q8(40, 64, rng), r = make_q4_0(24, 64, rng);
    const std::vector<float> in = rng.vec(64);
    std::vector<float> a0(40), a1(24), b0(40), b1(24);
    matmul_forward(a0.data(), in.data(), q.view, nullptr, 1);
    matmul_forward(a1.data(), in.data(), r.view, nullptr, 1);
    matmul_forward2(b0.data(), b1.data(), in.data(), q.view, r.view, 1);
    EXPECT_EQ(a0, b0);
    EXPECT_EQ(a1, b1);
  }
  set_num_threads(saved);
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
  for (DType t : {DType::Q8, DType::Q4_0, DType::Q4_K}) {
    const Q8Matrix w = make_quant(t, 8, 64, rng);
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

// A Q4_K row decoded from its bytes by llama.cpp's block_q4_K definition, in double.
std::vector<double> decode_q4_k(const uint8_t* row, int64_t n) {
  std::vector<double> x(static_cast<size_t>(n));
  for (int64_t s = 0; s * 256 < n; ++s) {
    const uint8_t* b = row + s * 144;
    const double d = f16_to_f32(uint16_t(b[0] | b[1] << 8)), dmin = f16_to_f32(uint16_t(b[2] | b[3] << 8));
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int j = 0; j < 8 && s * 256 + j * 32 < n; ++j) {
      const int scale = j < 4 ? sc[j] % 64 : sc[j + 4] % 16 + 16 * (sc[j - 4] / 64);
      const int mn = j < 4 ? sc[j + 4] % 64 : sc[j + 4] / 16 + 16 * (sc[j] / 64);
      for (int i = 0; i < 32; ++i) {
        const int q = j % 2 ? qs[32 * (j / 2) + i] / 16 : qs[32 * (j / 2) + i] % 16;
        x[size_t(s * 256 + j * 32 + i)] = d * scale * q - dmin * mn;
      }
    }
  }
  return x;
}

TEST(QuantQ4_K, RowBytes) {
  EXPECT_EQ(q4_k_row_bytes(256), 144u);
  EXPECT_EQ(q4_k_row_bytes(768), 3 * 144u);
  EXPECT_EQ(q4_k_row_bytes(32), 16u + 32);    // a short super-block: header + one pair of codes
  EXPECT_EQ(q4_k_row_bytes(96), 16u + 64);
  EXPECT_EQ(q4_k_row_bytes(1600), 6 * 144u + 16 + 32);
  EXPECT_EQ(quant_matrix_bytes(DType::Q4_K, 3, 1600), 3 * (6 * 144u + 48));
  EXPECT_TRUE(quant_fits(DType::Q4_K, 1600));
  EXPECT_FALSE(quant_fits(DType::Q4_K, 1601));
  DType t;
  ASSERT_TRUE(quant_from_name("q4_k", &t));
  EXPECT_EQ(t, DType::Q4_K);
  EXPECT_STREQ(quant_name(DType::Q4_K), "q4_k");
}

// Per sub-block the error is within one step of the sub-block's own grid (range / 15) plus the
// 6-bit rounding of its min, and the RMS error is below q4_0's at the same 4.5 bits per weight
// (about 10% lower on these rows).
TEST(QuantQ4_K, RoundTripErrorBoundsAndBeatsQ4_0) {
  Rng rng(7);
  for (int64_t n : {int64_t(256), int64_t(768), int64_t(1600), int64_t(96), int64_t(32)}) {
    std::vector<float> x = rng.vec(size_t(n), -2.0f, 2.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = x[i] * x[i] * x[i];  // heavier tails than uniform
    if (n >= 256) {
      for (int64_t i = 32; i < 64; ++i) x[size_t(i)] = 0.0f;         // an all-zero sub-block
      for (int64_t i = 64; i < 96; ++i) x[size_t(i)] = -0.75f;       // a constant negative one
      for (int64_t i = 96; i < 128; ++i) x[size_t(i)] *= 1e-3f;       // a tiny one
      for (int64_t i = 160; i < 192; ++i) x[size_t(i)] = std::fabs(x[size_t(i)]) + 1.0f;  // all positive
    }
    std::vector<uint8_t> q(q4_k_row_bytes(n) + 7, 0xAB);  // the tail bytes past the row must stay
    quantize_q4_k(q.data(), x.data(), n);
    for (size_t i = q4_k_row_bytes(n); i < q.size(); ++i) ASSERT_EQ(q[i], 0xAB) << "wrote past the row, n=" << n;
    std::vector<float> back(static_cast<size_t>(n));
    dequantize_q4_k(back.data(), q.data(), n);
    const std::vector<double> ref = decode_q4_k(q.data(), n);
    double e2 = 0.0, x2 = 0.0;
    for (int64_t s = 0; s < n; s += 256) {
      const double dmin = f16_to_f32(uint16_t(q[size_t(s / 256 * 144 + 2)] | q[size_t(s / 256 * 144 + 3)] << 8));
      for (int64_t j = s; j < std::min(n, s + 256); j += 32) {
        float lo = 0.0f, hi = x[size_t(j)];
        for (int64_t i = j; i < j + 32; ++i) lo = std::min(lo, x[size_t(i)]), hi = std::max(hi, x[size_t(i)]);
        for (int64_t i = j; i < j + 32; ++i) {
          ASSERT_NEAR(back[size_t(i)], ref[size_t(i)], 1e-6 * (1.0 + std::fabs(ref[size_t(i)]))) << i;
          const double err = std::fabs(double(x[size_t(i)]) - ref[size_t(i)]);
          EXPECT_LE(err, (hi - lo) / 15.0 + 0.5 * dmin + 1e-6) << "n=" << n << " i=" << i;
          e2 += err * err, x2 += double(x[size_t(i)]) * x[size_t(i)];
        }
      }
    }
    if (n >= 256) {
      for (int64_t i = 32; i < 64; ++i) EXPECT_EQ(ref[size_t(i)], 0.0) << i;
      for (int64_t i = 64; i < 96; ++i) EXPECT_NEAR(ref[size_t(i)], -0.75, 0.75 * 2e-2) << i;
      std::vector<BlockQ4_0> b0(size_t(n / 32));
      std::vector<float> back0(static_cast<size_t>(n));
      quantize_q4_0(b0.data(), x.data(), n);
      dequantize_q4_0(back0.data(), b0.data(), n);
      double e2_0 = 0.0;
      for (int64_t i = 0; i < n; ++i) e2_0 += double(x[size_t(i)] - back0[size_t(i)]) * (x[size_t(i)] - back0[size_t(i)]);
      EXPECT_LT(e2, e2_0) << "n=" << n << ": q4_k rms " << std::sqrt(e2 / n) << " vs q4_0 " << std::sqrt(e2_0 / n);
    }
    EXPECT_LT(std::sqrt(e2 / x2), 0.1) << "n=" << n;
  }
}

// Importance weighting (--imatrix): the weighted error Σ w·(x - x̂)², w = importance · sqrt(σ² + x²)
// as quant.h defines it, of the rows decoded from their bytes here. With importance the 4-bit
// quantizers must do clearly better on that error than their plain rule (q4_0: never worse on any
// block, since the plain scale is one of its candidates); an all-zero importance is the plain rule.
struct Weighted {
  std::vector<float> x, imp;
  double sigma2 = 0;
  double err(const std::vector<double>& xq, int64_t lo, int64_t hi) const {
    double e = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const double w = imp[size_t(i)] * std::sqrt(sigma2 + double(x[size_t(i)]) * x[size_t(i)]);
      e += w * (x[size_t(i)] - xq[size_t(i)]) * (x[size_t(i)] - xq[size_t(i)]);
    }
    return e;
  }
};

Weighted weighted_row(Rng& rng, int64_t n) {
  Weighted r;
  r.x = rng.vec(size_t(n), -2.0f, 2.0f);
  for (float& v : r.x) v = v * v * v;
  r.imp.resize(size_t(n));
  for (float& v : r.imp) v = std::exp(4.0f * rng.uni());  // importances spread over e^8, as activations' are
  for (float v : r.x) r.sigma2 += double(v) * v;
  r.sigma2 /= double(n);
  return r;
}

std::vector<double> decode_q4_0(const std::vector<BlockQ4_0>& b, int64_t n) {
  std::vector<double> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto* p = reinterpret_cast<const uint8_t*>(&b[size_t(i / 32)]);
    const int64_t j = i % 32;
    const int code = j < 16 ? (p[2 + j] & 15) : (p[2 + j - 16] >> 4);
    x[size_t(i)] = double(f16_to_f32(uint16_t(p[0] | p[1] << 8))) * (code - 8);
  }
  return x;
}

TEST(QuantImportance, Q4_0NeverWorseOnABlockAndBetterOverall) {
  Rng rng(21);
  double plain = 0, weighted = 0;
  for (int r = 0; r < 16; ++r) {
    const int64_t n = 1600;
    const Weighted w = weighted_row(rng, n);
    std::vector<BlockQ4_0> b0(size_t(n / 32)), b1(b0.size()), bz(b0.size());
    quantize_q4_0(b0.data(), w.x.data(), n);
    quantize_q4_0(b1.data(), w.x.data(), n, w.imp.data());
    const std::vector<float> zero(size_t(n), 0.0f);
    quantize_q4_0(bz.data(), w.x.data(), n, zero.data());
    ASSERT_EQ(std::memcmp(b0.data(), bz.data(), b0.size() * sizeof(BlockQ4_0)), 0) << "zero importance is the plain rule";
    const std::vector<double> x0 = decode_q4_0(b0, n), x1 = decode_q4_0(b1, n);
    for (int64_t s = 0; s < n; s += 32) {
      const double e0 = w.err(x0, s, s + 32), e1 = w.err(x1, s, s + 32);
      ASSERT_LE(e1, e0 * (1 + 1e-9) + 1e-12) << "row " << r << " block " << s / 32;
      plain += e0, weighted += e1;
    }
  }
  EXPECT_LT(weighted, 0.9 * plain) << "weighted error, importance " << weighted << " vs plain " << plain;
}

TEST(QuantImportance, Q4_KBetterOverallAndZeroImportanceIsPlain) {
  Rng rng(22);
  double plain = 0, weighted = 0;
  for (int r = 0; r < 16; ++r) {
    const int64_t n = r % 2 ? 1600 : 512;  // with and without a short last super-block
    const Weighted w = weighted_row(rng, n);
    std::vector<uint8_t> q0(q4_k_row_bytes(n)), q1(q0.size()), qz(q0.size());
    quantize_q4_k(q0.data(), w.x.data(), n);
    quantize_q4_k(q1.data(), w.x.data(), n, w.imp.data());
    const std::vector<float> zero(size_t(n), 0.0f);
    quantize_q4_k(qz.data(), w.x.data(), n, zero.data());
    ASSERT_EQ(q0, qz) << "zero importance is the plain rule";
    plain += w.err(decode_q4_k(q0.data(), n), 0, n);
    weighted += w.err(decode_q4_k(q1.data(), n), 0, n);
  }
  EXPECT_LT(weighted, 0.9 * plain) << "weighted error, importance " << weighted << " vs plain " << plain;
}

TEST(QuantQ4_K, RejectsBadInput) {
  std::vector<float> x(40, 1.0f);
  std::vector<uint8_t> q(q4_k_row_bytes(64));
  EXPECT_THROW(quantize_q4_k(q.data(), x.data(), 40), Error);
  x[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_q4_k(q.data(), x.data(), 32), Error);
  std::vector<float> out(4), in(40);
  EXPECT_THROW(matmul_forward(out.data(), in.data(), MatView{q.data(), DType::Q4_K, 1, 40}, nullptr, 1), Error);
}

TEST(QuantQ4_K, MatmulMatchesNaiveDoubleOnEveryTarget) {
  TargetGuard guard;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    check_matmul(DType::Q4_K);
  }
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

namespace hymba {
namespace {

// The x8 layout (rows interleaved in tiles of 8, src/ops/quant.h): a permutation of the plain
// layout's bytes; matmul_forward (GEMV and GEMM paths) and matrow_to_f32 read it on every target.
// It gives the plain layout's bits on every target and path (each GEMV kernel runs the same
// per-lane operations on either layout), and the naive double bound everywhere.
TEST(QuantQ4_0x8, PermutationOfThePlainBytes) {
  EXPECT_TRUE(q4_0x8_fits(16, 128));
  EXPECT_FALSE(q4_0x8_fits(12, 128));  // rows not a multiple of 8
  EXPECT_FALSE(q4_0x8_fits(16, 96));   // an odd number of blocks per row
  const int64_t N = 24, K = 192, KB = K / kQ4Block;
  const size_t bytes = quant_matrix_bytes(DType::Q4_0, N, K);
  std::vector<int> hits(bytes, 0);
  const std::vector<uint8_t> buf(bytes);
  const uint8_t* base = buf.data();
  for (int64_t r = 0; r < N; ++r)
    for (int64_t b = 0; b < KB; ++b) {
      for (int i = 0; i < 2; ++i) ++hits[size_t(q4_0x8_scale(base, KB, r, b) - base) + size_t(i)];
      for (int i = 0; i < 16; ++i) ++hits[size_t(q4_0x8_codes(base, KB, r, b) - base) + size_t(i)];
    }
  for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(hits[i], 1) << "byte " << i;
  Rng rng(3);
  const Q8Matrix w = make_q4_0(N, K, rng);
  std::vector<uint8_t> x(bytes);
  repack_q4_0x8(x.data(), reinterpret_cast<const BlockQ4_0*>(w.q.data()), N, K);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t b = 0; b < KB; ++b) {
      const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(w.q.data())[r * KB + b];
      ASSERT_EQ(0, std::memcmp(q4_0x8_scale(x.data(), KB, r, b), &blk.d, 2));
      ASSERT_EQ(0, std::memcmp(q4_0x8_codes(x.data(), KB, r, b), blk.qs, 16));
    }
  EXPECT_THROW(repack_q4_0x8(x.data(), reinterpret_cast<const BlockQ4_0*>(w.q.data()), 12, K), Error);
  std::vector<float> out(16), in(96);
  MatView bad{x.data(), DType::Q4_0, 12, 64};
  bad.x8 = true;
  EXPECT_THROW(matmul_forward(out.data(), in.data(), bad, nullptr, 1), Error);
  MatView q8{x.data(), DType::Q8, 8, 64, reinterpret_cast<const float*>(x.data())};
  q8.x8 = true;
  EXPECT_THROW(matmul_forward(out.data(), in.data(), q8, nullptr, 1), Error);
}

TEST(QuantQ4_0x8, MatmulMatchesNaiveDoubleAndThePlainLayoutOnEveryTarget) {
  TargetGuard guard;
  const int saved = num_threads();
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    Rng rng(9);
    for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{8, 64}, {40, 128}, {304, 1600}, {24, 5504}}) {
      const Q8Matrix w = make_q4_0(N, K, rng);
      std::vector<uint8_t> xb(w.q.size());
      repack_q4_0x8(xb.data(), reinterpret_cast<const BlockQ4_0*>(w.q.data()), N, K);
      MatView x8{xb.data(), DType::Q4_0, N, K};
      x8.x8 = true;
      std::vector<float> row(static_cast<size_t>(K)), prow(static_cast<size_t>(K));
      for (int64_t r : {int64_t(0), N / 2 + 1, N - 1}) {
        matrow_to_f32(row.data(), x8, r);
        matrow_to_f32(prow.data(), w.view, r);
        ASSERT_EQ(row, prow) << "row " << r;
      }
      for (int64_t M : {1, 2, 3, 5, 16, 17, 40}) {
        const std::vector<float> in = rng.vec(size_t(M * K)), bias = rng.vec(size_t(N)), init = rng.vec(size_t(M * N));
        std::vector<int8_t> aq(in.size());
        std::vector<float> ad(in.size() / kQ8Block);
        quantize_act_q8(aq.data(), ad.data(), in.data(), M * K);
        for (MatmulPath path : {MatmulPath::Gemv, MatmulPath::Blas}) {
          for (int nt : {1, 2}) {
            set_num_threads(nt);
            const bool use_bias = nt == 2, accumulate = M % 2 == 1;
            std::vector<float> out = accumulate ? init : std::vector<float>(size_t(M * N), 123.0f), plain = out;
            matmul_forward_path(path, out.data(), in.data(), x8, use_bias ? bias.data() : nullptr, M, accumulate);
            matmul_forward_path(path, plain.data(), in.data(), w.view, use_bias ? bias.data() : nullptr, M, accumulate);
            ASSERT_EQ(0, std::memcmp(out.data(), plain.data(), out.size() * sizeof(float)))
                <<  "M=" << M << " N=" << N << " K=" << K << " path=" << int(path) << " nt=" << nt;
            const std::vector<double> ref = ref_on_q8_acts(aq, ad, w.exact, accumulate ? init.data() : nullptr,
                                                           use_bias ? bias.data() : nullptr, M, N, K);
            EXPECT_LT(norm_err(out, ref), 1e-5) << "M=" << M << " N=" << N << " K=" << K << " path=" << int(path);
          }
        }
      }
    }
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace hymba
