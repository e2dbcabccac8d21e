// Training side of the low-rank adapters (src/model/adapter.h): PEFT's initialisation and the
// optimizer groups.
#pragma once
#include <cstdint>
#include <vector>

#include "model/adapter.h"
#include "train/optimizer.h"
#include "train/params.h"

namespace hymba {

// PEFT's initialisation: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0, DoRA magnitude =
// ‖W‖ of each output row, so the adapted model starts equal to the base. Gradients enabled.
AdapterSet init_adapters(const Config& c, const Weights& base, const AdapterConfig& cfg,
                         uint64_t seed);
// Folds the adapters into the F32 parameters (hymba merge): W <- W + s·B·A; DoRA:
// W <- m / ‖W + s·B·A‖ ⊙ (W + s·B·A), row by row; trained meta tokens replace the base's.
void merge_adapters(ParamArena& p, const AdapterSet& a);
// One AdamW group per tensor.
std::vector<ParamGroup> adapter_groups(const AdapterSet& a);

}  // namespace hymba
