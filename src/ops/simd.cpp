#include "ops/simd.h"

#include <cmath>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

HWY_INLINE hn::Vec<DF> LoadW(DF df, const float* p) { return hn::LoadU(df, p); }
HWY_INLINE hn::Vec<DF> LoadW(DF df, const hwy::bfloat16_t* p) {
  const hn::Rebind<hwy::bfloat16_t, DF> d16;
  return hn::PromoteTo(df, hn::LoadU(d16, p));
}
HWY_INLINE hn::Vec<DF> LoadW(DF df, const hwy::float16_t* p) {
  const hn::Rebind<hwy::float16_t, DF> d16;
  return hn::PromoteTo(df, hn::LoadU(d16, p));
}
HWY_INLINE float ToF(float x) { return x; }
HWY_INLINE float ToF(hwy::bfloat16_t x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return bf16_to_f32(u);
}
HWY_INLINE float ToF(hwy::float16_t x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return f16_to_f32(u);
}
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

template <typename T>
void RowsDotT(float* S, int64_t lds, const float* a, int64_t lda, int64_t R, const T* b,
              int64_t bstride, int64_t nb, int64_t d, float scale) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t dv = d - d % NL;
  for (int64_t j = 0; j < nb; ++j) {
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
      float t0 = Sum(df, s0), t1 = Sum(df, s1), t2 = Sum(df, s2), t3 = Sum(df, s3);
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
  // Column chunk outermost so the 4 accumulators stay in registers across all keys.
  for (int64_t i = 0; i < dv; i += NL) {
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
}  // namespace hymba::simd
#endif
