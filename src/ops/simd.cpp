#include "ops/simd.h"

#include <cmath>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "ops/widen-inl.h"
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

HWY_INLINE float Sum(DF df, hn::Vec<DF> v) { return hn::GetLane(hn::SumOfLanes(df, v)); }

float Dot(const float* a, const float* b, int64_t n) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * NL <= n; i += 2 * NL) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + NL), hn::LoadU(df, b + i + NL), s1);
  }
  for (; i + NL <= n; i += NL) s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
  float s = Sum(df, hn::Add(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// The four horizontal sums of s0..s3 at once: two interleave rounds inside each 128-bit block
// leave [Σs0, Σs1, Σs2, Σs3] partials per block, then the blocks are added (far fewer shuffles
// than four separate reductions, which dominated the short d = 64 dot products).
HWY_INLINE void Sum4(DF df, hn::Vec<DF> s0, hn::Vec<DF> s1, hn::Vec<DF> s2, hn::Vec<DF> s3,
                     float* out) {
#if HWY_TARGET == HWY_SCALAR
  out[0] = Sum(df, s0), out[1] = Sum(df, s1), out[2] = Sum(df, s2), out[3] = Sum(df, s3);
#else
  const hn::Repartition<uint64_t, DF> du;
  const auto t01 = hn::Add(hn::InterleaveLower(df, s0, s1), hn::InterleaveUpper(df, s0, s1));
  const auto t23 = hn::Add(hn::InterleaveLower(df, s2, s3), hn::InterleaveUpper(df, s2, s3));
  const auto a = hn::BitCast(du, t01), b = hn::BitCast(du, t23);
  const auto u = hn::Add(hn::BitCast(df, hn::InterleaveLower(du, a, b)),
                         hn::BitCast(df, hn::InterleaveUpper(du, a, b)));
  HWY_ALIGN float buf[hn::MaxLanes(df)];
  hn::Store(u, df, buf);
  const int64_t NL = int64_t(hn::Lanes(df));
  for (int r = 0; r < 4; ++r) {
    float x = buf[r];
    for (int64_t blk = 4; blk < NL; blk += 4) x += buf[blk + r];
    out[r] = x;
  }
#endif
}

template <typename T>
void RowsDotT(float* S, int64_t lds, const float* a, int64_t lda, int64_t R, const T* b,
              int64_t bstride, int64_t nb, int64_t d, float scale) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t dv = d - d % NL;
  int64_t j = 0;
  // Two keys at a time: each a-row vector loaded once feeds two FMAs.
  for (; j + 2 <= nb; j += 2) {
    const T* bj = b + j * bstride;
    const T* bk = bj + bstride;
    int64_t r = 0;
    for (; r + 4 <= R && R - r != 5; r += 4) {
      const float* a0 = a + r * lda;
      const float *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
      auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
      auto u0 = hn::Zero(df), u1 = hn::Zero(df), u2 = hn::Zero(df), u3 = hn::Zero(df);
      for (int64_t i = 0; i < dv; i += NL) {
        const auto bv = LoadW(df, bj + i), bw = LoadW(df, bk + i);
        const auto q0 = hn::LoadU(df, a0 + i), q1 = hn::LoadU(df, a1 + i), q2 = hn::LoadU(df, a2 + i),
                   q3 = hn::LoadU(df, a3 + i);
        s0 = hn::MulAdd(q0, bv, s0), u0 = hn::MulAdd(q0, bw, u0);
        s1 = hn::MulAdd(q1, bv, s1), u1 = hn::MulAdd(q1, bw, u1);
        s2 = hn::MulAdd(q2, bv, s2), u2 = hn::MulAdd(q2, bw, u2);
        s3 = hn::MulAdd(q3, bv, s3), u3 = hn::MulAdd(q3, bw, u3);
      }
      float t[4], w[4];
      Sum4(df, s0, s1, s2, s3, t);
      Sum4(df, u0, u1, u2, u3, w);
      for (int64_t i = dv; i < d; ++i) {
        const float bi = ToF(bj[i]), ci = ToF(bk[i]);
        t[0] += a0[i] * bi, t[1] += a1[i] * bi, t[2] += a2[i] * bi, t[3] += a3[i] * bi;
        w[0] += a0[i] * ci, w[1] += a1[i] * ci, w[2] += a2[i] * ci, w[3] += a3[i] * ci;
      }
      for (int k = 0; k < 4; ++k) S[(r + k) * lds + j] = scale * t[k], S[(r + k) * lds + j + 1] = scale * w[k];
    }
    if (R - r == 5) {  // a GQA group of 5 heads at decode: one pass, not 4 + 1 (13 registers)
      const float* a0 = a + r * lda;
      const float *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda, *a4 = a3 + lda;
      auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df), s4 = hn::Zero(df);
      auto u0 = hn::Zero(df), u1 = hn::Zero(df), u2 = hn::Zero(df), u3 = hn::Zero(df), u4 = hn::Zero(df);
      for (int64_t i = 0; i < dv; i += NL) {
        const auto bv = LoadW(df, bj + i), bw = LoadW(df, bk + i);
        auto q = hn::LoadU(df, a0 + i);
        s0 = hn::MulAdd(q, bv, s0), u0 = hn::MulAdd(q, bw, u0);
        q = hn::LoadU(df, a1 + i);
        s1 = hn::MulAdd(q, bv, s1), u1 = hn::MulAdd(q, bw, u1);
        q = hn::LoadU(df, a2 + i);
        s2 = hn::MulAdd(q, bv, s2), u2 = hn::MulAdd(q, bw, u2);
        q = hn::LoadU(df, a3 + i);
        s3 = hn::MulAdd(q, bv, s3), u3 = hn::MulAdd(q, bw, u3);
        q = hn::LoadU(df, a4 + i);
        s4 = hn::MulAdd(q, bv, s4), u4 = hn::MulAdd(q, bw, u4);
      }
      float t[4], w[4], x[4];
      Sum4(df, s0, s1, s2, s3, t);
      Sum4(df, u0, u1, u2, u3, w);
      Sum4(df, s4, u4, s4, u4, x);
      const float* ar[5] = {a0, a1, a2, a3, a4};
      float tt[5] = {t[0], t[1], t[2], t[3], x[0]}, ww[5] = {w[0], w[1], w[2], w[3], x[1]};
      for (int64_t i = dv; i < d; ++i) {
        const float bi = ToF(bj[i]), ci = ToF(bk[i]);
        for (int k = 0; k < 5; ++k) tt[k] += ar[k][i] * bi, ww[k] += ar[k][i] * ci;
      }
      for (int k = 0; k < 5; ++k) S[(r + k) * lds + j] = scale * tt[k], S[(r + k) * lds + j + 1] = scale * ww[k];
      r += 5;
    }
    for (; r < R; ++r) {
      const float* a0 = a + r * lda;
      auto s0 = hn::Zero(df), u0 = hn::Zero(df);
      for (int64_t i = 0; i < dv; i += NL) {
        const auto q0 = hn::LoadU(df, a0 + i);
        s0 = hn::MulAdd(q0, LoadW(df, bj + i), s0), u0 = hn::MulAdd(q0, LoadW(df, bk + i), u0);
      }
      float t0 = Sum(df, s0), w0 = Sum(df, u0);
      for (int64_t i = dv; i < d; ++i) t0 += a0[i] * ToF(bj[i]), w0 += a0[i] * ToF(bk[i]);
      S[r * lds + j] = scale * t0, S[r * lds + j + 1] = scale * w0;
    }
  }
  for (; j < nb; ++j) {
    const T* bj = b + j * bstride;
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      const float* a0 = a + r * lda;
      const float *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
      auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
      for (int64_t i = 0; i < dv; i += NL) {
        const auto bv = LoadW(df, bj + i);
        s0 = hn::MulAdd(hn::LoadU(df, a0 + i), bv, s0);
        s1 = hn::MulAdd(hn::LoadU(df, a1 + i), bv, s1);
        s2 = hn::MulAdd(hn::LoadU(df, a2 + i), bv, s2);
        s3 = hn::MulAdd(hn::LoadU(df, a3 + i), bv, s3);
      }
      float t[4];
      Sum4(df, s0, s1, s2, s3, t);
      float t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3];
      for (int64_t i = dv; i < d; ++i) {
        const float bi = ToF(bj[i]);
        t0 += a0[i] * bi, t1 += a1[i] * bi, t2 += a2[i] * bi, t3 += a3[i] * bi;
      }
      S[r * lds + j] = scale * t0;
      S[(r + 1) * lds + j] = scale * t1;
      S[(r + 2) * lds + j] = scale * t2;
      S[(r + 3) * lds + j] = scale * t3;
    }
    for (; r < R; ++r) {
      const float* a0 = a + r * lda;
      auto s0 = hn::Zero(df);
      for (int64_t i = 0; i < dv; i += NL) s0 = hn::MulAdd(hn::LoadU(df, a0 + i), LoadW(df, bj + i), s0);
      float t0 = Sum(df, s0);
      for (int64_t i = dv; i < d; ++i) t0 += a0[i] * ToF(bj[i]);
      S[r * lds + j] = scale * t0;
    }
  }
}

