#include "ops/conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace hymba {

void causal_conv1d_forward(float* y, const float* x, const float* w, const float* b, float* state,
                           int64_t L, int64_t C, int64_t K) {
  if (L <= 0 || C <= 0) return;
  // w transposed to [K, C] so the loops over channels are contiguous (they vectorise).
  std::vector<float> wt(size_t(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * C + c)] = w[c * K + k];
#pragma omp parallel for schedule(static) if (L * C * K > 65536)
  for (int64_t t = 0; t < L; ++t) {
    float* yr = y + t * C;
    if (b) std::memcpy(yr, b, size_t(C) * 4);
    else std::fill(yr, yr + C, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t src = t - (K - 1) + k;
      const float* xr = src >= 0 ? x + src * C : (state ? state + (K - 1 + src) * C : nullptr);
      if (!xr) continue;
      const float* wk = &wt[size_t(k * C)];
      for (int64_t c = 0; c < C; ++c) yr[c] += wk[c] * xr[c];
    }
  }
  if (state && K > 1) {
    const int64_t S = K - 1;
    if (L >= S) {
      std::memcpy(state, x + (L - S) * C, size_t(S * C) * 4);
    } else {  // keep the newest S rows of history + x
      std::memmove(state, state + L * C, size_t((S - L) * C) * 4);
      std::memcpy(state + (S - L) * C, x, size_t(L * C) * 4);
    }
  }
}

void causal_conv1d_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                            const float* w, int64_t L, int64_t C, int64_t K, bool accumulate) {
  if (L <= 0 || C <= 0) return;
  // Channel blocks with time in order: every gradient element is summed by one thread in a fixed
  // order.
  constexpr int64_t kCols = 64;
  const int64_t nb = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (L * C * K > 65536)
  for (int64_t bi = 0; bi < nb; ++bi) {
    const int64_t c0 = bi * kCols, c1 = std::min(C, c0 + kCols), nc = c1 - c0;
    float wt[kCols], acc[kCols];
    // dx gets K contributions: zero this thread's columns (in cache) rather than the caller all.
    if (!accumulate)
      for (int64_t t = 0; t < L; ++t) std::memset(dx + t * C + c0, 0, size_t(nc) * sizeof(float));
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t c = 0; c < nc; ++c) wt[c] = w[(c0 + c) * K + k], acc[c] = 0.0f;
      for (int64_t t = 0; t < L; ++t) {
        const int64_t src = t - (K - 1) + k;  // y[t] reads x[src] through w[:, k]
        if (src < 0) continue;
        const float* dyr = dy + t * C + c0;
        const float* xr = x + src * C + c0;
        float* dxr = dx + src * C + c0;
        for (int64_t c = 0; c < nc; ++c) {
          acc[c] += dyr[c] * xr[c];
          dxr[c] += dyr[c] * wt[c];
        }
      }
      if (dw)
        for (int64_t c = 0; c < nc; ++c) dw[(c0 + c) * K + k] += acc[c];
    }
    if (db)
      for (int64_t t = 0; t < L; ++t)
        for (int64_t c = 0; c < nc; ++c) db[c0 + c] += dy[t * C + c0 + c];
  }
}

}  // namespace hymba
