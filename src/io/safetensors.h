// Safetensors files: a validating mmap reader (single file or HF shards) and an atomic writer.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
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

// Zero-filled anonymous memory for weights, 2 MiB aligned with transparent huge pages advised
// (THP "madvise" mode, Debian's default): a 2 MiB page needs one TLB entry where 4 KiB pages
// need 512, which a decode step streaming GBs of weights notices. Move-only.
class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t n);  // throws hymba::Error when the memory is not there
  HugeBuffer(HugeBuffer&& o) noexcept { swap(o); }
  HugeBuffer& operator=(HugeBuffer&& o) noexcept { swap(o); return *this; }
  ~HugeBuffer();
  uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  void make_read_only();  // the weights are never written once loaded

 private:
  void swap(HugeBuffer& o) noexcept {
    std::swap(p_, o.p_), std::swap(n_, o.n_), std::swap(mapped_, o.mapped_);
  }
  uint8_t* p_ = nullptr;
  size_t n_ = 0, mapped_ = 0;
};

// How the tensor bytes get into memory (llama.cpp's --mmap / --no-mmap / --mlock).
//  read (default): the files are read once into anonymous memory on 2 MiB transparent huge pages.
//    Start-up reads the whole file; the RSS is the file size; decode then runs from memory that
//    needs ~1/512 of the TLB entries of 4 KiB page-cache pages and cannot be evicted under
//    pressure from other processes (docs/RESULTS.md: "Weights from disk").
//  mmap: the page cache is mapped (shared with other processes, start-up is instant, untouched
//    tensors cost nothing), 4 KiB pages that the kernel may drop and re-read under pressure.
//  mlock: additionally pins the bytes in RAM (either mode); a failure is a warning, not an error.
struct LoadOptions {
  bool mmap = false;
  bool mlock = false;
};

// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`, from a
// folder (or one .safetensors file path). Validates the header JSON, dtypes, that offsets are
// in-bounds, non-overlapping and match shape x dtype size; throws hymba::Error naming the
// file/tensor otherwise.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path_or_dir,
                                               const LoadOptions& opts = {});
  ~SafetensorsFile();
  const TensorInfo* find(const std::string& name) const;  // null if absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops the whole pages inside [p, p + n) from this process's memory after the tensor there
  // was copied elsewhere (e.g. quantized). With mmap they are read again from the file when
  // touched; with read they read as zeros afterwards, so release only bytes never read again.
  // No-op unless the range lies inside one of this file's mappings.
  void release_pages(const void* p, size_t n) const;
  bool mapped() const { return opts_.mmap; }

 private:
  SafetensorsFile() = default;
  struct Mapping;
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  LoadOptions opts_;
};

// One tensor to write: data in `dtype` (not owned).
struct TensorOut {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};
std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]" for messages

// Writes a safetensors file atomically (temp file + rename). Tensors are laid out in name order.
void write_safetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace hymba
