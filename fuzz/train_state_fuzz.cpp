// train_state.json of a checkpoint (what --resume reads): parse, then evaluate the restored
// learning-rate schedule over the run, as the trainer would.
#include <cmath>
#include <cstdint>

#include "fuzz_util.h"
#include "train/train_state.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const TrainState s = train_state_from_json(j, "train_state.json");
    for (int64_t step : {int64_t(0), s.step, s.schedule.total_steps / 2, s.schedule.total_steps})
      (void)s.schedule.lr(step);
    (void)train_state_to_json(s).dump();
  } catch (const Error&) {
  }
  return 0;
}
