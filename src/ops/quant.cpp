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

}  // namespace hymba
