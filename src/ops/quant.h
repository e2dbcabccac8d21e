// Block-quantized weights, each row of a matrix in blocks of 32 consecutive elements:
//  Q8 (q8_0): int8 codes q with one F32 scale per block, w ≈ scale · q, scale = max|w| / 127
//    (llama.cpp's Q8_0 with F32 scales). A matrix is planar: all rows' codes [rows, cols], then
//    all scales [rows, cols / 32] as F32 (the layout in memory and in quantized files alike).
//  Q4_0 (q4_0): llama.cpp's block_q4_0, 18 bytes per block: an F16 scale d, then 16 bytes whose
//    low nibbles hold elements 0..15 and high nibbles 16..31; w ≈ d · (nibble - 8), with
//    d = m / -8 for m the block's element of largest magnitude. Rows are consecutive blocks.
//  Q4_K (q4_k): llama.cpp's block_q4_K, 144 bytes per super-block of 256 elements = 8 sub-blocks
//    of 32: F16 d and dmin, 12 bytes packing each sub-block's 6-bit scale sc and 6-bit min m, then
//    128 bytes of 4-bit codes q (bytes 32c..32c+31 hold sub-block 2c in their low nibbles and
//    2c+1 in their high ones); w ≈ d·sc·q - dmin·m. A row whose width is not a multiple of 256
//    ends in a short super-block (cols need only be a multiple of 32): the same 16-byte header, then
//    only the code bytes of its sub-blocks (32 per pair), so no Hymba matrix falls back for its
//    width (1.5B's 1600/3200/5504 are no multiples of 256). With widths a multiple of 256 the row is
//    exactly llama.cpp's sequence of block_q4_K.
// Bytes per decoded token relative to bf16: Q8 0.56, Q4_0 0.28, Q4_K 0.28.
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

// Importance weighting (llama.cpp's --imatrix): `importance`[n], one value >= 0 per element of the
// row (its column's mean squared activation over calibration text, src/model/imatrix.h), or null.
// With it the 4-bit quantizers minimise the weighted error Σ w_i·(x_i - x̂_i)², w_i = importance_i
// · sqrt(σ² + x_i²) (σ² the row's mean square: llama.cpp's weighting), instead of their plain rule.
// The block layouts are unchanged; only the scales (and so the codes) chosen differ.

// x[n] -> n / kQ4Block blocks (n a multiple of kQ4Block). d is rounded to F16 first and the codes
// are q = clamp(round(x / d) + 8, 0, 15) with that d (half away from zero), so the error
// |x - d·(q-8)| <= |d| / 2 except at the clamped end. Without importance d = m / -8, m the block's
// element of largest magnitude (llama.cpp's rule). With it, d is the one of a few candidates around
// that with the least weighted error (never more than the plain d's). Throws on a non-finite value.
void quantize_q4_0(BlockQ4_0* out, const float* x, int64_t n, const float* importance = nullptr);
void dequantize_q4_0(float* x, const BlockQ4_0* b, int64_t n);

// Q4_0 "x8" layout: the blocks of 8 consecutive rows interleaved (llama.cpp's block_q4_0x8 idea),
// so that the decode GEMV reads one contiguous stream per tile of 8 rows and gets 4 rows' scales
// with one load. Per tile and pair of blocks (2i, 2i+1), kQ4x8Step bytes: 16 F16 scales as two
// groups of 8, [rows 4g..4g+3 of block 2i | the same rows of block 2i+1], then each row's 32
// code bytes [qs of 2i | qs of 2i+1]. The same bytes as the plain layout (quant_matrix_bytes);
// only the order differs. Needs rows a multiple of 8 and cols a multiple of 64.
constexpr int64_t kQ4x8Rows = 8;
constexpr int64_t kQ4x8Step = 2 * kQ4x8Rows * int64_t(sizeof(BlockQ4_0));  // 288
bool q4_0x8_fits(int64_t rows, int64_t cols);
// src [rows, cols / 32] plain blocks -> dst in the x8 layout (quant_matrix_bytes(Q4_0, rows, cols)).
void repack_q4_0x8(uint8_t* dst, const BlockQ4_0* src, int64_t rows, int64_t cols);
// Block b of row r (KB = cols / 32 blocks per row) in the x8 layout: its F16 scale and 16 code bytes.
inline const uint8_t* q4_0x8_scale(const uint8_t* w, int64_t KB, int64_t r, int64_t b) {
  return w + ((r / kQ4x8Rows) * (KB / 2) + b / 2) * kQ4x8Step + 2 * (8 * (r % 8 / 4) + 4 * (b % 2) + r % 4);
}
inline const uint8_t* q4_0x8_codes(const uint8_t* w, int64_t KB, int64_t r, int64_t b) {
  return w + ((r / kQ4x8Rows) * (KB / 2) + b / 2) * kQ4x8Step + 4 * kQ4x8Rows + 32 * (r % 8) + 16 * (b % 2);
}

