// Depthwise causal 1-D convolution over time (the Mamba heads' short conv).
#pragma once
#include <cstdint>

namespace hymba {

// x, y: [L, C] (time-major); w: [C, K] (PyTorch conv1d.weight[c, 0, k]); b: [C] or null.
// y[t, c] = b[c] + Σ_k w[c, k] · x[t - (K-1) + k, c], where inputs before t = 0 come from
// state[K-1, C] (oldest first) or are zero when state is null. No activation here.
// When state is non-null it is updated to the last K-1 inputs (history + x), so a sequence
// fed in chunks gives the same y as fed whole. y must not alias x.
void causal_conv1d_forward(float* y, const float* x, const float* w, const float* b, float* state,
                           int64_t L, int64_t C, int64_t K);

// Backward from a zero initial state (training). Accumulates into dx[L, C], dw[C, K], db[C]
// (db may be null); with accumulate false dx is overwritten instead.
void causal_conv1d_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                            const float* w, int64_t L, int64_t C, int64_t K, bool accumulate = true);

}  // namespace hymba