void RowsDot(float* S, int64_t lds, const float* a, int64_t lda, int64_t R, const void* b,
             int64_t bstride, DType bt, int64_t nb, int64_t d, float scale) {
  switch (bt) {
    case DType::BF16:
      return RowsDotT(S, lds, a, lda, R, static_cast<const hwy::bfloat16_t*>(b), bstride, nb, d, scale);
    case DType::F16:
      return RowsDotT(S, lds, a, lda, R, static_cast<const hwy::float16_t*>(b), bstride, nb, d, scale);
    default:
      return RowsDotT(S, lds, a, lda, R, static_cast<const float*>(b), bstride, nb, d, scale);
  }
}

template <typename T>
void RowsAccumT(float* acc, int64_t lda, const float* P, int64_t ldp, int64_t R, const T* b,
                int64_t bstride, int64_t nb, int64_t d) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t dv = d - d % NL;
  // Column chunks outermost so the accumulators stay in registers across all keys; two chunks
  // at a time so each broadcast weight feeds two FMAs.
  int64_t i0 = 0;
  for (; i0 + 2 * NL <= dv; i0 += 2 * NL) {
    const int64_t i = i0;
    int64_t r = 0;
    for (; r + 4 <= R && R - r != 5; r += 4) {
      float* c0 = acc + r * lda + i;
      float *c1 = c0 + lda, *c2 = c1 + lda, *c3 = c2 + lda;
      const float* p0 = P + r * ldp;
      const float *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
      auto x0 = hn::LoadU(df, c0), x1 = hn::LoadU(df, c1), x2 = hn::LoadU(df, c2),
           x3 = hn::LoadU(df, c3);
      auto y0 = hn::LoadU(df, c0 + NL), y1 = hn::LoadU(df, c1 + NL), y2 = hn::LoadU(df, c2 + NL),
           y3 = hn::LoadU(df, c3 + NL);
      for (int64_t j = 0; j < nb; ++j) {
        const auto b0 = LoadW(df, b + j * bstride + i);
        const auto b1 = LoadW(df, b + j * bstride + i + NL);
        const auto w0 = hn::Set(df, p0[j]), w1 = hn::Set(df, p1[j]), w2 = hn::Set(df, p2[j]),
                   w3 = hn::Set(df, p3[j]);
        x0 = hn::MulAdd(w0, b0, x0), y0 = hn::MulAdd(w0, b1, y0);
        x1 = hn::MulAdd(w1, b0, x1), y1 = hn::MulAdd(w1, b1, y1);
        x2 = hn::MulAdd(w2, b0, x2), y2 = hn::MulAdd(w2, b1, y2);
        x3 = hn::MulAdd(w3, b0, x3), y3 = hn::MulAdd(w3, b1, y3);
      }
      hn::StoreU(x0, df, c0), hn::StoreU(x1, df, c1), hn::StoreU(x2, df, c2), hn::StoreU(x3, df, c3);
      hn::StoreU(y0, df, c0 + NL), hn::StoreU(y1, df, c1 + NL), hn::StoreU(y2, df, c2 + NL),
          hn::StoreU(y3, df, c3 + NL);
    }
    if (R - r == 5) {  // a GQA group of 5 heads at decode: each V row widened once, not twice
      float* c0 = acc + r * lda + i;
      float *c1 = c0 + lda, *c2 = c1 + lda, *c3 = c2 + lda, *c4 = c3 + lda;
      const float* p0 = P + r * ldp;
      const float *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp, *p4 = p3 + ldp;
      auto x0 = hn::LoadU(df, c0), x1 = hn::LoadU(df, c1), x2 = hn::LoadU(df, c2),
           x3 = hn::LoadU(df, c3), x4 = hn::LoadU(df, c4);
      auto y0 = hn::LoadU(df, c0 + NL), y1 = hn::LoadU(df, c1 + NL), y2 = hn::LoadU(df, c2 + NL),
           y3 = hn::LoadU(df, c3 + NL), y4 = hn::LoadU(df, c4 + NL);
      for (int64_t j = 0; j < nb; ++j) {
        const auto b0 = LoadW(df, b + j * bstride + i);
        const auto b1 = LoadW(df, b + j * bstride + i + NL);
        auto w = hn::Set(df, p0[j]);
        x0 = hn::MulAdd(w, b0, x0), y0 = hn::MulAdd(w, b1, y0);
        w = hn::Set(df, p1[j]);
        x1 = hn::MulAdd(w, b0, x1), y1 = hn::MulAdd(w, b1, y1);
        w = hn::Set(df, p2[j]);
        x2 = hn::MulAdd(w, b0, x2), y2 = hn::MulAdd(w, b1, y2);
        w = hn::Set(df, p3[j]);
        x3 = hn::MulAdd(w, b0, x3), y3 = hn::MulAdd(w, b1, y3);
        w = hn::Set(df, p4[j]);
        x4 = hn::MulAdd(w, b0, x4), y4 = hn::MulAdd(w, b1, y4);
      }
      hn::StoreU(x0, df, c0), hn::StoreU(x1, df, c1), hn::StoreU(x2, df, c2), hn::StoreU(x3, df, c3),
          hn::StoreU(x4, df, c4);
      hn::StoreU(y0, df, c0 + NL), hn::StoreU(y1, df, c1 + NL), hn::StoreU(y2, df, c2 + NL),
          hn::StoreU(y3, df, c3 + NL), hn::StoreU(y4, df, c4 + NL);
      r += 5;
    }
    for (; r < R; ++r) {
      float* c0 = acc + r * lda + i;
      const float* p0 = P + r * ldp;
      auto x0 = hn::LoadU(df, c0), y0 = hn::LoadU(df, c0 + NL);
      for (int64_t j = 0; j < nb; ++j) {
        const auto w0 = hn::Set(df, p0[j]);
        x0 = hn::MulAdd(w0, LoadW(df, b + j * bstride + i), x0);
        y0 = hn::MulAdd(w0, LoadW(df, b + j * bstride + i + NL), y0);
      }
      hn::StoreU(x0, df, c0), hn::StoreU(y0, df, c0 + NL);
    }
  }
  for (int64_t i = i0; i < dv; i += NL) {
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      float* c0 = acc + r * lda + i;
      float *c1 = c0 + lda, *c2 = c1 + lda, *c3 = c2 + lda;
      const float* p0 = P + r * ldp;
      const float *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp;
      auto x0 = hn::LoadU(df, c0), x1 = hn::LoadU(df, c1), x2 = hn::LoadU(df, c2),
           x3 = hn::LoadU(df, c3);
      for (int64_t j = 0; j < nb; ++j) {
        const auto bv = LoadW(df, b + j * bstride + i);
        x0 = hn::MulAdd(hn::Set(df, p0[j]), bv, x0);
        x1 = hn::MulAdd(hn::Set(df, p1[j]), bv, x1);
        x2 = hn::MulAdd(hn::Set(df, p2[j]), bv, x2);
        x3 = hn::MulAdd(hn::Set(df, p3[j]), bv, x3);
      }
      hn::StoreU(x0, df, c0), hn::StoreU(x1, df, c1), hn::StoreU(x2, df, c2), hn::StoreU(x3, df, c3);
    }
    for (; r < R; ++r) {
      float* c0 = acc + r * lda + i;
      const float* p0 = P + r * ldp;
      auto x0 = hn::LoadU(df, c0);
      for (int64_t j = 0; j < nb; ++j) x0 = hn::MulAdd(hn::Set(df, p0[j]), LoadW(df, b + j * bstride + i), x0);
      hn::StoreU(x0, df, c0);
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = dv; i < d; ++i) {
      float s = acc[r * lda + i];
      for (int64_t j = 0; j < nb; ++j) s += P[r * ldp + j] * ToF(b[j * bstride + i]);
      acc[r * lda + i] = s;
    }
}

