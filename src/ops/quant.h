// Block-quantized weights, each row of a matrix in blocks of 32 consecutive elements:
//  Q8 (q8_0): int8 codes q with one F32 scale per block, w ≈ scale · q, scale = max|w| / 127
//    (llama.cpp's Q8_0 with F32 scales). A matrix is planar: all rows' codes [rows, cols], then
//    all scales [rows, cols / 32] as F32 (the layout in memory and in quantized files alike).
//  Q4_0 (q4_0): llama.cpp's block_q4_0, 18 bytes per block: an F16 scale d, then 16 bytes whose
//    low nibbles hold elements 0..15 and high nibbles 16..31; w ≈ d · (nibble - 8), with
//    d = m / -8 for m the block's element of largest magnitude. Rows are consecutive blocks.
// Bytes per decoded token relative to bf16: Q8 0.56, Q4_0 0.28.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/dtype.h"

namespace hymba {

constexpr int64_t kQ8Block = 32;
constexpr int64_t kQ4Block = 32;

struct BlockQ4_0 {
  uint16_t d;  // F16 bits
  uint8_t qs[kQ4Block / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "llama.cpp's block_q4_0 layout");

// x[n] -> q[n], scales[n / kQ8Block]; n must be a multiple of kQ8Block. q = round(x / scale),
// half away from zero; an all-zero block gets scale 0. |x - scale·q| <= scale / 2 everywhere.
// Throws on a non-finite value.
void quantize_q8(int8_t* q, float* scales, const float* x, int64_t n);
// The inverse: x[i] = scales[i / kQ8Block] · q[i].
void dequantize_q8(float* x, const int8_t* q, const float* scales, int64_t n);

// x[n] -> n / kQ4Block blocks (n a multiple of kQ4Block). d is rounded to F16 first and the codes
// are q = clamp(round(x / d) + 8, 0, 15) with that d (half away from zero), so the error
// |x - d·(q-8)| <= |d| / 2 except at the clamped end. Throws on a non-finite value.
void quantize_q4_0(BlockQ4_0* out, const float* x, int64_t n);
void dequantize_q4_0(float* x, const BlockQ4_0* b, int64_t n);

// Activations entering a Q8/Q4_0 matmul are quantized to 8 bits too (as llama.cpp does), so the
// products run as int8 dot products: per block of 32, d = max|x| / 127 and q = x · (127 / max|x|)
// rounded to nearest, ties to even (an all-zero block: d = 0, q = 0; a block holding NaN or Inf:
// d = NaN, q = 0, so the products are NaN as without quantization). The rule differs from
// quantize_q8's (a multiply and round-to-even instead of a division and half-away) because it
// runs once per matmul input and must be cheap and identical in SIMD and scalar code.
// x[n] -> q[n], d[n / 32]; n a multiple of 32.
void quantize_act_q8(int8_t* q, float* d, const float* x, int64_t n);

// Whether a matrix of this width can be stored in a block format (cols a multiple of its block).
bool quant_fits(DType t, int64_t cols);
// Bytes of a [rows, cols] matrix in dtype t (F32/BF16/F16, Q8 codes + scales, Q4_0 blocks).
size_t quant_matrix_bytes(DType t, int64_t rows, int64_t cols);
// Bytes from one row's start to the next (Q8: the codes only; its scales are apart).
size_t quant_row_stride(DType t, int64_t cols);

// The names of the formats in files and on the command line ("q8_0", "q4_0"); false if unknown.
const char* quant_name(DType t);
bool quant_from_name(const std::string& s, DType* out);

}  // namespace hymba
