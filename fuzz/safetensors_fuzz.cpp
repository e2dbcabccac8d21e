// A safetensors file (header JSON + data) as SafetensorsFile::open reads it from disk. Every
// accepted tensor's bytes are read, so an offset past the mapping is an ASan report.
#include <cstdint>

#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::put_file("model.safetensors", data, size);
  try {
    auto f = SafetensorsFile::open(path);
    uint64_t sum = 0;
    for (const auto& [name, t] : f->tensors()) {
      fuzz::require(t.nbytes == uint64_t(t.numel()) * dtype_size(t.dtype), "nbytes == numel x dtype size");
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes; ++i) sum += p[i];
    }
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}