void RowsAccum(float* acc, int64_t lda, const float* P, int64_t ldp, int64_t R, const void* b,
               int64_t bstride, DType bt, int64_t nb, int64_t d) {
  switch (bt) {
    case DType::BF16:
      return RowsAccumT(acc, lda, P, ldp, R, static_cast<const hwy::bfloat16_t*>(b), bstride, nb, d);
    case DType::F16:
      return RowsAccumT(acc, lda, P, ldp, R, static_cast<const hwy::float16_t*>(b), bstride, nb, d);
    default:
      return RowsAccumT(acc, lda, P, ldp, R, static_cast<const float*>(b), bstride, nb, d);
  }
}

float ExpSubSum(float* x, int64_t n, float m) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const auto vm = hn::Set(df, m);
  auto s = hn::Zero(df);
  int64_t i = 0;
  for (; i + NL <= n; i += NL) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vm));
    hn::StoreU(e, df, x + i);
    s = hn::Add(s, e);
  }
  if (i < n) {  // tail through a padded buffer: same exp as the body
    HWY_ALIGN float buf[hn::MaxLanes(df)];
    for (int64_t k = 0; k < NL; ++k) buf[k] = i + k < n ? x[i + k] : -INFINITY;
    const auto e = hn::Exp(df, hn::Sub(hn::Load(df, buf), vm));
    hn::Store(e, df, buf);
    s = hn::Add(s, e);
    for (int64_t k = 0; i + k < n; ++k) x[i + k] = buf[k];
  }
  return Sum(df, s);
}

