// Rotary position embedding, rotate-half (NeoX) style over the full head dimension.
#pragma once
#include <cstdint>
#include <vector>

namespace hymba {

// inv_freq[d/2] for head dim d: base^(-2i/d), with base already NTK-scaled by the caller.
std::vector<float> rope_inv_freq(double base, int64_t head_dim);

// In place on x[n, n_head, head_dim]; row t is at absolute position pos[t].
// Pairs (i, i + head_dim/2): x'[i] = x[i]cos - x[i+h]sin, x'[i+h] = x[i+h]cos + x[i]sin,
// angle = pos * inv_freq[i] (computed in double, cos/sin rounded to float).
void rope_forward(float* x, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
                  const float* inv_freq);
// In place on the gradient: applies the inverse rotation.
void rope_backward(float* dx, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
                   const float* inv_freq);

}  // namespace hymba
