#include "ops/norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/simd.h"

namespace hymba {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d,
                     float eps) {
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    const float ss = simd::dot(xr, xr, d);
    const float rs = 1.0f / std::sqrt(ss / float(d) + eps);
    if (rstd) rstd[r] = rs;
    // Normalise first, then weight: the order of the official code (cast back, then · w).
    for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] * rs) * w[i];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int64_t n, int64_t d, bool accumulate) {
  const bool big = n * d > 32768;
  if (dx) {
#pragma omp parallel if (big)
    {
      std::vector<float> g(static_cast<size_t>(d));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r) {
        const float* xr = x + r * d;
        const float* dyr = dy + r * d;
        float* dxr = dx + r * d;
        for (int64_t i = 0; i < d; ++i) g[size_t(i)] = w[i] * dyr[i];
        const float rs = rstd[r];
        // d/dx of x·rs: rs·g - x·rs³·(g·x)/d
        const float c = simd::dot(g.data(), xr, d) * rs * rs * rs / float(d);
        if (accumulate)
          for (int64_t i = 0; i < d; ++i) dxr[i] += rs * g[size_t(i)] - c * xr[i];
        else
          for (int64_t i = 0; i < d; ++i) dxr[i] = rs * g[size_t(i)] - c * xr[i];
      }
    }
  }
  if (dw) {
    // Column blocks, rows in order: each dw element summed by one thread in a fixed order.
    constexpr int64_t kCols = 256;
    const int64_t nb = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (big && nb > 1)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t i0 = b * kCols, i1 = std::min(d, i0 + kCols);
      for (int64_t r = 0; r < n; ++r) {
        const float rs = rstd[r];
        const float* xr = x + r * d;
        const float* dyr = dy + r * d;
        for (int64_t i = i0; i < i1; ++i) dw[i] += dyr[i] * (xr[i] * rs);
      }
    }
  }
}

}  // namespace hymba
