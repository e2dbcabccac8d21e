// 8-bit weights (DType::Q8): each row of a matrix in blocks of kQ8Block elements, stored as int8
// q with one F32 scale per block, w ≈ scale · q, scale = max|w| / 127 over the block (llama.cpp's
// Q8_0 layout, with F32 instead of F16 scales). Halves the bytes a decode step reads from bf16.
#pragma once
#include <cstdint>

namespace hymba {

constexpr int64_t kQ8Block = 32;

// x[n] -> q[n], scales[n / kQ8Block]; n must be a multiple of kQ8Block. q = round(x / scale),
// half away from zero; an all-zero block gets scale 0. |x - scale·q| <= scale / 2 everywhere.
// Throws on a non-finite value.
void quantize_q8(int8_t* q, float* scales, const float* x, int64_t n);
// The inverse: x[i] = scales[i / kQ8Block] · q[i].
void dequantize_q8(float* x, const int8_t* q, const float* scales, int64_t n);

}  // namespace hymba
