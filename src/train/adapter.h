// Training side of the low-rank adapters (src/model/adapter.h): PEFT's initialisation and the
// optimizer groups.
#pragma once
#include <cstdint>
#include <vector>

#include "model/adapter.h"
#include "train/optimizer.h"

namespace hymba {

// PEFT's initialisation: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0, DoRA magnitude =
// ‖W‖ of each output row, so the adapted model starts equal to the base. Gradients enabled.
AdapterSet init_adapters(const Config& c, const Weights& base, const AdapterConfig& cfg,
                         uint64_t seed);
// One AdamW group per tensor.
std::vector<ParamGroup> adapter_groups(const AdapterSet& a);

}  // namespace hymba
