#include "train/adapter.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "base/error.h"
#include "base/hash.h"

namespace hymba {

AdapterSet init_adapters(const Config& c, const Weights& base, const AdapterConfig& cfg,
                         uint64_t seed) {
  AdapterSet a = adapter_layout(c, base, cfg);
  for (const auto& t : a.tensors) {
    if (t.kind != 'A') continue;
    std::mt19937_64 rng(seed ^ fnv1a64(t.name));
    const double bound = 1.0 / std::sqrt(double(t.shape[1]));
    float* d = a.data.data() + t.offset;
    for (int64_t i = 0; i < t.size; ++i)
      d[i] = float((double(rng() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound);
  }
  for (const auto& t : a.tensors)  // B is zero here, so the norm is ‖W‖
    if (t.kind == 'm')
      dora_row_norms(a.data.data() + t.offset, slot_matrix(base.layers[size_t(t.layer)], t.slot),
                     a.view.layers[size_t(t.layer)][size_t(t.slot)]);
  a.enable_grad();
  return a;
}

void merge_adapters(ParamArena& p, const AdapterSet& a) {
  HYMBA_CHECK(a.view.layers.size() == p.w.layers.size(), "merge: adapter and model have different layer counts");
  if (a.meta) {  // trained meta tokens replace the base's
    const int64_t n = p.config.num_memory_tokens * p.config.hidden_size;
    std::copy_n(a.meta, n, const_cast<float*>(p.w.meta));
  }
  for (size_t l = 0; l < a.view.layers.size(); ++l)
    for (int s = 0; s < kNumSlots; ++s) {
      const LoraView& v = a.view.layers[l][size_t(s)];
      if (!v.active()) continue;
      const MatView& W = slot_matrix(p.w.layers[l], Slot(s));
      HYMBA_CHECK(W.dtype == DType::F32, "merge: the parameters must be F32");
      float* w = static_cast<float*>(const_cast<void*>(W.data));
      const int64_t N = W.rows, K = W.cols, r = v.rank;
      std::vector<float> norm;
      if (v.dora()) {
        norm.resize(size_t(N));
        dora_row_norms(norm.data(), W, v);
      }
      for (int64_t j = 0; j < N; ++j) {
        float* row = w + j * K;
        for (int64_t q = 0; q < r; ++q) {
          const float b = v.scale * v.B[j * r + q];
          for (int64_t k = 0; k < K; ++k) row[k] += b * v.A[q * K + k];
        }
        if (v.dora())
          for (int64_t k = 0; k < K; ++k) row[k] *= v.magnitude[j] / norm[size_t(j)];
      }
    }
}

std::vector<ParamGroup> adapter_groups(const AdapterSet& a) {
  std::vector<ParamGroup> g;
  // Meta tokens without weight decay, as in full training (train/params.h).
  for (const auto& t : a.tensors) g.push_back({t.name, t.offset, t.size, t.kind != 'M'});
  return g;
}

}  // namespace hymba
