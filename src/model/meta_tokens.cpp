// Meta tokens (paper §2.3): M learned vectors prepended to every sequence at positions 0..M-1.
// Attention and the SSM are causal, so their effect on every later token is a fixed state: the
// per-layer K/V of the meta tokens plus the conv/SSM states after them. It is computed once per
// model and shared read-only by all sequences (the official code recomputes it every prefill).
#include "model/hymba.h"

namespace hymba {

std::shared_ptr<const SequenceState> HymbaModel::compute_prefix(DType cache_dtype) {
  CacheOptions opts{cache_dtype, /*keep_all=*/true};
  auto prefix = std::make_shared<SequenceState>(make_empty_state(cfg_, plan_, opts));
  const int64_t M = cfg_.num_memory_tokens;
  if (M > 0) {
    std::vector<float> x(w_.meta, w_.meta + M * cfg_.hidden_size);
    ForwardItem item{prefix.get(), M};
    forward(x.data(), std::span<const ForwardItem>(&item, 1));
  }
  return prefix;
}

}  // namespace hymba
