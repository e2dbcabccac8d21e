// Direct Preference Optimization (Rafailov et al. 2023) as TRL's DPOTrainer computes it (sigmoid
// loss): with π = Σ log p of a completion's tokens under the policy and r the same under the
// frozen reference model,
//   z = β·((π_c - r_c) - (π_r - r_r)),  loss = -log σ(z)  (mean over pairs)
// and TRL's metrics: rewards/chosen = β(π_c - r_c), rewards/rejected = β(π_r - r_r),
// rewards/accuracies = mean[rewards/chosen > rewards/rejected], rewards/margins = their difference,
// logps/chosen = π_c, logps/rejected = π_r (means over pairs).
#pragma once
#include <cstdint>
#include <span>

#include "model/hymba.h"
#include "train/step.h"

namespace hymba {

struct DpoPair {
  SeqRef chosen, rejected;  // targets >= 0 only on the completion's tokens
  double ref_chosen = 0, ref_rejected = 0;  // Σ log p under the reference model
};

struct DpoStats {
  double loss = 0, reward_chosen = 0, reward_rejected = 0, accuracy = 0, margin = 0;
  double logp_chosen = 0, logp_rejected = 0;
  int64_t pairs = 0;
  void add(const DpoStats& o);  // pair-weighted running mean
};

// Σ log p(target) over the counted targets of one sequence (forward only).
double sequence_logp(HymbaModel& m, const SeqRef& s);

// Mean DPO loss over `pairs`; accumulates grad_scale × its gradient into `grads` (and the
// adapters' gradients the model was given). Each sequence: one forward for π, then a forward +
// backward weighted by dloss/dπ.
DpoStats dpo_loss_and_grads(HymbaModel& m, const Weights& grads, std::span<const DpoPair> pairs,
                            double beta, float grad_scale = 1.0f);

}  // namespace hymba
