#include "ops/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "ops/quant.h"
#include "ops/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "ops/widen-inl.h"

#ifndef HYMBA_MATMUL_QACTS_
#define HYMBA_MATMUL_QACTS_  // once, outside the per-target namespaces: the kernels' argument type
namespace hymba {
// Q4_0's activations for the 256-bit kernel, per pair of blocks (b, b+1) of one row, laid out so
// that one load of two blocks' nibbles [qs_b | qs_b+1] meets them: lo / hi = the codes the low /
// high nibbles multiply, c = 8·(the pair of codes each int16 lane of maddubs sums, lo and hi) so
// that Σ(nibble - 8)·x = Σ nibble·x - c, and d = the blocks' scales, 4 lanes each. A missing
// block b+1 (odd K/32) is zeros.
struct PairQ4 {
  int8_t lo[32], hi[32];
  int16_t c[16];
  float d[8];
};
struct QActs {
  const int8_t* q;
  const float* d;
  const PairQ4* p;  // Q4_0 only: (K/32 + 1)/2 per row
};
}  // namespace hymba
#endif

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

// out[j·N + r] (=|+=) s + bias[r]: how every tile below stores the sum of weight row r and input j.
HWY_INLINE void StoreSum(float* out, int64_t N, int r, int j, float s, const float* bias, bool accumulate) {
  if (bias) s += bias[r];
  float& o = out[j * N + r];
  o = accumulate ? o + s : s;
}


// Q8 rows: int8 widened and multiplied by the block's scale (a vector never straddles two
// blocks: the lane count divides kQ8Block).
HWY_INLINE hn::Vec<DF> LoadQ8(DF df, const int8_t* w, const float* sc, int64_t k) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  return hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, w + k))), hn::Set(df, sc[k / kQ8Block]));
}
// Q4_0 rows: the lanes k.. of one block (the lane count divides 16, so they are all low or all
// high nibbles), code - 8 times the block's F16 scale.
HWY_INLINE hn::Vec<DF> LoadQ4(DF df, const BlockQ4_0* row, int64_t k) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint8_t, DF> d8;
  const BlockQ4_0& b = row[k / kQ4Block];
  const int64_t j = k % kQ4Block;
  auto v = hn::PromoteTo(di, hn::LoadU(d8, b.qs + (j & (kQ4Block / 2 - 1))));
  v = j < kQ4Block / 2 ? hn::And(v, hn::Set(di, 15)) : hn::ShiftRight<4>(v);
  return hn::Mul(hn::ConvertTo(df, hn::Sub(v, hn::Set(di, 8))), hn::Set(df, f16_to_f32(b.d)));
}
template <class T>
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const T* w, const float*, int64_t k) { return LoadW(df, w + k); }
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const int8_t* w, const float* sc, int64_t k) { return LoadQ8(df, w, sc, k); }
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const BlockQ4_0* w, const float*, int64_t k) { return LoadQ4(df, w, k); }
template <class T>
HWY_INLINE float RowAt(const T* w, const float*, int64_t k) { return ToF(w[k]); }
HWY_INLINE float RowAt(const int8_t* w, const float* sc, int64_t k) { return sc[k / kQ8Block] * float(w[k]); }
HWY_INLINE float RowAt(const BlockQ4_0* w, const float*, int64_t k) {
  const BlockQ4_0& b = w[k / kQ4Block];
  const int64_t j = k % kQ4Block, h = kQ4Block / 2;
  return f16_to_f32(b.d) * float((j < h ? (b.qs[j] & 15) : (b.qs[j - h] >> 4)) - 8);
}
// Where element k of a row starts (for prefetching), and the row stride in units of T.
template <class T>
HWY_INLINE const void* ElemAddr(const T* w, int64_t k) { return w + k; }
HWY_INLINE const void* ElemAddr(const BlockQ4_0* w, int64_t k) { return w + k / kQ4Block; }
template <class T>
constexpr int64_t RowStride(int64_t K) { return K; }
template <>
constexpr int64_t RowStride<BlockQ4_0>(int64_t K) { return K / kQ4Block; }

// out[m, n] (=|+=) Σ_k in[m, k]·w[n, k] for R weight rows n0.. and MC inputs m0..: each weight
// vector is loaded (and widened) once and used MC times. Summation order is fixed by K and the
// target only, so the result never depends on the thread count. sc: the Q8 scales of the tile's
// first row (null for float types).
// pf: where to prefetch from instead (pf_inc bytes further each vector step), or null for the
// next tile's rows.
template <int R, int MC, typename T>
HWY_INLINE void Tile(float* out, int64_t N, const float* in, const T* w, const float* sc, int64_t K,
                     const float* bias, bool accumulate, const char* pf = nullptr, int64_t pf_inc = 0) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t KB = K / kQ8Block;  // scales per row (Q8)
  const int64_t ld = RowStride<T>(K);
  hn::Vec<DF> acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = hn::Zero(df);
  int64_t k = 0;
  for (; k + NL <= K; k += NL) {
    hn::Vec<DF> x[MC];
    for (int j = 0; j < MC; ++j) x[j] = hn::LoadU(df, in + j * K + k);
    if (pf) hwy::Prefetch(pf), pf += pf_inc;
    for (int r = 0; r < R; ++r) {
      // The next tile's rows (contiguous after ours): short row streams defeat the hardware
      // prefetcher, and without this the GEMV reaches only ~60% of DRAM bandwidth.
      if (!pf) hwy::Prefetch(ElemAddr(w + (r + R) * ld, k));
      const auto wv = LoadRow(df, w + r * ld, sc ? sc + r * KB : nullptr, k);
      for (int j = 0; j < MC; ++j) acc[r][j] = hn::MulAdd(wv, x[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MC; ++j) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][j]));
      for (int64_t kk = k; kk < K; ++kk) s += RowAt(w + r * ld, sc ? sc + r * KB : nullptr, kk) * in[j * K + kk];
      StoreSum(out, N, r, j, s, bias, accumulate);
    }
  }
}

// Rows [n0, n1) of out for all M inputs, in chunks of up to 4 inputs: the weight rows of a tile
// come from DRAM once and are re-read from L1 for the next input chunk. pf (AVX2, several
// passes): this pass's share of the next row block, pf_inc bytes per vector step (see GemvRangeT).
template <int MC, typename T>
HWY_INLINE void RowsMC(float* out, int64_t N, const float* in, const T* w, const float* sc,
                       int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc,
                       const char* pf = nullptr, int64_t pf_inc = 0) {
  // AVX2 (16 registers): 4 rows x 1-3 inputs (12 accumulators + 3 inputs + 1 weight vector) or
  // 2 rows x 4. AVX-512 (32): 4 rows x up to 4 inputs, each weight vector widened once for
  // twice the inputs.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  constexpr int R = 4;
#elif HWY_TARGET == HWY_AVX2
  constexpr int R = MC == 4 ? 2 : 4;
#else
  constexpr int R = MC <= 2 ? 4 : 2;
#endif
  const int64_t KB = K / kQ8Block, ld = RowStride<T>(K);
  const int64_t steps = pf ? K / int64_t(hn::Lanes(DF())) * pf_inc : 0;  // bytes per tile
  int64_t n = n0;
  for (; n + R <= n1; n += R, pf = pf ? pf + steps : pf)
    Tile<R, MC>(out + n, N, in, w + n * ld, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc, pf, pf_inc);
  for (; n < n1; ++n, pf = pf ? pf + steps : pf)
    Tile<1, MC>(out + n, N, in, w + n * ld, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc, pf, pf_inc);
}

template <typename T>
void GemvRangeT(float* out, const float* in, const T* w, const float* sc, const float* bias,
                int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1, bool acc) {
#if HWY_TARGET == HWY_AVX2
  // Chunks of 3 inputs (4 x 3 tiles: 1.4x the FLOPs per cycle of 2 x 4 with the weights in
  // cache), M = 4 in one pass of 2 x 4. Blocks of ~96 KiB of weight rows stay in L2 while the
  // passes go over them. The DRAM reads would all fall in the first pass (too fast a stream for
  // one core: the product then waits on memory); instead every pass prefetches its equal share
  // of the next block, one line per 1/passes of a vector step (bf16 K = 1600, M = 8, one core:
  // 59 -> 65 GFLOP/s from DRAM, 70 with the weights in L3).
  const int64_t row_bytes = int64_t(sizeof(T)) * RowStride<T>(K);
  const int64_t kBlock = std::clamp<int64_t>((int64_t(96) << 10) / row_bytes / 4 * 4, 4, 256);
  const int64_t MCH = M == 4 ? 4 : 3, passes = (M + MCH - 1) / MCH;
  const int64_t vsteps = K / int64_t(hn::Lanes(DF()));
  const char* base = reinterpret_cast<const char*>(w);
  for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
    const int64_t b1 = std::min(n1, b0 + kBlock);
    // The next block's bytes (within this thread's rows), split evenly over the passes' tile
    // steps (tiles of 4 rows, then single rows: R = 4 whenever passes > 1).
    const int64_t next = (std::min(n1, b1 + kBlock) - b1) * row_bytes;
    const int64_t pass_steps = ((b1 - b0) / 4 + (b1 - b0) % 4) * vsteps;
    const int64_t inc = passes > 1 && pass_steps > 0 ? next / (passes * pass_steps) : 0;
    const char* pf = inc > 0 ? base + b1 * row_bytes : nullptr;
    int64_t m = 0;
    for (int64_t p = 0; m < M; ++p) {
      const int64_t mc = std::min<int64_t>(MCH, M - m);
      const char* pp = pf ? pf + p * pass_steps * inc : nullptr;
      switch (mc) {
        case 4: RowsMC<4>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc, pp, inc); break;
        case 3: RowsMC<3>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc, pp, inc); break;
        case 2: RowsMC<2>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc, pp, inc); break;
        default: RowsMC<1>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc, pp, inc); break;
      }
      m += mc;
    }
  }
#else
  // Row blocks outside, input chunks inside: a block of 32 rows (bf16 K=1600: 100 KB) stays
  // in L2 while every input chunk passes over it.
  constexpr int64_t kBlock = 32;
  for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
    const int64_t b1 = std::min(n1, b0 + kBlock);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) RowsMC<4>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc);
    switch (M - m) {
      case 3: RowsMC<3>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc); break;
      case 2: RowsMC<2>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc); break;
      case 1: RowsMC<1>(out + m * N, N, in + m * K, w, sc, K, bias, b0, b1, acc); break;
      default: break;
    }
  }
#endif
}

void GemvRange(float* out, const float* in, const void* w, int dtype, const float* sc,
               const float* bias, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1, bool acc) {
  switch (DType(dtype)) {
    case DType::BF16:
      GemvRangeT(out, in, static_cast<const hwy::bfloat16_t*>(w), nullptr, bias, M, N, K, n0, n1, acc);
      break;
    case DType::F16:
      GemvRangeT(out, in, static_cast<const hwy::float16_t*>(w), nullptr, bias, M, N, K, n0, n1, acc);
      break;
    case DType::Q8:
      GemvRangeT(out, in, static_cast<const int8_t*>(w), sc, bias, M, N, K, n0, n1, acc);
      break;
    case DType::Q4_0:
      GemvRangeT(out, in, static_cast<const BlockQ4_0*>(w), nullptr, bias, M, N, K, n0, n1, acc);
      break;
    default:
      GemvRangeT(out, in, static_cast<const float*>(w), nullptr, bias, M, N, K, n0, n1, acc);
      break;
  }
}

// ---- Q8/Q4_0 weights times 8-bit activations (quantize_act_q8): int8 dot products per block of
// 32, scaled by d_w·d_x into F32 sums. x86 (AVX2, AVX-512, VNNI) takes the SIMD path below;
// every other target the scalar loop, which computes the same integer block sums.

