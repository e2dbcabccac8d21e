// Per-target helpers that widen stored elements (F32, BF16, F16 weights or cache rows) to float,
// shared by the Highway kernel files. Re-included once per target by foreach_target.h, hence the
// toggled include guard (Highway's -inl.h convention).
#if defined(HYMBA_OPS_WIDEN_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HYMBA_OPS_WIDEN_INL_H_
#undef HYMBA_OPS_WIDEN_INL_H_
#else
#define HYMBA_OPS_WIDEN_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include <hwy/highway.h>

#include "base/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {

template <class D>
HWY_INLINE hwy::HWY_NAMESPACE::Vec<D> LoadW(D d, const float* p) {
  return hwy::HWY_NAMESPACE::LoadU(d, p);
}
template <class D>
HWY_INLINE hwy::HWY_NAMESPACE::Vec<D> LoadW(D d, const hwy::bfloat16_t* p) {
  const hwy::HWY_NAMESPACE::Rebind<hwy::bfloat16_t, D> d16;
  return hwy::HWY_NAMESPACE::PromoteTo(d, hwy::HWY_NAMESPACE::LoadU(d16, p));
}
template <class D>
HWY_INLINE hwy::HWY_NAMESPACE::Vec<D> LoadW(D d, const hwy::float16_t* p) {
  const hwy::HWY_NAMESPACE::Rebind<hwy::float16_t, D> d16;
  return hwy::HWY_NAMESPACE::PromoteTo(d, hwy::HWY_NAMESPACE::LoadU(d16, p));
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

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#endif  // HYMBA_OPS_WIDEN_INL_H_
