#include "ops/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "ops/quant.h"
#include "ops/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "ops/widen-inl.h"

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;


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
template <int R, int MC, typename T>
HWY_INLINE void Tile(float* out, int64_t N, const float* in, const T* w, const float* sc, int64_t K,
                     const float* bias, bool accumulate) {
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
    for (int r = 0; r < R; ++r) {
      // The next tile's rows (contiguous after ours): short row streams defeat the hardware
      // prefetcher, and without this the GEMV reaches only ~60% of DRAM bandwidth.
      hwy::Prefetch(ElemAddr(w + (r + R) * ld, k));
      const auto wv = LoadRow(df, w + r * ld, sc ? sc + r * KB : nullptr, k);
      for (int j = 0; j < MC; ++j) acc[r][j] = hn::MulAdd(wv, x[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MC; ++j) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][j]));
      for (int64_t kk = k; kk < K; ++kk) s += RowAt(w + r * ld, sc ? sc + r * KB : nullptr, kk) * in[j * K + kk];
      if (bias) s += bias[r];
      float& o = out[j * N + r];
      o = accumulate ? o + s : s;
    }
  }
}

// Rows [n0, n1) of out for all M inputs, in chunks of up to 4 inputs: the weight rows of a tile
// come from DRAM once and are re-read from L1 for the next input chunk.
template <int MC, typename T>
HWY_INLINE void RowsMC(float* out, int64_t N, const float* in, const T* w, const float* sc,
                       int64_t K, const float* bias, int64_t n0, int64_t n1, bool acc) {
  // 4 rows x 1-2 inputs, or 2 rows x 3-4: at most 8 accumulators fit AVX2's 16 registers.
  constexpr int R = MC <= 2 ? 4 : 2;
  const int64_t KB = K / kQ8Block, ld = RowStride<T>(K);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    Tile<R, MC>(out + n, N, in, w + n * ld, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc);
  for (; n < n1; ++n)
    Tile<1, MC>(out + n, N, in, w + n * ld, sc ? sc + n * KB : nullptr, K, bias ? bias + n : nullptr, acc);
}

template <typename T>
void GemvRangeT(float* out, const float* in, const T* w, const float* sc, const float* bias,
                int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1, bool acc) {
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
HWY_EXPORT(Widen);

namespace {

void check_view(const MatView& W, const char* what) {
  if (W.dtype != DType::F32 && W.dtype != DType::BF16 && W.dtype != DType::F16 &&
      W.dtype != DType::Q8 && W.dtype != DType::Q4_0)
    throw Error(std::string(what) + ": weight dtype " + dtype_name(W.dtype) +
                " not supported (F32, BF16, F16, Q8, Q4_0)");
  if (W.dtype == DType::Q4_0 && W.cols % kQ4Block != 0)
    throw Error(std::string(what) + ": Q4_0 weights need a width that is a multiple of " +
                std::to_string(kQ4Block));
  if (!W.data && W.rows > 0 && W.cols > 0) throw Error(std::string(what) + ": null weight data");
  if (W.dtype == DType::Q8 && (W.cols % kQ8Block != 0 || (!W.scales && W.rows > 0)))
    throw Error(std::string(what) + ": Q8 weights need scales and a width that is a multiple of " +
                std::to_string(kQ8Block));
}

void gemv(float* out, const float* in, const MatView& W, const float* bias, int64_t M, bool acc) {
  const int64_t N = W.rows, K = W.cols;
  const int nt = num_threads();
  const auto fn = HWY_DYNAMIC_DISPATCH(GemvRange);
  // Contiguous row ranges in multiples of 4 (the tile height), one per thread.
  const int64_t chunks = (N + 3) / 4;
  const int use = int(std::max<int64_t>(1, std::min<int64_t>(nt, chunks / 8)));
  if (use == 1) {
    fn(out, in, W.data, int(W.dtype), W.scales, bias, M, N, K, 0, N, acc);
    return;
  }
#pragma omp parallel num_threads(use)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t n0 = std::min(N, chunks * t / T * 4), n1 = std::min(N, chunks * (t + 1) / T * 4);
    if (n0 < n1) fn(out, in, W.data, int(W.dtype), W.scales, bias, M, N, K, n0, n1, acc);
  }
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

void blas(float* out, const float* in, const MatView& W, const float* bias, int64_t M, bool acc) {
  const int64_t N = W.rows, K = W.cols;
  const float beta = prepare_out(out, bias, M, N, acc);
  if (W.dtype == DType::F32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, in, int(K),
                static_cast<const float*>(W.data), int(K), beta, out, int(N));
    return;
  }
  // 16-bit and Q8 weights: widen a block of rows (~4 MiB of F32, stays in L3) then sgemm on it. The
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
// for F32 weights (twice the bytes, no widening to save) sgemm wins from M = 32.
int64_t matmul_gemv_max_m(DType t) { return t == DType::F32 ? 16 : 64; }

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
  else blas(out, in, W, bias, M, accumulate);
}

void matmul_forward(float* out, const float* in, const MatView& W, const float* bias, int64_t M,
                    bool accumulate) {
  matmul_forward_path(MatmulPath::Auto, out, in, W, bias, M, accumulate);
}

void matmul_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return;
  ensure_threads_initialized();
  if (dinp && K > 0)  // dinp[M,K] += dout[M,N] · W[N,K]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(N), 1.0f, dout,
                int(N), W, int(K), 1.0f, dinp, int(K));
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
  const char* src = static_cast<const char*>(W.data) + size_t(row) * quant_row_stride(W.dtype, W.cols);
  if (W.dtype == DType::F32) std::memcpy(dst, src, size_t(W.cols) * sizeof(float));
  else
    HWY_DYNAMIC_DISPATCH(Widen)(dst, src, int(W.dtype),
                                W.scales ? W.scales + row * (W.cols / kQ8Block) : nullptr, W.cols);
}

}  // namespace hymba
#endif  // HWY_ONCE
