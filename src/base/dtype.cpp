#include "base/dtype.h"

#include <cstring>

#include "base/error.h"

namespace hymba {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::Q8: return "Q8";
    case DType::U8: return "U8";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_K: return "Q4_K";
  }
  return "?";
}

bool dtype_from_name(const std::string& s, DType* out) {
  static const struct { const char* n; DType t; } kNames[] = {
      {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"F64", DType::F64}, {"I32", DType::I32},   {"I64", DType::I64},
      {"U8", DType::U8}};
  for (auto& e : kNames)
    if (s == e.n) { *out = e.t; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while (!(man & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (man ? 0x200 : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    man |= 0x800000;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = 1u << (shift - 1);
    uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = uint32_t(exp) << 10 | man >> 13, rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;  // may carry into exponent: correct
  return uint16_t(sign | r);
}

namespace {
template <class T>
T load_unaligned(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

void to_f32(float* dst, const void* src, DType t, size_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    // Element by element through memcpy: safetensors data offsets need not be aligned (found by
    // fuzz/adapter_fuzz.cpp: a uint16_t load at an odd address is undefined behaviour).
    case DType::BF16: {
      auto* s = static_cast<const unsigned char*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_unaligned<uint16_t>(s + 2 * i));
      return;
    }
    case DType::F16: {
      auto* s = static_cast<const unsigned char*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_unaligned<uint16_t>(s + 2 * i));
      return;
    }
    case DType::F64: {
      auto* s = static_cast<const unsigned char*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = float(load_unaligned<double>(s + 8 * i));
      return;
    }
    default: fail(std::string("cannot convert dtype ") + dtype_name(t) + " to F32");
  }
}

void from_f32(void* dst, DType t, const float* src, size_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default: fail(std::string("cannot convert F32 to dtype ") + dtype_name(t));
  }
}

}  // namespace hymba