// Activations of M rows: codes q[M, K], scales d[M, K/32], and for Q4_0 the pairs p[M, (K/32+1)/2]
// on the targets whose GEMV reads them (TileQ4Pairs; the VNNI and portable ones do not).
constexpr bool kQ4Pairs = HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3;
void QuantizeActs(const float* x, int64_t M, int64_t K, int8_t* q, float* d, PairQ4* p) {
  const DF df;
  const hn::Rebind<int8_t, DF> d8;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t KB = K / kQ8Block;
  for (int64_t b = 0; b < M * KB; ++b) {
    const float* xb = x + b * kQ8Block;
    auto vmax = hn::Zero(df), nan = hn::Zero(df);
    for (int64_t i = 0; i < kQ8Block; i += NL) {
      const auto v = hn::LoadU(df, xb + i);
      vmax = hn::Max(vmax, hn::Abs(v));
      nan = hn::Add(nan, hn::Mul(v, hn::Zero(df)));  // NaN iff some element is NaN or Inf
    }
    float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
    const bool finite = !std::isnan(hn::GetLane(hn::SumOfLanes(df, nan)));
    if (!finite) amax = 0.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = finite ? amax / 127.0f : NAN;
    const auto vid = hn::Set(df, id);
    for (int64_t i = 0; i < kQ8Block; i += NL)
      hn::StoreU(hn::DemoteTo(d8, hn::NearestInt(hn::Mul(hn::LoadU(df, xb + i), vid))), d8, q + b * kQ8Block + i);
  }
  if (!p || !kQ4Pairs) return;
  const int64_t KP = (KB + 1) / 2;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < KP; ++i) {
      PairQ4& pr = p[m * KP + i];
      std::memset(&pr, 0, sizeof(pr));
      for (int64_t h = 0; h < 2 && 2 * i + h < KB; ++h) {
        const int64_t b = m * KB + 2 * i + h;
        const int8_t* qb = q + b * kQ8Block;
        std::memcpy(pr.lo + 16 * h, qb, 16);
        std::memcpy(pr.hi + 16 * h, qb + 16, 16);
        for (int l = 0; l < 8; ++l)
          pr.c[8 * h + l] = int16_t(8 * (qb[2 * l] + qb[2 * l + 1] + qb[16 + 2 * l] + qb[16 + 2 * l + 1]));
        for (int l = 0; l < 4; ++l) pr.d[4 * h + l] = d[b];
      }
    }
}

// Block b of Q4_0 row r (KB blocks per row) in the plain or the x8 layout: F16 scale, code bytes.
HWY_INLINE const uint8_t* Q4BlockAt(const void* wp, bool x8, int64_t KB, int64_t r, int64_t b, uint16_t* d) {
  const auto* w = static_cast<const uint8_t*>(wp);
  if (x8) {
    std::memcpy(d, q4_0x8_scale(w, KB, r, b), 2);
    return q4_0x8_codes(w, KB, r, b);
  }
  const BlockQ4_0& blk = reinterpret_cast<const BlockQ4_0*>(w)[r * KB + b];
  *d = blk.d;
  return blk.qs;
}
// d_w·d_x·Σ w·x of block b of weight row r and activation row j, in scalar code: the portable
// targets' whole sum, and the 512-bit kernel's odd last block. x8: wp is the matrix (r the
// absolute row), as Q4BlockAt.
HWY_INLINE float BlockTermScalar(const QActs& a, const void* wp, bool q4, const float* sc, int64_t K,
                                 int64_t r, int64_t j, int64_t b, bool x8 = false) {
  const int64_t KB = K / kQ8Block;
  const int8_t* xq = a.q + j * K + b * kQ8Block;
  int32_t isum = 0;
  float dw;
  if (q4) {
    uint16_t d;
    const uint8_t* qs = Q4BlockAt(wp, x8, KB, r, b, &d);
    for (int i = 0; i < 16; ++i) isum += ((qs[i] & 15) - 8) * xq[i] + ((qs[i] >> 4) - 8) * xq[i + 16];
    dw = f16_to_f32(d);
  } else {
    const int8_t* wr = static_cast<const int8_t*>(wp) + r * K + b * kQ8Block;
    for (int i = 0; i < kQ8Block; ++i) isum += wr[i] * xq[i];
    dw = sc[r * KB + b];
  }
  return dw * a.d[j * KB + b] * float(isum);
}

#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// Σ of 4 adjacent u8·s8 products per int32 lane (u ≤ 127 here, so maddubs cannot saturate).
HWY_INLINE __m256i Dot4(__m256i u, __m256i s) {
#if HWY_TARGET == HWY_AVX3_DL
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
HWY_INLINE float HSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}
// Two Q4_0 blocks' 32 code bytes (low nibbles: block b, high: b+1) dotted with the activations of
// PairQ4, as 8 F32 partial sums (the scales not applied). Both maddubs results add in int16.
HWY_INLINE __m256 PairSums(__m256i qs, const PairQ4& x) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_and_si256(qs, low4), hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), low4);
  const __m256i t = _mm256_sub_epi16(
      _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.lo))),
                       _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.hi)))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.c)));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(t, _mm256_set1_epi16(1)));
}
// Q4_0: R weight rows × MC activation rows, two blocks per step. One 256-bit load holds both
// blocks' nibbles, the low and high nibbles meet the activations of PairQ4, and both maddubs
// results add in int16 (|Σ| ≤ 2·2·15·127 + 4064), so per two blocks there is one widening
// madd, one convert and one FMA per row: half the work per block of one block per step.
template <int R, int MC>
HWY_INLINE void TileQ4Pairs(float* out, int64_t N, const QActs& a, const BlockQ4_0* w, int64_t K,
                            const float* bias, bool accumulate) {
  const int64_t KB = K / kQ8Block, KP = (KB + 1) / 2;
  __m256 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = _mm256_setzero_ps();
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  // Blocks b and b+1 of row r (b+1 absent: zeros, and nothing past the row is read).
  auto step = [&](int64_t i, int r, bool two) HWY_ATTR {
    const BlockQ4_0* blk = w + r * KB + 2 * i;
    _mm_prefetch(reinterpret_cast<const char*>(blk + R * KB), _MM_HINT_T0);
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[0].qs));
    const __m128i q1 = two ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[1].qs)) : _mm_setzero_si128();
    const __m256i qs = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    // d_b is word 0 of the block, d_b+1 word 1 of the 16 bytes from byte 16 of the pair.
    const __m128i h = two ? _mm_blend_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)),
                                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                reinterpret_cast<const uint8_t*>(blk) + 16)), 0x02)
                          : _mm_cvtsi32_si128(blk[0].d);
    const __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(h)), spread);
    for (int j = 0; j < MC; ++j) {
      const PairQ4& x = a.p[j * KP + i];
      acc[r][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_loadu_ps(x.d)), PairSums(qs, x), acc[r][j]);
    }
  };
  for (int64_t i = 0; i < KB / 2; ++i)
    for (int r = 0; r < R; ++r) step(i, r, true);
  if (KB % 2)
    for (int r = 0; r < R; ++r) step(KB / 2, r, false);
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) StoreSum(out, N, r, j, HSum(acc[r][j]), bias, accumulate);
}
// Q4_0 in the x8 layout (src/ops/quant.h): rows h0..h0+RH-1 of a tile of 8 × MC activation rows.
// Per row and pair the same operations as TileQ4Pairs (the same bits), but the tile is one
// contiguous stream, one load gives 4 rows' scales (times the activation scales in one multiply,
// then one in-lane permute per row), and a row's two blocks of codes are one load.
HWY_INLINE __m256 Lane4(__m256 v, int r) {  // [v_r x4 | v_4+r x4]
  switch (r & 3) {
    case 0: return _mm256_permute_ps(v, 0x00);
    case 1: return _mm256_permute_ps(v, 0x55);
    case 2: return _mm256_permute_ps(v, 0xAA);
    default: return _mm256_permute_ps(v, 0xFF);
  }
}
constexpr int64_t kQ4x8Prefetch = 1024;  // bytes ahead in the tile's stream
template <int RH, int MC>
HWY_INLINE void TileQ4x8(float* out, int64_t N, const QActs& a, const uint8_t* tile, int h0, int64_t K,
                         const float* bias, bool accumulate) {
  const int64_t KP = K / kQ8Block / 2;
  constexpr int G = RH / 4;  // groups of 4 rows' scales
  __m256 acc[RH][MC];
  for (int r = 0; r < RH; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < KP; ++i) {
    const uint8_t* g = tile + i * kQ4x8Step;
    if (h0 == 0)
      for (int64_t o = 0; o < kQ4x8Step; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(g + kQ4x8Prefetch + o), _MM_HINT_T0);
    __m256 s[G][MC];
    for (int q = 0; q < G; ++q) {
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16 * (h0 / 4 + q))));
      for (int j = 0; j < MC; ++j) s[q][j] = _mm256_mul_ps(d, _mm256_loadu_ps(a.p[j * KP + i].d));
    }
    for (int r = 0; r < RH; ++r) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 4 * kQ4x8Rows + 32 * (h0 + r)));
      for (int j = 0; j < MC; ++j)
        acc[r][j] = _mm256_fmadd_ps(Lane4(s[r / 4][j], r), PairSums(qs, a.p[j * KP + i]), acc[r][j]);
    }
  }
  for (int r = 0; r < RH; ++r)
    for (int j = 0; j < MC; ++j) StoreSum(out, N, r, j, HSum(acc[r][j]), bias, accumulate);
}
// Rows [n0, n1) (multiples of 8) of the x8 layout: a tile's 8 rows at once for one activation row,
// in two halves of 4 for two (16 accumulators would not fit the registers).
template <int MC>
HWY_INLINE void RowsQ4x8(float* out, int64_t N, const QActs& a, const void* w, int64_t K, const float* bias,
                         int64_t n0, int64_t n1, bool acc) {
  const int64_t tile_bytes = kQ4x8Rows * (K / kQ8Block) * int64_t(sizeof(BlockQ4_0));
  for (int64_t n = n0; n < n1; n += kQ4x8Rows) {
    const uint8_t* tile = static_cast<const uint8_t*>(w) + n / kQ4x8Rows * tile_bytes;
    if constexpr (MC == 1) {
      TileQ4x8<8, 1>(out + n, N, a, tile, 0, K, bias ? bias + n : nullptr, acc);
    } else {
      TileQ4x8<4, MC>(out + n, N, a, tile, 0, K, bias ? bias + n : nullptr, acc);
      TileQ4x8<4, MC>(out + n + 4, N, a, tile, 4, K, bias ? bias + n + 4 : nullptr, acc);
    }
  }
}
// Q8: R weight rows × MC activation rows; weights loaded once per block and used MC times.
template <int R, int MC>
HWY_INLINE void TileQ(float* out, int64_t N, const QActs& a, const void* wp, bool q4, const float* sc,
                      int64_t K, const float* bias, bool accumulate) {
  if (q4) return TileQ4Pairs<R, MC>(out, N, a, static_cast<const BlockQ4_0*>(wp), K, bias, accumulate);
  const int64_t KB = K / kQ8Block;
  // The next tile's scales: a second stream, 1/8 of the codes' bytes, that the codes' prefetches
  // below do not cover (its loads were where the kernel waited most in perf annotate).
  for (int64_t o = 0; o < R * KB * int64_t(sizeof(float)); o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(sc + R * KB) + o, _MM_HINT_T0);
  __m256 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < KB; ++b) {
    __m256i xq[MC];
    __m256 xd[MC];
    for (int j = 0; j < MC; ++j) {
      xq[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + j * K + b * kQ8Block));
      xd[j] = _mm256_broadcast_ss(a.d + j * KB + b);
    }
    const int8_t* w = static_cast<const int8_t*>(wp);
    for (int r = 0; r < R; ++r) {
      const int8_t* wr = w + r * K + b * kQ8Block;
      _mm_prefetch(reinterpret_cast<const char*>(wr + R * K), _MM_HINT_T0);
      const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr));
      const __m256i aw = _mm256_sign_epi8(wq, wq);  // |w|: the unsigned operand; the sign moves to x
      const __m256 dw = _mm256_broadcast_ss(sc + r * KB + b);
      for (int j = 0; j < MC; ++j)
        acc[r][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, xd[j]),
                                    _mm256_cvtepi32_ps(Dot4(aw, _mm256_sign_epi8(xq[j], wq))), acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) {
      float s = HSum(acc[r][j]);
      StoreSum(out, N, r, j, s, bias, accumulate);
    }
}
#else
template <int R, int MC>
HWY_INLINE void TileQ(float* out, int64_t N, const QActs& a, const void* wp, bool q4, const float* sc,
                      int64_t K, const float* bias, bool accumulate) {
  const int64_t KB = K / kQ8Block;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) {
      float s = 0.0f;
      for (int64_t b = 0; b < KB; ++b) s += BlockTermScalar(a, wp, q4, sc, K, r, j, b);
      StoreSum(out, N, r, j, s, bias, accumulate);
    }
}
#endif

