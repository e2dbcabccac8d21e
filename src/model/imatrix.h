// The importance matrix of llama.cpp's `llama-imatrix`: for each linear layer's weight, the mean
// squared activation of each input column over calibration text, importance[k] = Σ_t x[t,k]² / n.
// The 4-bit quantizers weight each weight's error by its column's importance (src/ops/quant.h),
// so the columns that carry large activations, whose errors reach the output the most, are kept
// closest. Collected by `hymba imatrix` (eval/quant_quality.h), used by `hymba quantize --imatrix`.
//
// File: safetensors, per matrix the pair llama.cpp's GGUF imatrix stores, "<weight>.in_sum2"
// F32 [cols] (Σ x²) and "<weight>.counts" F32 [1] (rows summed), <weight> the tensor's name in the
// checkpoint ("model.layers.3.mamba.in_proj.weight"); metadata "hymba.imatrix.*" (dataset, chunks,
// chunk_size).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hymba {

struct ImportanceMatrix {
  struct Entry {
    std::vector<double> sum2;  // [cols]
    int64_t count = 0;         // rows summed
  };
  std::map<std::string, Entry> entries;      // weight name -> sums
  std::map<std::string, std::string> info;   // dataset, chunks, chunk_size (file metadata)
  std::string info_of(const std::string& key) const;  // info[key], or "" if absent

  // Adds rows x[T, K] to weight `name`'s sums; throws hymba::Error if K differs from before.
  void add(const std::string& name, const float* x, int64_t T, int64_t K);
  // Adds another matrix's sums (llama-imatrix --in-file); throws hymba::Error on a column mismatch.
  void merge(const ImportanceMatrix& o);
  // importance[cols] of weight `name`; throws hymba::Error naming `name` if it is absent or has
  // another column count (an imatrix of another model).
  std::vector<float> importance(const std::string& name, int64_t cols) const;

  void save(const std::string& path) const;  // atomically
  // Validates pairs, shapes, dtypes, finite sums >= 0 and counts > 0; throws hymba::Error naming
  // the file and the tensor otherwise.
  static ImportanceMatrix load(const std::string& path);
};

}  // namespace hymba
