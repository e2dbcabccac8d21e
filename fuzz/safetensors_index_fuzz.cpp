// model.safetensors.index.json of a sharded checkpoint, next to two valid shards (a.safetensors
// holds "x", b.safetensors holds "y" and "z"): the index may name any file, tensor or path.
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace hymba;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const float v[4] = {1, 2, 3, 4};
  write_safetensors(fuzz::scratch() + "/a.safetensors", {{"x", DType::F32, {2}, v}});
  write_safetensors(fuzz::scratch() + "/b.safetensors", {{"y", DType::F32, {1}, v}, {"z", DType::F32, {3}, v}});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::put_file("model.safetensors.index.json", data, size);
  try {
    auto f = SafetensorsFile::open(fuzz::scratch() + "/model.safetensors.index.json");
    for (const auto& [name, t] : f->tensors())
      fuzz::require(t.data != nullptr && t.nbytes == uint64_t(t.numel()) * 4, "shard tensors intact");
  } catch (const Error&) {
  }
  return 0;
}
