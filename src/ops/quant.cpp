#include "ops/quant.h"

#include <cmath>

#include "base/error.h"

namespace hymba {

void quantize_q8(int8_t* q, float* scales, const float* x, int64_t n) {
  HYMBA_CHECK(n % kQ8Block == 0, "quantize_q8: length " + std::to_string(n) +
                                     " is not a multiple of " + std::to_string(kQ8Block));
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    HYMBA_CHECK(std::isfinite(amax), "quantize_q8: non-finite weight");
    const float scale = amax / 127.0f;
    scales[b] = scale;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      // A true division, not a multiply by 1/scale: bf16 weights often land exactly on a
      // rounding tie, and the two disagree there (the rule is round(w / scale), half away from 0).
      const long r = scale > 0.0f ? std::lround(xb[i] / scale) : 0;
      q[b * kQ8Block + i] = int8_t(r > 127 ? 127 : r < -127 ? -127 : r);
    }
  }
}

void dequantize_q8(float* x, const int8_t* q, const float* scales, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = scales[i / kQ8Block] * float(q[i]);
}

void quantize_q4_0(BlockQ4_0* out, const float* x, int64_t n) {
  HYMBA_CHECK(n % kQ4Block == 0, "quantize_q4_0: length " + std::to_string(n) +
                                     " is not a multiple of " + std::to_string(kQ4Block));
  for (int64_t b = 0; b < n / kQ4Block; ++b) {
    const float* xb = x + b * kQ4Block;
    float amax = 0.0f, m = 0.0f;  // m: the element of largest magnitude, with its sign
    for (int64_t i = 0; i < kQ4Block; ++i) {
      HYMBA_CHECK(std::isfinite(xb[i]), "quantize_q4_0: non-finite weight");
      if (std::fabs(xb[i]) > amax) amax = std::fabs(xb[i]), m = xb[i];
    }
    // m maps to code 0 (-8 · d = m), the asymmetric end of the 4-bit range gets the extreme.
    const uint16_t dh = f32_to_f16(m / -8.0f);
    const float d = f16_to_f32(dh);
    BlockQ4_0& o = out[b];
    o.d = dh;
    for (int64_t i = 0; i < kQ4Block / 2; ++i) {
      auto code = [&](float v) {
        const long r = d != 0.0f ? std::lround(v / d) + 8 : 8;
        return uint8_t(r < 0 ? 0 : r > 15 ? 15 : r);
      };
      o.qs[i] = uint8_t(code(xb[i]) | code(xb[i + kQ4Block / 2]) << 4);
    }
  }
}

void dequantize_q4_0(float* x, const BlockQ4_0* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const BlockQ4_0& k = b[i / kQ4Block];
    const int64_t j = i % kQ4Block;
    const int q = j < kQ4Block / 2 ? (k.qs[j] & 15) : (k.qs[j - kQ4Block / 2] >> 4);
    x[i] = f16_to_f32(k.d) * float(q - 8);
  }
}

void quantize_act_q8(int8_t* q, float* d, const float* x, int64_t n) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(xb[i])), finite &= std::isfinite(xb[i]);
    if (!finite) amax = 0.0f;  // a NaN/Inf input makes the block's products NaN, never UB
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = finite ? amax / 127.0f : NAN;
    for (int64_t i = 0; i < kQ8Block; ++i) q[b * kQ8Block + i] = int8_t(std::nearbyint(xb[i] * id));
  }
}

bool quant_fits(DType t, int64_t cols) {
  switch (t) {
    case DType::Q8: return cols % kQ8Block == 0;
    case DType::Q4_0: return cols % kQ4Block == 0;
    default: return true;
  }
}

size_t quant_row_stride(DType t, int64_t cols) {
  if (t == DType::Q4_0) return size_t(cols / kQ4Block) * sizeof(BlockQ4_0);
  return size_t(cols) * dtype_size(t);
}

size_t quant_matrix_bytes(DType t, int64_t rows, int64_t cols) {
  size_t b = size_t(rows) * quant_row_stride(t, cols);
  if (t == DType::Q8) b += size_t(rows * (cols / kQ8Block)) * sizeof(float);
  return b;
}

const char* quant_name(DType t) {
  switch (t) {
    case DType::Q8: return "q8_0";
    case DType::Q4_0: return "q4_0";
    default: return "none";
  }
}

bool quant_from_name(const std::string& s, DType* out) {
  if (s == "q8_0" || s == "q8") *out = DType::Q8;
  else if (s == "q4_0") *out = DType::Q4_0;
  else return false;
  return true;
}

}  // namespace hymba
