// The packed bf16-weight GEMM kernels (src/ops/bf16_gemm_packed-inl.h: vdpbf16ps and F32) on any
// x86 CPU: their AVX-512 intrinsics (vdpbf16ps included) emulated by SIMDe, against a naive double
// product. Checks the
// packing (16 x 16 transposes, K blocks, odd K, column tails), the register tile's row tails,
// bias / accumulate, and that a block's sums continue across K blocks. Built only where SIMDe's
// headers are installed (libsimde-dev); on AVX512-BF16 CPUs MatmulBf16Gemm.* run the real kernel.
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace emul {
// What SIMDe 0.7.4 (Debian 12) lacks: the mask types and the masked loads/stores the kernel uses.
typedef uint16_t __mmask16;
typedef uint32_t __mmask32;
#ifndef _mm512_maskz_loadu_epi16
inline __m512i _mm512_maskz_loadu_epi16(__mmask32 k, const void* p) {
  uint16_t v[32] = {};
  for (int i = 0; i < 32; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + 2 * i, 2);
  return _mm512_loadu_si512(v);
}
#endif
#ifndef _mm512_maskz_loadu_ps
inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, const float* p) {
  float v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) v[i] = p[i];
  return _mm512_loadu_ps(v);
}
#endif
#ifndef _mm512_mask_storeu_ps
inline void _mm512_mask_storeu_ps(float* p, __mmask16 k, __m512 x) {
  float v[16];
  _mm512_storeu_ps(v, x);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) p[i] = v[i];
}
#endif
#ifndef _mm256_maskz_loadu_epi16
inline __m256i _mm256_maskz_loadu_epi16(__mmask16 k, const void* p) {
  uint16_t v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + 2 * i, 2);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
}
#endif
#ifndef _mm512_cvtepu16_epi32
inline __m512i _mm512_cvtepu16_epi32(__m256i x) {
  uint16_t v[16];
  uint32_t r[16];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(v), x);
  for (int i = 0; i < 16; ++i) r[i] = v[i];
  return _mm512_loadu_si512(r);
}
#endif
inline __m512 Dpbf16(__m512 acc, __m512i a, __m512i b) {
  simde__m512bh x, y;
  std::memcpy(&x, &a, sizeof x);
  std::memcpy(&y, &b, sizeof y);
  return simde_mm512_dpbf16_ps(acc, x, y);
}
#include "ops/bf16_gemm_packed-inl.h"
}  // namespace emul

namespace {

uint16_t to_bf16(float f) {  // nearest-even, finite inputs
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
double from_bf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bias[N] and out[M, N] (init: a copy) for a mode: 2 accumulates onto random values; else out
// starts as 1e30, which must be overwritten.
struct OutCase {
  std::vector<float> bias, out, init;
};
OutCase make_out(std::mt19937& gen, int64_t M, int64_t N, int mode) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  OutCase c{std::vector<float>(size_t(N)), std::vector<float>(size_t(M * N)), {}};
  for (auto& x : c.bias) x = dist(gen);
  for (auto& x : c.out) x = mode == 2 ? dist(gen) : 1e30f;
  c.init = c.out;
  return c;
}

// out[m, n] against Σ_k term(m, n, k) in double (+ bias for mode >= 1, + init for mode 2), within
// the F32 rounding of `sums` sequential sums plus the initial value and bias: (sums + 8) ulps of
// Σ|terms|.
template <typename Term>
void ExpectNaive(const std::vector<float>& out, const std::vector<float>& init, const std::vector<float>& bias,
                 int mode, int64_t M, int64_t N, int64_t K, int64_t sums, Term term) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, mag = 0;
      if (mode) s += bias[size_t(n)], mag += std::fabs(bias[size_t(n)]);
      if (mode == 2) s += init[size_t(m * N + n)], mag += std::fabs(init[size_t(m * N + n)]);
      for (int64_t k = 0; k < K; ++k) {
        const double t = term(m, n, k);
        s += t, mag += std::fabs(t);
      }
      const double tol = double(sums + 8) * 0x1p-24 * mag;
      ASSERT_LE(std::fabs(out[size_t(m * N + n)] - s), tol)
          << "M=" << M << " N=" << N << " K=" << K << " mode=" << mode << " m=" << m << " n=" << n;
    }
}