template <int MC>
HWY_INLINE void RowsQ(float* out, int64_t N, const QActs& a, const void* w, bool q4, const float* sc,
                      int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc) {
  constexpr int R = MC == 1 ? 4 : MC == 2 ? 2 : 1;
  const int64_t KB = K / kQ8Block;
  const size_t stride = q4 ? size_t(KB) * sizeof(BlockQ4_0) : size_t(K);
  const char* wb = static_cast<const char*>(w);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    TileQ<R, MC>(out + n, N, a, wb + n * stride, q4, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc);
  for (; n < n1; ++n)
    TileQ<1, MC>(out + n, N, a, wb + n * stride, q4, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc);
}

#if HWY_TARGET == HWY_AVX3_DL
// The GEMV on 512-bit vectors (AVX-512 VNNI): vpdpbusd with the weights as the unsigned operand
// (q4_0's nibbles c, q8_0's codes + 128, one xor); the offsets return as an int32 init of
// -8·Σq (-128·Σq) per lane's codes that the dot product accumulates onto, so the block sums are
// exactly the TileQ ones.
HWY_INLINE __m512i Dpbusd512(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %[s], %[u], %[acc]" : [acc] "+v"(acc) : [u] "v"(u), [s] "v"(s));  // see GDotU
  return acc;
}
// Per activation row, per pair of blocks (b, b+1): q8: xp = the 64 codes, ip[16] = -128·Σ of
// each int32 lane's 4 codes. q4: xp = [b 0-15 | b+1 0-15 | b 16-31 | b+1 16-31] (the codes
// that low / high nibbles meet) and ip[8] = -8·Σ of the 8 codes each lane of TileQ4R512 sums.
constexpr int64_t kIpQ8 = 16, kIpQ4 = 8;  // ip ints per pair
HWY_INLINE void PrepActs512(int8_t* xp, int32_t* ip, const int8_t* q, int64_t M, int64_t K, bool q4) {
  const int64_t KP = K / kQ8Block / 2;
  const __m512i off = _mm512_set1_epi8(q4 ? 8 : char(0x80));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < KP; ++p) {
      const int8_t* s = q + m * K + p * 64;
      __m512i v;
      if (q4) {
        auto ld = [&](int o) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + o)); };
        v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(ld(32), ld(0))), _mm256_set_m128i(ld(48), ld(16)), 1);
      } else {
        v = _mm512_loadu_si512(s);
      }
      _mm512_storeu_si512(xp + m * K + p * 64, v);
      const __m512i init = _mm512_sub_epi32(_mm512_setzero_si512(), Dpbusd512(_mm512_setzero_si512(), off, v));
      if (q4)  // lane l: low-nibble codes 4l.. and high-nibble codes 4l.. of the same weights
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ip + (m * KP + p) * kIpQ4),
                            _mm256_add_epi32(_mm512_castsi512_si256(init), _mm512_extracti64x4_epi64(init, 1)));
      else
        _mm512_storeu_si512(ip + (m * KP + p) * kIpQ8, init);
    }
}
// The scales of blocks 2p, 2p+1 ([f0, f1] in the low lanes of v) spread over their lanes.
HWY_INLINE __m512 Spread512(__m512i pat, __m128 v) { return _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(v)); }
HWY_INLINE __m512 LoadPair512(__m512i pat, const float* f) {
  return Spread512(pat, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(f))));
}

// Q8: R weight rows × MC activation rows, two blocks per vpdpbusd.
template <int R, int MC>
HWY_INLINE void TileQ512(float* out, int64_t N, const QActs& a, const int8_t* xp, const int32_t* ip,
                         const int8_t* w, const float* sc, int64_t K, const float* bias, bool accumulate) {
  const int64_t KB = K / kQ8Block, KP = KB / 2;
  const __m512i pat = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < KP; ++p) {
    __m512 dx[MC];
    for (int j = 0; j < MC; ++j) dx[j] = LoadPair512(pat, a.d + j * KB + 2 * p);
    for (int r = 0; r < R; ++r) {
      const int8_t* wr = w + r * K + p * 64;
      _mm_prefetch(reinterpret_cast<const char*>(wr + R * K), _MM_HINT_T0);
      const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(wr), flip);
      const __m512 dw = LoadPair512(pat, sc + r * KB + 2 * p);
      for (int j = 0; j < MC; ++j) {
        const __m512i s = Dpbusd512(_mm512_loadu_si512(ip + (j * KP + p) * kIpQ8), wv, _mm512_loadu_si512(xp + j * K + p * 64));
        acc[r][j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx[j]), _mm512_cvtepi32_ps(s), acc[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) {
      float s = _mm512_reduce_add_ps(acc[r][j]);
      if (KB % 2) s += BlockTermScalar(a, w, false, sc, K, r, j, KB - 1);  // an odd last block
      StoreSum(out, N, r, j, s, bias, accumulate);
    }
}

template <int MC>
HWY_INLINE void RowsQ512(float* out, int64_t N, const QActs& a, const int8_t* xp, const int32_t* ip, const void* w,
                         const float* sc, int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc) {
  constexpr int R = MC == 1 ? 8 : 4;
  const int64_t KB = K / kQ8Block;
  const int8_t* wb = static_cast<const int8_t*>(w);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    TileQ512<R, MC>(out + n, N, a, xp, ip, wb + n * K, sc + n * KB, K, bias ? bias + n : nullptr, acc);
  for (; n < n1; ++n)
    TileQ512<1, MC>(out + n, N, a, xp, ip, wb + n * K, sc + n * KB, K, bias ? bias + n : nullptr, acc);
}

// Q4_0 in the plain or the x8 layout alike: one vector holds a pair of blocks (b, b+1) of two
// rows, [row r: qs_b | qs_b+1 | row r+1: qs_b | qs_b+1]; its low nibbles meet the broadcast
// activations [b 0-15 | b+1 0-15], its high nibbles [b 16-31 | b+1 16-31], so each int32 lane
// sums 4 low and 4 high products onto the init (lanes 0-3: block b of row r, 4-7: b+1, 8-15: the
// same of row r+1). Per lane: convert, times d_w·d_x, FMA; a row's 8 lanes are summed at the
// end. Every lane sees the same values from either layout, so the two give the same bits. The x8
// tile is one contiguous stream whose 8 rows' scales come in one load (then one permute per two
// rows); the plain one gathers each row's two blocks and scales.
constexpr int64_t kQ4x8Prefetch512 = 2048;  // bytes ahead in the x8 tile's stream (1024: ~10% slower)
HWY_INLINE __m512i Idx512(const int32_t (&v)[16]) { return _mm512_loadu_si512(v); }
template <bool X8, int RP, int MC>
HWY_INLINE void TileQ4R512(float* out, int64_t N, const QActs& a, const int8_t* xp, const int32_t* ip,
                           const uint8_t* w, int64_t K, int nrows, const float* bias, bool accumulate) {
  static_assert(!X8 || RP == 4, "an x8 tile is 8 rows");
  const int64_t KB = K / kQ4Block, KP = KB / 2;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  // dx per lane: [b x4 | b+1 x4 | b x4 | b+1 x4], the block pattern of both the lanes and the x8 scales.
  const __m512i pat = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  // x8: the 16 scales [rows 0-3 of b | rows 0-3 of b+1 | rows 4-7 of b | rows 4-7 of b+1] to
  // the lanes of rows 2rp, 2rp+1; plain: the 4 gathered [r b, r b+1, r+1 b, r+1 b+1].
  static constexpr int32_t kPerm[4][16] = {{0, 0, 0, 0, 4, 4, 4, 4, 1, 1, 1, 1, 5, 5, 5, 5},
                                           {2, 2, 2, 2, 6, 6, 6, 6, 3, 3, 3, 3, 7, 7, 7, 7},
                                           {8, 8, 8, 8, 12, 12, 12, 12, 9, 9, 9, 9, 13, 13, 13, 13},
                                           {10, 10, 10, 10, 14, 14, 14, 14, 11, 11, 11, 11, 15, 15, 15, 15}};
  static constexpr int32_t kSpread4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  __m512i perm[RP];
  for (int rp = 0; rp < RP; ++rp) perm[rp] = Idx512(X8 ? kPerm[rp] : kSpread4);
  __m512 acc[RP][MC];
  for (int rp = 0; rp < RP; ++rp)
    for (int j = 0; j < MC; ++j) acc[rp][j] = _mm512_setzero_ps();
  const auto* blocks = reinterpret_cast<const BlockQ4_0*>(w);
  for (int64_t p = 0; p < KP; ++p) {
    __m512i xlo[MC], xhi[MC], init[MC];
    __m512 dx[MC];
    for (int j = 0; j < MC; ++j) {
      const int8_t* x = xp + j * K + p * 64;
      xlo[j] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
      xhi[j] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
      init[j] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ip + (j * KP + p) * kIpQ4)));
      dx[j] = LoadPair512(pat, a.d + j * KB + 2 * p);
    }
    __m512i wv[RP];
    __m512 sd[RP][MC];  // d_w·d_x per lane
    if constexpr (X8) {
      const uint8_t* g = w + p * kQ4x8Step;
      for (int64_t o = 0; o < kQ4x8Step; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(g + kQ4x8Prefetch512 + o), _MM_HINT_T0);
      const __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g)));
      for (int j = 0; j < MC; ++j) {
        const __m512 fd = _mm512_mul_ps(f, dx[j]);
        for (int rp = 0; rp < RP; ++rp) sd[rp][j] = _mm512_permutexvar_ps(perm[rp], fd);
      }
      for (int rp = 0; rp < RP; ++rp) wv[rp] = _mm512_loadu_si512(g + 4 * kQ4x8Rows + 64 * rp);
    } else {
      for (int rp = 0; rp < RP; ++rp) {
        // rows 2rp and 2rp+1 (a missing last row: row 2rp again, its sums not stored)
        const BlockQ4_0* A = blocks + 2 * rp * KB + 2 * p;
        const BlockQ4_0* B = blocks + std::min(2 * rp + 1, nrows - 1) * KB + 2 * p;
        _mm_prefetch(reinterpret_cast<const char*>(A + 2 * RP * KB), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(B + 2 * RP * KB), _MM_HINT_T0);
        auto pair = [](const BlockQ4_0* b) HWY_ATTR {
          return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[0].qs))),
                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[1].qs)), 1);
        };
        wv[rp] = _mm512_inserti64x4(_mm512_castsi256_si512(pair(A)), pair(B), 1);
        const uint64_t d4 = uint64_t(A[0].d) | uint64_t(A[1].d) << 16 | uint64_t(B[0].d) << 32 | uint64_t(B[1].d) << 48;
        const __m512 f = _mm512_permutexvar_ps(perm[rp], _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(d4)))));
        for (int j = 0; j < MC; ++j) sd[rp][j] = _mm512_mul_ps(f, dx[j]);
      }
    }
    for (int rp = 0; rp < RP; ++rp) {
      const __m512i lo = _mm512_and_si512(wv[rp], low4), hi = _mm512_and_si512(_mm512_srli_epi16(wv[rp], 4), low4);
      for (int j = 0; j < MC; ++j) {
        const __m512i s = Dpbusd512(Dpbusd512(init[j], lo, xlo[j]), hi, xhi[j]);
        acc[rp][j] = _mm512_fmadd_ps(sd[rp][j], _mm512_cvtepi32_ps(s), acc[rp][j]);
      }
    }
  }
  for (int rp = 0; rp < RP; ++rp)
    for (int h = 0; h < 2 && 2 * rp + h < nrows; ++h)
      for (int j = 0; j < MC; ++j) {
        const __m256 v = h ? _mm512_extractf32x8_ps(acc[rp][j], 1) : _mm512_castps512_ps256(acc[rp][j]);
        float s = HSum(v);
        if (!X8 && KB % 2) s += BlockTermScalar(a, w, true, nullptr, K, 2 * rp + h, j, KB - 1);  // an odd last block
        StoreSum(out, N, 2 * rp + h, j, s, bias, accumulate);
      }
}

