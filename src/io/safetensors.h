// Safetensors files: a validating mmap reader (single file or HF shards) and an atomic writer.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"

namespace hymba {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // into the mmap, valid while the SafetensorsFile lives
  size_t nbytes = 0;
  int64_t numel() const;
};

// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`, from a
// folder (or one .safetensors file path). Validates the header JSON, dtypes, that offsets are
// in-bounds, non-overlapping and match shape x dtype size; throws hymba::Error naming the
// file/tensor otherwise.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path_or_dir);
  ~SafetensorsFile();
  const TensorInfo* find(const std::string& name) const;  // null if absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops the whole pages inside [p, p + n) from this process's memory (they are read again
  // from the file when touched), after the tensor there was copied elsewhere (e.g. quantized).
  // No-op unless the range lies inside one of this file's mappings.
  void release_pages(const void* p, size_t n) const;

 private:
  SafetensorsFile() = default;
  struct Mapping;
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: data in `dtype` (not owned).
struct TensorOut {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};
// Writes a safetensors file atomically (temp file + rename). Tensors are laid out in name order.
void write_safetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace hymba
