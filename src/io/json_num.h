// Numbers from outside JSON, converted only when the target type holds them: nlohmann's get<T>
// static_casts, so 1e30 -> int or 1e300 -> float is undefined behaviour and 2^32+5 -> int32
// silently becomes 5 (found by fuzz/server_request_fuzz.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace hymba {

// False (and *out untouched) if v is not a number T represents; integral T also takes integral
// floats (2.0, 1e3) as some writers produce them. bool takes only true/false.
template <class T>
bool json_number(const nlohmann::json& v, T* out) {
  static_assert(std::is_arithmetic_v<T>);
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return false;
    *out = v.get<bool>();
    return true;
  } else if constexpr (std::is_integral_v<T>) {
    if (v.is_number_unsigned()) {
      const uint64_t x = v.get<uint64_t>();
      if (!std::in_range<T>(x)) return false;
      *out = T(x);
      return true;
    }
    if (v.is_number_integer()) {
      const int64_t x = v.get<int64_t>();
      if (!std::in_range<T>(x)) return false;
      *out = T(x);
      return true;
    }
    if (!v.is_number_float()) return false;
    const double d = v.get<double>();
    if (!(std::fabs(d) <= 0x1p53) || std::floor(d) != d || !std::in_range<T>(int64_t(d))) return false;
    *out = T(int64_t(d));
    return true;
  } else {
    if (!v.is_number()) return false;
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > double(std::numeric_limits<T>::max())) return false;
    *out = T(d);
    return true;
  }
}

}  // namespace hymba
