// Sequence states shared between server replicas through Redis (`hymba server --state-store
// redis://HOST:PORT`). A state kept by one replica's scheduler (see scheduler.h) is also written,
// with a TTL, under a key made of the model tag and a hash of the token prefix it has consumed;
// any replica whose prompt extends that prefix can restore it instead of re-processing it.
// An entry carries the model tag, the exact tokens and a checksum of the state bytes: a lost,
// foreign, colliding or damaged entry is a miss (the prompt is processed), never a wrong state.
// The checksum is no defence against whoever can write to the Redis: without --state-store-key
// the server trusts its Redis (a forged entry with a recomputed checksum can carry any K/V
// values). With a key, every entry also carries an HMAC-SHA256 (OpenSSL) over all its bytes,
// verified before any of it is parsed: an entry written without the key, with another key, or
// altered in any byte is a miss.
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
  virtual int64_t errors() const { return errors_; }
  // Entries refused because their MAC did not verify (keyed stores only).
  virtual int64_t rejected() const { return 0; }

 protected:
  int64_t errors_ = 0;
};

// "redis://HOST:PORT"; throws hymba::Error if the URL is bad, the build has no hiredis, or the
// server does not answer PING. ttl_seconds > 0; values above max_bytes are not stored.
// A non-empty mac_key makes it a keyed store (keyed_state_store).
std::unique_ptr<StateStore> connect_state_store(const std::string& url, int ttl_seconds, size_t max_bytes,
                                                const std::string& mac_key = "");

// Entry authentication: sealed = value || HMAC-SHA256(key, value) (32 bytes). open returns the
// value if the MAC verifies (constant-time compare), nullopt otherwise. Both throw hymba::Error
// when the build has no OpenSSL (state_mac_available() false).
constexpr size_t kStateMacBytes = 32;
bool state_mac_available();
std::string seal_state_entry(const std::string& mac_key, std::string value);
std::optional<std::string> open_state_entry(const std::string& mac_key, const std::string& sealed);
// A store that seals what it puts into `inner` and opens what it gets (a failed MAC: a miss,
// counted in rejected()). Throws if the key is shorter than 16 bytes or there is no OpenSSL.
std::unique_ptr<StateStore> keyed_state_store(std::unique_ptr<StateStore> inner, std::string mac_key);
// The key in a --state-store-key file: its bytes without trailing whitespace (so `openssl rand
// -hex 32 > FILE` works); refused if unreadable or shorter than 16 bytes.
std::string read_state_store_key(const std::string& path);

// Key and value of an entry (model tag + tokens -> state).
std::string state_key(uint64_t model_tag, const std::vector<int32_t>& tokens);
std::string encode_state_entry(uint64_t model_tag, const std::vector<int32_t>& tokens, const SequenceState& s);
// Restores `into` (a fresh sequence of the model) if `value` is an intact entry for exactly these
// tokens and this model; false (into untouched) otherwise.
bool decode_state_entry(const std::string& value, uint64_t model_tag, const std::vector<int32_t>& tokens,
                        SequenceState& into);

}  // namespace hymba
