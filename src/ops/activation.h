// Pointwise functions and their derivatives.
#pragma once
#include <cmath>
#include <cstdint>

namespace hymba {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// The backwards add into their gradients (+=); with accumulate false they overwrite them (=), so
// a buffer whose first contribution this is needs no zero-fill.
// y = silu(x) (y may alias x); dx += dy · silu'(x).
void silu_forward(float* y, const float* x, int64_t n);
void silu_backward(float* dx, const float* dy, const float* x, int64_t n, bool accumulate = true);
// y = softplus(x) (y may alias x); dx += dy · sigmoid(x).
void softplus_forward(float* y, const float* x, int64_t n);
void softplus_backward(float* dx, const float* dy, const float* x, int64_t n,
                       bool accumulate = true);
// SwiGLU: y = silu(gate) · up; dgate += ..., dup += ...
void swiglu_forward(float* y, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                     int64_t n, bool accumulate = true);

}  // namespace hymba