float Max(const float* x, int64_t n) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  auto v = hn::Set(df, -INFINITY);
  int64_t i = 0;
  for (; i + NL <= n; i += NL) v = hn::Max(v, hn::LoadU(df, x + i));
  float m = hn::GetLane(hn::MaxOfLanes(df, v));
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void Scale(float* y, float a, int64_t n) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + NL <= n; i += NL) hn::StoreU(hn::Mul(hn::LoadU(df, y + i), va), df, y + i);
  for (; i < n; ++i) y[i] *= a;
}

void Axpy(float* y, float a, const float* x, int64_t n) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const auto va = hn::Set(df, a);
  int64_t i = 0;
  for (; i + NL <= n; i += NL)
    hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

// Runs f(df, offset, count) over [0, n): whole vectors, then the tail through padded buffers, so
// every element takes the same arithmetic path.
template <class F>
HWY_INLINE void Pointwise(int64_t n, const F& f) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  int64_t i = 0;
  for (; i + NL <= n; i += NL) f(df, i, NL);
  if (i < n) f(df, i, n - i);
}
HWY_INLINE hn::Vec<DF> LoadN(DF df, const float* p, int64_t m) {
  if (m == int64_t(hn::Lanes(df))) return hn::LoadU(df, p);
  HWY_ALIGN float buf[hn::MaxLanes(df)] = {};
  std::memcpy(buf, p, size_t(m) * 4);
  return hn::Load(df, buf);
}
HWY_INLINE void StoreN(DF df, hn::Vec<DF> v, float* p, int64_t m) {
  if (m == int64_t(hn::Lanes(df))) return hn::StoreU(v, df, p);
  HWY_ALIGN float buf[hn::MaxLanes(df)];
  hn::Store(v, df, buf);
  std::memcpy(p, buf, size_t(m) * 4);
}
HWY_INLINE hn::Vec<DF> SigmoidV(DF df, hn::Vec<DF> x) {
  const auto one = hn::Set(df, 1.0f);
  return hn::Div(one, hn::Add(one, hn::Exp(df, hn::Neg(x))));
}
// silu'(x) = σ(x)·(1 + x·(1 - σ(x)))
HWY_INLINE hn::Vec<DF> SiluGradV(DF df, hn::Vec<DF> x, hn::Vec<DF> s) {
  const auto one = hn::Set(df, 1.0f);
  return hn::Mul(s, hn::MulAdd(x, hn::Sub(one, s), one));
}