// Rows [n0, n1) in tiles of 8 (x8: n0, n1 multiples of 8), the plain layout's rest in pairs.
template <bool X8, int MC>
HWY_INLINE void RowsQ4R512(float* out, int64_t N, const QActs& a, const int8_t* xp, const int32_t* ip, const void* w,
                           int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc) {
  const int64_t row_bytes = K / kQ4Block * int64_t(sizeof(BlockQ4_0));  // an x8 tile: 8 rows' bytes
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8)
    TileQ4R512<X8, 4, MC>(out + n, N, a, xp, ip, wb + n * row_bytes, K, 8, bias ? bias + n : nullptr, acc);
  for (; n < n1; n += 2)
    TileQ4R512<false, 1, MC>(out + n, N, a, xp, ip, wb + n * row_bytes, K, int(std::min<int64_t>(2, n1 - n)),
                             bias ? bias + n : nullptr, acc);
}
#endif

// Rows [n0, n1) of out = act · Wᵀ for Q8/Q4_0 W; blocks of 32 rows outside, as GemvRangeT.
// x8: Q4_0 in the x8 layout, n0 and n1 multiples of 8.
void GemvQRange(float* out, const QActs& a, const void* w, int dtype, const float* sc, const float* bias,
                int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1, bool acc, bool x8) {
  const bool q4 = DType(dtype) == DType::Q4_0;
  const int64_t KB = K / kQ8Block;
  constexpr int64_t kBlock = 32;
#if HWY_TARGET == HWY_AVX3_DL
  {  // each thread prepares its own copy of the permuted activations (M·K bytes, cheap)
    static thread_local std::vector<int8_t> xp;
    static thread_local std::vector<int32_t> ip;
    if (xp.size() < size_t(M * K)) xp.resize(size_t(M * K));
    if (ip.size() < size_t(M * (KB / 2) * kIpQ8)) ip.resize(size_t(M * (KB / 2) * kIpQ8));
    PrepActs512(xp.data(), ip.data(), a.q, M, K, q4);
    const int64_t ipr = (KB / 2) * (q4 ? kIpQ4 : kIpQ8);
    for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
      const int64_t b1 = std::min(n1, b0 + kBlock);
      for (int64_t m = 0; m < M;) {
        const int64_t mc = M - m >= 2 ? 2 : 1;
        const QActs am{a.q + m * K, a.d + m * KB, nullptr};
        const int8_t* x = xp.data() + m * K;
        const int32_t* i = ip.data() + m * ipr;
        float* o = out + m * N;
        if (!q4) {
          if (mc == 2) RowsQ512<2>(o, N, am, x, i, w, sc, K, bias, b0, b1, acc);
          else RowsQ512<1>(o, N, am, x, i, w, sc, K, bias, b0, b1, acc);
        } else if (x8) {
          if (mc == 2) RowsQ4R512<true, 2>(o, N, am, x, i, w, K, bias, b0, b1, acc);
          else RowsQ4R512<true, 1>(o, N, am, x, i, w, K, bias, b0, b1, acc);
        } else {
          if (mc == 2) RowsQ4R512<false, 2>(o, N, am, x, i, w, K, bias, b0, b1, acc);
          else RowsQ4R512<false, 1>(o, N, am, x, i, w, K, bias, b0, b1, acc);
        }
        m += mc;
      }
    }
    return;
  }
#endif
  if (x8) {
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3
    for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
      const int64_t b1 = std::min(n1, b0 + kBlock);
      int64_t m = 0;
      auto at = [&](int64_t m) { return QActs{a.q + m * K, a.d + m * KB, a.p + m * ((KB + 1) / 2)}; };
      for (; m + 2 <= M; m += 2) RowsQ4x8<2>(out + m * N, N, at(m), w, K, bias, b0, b1, acc);
      if (m < M) RowsQ4x8<1>(out + m * N, N, at(m), w, K, bias, b0, b1, acc);
    }
#else  // the portable block sums (no pairs here: the scalar targets' activations)
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < M; ++j) {
        float s = 0.0f;
        for (int64_t b = 0; b < KB; ++b) s += BlockTermScalar(a, w, true, nullptr, K, n, j, b, true);
        StoreSum(out, N, int(n), int(j), s, bias, acc);
      }
#endif
    return;
  }
  for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
    const int64_t b1 = std::min(n1, b0 + kBlock);
    int64_t m = 0;
    auto at = [&](int64_t m) { return QActs{a.q + m * K, a.d + m * KB, a.p ? a.p + m * ((KB + 1) / 2) : nullptr}; };
    for (; m + 2 <= M; m += 2) RowsQ<2>(out + m * N, N, at(m), w, q4, sc, K, bias, b0, b1, acc);
    if (m < M) RowsQ<1>(out + m * N, N, at(m), w, q4, sc, K, bias, b0, b1, acc);
  }
}

// ---- Q4_K weights (super-blocks of 256 in 8 sub-blocks of 32, src/ops/quant.h) times 8-bit
// activations: per sub-block b, d·sc_b·d_x·Σ q·x_q - dmin·m_b·(d_x·Σ x_q). The second product's
// activation factor is the per-block sum `xs` (quantize_acts), so only Σ q·x_q runs per element.

// The 8 six-bit scales and mins of a super-block, one per byte (llama.cpp's get_scale_min_k4 for
// all 8 at once: sub-blocks 0-3 in the low 6 bits of words 0 / 1, 4-7 split over word 2's nibbles
// and the top 2 bits of words 0 / 1).
HWY_INLINE void ScalesMinsQ4K(const uint8_t* s, uint64_t* sc, uint64_t* mn) {
  uint32_t u[3];
  std::memcpy(u, s, 12);
  const uint32_t sc_hi = (u[2] & 0x0F0F0F0Fu) | ((u[0] >> 6) & 0x03030303u) << 4;
  const uint32_t mn_hi = ((u[2] >> 4) & 0x0F0F0F0Fu) | ((u[1] >> 6) & 0x03030303u) << 4;
  *sc = uint64_t(u[0] & 0x3F3F3F3Fu) | uint64_t(sc_hi) << 32;
  *mn = uint64_t(u[1] & 0x3F3F3F3Fu) | uint64_t(mn_hi) << 32;
}
HWY_INLINE const BlockQ4_K& SuperBlockQ4K(const uint8_t* row, int64_t s) {
  return *reinterpret_cast<const BlockQ4_K*>(row + s * int64_t(sizeof(BlockQ4_K)));
}

#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// R weight rows × MC activation rows (codes xq, scales xd, sums xs; row strides K and KB). The
// 8 sub-blocks' int32 dot products fold by hadd into two vectors whose lanes are sub-blocks (each
// 128-bit half a partial sum), so coef = d·sc·d_x scales them in 2 FMAs per super-block; the min
// terms take one FMA for all 8.
template <int R, int MC>
HWY_INLINE void TileQ4K(float* out, int64_t N, const int8_t* xq, const float* xd, const float* xs,
                        const uint8_t* w, size_t stride, int64_t K, const float* bias, bool accumulate) {
  const int64_t KB = K / kQ4KSub, NS = (KB + 7) / 8;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i idx_lo = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3), idx_hi = _mm256_setr_epi32(4, 5, 6, 7, 4, 5, 6, 7);
  __m256 acc[R][MC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t s = 0; s < NS; ++s) {
    const int nsub = int(std::min<int64_t>(8, KB - 8 * s));
    // Lanes past the row's last sub-block load as zero.
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nsub), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 dx[MC], sx[MC];
    for (int j = 0; j < MC; ++j) {
      dx[j] = _mm256_maskload_ps(xd + j * KB + 8 * s, live);
      sx[j] = _mm256_maskload_ps(xs + j * KB + 8 * s, live);
    }
    for (int r = 0; r < R; ++r) {
      const BlockQ4_K& blk = SuperBlockQ4K(w + r * stride, s);
      {  // every cache line of the next tile's super-block (144 bytes): one per super-block reached
         // only ~45% of q4_0's decode speed
        const char* nx = reinterpret_cast<const char*>(&SuperBlockQ4K(w + (r + R) * stride, s));
        _mm_prefetch(nx, _MM_HINT_T0);
        _mm_prefetch(nx + 64, _MM_HINT_T0);
        _mm_prefetch(nx + 128, _MM_HINT_T0);
      }
      uint64_t sc, mn;
      ScalesMinsQ4K(blk.scales, &sc, &mn);
      const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(int(uint32_t(blk.d) | uint32_t(blk.dmin) << 16)));
      const __m256 dsc = _mm256_mul_ps(_mm256_broadcastss_ps(dd),
                                       _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(sc)))));
      const __m256 dmn = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                                       _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(mn)))));
      __m256i h[MC][4];
      for (int p = 0; p < 4; ++p) {
        if (2 * p >= nsub) {
          for (int j = 0; j < MC; ++j) h[j][p] = _mm256_setzero_si256();
          continue;
        }
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * p));
        const __m256i lo = _mm256_and_si256(q, low4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
        for (int j = 0; j < MC; ++j) {
          const int8_t* x = xq + j * K + (8 * s + 2 * p) * kQ4KSub;
          const __m256i dlo = Dot4(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
          const __m256i dhi = 2 * p + 1 < nsub ? Dot4(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + kQ4KSub)))
                                               : _mm256_setzero_si256();
          h[j][p] = _mm256_hadd_epi32(dlo, dhi);
        }
      }
      for (int j = 0; j < MC; ++j) {
        const __m256 coef = _mm256_mul_ps(dsc, dx[j]);
        __m256 a = _mm256_fnmadd_ps(dmn, sx[j], acc[r][j]);
        a = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(coef, idx_lo), _mm256_cvtepi32_ps(_mm256_hadd_epi32(h[j][0], h[j][1])), a);
        acc[r][j] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(coef, idx_hi), _mm256_cvtepi32_ps(_mm256_hadd_epi32(h[j][2], h[j][3])), a);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) StoreSum(out, N, r, j, HSum(acc[r][j]), bias, accumulate);
}
#else
template <int R, int MC>
HWY_INLINE void TileQ4K(float* out, int64_t N, const int8_t* xq, const float* xd, const float* xs,
                        const uint8_t* w, size_t stride, int64_t K, const float* bias, bool accumulate) {
  const int64_t KB = K / kQ4KSub;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < MC; ++j) {
      float sum = 0.0f;
      for (int64_t b = 0; b < KB; ++b) {
        const BlockQ4_K& blk = SuperBlockQ4K(w + r * stride, b / 8);
        const int sb = int(b % 8);
        int sc, mn;
        q4_k_scale_min(blk.scales, sb, &sc, &mn);
        const int8_t* x = xq + j * K + b * kQ4KSub;
        int32_t isum = 0;
        for (int i = 0; i < kQ4KSub; ++i) isum += q4_k_code(blk, sb, i) * x[i];
        sum += f16_to_f32(blk.d) * float(sc) * xd[j * KB + b] * float(isum) -
               f16_to_f32(blk.dmin) * float(mn) * xs[j * KB + b];
      }
      StoreSum(out, N, r, j, sum, bias, accumulate);
    }
}
#endif

