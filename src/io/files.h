// Small file helpers: atomic writes, whole-file reads, .npy output.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hymba {

// Writes `bytes` to path via a temp file in the same folder + fsync + rename; throws on failure
// (the old file, if any, is untouched).
void write_file_atomic(const std::string& path, const void* data, size_t size);
inline void write_file_atomic(const std::string& path, const std::string& s) {
  write_file_atomic(path, s.data(), s.size());
}
std::string read_file(const std::string& path);  // throws hymba::Error naming the path
bool file_exists(const std::string& path);

// NumPy .npy v1.0, little-endian float32, C order; written atomically.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace hymba