void Silu(float* y, const float* x, int64_t n) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto v = LoadN(df, x + i, m);
    StoreN(df, hn::Mul(v, SigmoidV(df, v)), y + i, m);
  });
}
// acc false: dx = instead of += (adding 0 to the product rounds as += into zeros does).
HWY_INLINE hn::Vec<DF> LoadOrZero(DF df, bool acc, const float* p, int64_t m) {
  return acc ? LoadN(df, p, m) : hn::Zero(df);
}
void SiluGrad(float* dx, const float* dy, const float* x, int64_t n, bool acc) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto v = LoadN(df, x + i, m);
    const auto g = hn::MulAdd(LoadN(df, dy + i, m), SiluGradV(df, v, SigmoidV(df, v)), LoadOrZero(df, acc, dx + i, m));
    StoreN(df, g, dx + i, m);
  });
}
void Softplus(float* y, const float* x, int64_t n) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto v = LoadN(df, x + i, m);
    // log1p(eˣ) = max(x, 0) + log1p(e^-|x|): no overflow, no cancellation.
    const auto e = hn::Exp(df, hn::Neg(hn::Abs(v)));
    auto r = hn::Add(hn::Max(v, hn::Zero(df)), hn::Log1p(df, e));
    r = hn::IfThenElse(hn::Gt(v, hn::Set(df, 20.0f)), v, r);
    StoreN(df, r, y + i, m);
  });
}
void SigmoidMulAcc(float* dx, const float* dy, const float* x, int64_t n, bool acc) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto g = hn::MulAdd(LoadN(df, dy + i, m), SigmoidV(df, LoadN(df, x + i, m)), LoadOrZero(df, acc, dx + i, m));
    StoreN(df, g, dx + i, m);
  });
}
void Swiglu(float* y, const float* g, const float* u, int64_t n) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto v = LoadN(df, g + i, m);
    StoreN(df, hn::Mul(hn::Mul(v, SigmoidV(df, v)), LoadN(df, u + i, m)), y + i, m);
  });
}
void SwigluGrad(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n, bool acc) {
  Pointwise(n, [&](DF df, int64_t i, int64_t m) {
    const auto v = LoadN(df, g + i, m);
    const auto s = SigmoidV(df, v);
    const auto d = LoadN(df, dy + i, m);
    if (dg) StoreN(df, hn::MulAdd(hn::Mul(d, LoadN(df, u + i, m)), SiluGradV(df, v, s), LoadOrZero(df, acc, dg + i, m)), dg + i, m);
    if (du) StoreN(df, hn::MulAdd(d, hn::Mul(v, s), LoadOrZero(df, acc, du + i, m)), du + i, m);
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hymba::simd {
HWY_EXPORT(Dot);
HWY_EXPORT(RowsDot);
HWY_EXPORT(RowsAccum);
HWY_EXPORT(ExpSubSum);
HWY_EXPORT(Max);
HWY_EXPORT(Scale);
HWY_EXPORT(Axpy);
HWY_EXPORT(Silu);
HWY_EXPORT(SiluGrad);
HWY_EXPORT(Softplus);
HWY_EXPORT(SigmoidMulAcc);
HWY_EXPORT(Swiglu);
HWY_EXPORT(SwigluGrad);

float dot(const float* a, const float* b, int64_t n) { return HWY_DYNAMIC_DISPATCH(Dot)(a, b, n); }
void rows_dot(float* S, int64_t lds, const float* a, int64_t lda, int64_t R, const void* b,
              int64_t bstride, DType bt, int64_t nb, int64_t d, float scale) {
  HWY_DYNAMIC_DISPATCH(RowsDot)(S, lds, a, lda, R, b, bstride, bt, nb, d, scale);
}
void rows_accum(float* acc, int64_t lda, const float* P, int64_t ldp, int64_t R, const void* b,
                int64_t bstride, DType bt, int64_t nb, int64_t d) {
  HWY_DYNAMIC_DISPATCH(RowsAccum)(acc, lda, P, ldp, R, b, bstride, bt, nb, d);
}
float exp_sub_sum(float* x, int64_t n, float m) { return HWY_DYNAMIC_DISPATCH(ExpSubSum)(x, n, m); }
float max(const float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(Max)(x, n); }
void scale(float* y, float a, int64_t n) { HWY_DYNAMIC_DISPATCH(Scale)(y, a, n); }
void axpy(float* y, float a, const float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(Axpy)(y, a, x, n); }
void silu(float* y, const float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(Silu)(y, x, n); }
void silu_grad(float* dx, const float* dy, const float* x, int64_t n, bool acc) {
  HWY_DYNAMIC_DISPATCH(SiluGrad)(dx, dy, x, n, acc);
}
void softplus(float* y, const float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(Softplus)(y, x, n); }
void sigmoid_mul_acc(float* dx, const float* dy, const float* x, int64_t n, bool acc) {
  HWY_DYNAMIC_DISPATCH(SigmoidMulAcc)(dx, dy, x, n, acc);
}
void swiglu(float* y, const float* g, const float* u, int64_t n) { HWY_DYNAMIC_DISPATCH(Swiglu)(y, g, u, n); }
void swiglu_grad(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n,
                 bool acc) {
  HWY_DYNAMIC_DISPATCH(SwigluGrad)(dg, du, dy, g, u, n, acc);
}
}  // namespace hymba::simd
#endif