template <int MC>
HWY_INLINE void RowsQ4K(float* out, int64_t N, const int8_t* xq, const float* xd, const float* xs, const uint8_t* w,
                        int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc) {
  constexpr int R = MC == 1 ? 4 : 2;
  const size_t stride = q4_k_row_bytes(K);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    TileQ4K<R, MC>(out + n, N, xq, xd, xs, w + n * stride, stride, K, bias ? bias + n : nullptr, acc);
  for (; n < n1; ++n) TileQ4K<1, MC>(out + n, N, xq, xd, xs, w + n * stride, stride, K, bias ? bias + n : nullptr, acc);
}

// Rows [n0, n1) of out = act · Wᵀ for Q4_K W (xs: d_x·Σ x_q per block); blocks of 32 rows outside.
void GemvQ4KRange(float* out, const QActs& a, const float* xs, const void* w, const float* bias, int64_t M,
                  int64_t N, int64_t K, int64_t n0, int64_t n1, bool acc) {
  const int64_t KB = K / kQ4KSub;
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  for (int64_t b0 = n0; b0 < n1; b0 += 32) {
    const int64_t b1 = std::min(n1, b0 + 32);
    int64_t m = 0;
    for (; m + 2 <= M; m += 2)
      RowsQ4K<2>(out + m * N, N, a.q + m * K, a.d + m * KB, xs + m * KB, wb, K, bias, b0, b1, acc);
    if (m < M) RowsQ4K<1>(out + m * N, N, a.q + m * K, a.d + m * KB, xs + m * KB, wb, K, bias, b0, b1, acc);
  }
}

// ---- Int8 GEMM for Q8/Q4_0 weights times many activation rows (prefill). The same integer
// block sums as GemvQRange, arranged so that the float work (convert, scale, accumulate) runs
// once per kG blocks instead of once per block: a group of kG consecutive blocks is stored as 8
// vectors of kG int32 lanes, lane l of vector v holding codes 4v..4v+3 of block l, so each lane
// accumulates one block's whole sum over the group's 8 vectors. Weights are decoded into this
// layout once per call (a panel of rows at a time, kept in L2), activations once per call.
#if HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_AVX3
constexpr int64_t kG = 16;
#else
constexpr int64_t kG = 8;
#endif
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr bool kGemmSimd = true;
#else
constexpr bool kGemmSimd = false;
#endif
constexpr int64_t kGroupBytes = 32 * kG;

// Weight codes are stored unsigned ("uw": Q4_0's nibble c, Q8's code + 128) where the int8 dot
// product takes them as its unsigned operand without saturating (VNNI; Q4_0's nibbles with
// maddubs); the offset returns through the activations' per-block init = -off · Σ q. Otherwise
// (Q8 on AVX2/AVX3 without VNNI, where (w+128)·q pairs overflow maddubs's int16; every scalar
// target) they are the signed values.
// Q4_K's codes are unsigned with no offset: the same bytes either way, init 0.
enum GemmKind { kGemmQ8, kGemmQ4_0, kGemmQ4_K };
HWY_INLINE bool GemmUnsignedW(int kind) {
  return kGemmSimd && (kind != kGemmQ8 || HWY_TARGET == HWY_AVX3_DL);
}

// Row `row` of W -> codes[NG · kGroupBytes] in the group layout and dw[NG · kG] (F32 scales;
// Q4_K: d·sc of each sub-block, its mins are left to the caller); the padding blocks of the last
// group get zero codes and zero scales.
HWY_INLINE void DecodeRowG(uint8_t* codes, float* dw, const void* w, int kind, const float* sc,
                           int64_t KB, int64_t NG, bool uw, int64_t row, bool x8) {
  const uint8_t* wk = kind == kGemmQ4_K ? static_cast<const uint8_t*>(w) + row * q4_k_row_bytes(KB * kQ4KSub) : nullptr;
  for (int64_t b = 0; b < KB; ++b) {
    uint8_t* dst = codes + (b / kG) * kGroupBytes + (b % kG) * 4;  // dword v at dst + v·4kG
    if (kind == kGemmQ4_K) {
      const BlockQ4_K& blk = SuperBlockQ4K(wk, b / 8);
      const int j = int(b % 8);
      for (int v = 0; v < 8; ++v) {
        uint32_t x;
        std::memcpy(&x, blk.qs + 32 * (j / 2) + 4 * v, 4);
        x = (x >> (4 * (j & 1))) & 0x0F0F0F0Fu;
        std::memcpy(dst + v * 4 * kG, &x, 4);
      }
      int s6, m6;
      q4_k_scale_min(blk.scales, j, &s6, &m6);
      dw[b] = f16_to_f32(blk.d) * float(s6);
    } else if (kind == kGemmQ4_0) {
      uint16_t d16;
      const uint8_t* qs = Q4BlockAt(w, x8, KB, row, b, &d16);
      for (int i = 0; i < 4; ++i) {
        uint32_t x;
        std::memcpy(&x, qs + 4 * i, 4);
        uint32_t lo = x & 0x0F0F0F0Fu, hi = (x >> 4) & 0x0F0F0F0Fu;
        if (!uw) {  // c - 8 per byte: c + 0x78 never carries, and ^0x80 makes it two's complement
          lo = (lo + 0x78787878u) ^ 0x80808080u;
          hi = (hi + 0x78787878u) ^ 0x80808080u;
        }
        std::memcpy(dst + i * 4 * kG, &lo, 4);
        std::memcpy(dst + (4 + i) * 4 * kG, &hi, 4);
      }
      dw[b] = f16_to_f32(d16);
    } else {
      const int8_t* src = static_cast<const int8_t*>(w) + (row * KB + b) * kQ8Block;
      for (int v = 0; v < 8; ++v) {
        uint32_t x;
        std::memcpy(&x, src + 4 * v, 4);
        if (uw) x ^= 0x80808080u;
        std::memcpy(dst + v * 4 * kG, &x, 4);
      }
      dw[b] = sc[row * KB + b];
    }
  }
  for (int64_t b = KB; b < NG * kG; ++b) {
    uint8_t* dst = codes + (b / kG) * kGroupBytes + (b % kG) * 4;
    for (int v = 0; v < 8; ++v) std::memset(dst + v * 4 * kG, 0, 4);
    dw[b] = 0.0f;
  }
}

