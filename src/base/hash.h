// FNV-1a (64-bit): the one byte hash of the project (init seeds per tensor name, file and model
// fingerprints). `h` continues a running hash, so several pieces can be mixed in turn.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hymba {

constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ull;

inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1a64Offset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
inline uint64_t fnv1a64(std::string_view s, uint64_t h = kFnv1a64Offset) { return fnv1a64(s.data(), s.size(), h); }

}  // namespace hymba
