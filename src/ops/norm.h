// RMSNorm: every norm of Hymba (input, pre-MLP, final, dt/B/C, the two pre-average norms).
#pragma once
#include <cstdint>

namespace hymba {

// x, y: [n, d]; w: [d]. y = x * rsqrt(mean(x^2) + eps) * w. y may alias x.
// rstd[n] (1/rms of each row) is written when non-null: the backward needs it.
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d,
                     float eps);
// dx[n, d] += ... (= with accumulate false) ; dw[d] += ... (either may be null). x and rstd as
// saved by the forward.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t n, int64_t d, bool accumulate = true);

}  // namespace hymba