// One activation row in the group layout: codes, scales dx, and init = -off · Σ q per block
// (off = 8 for Q4_0's nibbles, 128 for Q8 codes stored + 128, 0 for signed weights).
HWY_INLINE void PermuteActRowG(int8_t* codes, float* dx, int32_t* init, const int8_t* q, const float* d,
                               int64_t KB, int64_t NG, int32_t off) {
  for (int64_t b = 0; b < NG * kG; ++b) {
    int8_t* dst = codes + (b / kG) * kGroupBytes + (b % kG) * 4;
    if (b >= KB) {
      for (int v = 0; v < 8; ++v) std::memset(dst + v * 4 * kG, 0, 4);
      dx[b] = 0.0f, init[b] = 0;
      continue;
    }
    const int8_t* src = q + b * kQ8Block;
    int32_t sum = 0;
    for (int i = 0; i < kQ8Block; ++i) sum += src[i];
    for (int v = 0; v < 8; ++v) std::memcpy(dst + v * 4 * kG, src + 4 * v, 4);
    dx[b] = d[b], init[b] = -off * sum;
  }
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
using GVI = __m512i;
using GVF = __m512;
HWY_INLINE GVI GLoadI(const void* p) { return _mm512_loadu_si512(p); }
HWY_INLINE GVF GLoadF(const float* p) { return _mm512_loadu_ps(p); }
HWY_INLINE GVF GFma(GVF a, GVF b, GVF c) { return _mm512_fmadd_ps(a, b, c); }
HWY_INLINE GVF GMul(GVF a, GVF b) { return _mm512_mul_ps(a, b); }
HWY_INLINE GVF GCvt(GVI a) { return _mm512_cvtepi32_ps(a); }
HWY_INLINE GVF GZeroF() { return _mm512_setzero_ps(); }
HWY_INLINE float GSum(GVF v) { return _mm512_reduce_add_ps(v); }
// acc + Σ of 4 adjacent u·s products per lane (u unsigned, s signed; no saturation for our ranges).
HWY_INLINE GVI GDotU(GVI acc, GVI u, GVI s) {
#if HWY_TARGET == HWY_AVX3_DL
  // vpdpbusd zmm; inline asm because this Highway's AVX3_DL target string enables only the
  // VEX-encoded avxvnni, not avx512vnni (the runtime check covers it).
  asm("vpdpbusd %[s], %[u], %[acc]" : [acc] "+v"(acc) : [u] "v"(u), [s] "v"(s));
  return acc;
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
}
// Signed w: |w| as the unsigned operand, w's sign moved onto s (AVX-512 has no vpsignb).
HWY_INLINE GVI GAbs(GVI w) { return _mm512_abs_epi8(w); }
HWY_INLINE GVI GSignS(GVI s, GVI w) {
  return _mm512_mask_sub_epi8(s, _mm512_movepi8_mask(w), _mm512_setzero_si512(), s);
}
constexpr int kGemmRW = 4, kGemmMA = 3, kGemmMAU = 3;  // 12 int + 12 float accumulators of 32 registers
#elif HWY_TARGET == HWY_AVX2
using GVI = __m256i;
using GVF = __m256;
HWY_INLINE GVI GLoadI(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
HWY_INLINE GVF GLoadF(const float* p) { return _mm256_loadu_ps(p); }
HWY_INLINE GVF GFma(GVF a, GVF b, GVF c) { return _mm256_fmadd_ps(a, b, c); }
HWY_INLINE GVF GMul(GVF a, GVF b) { return _mm256_mul_ps(a, b); }
HWY_INLINE GVF GCvt(GVI a) { return _mm256_cvtepi32_ps(a); }
HWY_INLINE GVF GZeroF() { return _mm256_setzero_ps(); }
HWY_INLINE float GSum(GVF v) { return HSum(v); }
HWY_INLINE GVI GDotU(GVI acc, GVI u, GVI s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
HWY_INLINE GVI GAbs(GVI w) { return _mm256_sign_epi8(w, w); }
HWY_INLINE GVI GSignS(GVI s, GVI w) { return _mm256_sign_epi8(s, w); }
constexpr int kGemmRW = 2, kGemmMA = 2;  // 4 + 4 accumulators of 16 registers
// Nibble weights accumulate in int16 (GemmTile): 2 x 4 int16 accumulators, the float ones
// touched once per group (BM_GemmQ4/512, 1 thread: 2x4 93 ms, 4x2 108, 3x3 114, 2x2 115).
constexpr int kGemmMAU = 4;
#else
constexpr int kGemmRW = 2, kGemmMA = 2, kGemmMAU = 2;
#endif

// out[j, r] (=|+=) Σ over blocks of dw·dx·(integer block sum) for RW panel rows × MA activation
// rows. wc/wd: the tile's first weight row's codes and scales; ac/ad/ai: the first activation
// row's codes, scales and inits; cs/ds: the row strides of codes (bytes) and of scales.
template <int RW, int MA, bool UW>
HWY_INLINE void GemmTile(float* out, int64_t N, const uint8_t* wc, const float* wd, const int8_t* ac,
                         const float* ad, const int32_t* ai, int64_t cs, int64_t ds, int64_t NG,
                         const float* bias, bool accumulate) {
  float res[RW][MA];
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  GVF facc[RW][MA];
  for (int r = 0; r < RW; ++r)
    for (int j = 0; j < MA; ++j) facc[r][j] = GZeroF();
  for (int64_t g = 0; g < NG; ++g) {
#if HWY_TARGET == HWY_AVX2
    if constexpr (UW) {
      // Unsigned weights are nibbles (Q4_0, Q4_K: ≤ 15), so a maddubs lane is at most 2·15·127 and
      // the group's 8 of them add in int16 (≤ 30480): one widening madd per group, not per step.
      __m256i s16[RW][MA];
      for (int r = 0; r < RW; ++r)
        for (int j = 0; j < MA; ++j) s16[r][j] = _mm256_setzero_si256();
      const int64_t off = g * kGroupBytes;
#pragma GCC unroll 1  // unrolled, GCC hoists all 32 maddubs ahead of the adds and spills them
      for (int v = 0; v < 8; ++v) {
        GVI a[MA];
        for (int j = 0; j < MA; ++j) a[j] = GLoadI(ac + j * cs + off + v * 4 * kG);
        for (int r = 0; r < RW; ++r) {
          const GVI w = GLoadI(wc + r * cs + off + v * 4 * kG);
          for (int j = 0; j < MA; ++j) s16[r][j] = _mm256_add_epi16(s16[r][j], _mm256_maddubs_epi16(w, a[j]));
        }
      }
      const __m256i ones = _mm256_set1_epi16(1);
      for (int j = 0; j < MA; ++j) {
        const GVI init = GLoadI(ai + j * ds + g * kG);
        const GVF dx = GLoadF(ad + j * ds + g * kG);
        for (int r = 0; r < RW; ++r)
          facc[r][j] = GFma(GMul(GLoadF(wd + r * ds + g * kG), dx),
                            GCvt(_mm256_add_epi32(_mm256_madd_epi16(s16[r][j], ones), init)), facc[r][j]);
      }
      continue;
    }
#endif
    GVI iacc[RW][MA];
    for (int j = 0; j < MA; ++j) {
      const GVI init = GLoadI(ai + j * ds + g * kG);
      for (int r = 0; r < RW; ++r) iacc[r][j] = init;
    }
    const int64_t off = g * kGroupBytes;
    for (int v = 0; v < 8; ++v) {
      GVI a[MA];
      for (int j = 0; j < MA; ++j) a[j] = GLoadI(ac + j * cs + off + v * 4 * kG);
      for (int r = 0; r < RW; ++r) {
        const GVI w = GLoadI(wc + r * cs + off + v * 4 * kG);
        if constexpr (UW) {
          for (int j = 0; j < MA; ++j) iacc[r][j] = GDotU(iacc[r][j], w, a[j]);
        } else {
          const GVI aw = GAbs(w);
          for (int j = 0; j < MA; ++j) iacc[r][j] = GDotU(iacc[r][j], aw, GSignS(a[j], w));
        }
      }
    }
    GVF dx[MA];
    for (int j = 0; j < MA; ++j) dx[j] = GLoadF(ad + j * ds + g * kG);
    for (int r = 0; r < RW; ++r) {
      const GVF dw = GLoadF(wd + r * ds + g * kG);
      for (int j = 0; j < MA; ++j) facc[r][j] = GFma(GMul(dw, dx[j]), GCvt(iacc[r][j]), facc[r][j]);
    }
  }
  for (int r = 0; r < RW; ++r)
    for (int j = 0; j < MA; ++j) res[r][j] = GSum(facc[r][j]);
#else
  for (int r = 0; r < RW; ++r)
    for (int j = 0; j < MA; ++j) {
      float lane[kG] = {};
      for (int64_t g = 0; g < NG; ++g) {
        const uint8_t* w = wc + r * cs + g * kGroupBytes;
        const int8_t* a = ac + j * cs + g * kGroupBytes;
        for (int64_t l = 0; l < kG; ++l) {
          int32_t s = ai[j * ds + g * kG + l];
          for (int v = 0; v < 8; ++v)
            for (int e = 0; e < 4; ++e) {
              const int64_t i = v * 4 * kG + l * 4 + e;
              s += (UW ? int32_t(w[i]) : int32_t(int8_t(w[i]))) * int32_t(a[i]);
            }
          lane[l] += (wd[r * ds + g * kG + l] * ad[j * ds + g * kG + l]) * float(s);
        }
      }
      float s = 0.0f;
      for (int64_t l = 0; l < kG; ++l) s += lane[l];
      res[r][j] = s;
    }
#endif
  for (int r = 0; r < RW; ++r)
    for (int j = 0; j < MA; ++j) {
      float s = res[r][j];
      StoreSum(out, N, r, j, s, bias, accumulate);
    }
}

// f.template operator()<R, A>() for the tile size R = rw <= RW, A = ma <= MA known at run time
// only (the edges of a panel and of M), so each edge tile is a fully unrolled instantiation.
template <int RW, int MA, class F>
HWY_INLINE void WithTile(int rw, int ma, F&& f) {
  if constexpr (RW > 1) {
    if (rw < RW) return WithTile<RW - 1, MA>(rw, ma, f);
  }
  if constexpr (MA > 1) {
    if (ma < MA) return WithTile<RW, MA - 1>(rw, ma, f);
  }
  f.template operator()<RW, MA>();
}

// A 64-byte-aligned scratch buffer per thread, grown on demand.
HWY_INLINE uint8_t* Scratch(hwy::AlignedFreeUniquePtr<uint8_t[]>& p, size_t& cap, size_t bytes) {
  if (cap < bytes) p = hwy::AllocateAligned<uint8_t>(bytes), cap = bytes;
  return p.get();
}

template <bool UW>
void GemmQT(float* out, const int8_t* q, const float* d, const void* w, int kind, const float* sc,
            const float* bias, int64_t M, int64_t N, int64_t K, bool accumulate, int nt, bool x8) {
  const int64_t KB = K / kQ8Block, NG = (KB + kG - 1) / kG;
  const int64_t cs = NG * kGroupBytes, ds = NG * kG;
  // Activations in the group layout: codes [M, cs], scales and inits [M, ds].
  static thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> abuf;
  static thread_local size_t acap = 0;
  const size_t a_bytes = size_t(M) * size_t(cs + ds * 8);
  uint8_t* ab = Scratch(abuf, acap, a_bytes);
  int8_t* ac = reinterpret_cast<int8_t*>(ab);
  float* ad = reinterpret_cast<float*>(ab + M * cs);
  int32_t* ai = reinterpret_cast<int32_t*>(ab + M * cs + M * ds * 4);
  const int32_t off = !UW || kind == kGemmQ4_K ? 0 : kind == kGemmQ4_0 ? 8 : 128;
  // Panels of rows whose decoded codes stay in L2 (~128 KiB) while all M rows pass over them.
  constexpr int64_t RW = kGemmRW, MA = UW ? kGemmMAU : kGemmMA;
  const int64_t np = std::max<int64_t>(RW, (int64_t(128) << 10) / (cs + ds * 4) / RW * RW);
  const int64_t panels = (N + np - 1) / np;
  const int use = int(std::max<int64_t>(1, std::min<int64_t>(nt, panels)));
#pragma omp parallel num_threads(use)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m)
      PermuteActRowG(ac + m * cs, ad + m * ds, ai + m * ds, q + m * K, d + m * KB, KB, NG, off);
    static thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> pbuf;
    static thread_local size_t pcap = 0;
    uint8_t* pb = Scratch(pbuf, pcap, size_t(np) * size_t(cs + ds * 4));
    uint8_t* wc = pb;
    float* wd = reinterpret_cast<float*>(pb + np * cs);
    // Dynamic: on a shared machine a descheduled thread's panels go to the other threads. Each
    // output is computed whole by one tile, so the result does not depend on who takes which.
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = p * np, rows = std::min(np, N - n0);
      for (int64_t r = 0; r < rows; ++r) DecodeRowG(wc + r * cs, wd + r * ds, w, kind, sc, KB, NG, UW, n0 + r, x8);
      for (int64_t m0 = 0; m0 < M; m0 += MA) {
        const int ma = int(std::min(MA, M - m0));
        for (int64_t r0 = 0; r0 < rows; r0 += RW)
          WithTile<RW, MA>(int(std::min(RW, rows - r0)), ma, [&]<int R, int A>() {
            GemmTile<R, A, UW>(out + m0 * N + n0 + r0, N, wc + r0 * cs, wd + r0 * ds, ac + m0 * cs, ad + m0 * ds,
                               ai + m0 * ds, cs, ds, NG, bias ? bias + n0 + r0 : nullptr, accumulate);
          });
      }
    }
  }
}

// out[M, N] (=|+=) act · Wᵀ (+ bias) for Q8/Q4_0/Q4_K W and the 8-bit activations q, d of
// quantize_act_q8 (natural layout), on up to nt threads (rows of W split between them). For Q4_K
// without the min terms (the caller subtracts them).
// x8: Q4_0 in the x8 layout.
void GemmQ(float* out, const int8_t* q, const float* d, const void* w, int dtype, const float* sc,
           const float* bias, int64_t M, int64_t N, int64_t K, bool accumulate, int nt, bool x8) {
  const int kind = DType(dtype) == DType::Q4_K ? kGemmQ4_K : DType(dtype) == DType::Q4_0 ? kGemmQ4_0 : kGemmQ8;
  if (GemmUnsignedW(kind)) GemmQT<true>(out, q, d, w, kind, sc, bias, M, N, K, accumulate, nt, x8);
  else GemmQT<false>(out, q, d, w, kind, sc, bias, M, N, K, accumulate, nt, x8);
}


// ---- GEMMs for bf16 weights times many activation rows (prefill), both packed outer-product
// kernels of bf16_gemm_packed-inl.h (64-column blocks of W repacked per K block into L1, 6 x 64
// register tiles, column blocks handed to threads dynamically, each output summed by one thread in
// K order: the same bits for any thread count):
// - dot: AVX-512 BF16's vdpbf16ps (each of 16 F32 lanes += a[2i]·b[2i] + a[2i+1]·b[2i+1]; the bf16
//   products are exact, the sums round to nearest-even, bf16 denormals read as zero) on activations
//   rounded to bf16 once per call (nearest-even, as llama.cpp does for BF16 weights), zero-padded
//   to an even K;
// - otherwise F32 FMAs on the F32 activations, the weights widened while packed (sgemm's products).
// Returns 2 (dot), 1 (F32) or 0 where neither runs (other targets: the caller widens the weights
// for sgemm). dot without AVX512-BF16 runs the F32 kernel.
#if HWY_TARGET == HWY_AVX3_DL
HWY_INLINE __m512 Dpbf16(__m512 acc, __m512i a, __m512i b) {
  // Inline asm, like vpdpbusd above: this Highway's AVX3_DL target string has no avx512bf16
  // (GemmBF16 checks the CPU at run time).
  asm("vdpbf16ps %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
  return acc;
}
// Row x[K] -> dst[Kp] in bf16, nearest-even (NaN stays a quiet NaN), zeros past K.
HWY_INLINE void RoundRowBf16(uint16_t* dst, const float* x, int64_t K, int64_t Kp) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x40);
  for (int64_t k = 0; k < Kp; k += 16) {
    const __mmask16 m = k + 16 <= K ? __mmask16(0xffff) : k < K ? __mmask16((1u << (K - k)) - 1) : __mmask16(0);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    const __m512i u = _mm512_castps_si512(v);
    __m512i h = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one))), 16);
    h = _mm512_mask_or_epi32(h, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_srli_epi32(u, 16), quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm512_cvtepi32_epi16(h));
  }
}
#include "ops/bf16_gemm_packed-inl.h"
#endif

