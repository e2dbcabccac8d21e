// Sequence states shared between server replicas through Redis (`hymba server --state-store
// redis://HOST:PORT`). A state kept by one replica's scheduler (see scheduler.h) is also written,
// with a TTL, under a key made of the model tag and a hash of the token prefix it has consumed;
// any replica whose prompt extends that prefix can restore it instead of re-processing it.
// An entry carries the model tag, the exact tokens and a checksum of the state bytes: a lost,
// foreign, colliding or damaged entry is a miss (the prompt is processed), never a wrong state.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/state.h"

namespace hymba {

class StateStore {
 public:
  virtual ~StateStore() = default;
  // Best effort: failures are counted, never thrown (the server keeps serving without the store).
  virtual void put(const std::string& key, const std::string& value) = 0;
  virtual std::optional<std::string> get(const std::string& key) = 0;
  int64_t errors() const { return errors_; }

 protected:
  int64_t errors_ = 0;
};

// "redis://HOST:PORT"; throws hymba::Error if the URL is bad, the build has no hiredis, or the
// server does not answer PING. ttl_seconds > 0; values above max_bytes are not stored.
std::unique_ptr<StateStore> connect_state_store(const std::string& url, int ttl_seconds, size_t max_bytes);

// Key and value of an entry (model tag + tokens -> state).
std::string state_key(uint64_t model_tag, const std::vector<int32_t>& tokens);
std::string encode_state_entry(uint64_t model_tag, const std::vector<int32_t>& tokens, const SequenceState& s);
// Restores `into` (a fresh sequence of the model) if `value` is an intact entry for exactly these
// tokens and this model; false (into untouched) otherwise.
bool decode_state_entry(const std::string& value, uint64_t model_tag, const std::vector<int32_t>& tokens,
                        SequenceState& into);

}  // namespace hymba
