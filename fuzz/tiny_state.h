// The sequence the state-parsing targets restore into: a fresh sequence of
// tests/configs/tiny-hymba.json (bf16 K/V, as the default), after its meta tokens.
#pragma once
#include <vector>

#include "fuzz_util.h"
#include "model/config.h"
#include "model/state.h"

namespace hymba::fuzz {

struct TinyState {
  Config c = load_config(source_dir() + "/tests/configs/tiny-hymba.json");
  std::vector<LayerPlan> plan = make_layer_plan(c);
  SequenceState fresh() const {
    SequenceState s = make_empty_state(c, plan, CacheOptions{});
    s.n_pos = c.num_memory_tokens;  // after the meta tokens, as Engine::new_sequence
    return s;
  }
};

}  // namespace hymba::fuzz