int GemmBF16(float* out, const float* in, const void* wv, const float* bias, int64_t M, int64_t N, int64_t K,
             bool accumulate, int nt, bool dot) {
#if HWY_TARGET == HWY_AVX3_DL
  static const bool has_bf16 = __builtin_cpu_supports("avx512bf16");
  dot = dot && has_bf16;
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  const int64_t blocks = (N + kBpNR - 1) / kBpNR;
  const int use = int(std::max<int64_t>(1, std::min<int64_t>(nt, blocks)));
  if (!dot) {
#pragma omp parallel num_threads(use)
    {
      static thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> pbuf;
      static thread_local size_t pcap = 0;
      float* bp = reinterpret_cast<float*>(Scratch(pbuf, pcap, size_t(kFpKC * kBpNR * 4)));
      // Dynamic, as GemmQT: a descheduled thread's blocks go to the other threads.
#pragma omp for schedule(dynamic, 1)
      for (int64_t j = 0; j < blocks; ++j)
        GemmF32PackedColumns(out, in, w, bias, M, N, K, j * kBpNR, std::min(kBpNR, N - j * kBpNR), accumulate, bp);
    }
    return 1;
  }
  const int64_t Kp = (K + 31) / 32 * 32;
  static thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> abuf;
  static thread_local size_t acap = 0;
  uint16_t* ab = reinterpret_cast<uint16_t*>(Scratch(abuf, acap, size_t(M * Kp) * 2));
#pragma omp parallel num_threads(use)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) RoundRowBf16(ab + m * Kp, in + m * K, K, Kp);
    static thread_local hwy::AlignedFreeUniquePtr<uint8_t[]> pbuf;
    static thread_local size_t pcap = 0;
    uint32_t* bp = reinterpret_cast<uint32_t*>(Scratch(pbuf, pcap, size_t(kBpKC / 2 * kBpNR * 4)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < blocks; ++j)
      GemmBf16PackedColumns(out, ab, Kp, w, bias, M, N, K, j * kBpNR, std::min(kBpNR, N - j * kBpNR), accumulate, bp);
  }
  return 2;
#else
  (void)out, (void)in, (void)wv, (void)bias, (void)M, (void)N, (void)K, (void)accumulate, (void)nt, (void)dot;
  return 0;
#endif
}

// The largest M for which the GEMV beats the GEMM path, per target. Quantized weights: without
// VNNI the int8 GEMM's int16 sums make it the faster one early: BM_GemvQ*/M against BM_GemmQ*/M on
// a Zen 3 (AVX2, 1 thread, [8960, 1600] in L3) cross at M = 8-16 for Q4_0 and 16-32 for Q8 and
// Q4_K. BF16 on AVX2 (widen + sgemm): BM_Gemv/M vs BM_Blas/M even at 32, sgemm 1.14x at 64. 64 was
// measured on a Zen 4 (AVX-512 VNNI / BF16); AVX3 without them (unmeasured), F16 and the portable
// targets keep it.
int64_t GemvMaxM(bool quantized, bool bf16) {
#if HWY_TARGET == HWY_AVX2
  if (quantized) return 16;
  if (bf16) return 32;
#else
  (void)quantized, (void)bf16;
#endif
  return 64;
}

// Where the decode GEMV is faster on the x8 layout (AVX2's TileQ4x8; AVX3_DL's TileQ4R512 reads
// both layouts at the same rate) and the loader should repack Q4_0.
bool Q4x8Preferred() { return HWY_TARGET == HWY_AVX2; }

template <typename T>
void WidenT(float* dst, const T* src, int64_t n) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  int64_t i = 0;
  for (; i + NL <= n; i += NL) hn::StoreU(LoadW(df, src + i), df, dst + i);
  for (; i < n; ++i) dst[i] = ToF(src[i]);
}

// dst[i] = float(src[i]) for n elements of BF16 or F16, or of Q8 / Q4_0 (n a multiple of the
// block, sc the Q8 scales of src's first block).
void Widen(float* dst, const void* src, int dtype, const float* sc, int64_t n) {
  if (DType(dtype) == DType::BF16) {
    WidenT(dst, static_cast<const hwy::bfloat16_t*>(src), n);
  } else if (DType(dtype) == DType::F16) {
    WidenT(dst, static_cast<const hwy::float16_t*>(src), n);
  } else if (DType(dtype) == DType::Q4_0) {
    const DF df;
    const int64_t NL = int64_t(hn::Lanes(df));
    const auto* b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < n; i += NL) hn::StoreU(LoadQ4(df, b, i), df, dst + i);
  } else {
    const DF df;
    const int64_t NL = int64_t(hn::Lanes(df));
    const auto* q = static_cast<const int8_t*>(src);
    for (int64_t i = 0; i < n; i += NL) hn::StoreU(LoadQ8(df, q, sc, i), df, dst + i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hymba {
HWY_EXPORT(GemvRange);
HWY_EXPORT(GemvQRange);
HWY_EXPORT(GemvQ4KRange);
HWY_EXPORT(GemmQ);
HWY_EXPORT(GemmBF16);
HWY_EXPORT(QuantizeActs);
HWY_EXPORT(GemvMaxM);
HWY_EXPORT(Widen);
HWY_EXPORT(Q4x8Preferred);

namespace {

void check_view(const MatView& W, const char* what) {
  if (W.dtype != DType::F32 && W.dtype != DType::BF16 && W.dtype != DType::F16 && !is_block_quant(W.dtype))
    throw Error(std::string(what) + ": weight dtype " + dtype_name(W.dtype) +
                " not supported (F32, BF16, F16, Q8, Q4_0, Q4_K)");
  if (W.dtype == DType::Q4_K && W.cols % kQ4KSub != 0)
    throw Error(std::string(what) + ": Q4_K weights need a width that is a multiple of " +
                std::to_string(kQ4KSub));
  if (W.dtype == DType::Q4_0 && W.cols % kQ4Block != 0)
    throw Error(std::string(what) + ": Q4_0 weights need a width that is a multiple of " +
                std::to_string(kQ4Block));
  if (!W.data && W.rows > 0 && W.cols > 0) throw Error(std::string(what) + ": null weight data");
  if (W.x8 && (W.dtype != DType::Q4_0 || !q4_0x8_fits(W.rows, W.cols)))
    throw Error(std::string(what) + ": the x8 layout is for Q4_0 with rows a multiple of 8 and cols of 64");
  if (W.dtype == DType::Q8 && (W.cols % kQ8Block != 0 || (!W.scales && W.rows > 0)))
    throw Error(std::string(what) + ": Q8 weights need scales and a width that is a multiple of " +
                std::to_string(kQ8Block));
}

bool quantized(DType t) { return is_block_quant(t); }

// The activations of a Q8/Q4_0 matmul as 8-bit blocks (quantize_act_q8), in per-thread buffers
// reused across calls.
struct ActBuffers {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<PairQ4> p;
};
thread_local ActBuffers act_buf;
QActs quantize_acts(const float* in, int64_t M, int64_t K, bool pairs) {
  ActBuffers& buf = act_buf;
  const int64_t KB = K / kQ8Block;
  if (buf.q.size() < size_t(M * K)) buf.q.resize(size_t(M * K));
  if (buf.d.size() < size_t(M * KB)) buf.d.resize(size_t(M * KB));
  if (pairs && buf.p.size() < size_t(M * ((KB + 1) / 2))) buf.p.resize(size_t(M * ((KB + 1) / 2)));
  HWY_DYNAMIC_DISPATCH(QuantizeActs)(in, M, K, buf.q.data(), buf.d.data(), pairs ? buf.p.data() : nullptr);
  return {buf.q.data(), buf.d.data(), pairs ? buf.p.data() : nullptr};
}

// d·Σq of each block of the activations `a` of quantize_acts (Q4_K's min terms), in integers then
// one product, so that every target and path sees the same values.
const float* act_block_sums(const QActs& a, int64_t M, int64_t K) {
  const int64_t nb = M * (K / kQ8Block);
  if (act_buf.s.size() < size_t(nb)) act_buf.s.resize(size_t(nb));
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sum = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) sum += a.q[b * kQ8Block + i];
    act_buf.s[size_t(b)] = a.d[b] * float(sum);
  }
  return act_buf.s.data();
}

// out[M, N] -= Σ_b dmin·m_b (weights) · d_x·Σx_q (activations): the min terms of a Q4_K product
// that the int8 GEMM leaves out, as one small sgemm (K / 32 deep).
void q4_k_subtract_mins(float* out, const float* xs, const MatView& W, int64_t M) {
  const int64_t N = W.rows, KB = W.cols / kQ4KSub;
  thread_local std::vector<float> mins;
  if (mins.size() < size_t(N * KB)) mins.resize(size_t(N * KB));
  const size_t stride = q4_k_row_bytes(W.cols);
  float* mn = mins.data();  // thread_local: the workers below must use the caller's buffer
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t r = 0; r < N; ++r)
    for (int64_t b = 0; b < KB; ++b) {
      const auto& blk = *reinterpret_cast<const BlockQ4_K*>(static_cast<const uint8_t*>(W.data) + size_t(r) * stride +
                                                            size_t(b / 8) * sizeof(BlockQ4_K));
      int sc, m;
      q4_k_scale_min(blk.scales, int(b % 8), &sc, &m);
      mn[r * KB + b] = f16_to_f32(blk.dmin) * float(m);
    }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(KB), -1.0f, xs, int(KB), mn,
              int(KB), 1.0f, out, int(N));
}

// One GEMV output: out[M, W.rows] (=|+=) in · Wᵀ (+ bias).
struct GemvJob {
  float* out;
  const MatView* W;
  const float* bias;
};

