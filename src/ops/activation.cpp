#include "ops/activation.h"

namespace hymba {

namespace {
constexpr int64_t kPar = 1 << 15;  // below this, threads cost more than they save
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void silu_forward(float* y, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) y[i] = silu(x[i]);
}

void silu_backward(float* dx, const float* dy, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(x[i]);
    dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

void softplus_forward(float* y, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) y[i] = softplus(x[i]);
}

void softplus_backward(float* dx, const float* dy, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * sigmoid(x[i]);
}

void swiglu_forward(float* y, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) y[i] = silu(gate[i]) * up[i];
}

void swiglu_backward(float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                     int64_t n) {
#pragma omp parallel for schedule(static) if (n > kPar)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], s = sigmoid(g);
    if (dgate) dgate[i] += dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
    if (dup) dup[i] += dy[i] * g * s;
  }
}

}  // namespace hymba
