#include "ops/activation.h"

#include <algorithm>

#include "ops/simd.h"

namespace hymba {

namespace {
// Fixed-size pieces, one thread each: the split does not depend on the thread count (and every
// element is computed the same way whichever piece it is in).
constexpr int64_t kPiece = 1 << 14;

template <class F>
void pieces(int64_t n, const F& f) {
  const int64_t np = (n + kPiece - 1) / kPiece;
#pragma omp parallel for schedule(static) if (np > 1)
  for (int64_t p = 0; p < np; ++p) f(p * kPiece, std::min(kPiece, n - p * kPiece));
}
}  // namespace

void silu_forward(float* y, const float* x, int64_t n) {
  pieces(n, [&](int64_t i, int64_t m) { simd::silu(y + i, x + i, m); });
}

void silu_backward(float* dx, const float* dy, const float* x, int64_t n, bool accumulate) {
  pieces(n, [&](int64_t i, int64_t m) { simd::silu_grad(dx + i, dy + i, x + i, m, accumulate); });
}

void softplus_forward(float* y, const float* x, int64_t n) {
  pieces(n, [&](int64_t i, int64_t m) { simd::softplus(y + i, x + i, m); });
}

void softplus_backward(float* dx, const float* dy, const float* x, int64_t n, bool accumulate) {
  pieces(n, [&](int64_t i, int64_t m) { simd::sigmoid_mul_acc(dx + i, dy + i, x + i, m, accumulate); });
}

void swiglu_forward(float* y, const float* gate, const float* up, int64_t n) {
  pieces(n, [&](int64_t i, int64_t m) { simd::swiglu(y + i, gate + i, up + i, m); });
}

void swiglu_backward(float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                     int64_t n, bool accumulate) {
  pieces(n, [&](int64_t i, int64_t m) {
    simd::swiglu_grad(dgate ? dgate + i : nullptr, dup ? dup + i : nullptr, dy + i, gate + i, up + i, m,
                      accumulate);
  });
}

}  // namespace hymba
