// Widening tensors whose data sits at any byte offset (safetensors does not align its data
// offsets); runs under UBSan in CI, which flags a misaligned 16/64-bit load.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "base/dtype.h"

namespace hymba {
namespace {

void expect_123(const float* out) {
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 3.0f);
}

// Found by fuzz/adapter_fuzz.cpp: a BF16/F16 adapter tensor at an odd data offset was read
// through a misaligned uint16_t pointer (undefined behaviour).
TEST(DTypeBadInput, WidensUnalignedData) {
  const uint16_t bf16[3] = {0x3f80, 0xc000, 0x4040};  // 1, -2, 3
  const uint16_t f16[3] = {0x3c00, 0xc000, 0x4200};   // 1, -2, 3
  const double f64[3] = {1, -2, 3};
  for (size_t shift : {1, 3, 5}) {
    std::vector<unsigned char> buf(64 + shift);
    float out[3];
    std::memcpy(buf.data() + shift, bf16, sizeof bf16);
    to_f32(out, buf.data() + shift, DType::BF16, 3);
    expect_123(out);
    std::memcpy(buf.data() + shift, f16, sizeof f16);
    to_f32(out, buf.data() + shift, DType::F16, 3);
    expect_123(out);
    std::memcpy(buf.data() + shift, f64, sizeof f64);
    to_f32(out, buf.data() + shift, DType::F64, 3);
    expect_123(out);
  }
}

}  // namespace
}  // namespace hymba
