// config.json: parse + validate, the derived layer plan and state sizes, and the round trip
// through config_to_json (what a saved checkpoint holds must load again to the same config).
#include <cstdint>

#include "fuzz_util.h"
#include "model/config.h"
#include "model/state.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  Config c;
  try {
    c = config_from_json(j);
  } catch (const Error&) {
    return 0;
  }
  const auto plan = make_layer_plan(c);
  fuzz::require(int64_t(plan.size()) == c.num_hidden_layers, "one plan entry per layer");
  for (const auto& p : plan) {
    fuzz::require(p.kv_source >= 0 && p.kv_source <= p.index, "KV source is this or an earlier layer");
    fuzz::require(!p.has_attn || plan[size_t(p.kv_source)].producer(), "KV source produces K/V");
  }
  (void)state_bytes(c, plan, 8192, DType::BF16);
  Config back;
  try {
    back = config_from_json(config_to_json(c));
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    fuzz::require(false, "config_to_json of a valid config loads again");
  }
  fuzz::require(back.d_inner == c.d_inner && back.d_qk == c.d_qk && back.d_v == c.d_v &&
                    back.dt_rank == c.dt_rank && back.num_hidden_layers == c.num_hidden_layers,
                "round trip keeps the derived sizes");
  return 0;
}
