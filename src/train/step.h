// One training step's numerics: forward over [meta tokens; inputs] for each sequence, the
// next-token cross-entropy over real tokens only, and the backward into the gradient arena.
#pragma once
#include <cstdint>
#include <span>

#include "model/hymba.h"
#include "train/params.h"

namespace hymba {

// inputs, targets: [B, L]; targets < 0 are ignored. Returns the mean loss over counted targets
// and accumulates (+=) its gradient, times grad_scale, into arena.grad. The model must have been
// built over arena.w.
double loss_and_grads(HymbaModel& m, ParamArena& arena, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale = 1.0f);
// The same with the gradients written through `grads` (bind_weights layout; null views are
// frozen: adapter training on a base of any dtype, with the adapters' gradients going where
// HymbaModel::set_adapters said).
double loss_and_grads(HymbaModel& m, const Weights& grads, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale = 1.0f);
// Sequences of any lengths, each its own forward item ([meta; tokens] from position 0, zero
// conv/SSM states, attention only inside it): a packed row of several conversations is several
// SeqRefs. The mean is over the counted targets of all of them; *counted receives that count.
struct SeqRef {
  const int32_t* inputs;
  const int32_t* targets;  // < 0: not counted
  int64_t n;
};
double loss_and_grads(HymbaModel& m, const Weights& grads, std::span<const SeqRef> seqs,
                      float grad_scale = 1.0f, int64_t* counted = nullptr);
double loss_only(HymbaModel& m, std::span<const SeqRef> seqs, int64_t* counted = nullptr);
// Forward only (validation): mean loss and the number of counted targets.
double loss_only(HymbaModel& m, const int32_t* inputs, const int32_t* targets, int64_t B,
                 int64_t L, int64_t* counted = nullptr);

}  // namespace hymba