TEST(Bf16GemmPackedEmul, Transpose16x16) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) {
    int32_t v[16];
    for (int j = 0; j < 16; ++j) v[j] = 100 * i + j;
    r[i] = _mm512_loadu_si512(v);
  }
  emul::Transpose16x16(r);
  for (int j = 0; j < 16; ++j) {
    int32_t v[16];
    _mm512_storeu_si512(v, r[j]);
    for (int i = 0; i < 16; ++i) ASSERT_EQ(v[i], 100 * i + j) << "row " << j << " lane " << i;
  }
}

// Every element of out against Σ in double, within the F32 rounding of a sequential sum over the
// K/2 pairs (plus the initial value and bias): (K/2 + 8) ulps of Σ|terms|.
TEST(Bf16GemmPackedEmul, MatchesNaiveDouble) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  uint32_t* bp = static_cast<uint32_t*>(std::aligned_alloc(64, emul::kBpKC / 2 * emul::kBpNR * 4));
  int cases = 0;
  for (int64_t M : {1, 5, 6, 7, 13})
    for (int64_t N : {1, 15, 17, 64, 65, 130})
      for (int64_t K : {1, 2, 3, 31, 33, 192, 193, 385, 450})
        for (int mode = 0; mode < 3; ++mode) {  // 0: plain, 1: bias, 2: bias + accumulate
          const int64_t lda = (K + 31) / 32 * 32;
          std::vector<uint16_t> a(size_t(M * lda), 0), w(size_t(N * K));
          for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < K; ++k) a[size_t(m * lda + k)] = to_bf16(dist(gen));
          for (auto& x : w) x = to_bf16(dist(gen));
          auto [bias, out, init] = make_out(gen, M, N, mode);
          for (int64_t n0 = 0; n0 < N; n0 += emul::kBpNR)
            emul::GemmBf16PackedColumns(out.data(), a.data(), lda, w.data(), mode ? bias.data() : nullptr, M, N,
                                        K, n0, std::min(emul::kBpNR, N - n0), mode == 2, bp);
          ExpectNaive(out, init, bias, mode, M, N, K, K / 2, [&](int64_t m, int64_t n, int64_t k) {
            return from_bf16(a[size_t(m * lda + k)]) * from_bf16(w[size_t(n * K + k)]);
          });
          ++cases;
        }
  std::free(bp);
  EXPECT_EQ(cases, 5 * 6 * 9 * 3);
}

// The F32 kernel (weights widened while packed, F32 activations): within a sequential F32 sum
// over K (K + 8 ulps of Σ|terms|); K past one and two K blocks (128), odd, and < 16.
TEST(Bf16GemmPackedEmul, F32KernelMatchesNaiveDouble) {
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  float* bp = static_cast<float*>(std::aligned_alloc(64, emul::kFpKC * emul::kBpNR * 4));
  int cases = 0;
  for (int64_t M : {1, 5, 6, 7, 13})
    for (int64_t N : {1, 15, 17, 64, 65, 130})
      for (int64_t K : {1, 2, 3, 15, 17, 31, 33, 128, 129, 257, 450})
        for (int mode = 0; mode < 3; ++mode) {  // 0: plain, 1: bias, 2: bias + accumulate
          std::vector<float> a(size_t(M * K));
          std::vector<uint16_t> w(size_t(N * K));
          for (auto& x : a) x = dist(gen);
          for (auto& x : w) x = to_bf16(dist(gen));
          auto [bias, out, init] = make_out(gen, M, N, mode);
          for (int64_t n0 = 0; n0 < N; n0 += emul::kBpNR)
            emul::GemmF32PackedColumns(out.data(), a.data(), w.data(), mode ? bias.data() : nullptr, M, N, K, n0,
                                       std::min(emul::kBpNR, N - n0), mode == 2, bp);
          ExpectNaive(out, init, bias, mode, M, N, K, K, [&](int64_t m, int64_t n, int64_t k) {
            return double(a[size_t(m * K + k)]) * from_bf16(w[size_t(n * K + k)]);
          });
          ++cases;
        }
  std::free(bp);
  EXPECT_EQ(cases, 5 * 6 * 11 * 3);
}

}  // namespace