// Several GEMVs on the same input (all W of one dtype and width): the activations are quantized
// once and every job's rows share one parallel region, so a decode step forks and joins once for
// them (gate and up of the MLP: 32 fewer regions per token on the 1.5B shape).
void gemv_jobs(const GemvJob* jobs, int njobs, const float* in, int64_t M, bool acc) {
  const DType dt = jobs[0].W->dtype;
  const int64_t K = jobs[0].W->cols;
  const int nt = num_threads();
  const bool q = quantized(dt);
  QActs a{};
  const float* xs = nullptr;
  if (q) a = quantize_acts(in, M, K, dt == DType::Q4_0);
  if (dt == DType::Q4_K) xs = act_block_sums(a, M, K);
  const auto fn = HWY_DYNAMIC_DISPATCH(GemvRange);
  const auto fq = HWY_DYNAMIC_DISPATCH(GemvQRange);
  const auto fk = HWY_DYNAMIC_DISPATCH(GemvQ4KRange);
  auto run = [&](const GemvJob& j, int64_t n0, int64_t n1) {
    const MatView& W = *j.W;
    const int64_t N = W.rows;
    if (dt == DType::Q4_K) fk(j.out, a, xs, W.data, j.bias, M, N, K, n0, n1, acc);
    else if (q) fq(j.out, a, W.data, int(dt), W.scales, j.bias, M, N, K, n0, n1, acc, W.x8);
    else fn(j.out, in, W.data, int(dt), W.scales, j.bias, M, N, K, n0, n1, acc);
  };
  int64_t tiles = 0;  // of 4 rows, the tile height
  for (int i = 0; i < njobs; ++i) tiles += (jobs[i].W->rows + 3) / 4;
  const int use = int(std::max<int64_t>(1, std::min<int64_t>(nt, tiles / 8)));
  if (use == 1) {
    for (int i = 0; i < njobs; ++i) run(jobs[i], 0, jobs[i].W->rows);
    return;
  }
  // About 8 row ranges per thread, taken dynamically: on a shared machine a descheduled thread's
  // ranges go to the others instead of the others spinning at the barrier. Each output row is
  // one tile's sum whoever computes it, so the result does not depend on the split.
  const int64_t per = (std::max<int64_t>(8, tiles / (8 * use)) * 4 + 7) / 8 * 8;  // whole x8 tiles
  if (njobs > 8) throw Error("gemv_jobs: at most 8 matrices");
  int64_t first[8 + 1] = {0};  // range index where job i starts
  for (int i = 0; i < njobs; ++i) first[i + 1] = first[i] + (jobs[i].W->rows + per - 1) / per;
  const int64_t ranges = first[njobs];
#pragma omp parallel for num_threads(use) schedule(dynamic, 1)
  for (int64_t c = 0; c < ranges; ++c) {
    int i = 0;
    while (c >= first[i + 1]) ++i;
    const int64_t r = c - first[i];
    run(jobs[i], r * per, std::min(jobs[i].W->rows, (r + 1) * per));
  }
}

void gemv(float* out, const float* in, const MatView& W, const float* bias, int64_t M, bool acc) {
  const GemvJob job{out, &W, bias};
  gemv_jobs(&job, 1, in, M, acc);
}

// out = bias (or += bias) so that every sgemm below can run with beta = 1.
float prepare_out(float* out, const float* bias, int64_t M, int64_t N, bool accumulate) {
  if (!bias) return accumulate ? 1.0f : 0.0f;
  for (int64_t m = 0; m < M; ++m) {
    float* o = out + m * N;
    if (accumulate)
      for (int64_t n = 0; n < N; ++n) o[n] += bias[n];
    else
      std::memcpy(o, bias, size_t(N) * sizeof(float));
  }
  return 1.0f;
}

// Whether BF16 prefill multiplies with vdpbf16ps (activations rounded to bf16) or F32 FMAs:
// vdpbf16ps only where it out-runs the F32 FMA. A loop of 24 independent accumulators issues one
// vdpbf16ps zmm per 2 cycles on Intel Emerald Rapids against 2 vfmadd231ps zmm per cycle (half
// the FLOPs: docs/RESULTS.md, 2026-12-08), at the FMA's rate on Zen 4 (twice the FLOPs), so: AMD
// CPUs. HYMBA_BF16_GEMM=1 in the environment forces vdpbf16ps, =0 F32 activations.
bool bf16_dot_wanted() {
  static const bool dot = [] {
    const char* e = std::getenv("HYMBA_BF16_GEMM");
    if (e && std::strcmp(e, "0") == 0) return false;
    if (e && std::strcmp(e, "1") == 0) return true;
    return bool(__builtin_cpu_is("amd"));
  }();
  return dot;
}
// The path's choice: Bf16Dot / Bf16F32 force a kernel, the others take bf16_dot_wanted().
bool bf16_dot_for(MatmulPath path) {
  return path == MatmulPath::Bf16Dot || (path != MatmulPath::Bf16F32 && bf16_dot_wanted());
}

void blas(float* out, const float* in, const MatView& W, const float* bias, int64_t M, bool acc,
          MatmulPath path) {
  const int64_t N = W.rows, K = W.cols;
  if (W.dtype == DType::BF16 && path != MatmulPath::Sgemm) {
    const bool dot = bf16_dot_for(path);
    if (HWY_DYNAMIC_DISPATCH(GemmBF16)(out, in, W.data, bias, M, N, K, acc, num_threads(), dot)) return;
  }
  if (quantized(W.dtype)) {  // int8 GEMM on the 8-bit activations of the GEMV path: one result
    const QActs a = quantize_acts(in, M, K, false);
    HWY_DYNAMIC_DISPATCH(GemmQ)(out, a.q, a.d, W.data, int(W.dtype), W.scales, bias, M, N, K, acc, num_threads(), W.x8);
    if (W.dtype == DType::Q4_K) q4_k_subtract_mins(out, act_block_sums(a, M, K), W, M);
    return;
  }
  const float beta = prepare_out(out, bias, M, N, acc);
  if (W.dtype == DType::F32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, in, int(K),
                static_cast<const float*>(W.data), int(K), beta, out, int(N));
    return;
  }
  // 16-bit weights: widen a block of rows (~4 MiB of F32, stays in L3) then sgemm on it. The
  // O(NK) widening is small next to the O(MNK) product for the M this path gets.
  // At least 256 rows: narrower sgemm calls (large K) lose ~20% to packing overhead.
  const int64_t nb = std::max<int64_t>(256, ((int64_t(1) << 20) / K) / 16 * 16);
  thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(std::min(nb, N) * K)) scratch.resize(size_t(std::min(nb, N) * K));
  const auto widen = HWY_DYNAMIC_DISPATCH(Widen);
  const char* w = static_cast<const char*>(W.data);
  const size_t stride = quant_row_stride(W.dtype, K);
  const int nt = num_threads();
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t rows = std::min(nb, N - n0);
    float* s = scratch.data();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r += 16)
      widen(s + r * K, w + size_t(n0 + r) * stride, int(W.dtype),
            W.scales ? W.scales + (n0 + r) * (K / kQ8Block) : nullptr, std::min<int64_t>(16, rows - r) * K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(rows), int(K), 1.0f, in,
                int(K), s, int(K), beta, out + n0, int(N));
  }
}

}  // namespace

// Crossover measured (bench/matmul_bench.cpp, 2 threads, [8960,1600], OpenMP OpenBLAS): for
// 16-bit weights GEMV ~130-190 GFLOP/s up to M = 64 vs widen+sgemm 120, sgemm wins from M = 128;
// for F32 weights (twice the bytes, no widening to save) sgemm wins from M = 32. BF16 and the
// quantized types: per dispatched target, GemvMaxM.
int64_t matmul_gemv_max_m(DType t) {
  if (t == DType::F32) return 16;
  return HWY_DYNAMIC_DISPATCH(GemvMaxM)(quantized(t), t == DType::BF16);
}

bool matmul_q4_0x8_preferred() { return HWY_DYNAMIC_DISPATCH(Q4x8Preferred)(); }

Bf16Kernel matmul_bf16_kernel(MatmulPath path) {
  if (path == MatmulPath::Sgemm) return Bf16Kernel::Sgemm;
  const bool dot = bf16_dot_for(path);
  float out = 0.0f;
  const float in[2] = {1.0f, 1.0f};
  const uint16_t w[2] = {0x3f80, 0x3f80};  // 1.0 in bf16
  const int k = HWY_DYNAMIC_DISPATCH(GemmBF16)(&out, in, w, nullptr, 1, 1, 2, false, 1, dot);
  return k == 2 ? Bf16Kernel::Dot : k == 1 ? Bf16Kernel::F32 : Bf16Kernel::Sgemm;
}

bool matmul_bf16_gemm() { return matmul_bf16_kernel(MatmulPath::Blas) == Bf16Kernel::Dot; }

void matmul_forward_path(MatmulPath path, float* out, const float* in, const MatView& W,
                         const float* bias, int64_t M, bool accumulate) {
  check_view(W, "matmul_forward");
  if (M <= 0 || W.rows <= 0) return;
  if (W.cols <= 0) {  // empty sum: out = bias or 0 (or unchanged + bias)
    prepare_out(out, bias, M, W.rows, accumulate);
    if (!bias && !accumulate) std::memset(out, 0, size_t(M * W.rows) * sizeof(float));
    return;
  }
  if (path == MatmulPath::Auto)
    path = M <= matmul_gemv_max_m(W.dtype) ? MatmulPath::Gemv : MatmulPath::Blas;
  ensure_threads_initialized();
  if (path == MatmulPath::Gemv) gemv(out, in, W, bias, M, accumulate);
  else blas(out, in, W, bias, M, accumulate, path);
}

void matmul_forward(float* out, const float* in, const MatView& W, const float* bias, int64_t M,
                    bool accumulate) {
  matmul_forward_path(MatmulPath::Auto, out, in, W, bias, M, accumulate);
}

void matmul_forward2(float* out0, float* out1, const float* in, const MatView& W0, const MatView& W1,
                     int64_t M) {
  check_view(W0, "matmul_forward2"), check_view(W1, "matmul_forward2");
  const bool gemv_both = M > 0 && W0.dtype == W1.dtype && W0.cols == W1.cols && W0.cols > 0 &&
                         W0.rows > 0 && W1.rows > 0 && M <= matmul_gemv_max_m(W0.dtype);
  if (!gemv_both) {
    matmul_forward(out0, in, W0, nullptr, M);
    matmul_forward(out1, in, W1, nullptr, M);
    return;
  }
  ensure_threads_initialized();
  const GemvJob jobs[2] = {{out0, &W0, nullptr}, {out1, &W1, nullptr}};
  gemv_jobs(jobs, 2, in, M, false);
}

void matmul_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t M, int64_t N, int64_t K, bool accumulate) {
  if (M <= 0) return;
  if (N <= 0) {  // no outputs: dinp gets nothing, but = still has to write it
    if (dinp && !accumulate && K > 0) std::memset(dinp, 0, size_t(M * K) * sizeof(float));
    return;
  }
  ensure_threads_initialized();
  if (dinp && K > 0)  // dinp[M,K] (+)= dout[M,N] · W[N,K]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(N), 1.0f, dout,
                int(N), W, int(K), accumulate ? 1.0f : 0.0f, dinp, int(K));
  if (dW && K > 0)  // dW[N,K] += dout[M,N]ᵀ · inp[M,K]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(N), int(K), int(M), 1.0f, dout,
                int(N), inp, int(K), 1.0f, dW, int(K));
  if (dbias)  // m in order: same sum whatever the thread count
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) dbias[n] += dout[m * N + n];
}

void matrow_to_f32(float* dst, const MatView& W, int64_t row) {
  check_view(W, "matrow_to_f32");
  if (row < 0 || row >= W.rows)
    throw Error("matrow_to_f32: row " + std::to_string(row) + " out of range [0, " +
                std::to_string(W.rows) + ")");
  if (W.x8) {  // each block gathered back into a plain one: the same values as the plain layout's
    const int64_t KB = W.cols / kQ4Block;
    const auto* w = static_cast<const uint8_t*>(W.data);
    for (int64_t b = 0; b < KB; ++b) {
      BlockQ4_0 blk;
      std::memcpy(&blk.d, q4_0x8_scale(w, KB, row, b), sizeof(blk.d));
      std::memcpy(blk.qs, q4_0x8_codes(w, KB, row, b), sizeof(blk.qs));
      dequantize_q4_0(dst + b * kQ4Block, &blk, kQ4Block);
    }
    return;
  }
  const char* src = static_cast<const char*>(W.data) + size_t(row) * quant_row_stride(W.dtype, W.cols);
  if (W.dtype == DType::F32) std::memcpy(dst, src, size_t(W.cols) * sizeof(float));
  else if (W.dtype == DType::Q4_K) dequantize_q4_k(dst, reinterpret_cast<const uint8_t*>(src), W.cols);
  else
    HWY_DYNAMIC_DISPATCH(Widen)(dst, src, int(W.dtype),
                                W.scales ? W.scales + row * (W.cols / kQ8Block) : nullptr, W.cols);
}

}  // namespace hymba
#endif  // HWY_ONCE