constexpr int64_t kQ4KBlock = 256;  // a super-block
constexpr int64_t kQ4KSub = 32;     // a sub-block: one scale and min
struct BlockQ4_K {
  uint16_t d, dmin;  // F16 bits
  uint8_t scales[12];
  uint8_t qs[kQ4KBlock / 2];
};
static_assert(sizeof(BlockQ4_K) == 144, "llama.cpp's block_q4_K layout");
constexpr size_t kQ4KHeader = 16;  // d, dmin, scales: what a short last super-block keeps whole

// Bytes of one Q4_K row of n elements (n a multiple of 32), a short last super-block included.
size_t q4_k_row_bytes(int64_t n);
// Sub-block j's (0..7) 6-bit scale and min from a super-block's 12 scale bytes: j < 4 in the low 6
// bits of bytes j (scale) and j+4 (min); j >= 4 in the low / high nibble of byte j+4 with the top
// 2 bits of byte j-4 (scale) / j (min) above them.
inline void q4_k_scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63, *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
    *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
  }
}
// Code i (0..31) of sub-block j of a super-block.
inline int q4_k_code(const BlockQ4_K& b, int j, int i) { return (b.qs[32 * (j / 2) + i] >> (4 * (j & 1))) & 15; }

// One row x[n] (n a multiple of 32) -> q4_k_row_bytes(n) bytes. Per sub-block, the scale and min
// minimizing Σ w_i·(x_i - (s·q_i - m))², w_i = rms(sub-block) + |x_i| (llama.cpp's
// make_qkx2_quants weighting: a few candidate scales around (max - min) / 15, each with its
// least-squares scale and min for the codes it gives; min <= 0 kept so that m >= 0); then the 8
// scales and 8 mins to 6 bits against the super-block's largest (d, dmin in F16), and the codes
// recomputed with those rounded values. With importance, w_i is the importance weighting above
// (the same search). Throws on a non-finite value.
void quantize_q4_k(uint8_t* out, const float* x, int64_t n, const float* importance = nullptr);
void dequantize_q4_k(float* x, const uint8_t* row, int64_t n);

// Activations entering a Q8/Q4_0 matmul are quantized to 8 bits too (as llama.cpp does), so the
// products run as int8 dot products: per block of 32, d = max|x| / 127 and q = x · (127 / max|x|)
// rounded to nearest, ties to even (an all-zero block: d = 0, q = 0; a block holding NaN or Inf:
// d = NaN, q = 0, so the products are NaN as without quantization). The rule differs from
// quantize_q8's (a multiply and round-to-even instead of a division and half-away) because it
// runs once per matmul input and must be cheap and identical in SIMD and scalar code.
// x[n] -> q[n], d[n / 32]; n a multiple of 32.
void quantize_act_q8(int8_t* q, float* d, const float* x, int64_t n);

// Whether a matrix of this width can be stored in a block format (cols a multiple of 32 for all).
bool quant_fits(DType t, int64_t cols);
// Bytes of a [rows, cols] matrix in dtype t (F32/BF16/F16, Q8 codes + scales, Q4_0/Q4_K blocks).
size_t quant_matrix_bytes(DType t, int64_t rows, int64_t cols);
// Bytes from one row's start to the next (Q8: the codes only; its scales are apart).
size_t quant_row_stride(DType t, int64_t cols);

// The names of the formats in files and on the command line ("q8_0", "q4_0", "q4_k"); false if unknown.
const char* quant_name(DType t);
bool quant_from_name(const std::string& s, DType* out);
// The block formats (Q8, Q4_0, Q4_K).
inline bool is_block_quant(DType t) { return t == DType::Q8 || t == DType::Q4_0 || t == DType::Q4_K; }

}  // namespace hymba
