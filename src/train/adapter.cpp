#include "train/adapter.h"

#include <cmath>
#include <random>

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

std::vector<ParamGroup> adapter_groups(const AdapterSet& a) {
  std::vector<ParamGroup> g;
  for (const auto& t : a.tensors) g.push_back({t.name, t.offset, t.size, true});
  return g;
}

}  // namespace hymba
