// Resumable training state beside a checkpoint: DIR/train_state.json (step, data RNG state,
// counters, schedule, free-form run info) + DIR/optimizer.bin (AdamW m, v, step; bit-exact).
// Together with the weights this is everything needed for a resumed run to produce the same
// parameters as an uninterrupted one (same batches via data_rng, same lr via the schedule).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "train/optimizer.h"
#include "train/schedule.h"

namespace hymba {

struct TrainState {
  int64_t step = 0;          // optimizer steps done
  uint64_t data_rng = 0;     // TokenWindows::sample state before the next batch
  int64_t tokens_seen = 0;
  LrSchedule schedule;
  nlohmann::json run = nlohmann::json::object();  // trainer's own settings (batch, seq_len, ...)
};

nlohmann::json train_state_to_json(const TrainState& s);
TrainState train_state_from_json(const nlohmann::json& j, const std::string& what);

// Each file written atomically (optimizer first, so a state json never points at a missing one).
void save_train_state(const std::string& dir, const TrainState& s, const AdamW& opt);
// Throws hymba::Error naming the file if either is missing or does not fit opt's layout; checks
// that the optimizer's step count equals the state's.
TrainState load_train_state(const std::string& dir, AdamW& opt);

}  // namespace hymba
