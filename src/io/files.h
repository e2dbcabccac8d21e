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

// Streaming form of write_file_atomic for big files (checkpoints): write() pieces, then commit()
// (fsync + rename). Destroyed without commit(): the temp file is removed, the target untouched.
// Killed (SIGKILL, power loss) before commit(): the target is untouched, and the data being written
// has no name (O_TMPFILE) or, where the filesystem lacks it, a "<path>.tmp.<pid>.*" name that the
// next AtomicFile for the same path removes once that process is gone.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws naming the path if the folder is unwritable
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string temp_prefix() const;
  void remove_stale_temps() const;
  std::string path_, tmp_;  // tmp_ empty while the data has no name (O_TMPFILE)
  int fd_ = -1;
};

// NumPy .npy v1.0, little-endian float32, C order; written atomically.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace hymba
