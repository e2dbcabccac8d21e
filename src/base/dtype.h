// Element types of weights and caches, and the scalar conversions between them.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace hymba {

// Q8, Q4_0 and Q4_K are block-quantized weights (src/ops/quant.h): int8 codes with one F32 scale
// per block of 32 (llama.cpp's Q8_0 with F32 scales), llama.cpp's Q4_0 blocks and its Q4_K
// super-blocks of 256. In files they are
// U8 tensors with metadata naming the format (src/model/weights.h).
enum class DType : uint8_t { F32, BF16, F16, F64, I32, I64, Q8, U8, Q4_0, Q4_K };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::Q8: return 1;  // the int8 payload; the scales are held apart
    case DType::U8: return 1;
    case DType::Q4_0: case DType::Q4_K: return 0;  // not whole bytes per element: quant_row_stride()
  }
  return 0;
}

// Names as safetensors writes them ("F32", "BF16", "F16", "F64", "I32", "I64").
const char* dtype_name(DType t);
// Parses a safetensors dtype name; returns false for names we do not support.
bool dtype_from_name(const std::string& s, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of type `t` at `src` to float.
void to_f32(float* dst, const void* src, DType t, size_t n);
// Converts n floats to type `t` (F32, BF16 or F16) at `dst`.
void from_f32(void* dst, DType t, const float* src, size_t n);

}  // namespace hymba
