// The OpenAI request bodies of `hymba server` -> what the scheduler runs. Apart from the server so
// that the parsing of what clients send can be fuzzed (fuzz/server_request_fuzz.cpp).
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "io/json_num.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {

// A client mistake: HTTP 400.
struct BadRequest : Error {
  using Error::Error;
};

// j[key] as T, `dflt` if absent or null; BadRequest naming the key if it has another type or,
// for integers, does not fit T (checked before any narrowing: 4294967297 is not 1).
template <class T>
T get_or(const nlohmann::json& j, const char* key, T dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  const nlohmann::json& v = j[key];
  const std::string k = std::string("'") + key + "'";
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw BadRequest(k + " must be true or false");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) throw BadRequest(k + " must be an integer");
    const bool fits = v.is_number_unsigned()
                          ? v.get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max())
                          : v.get<int64_t>() >= int64_t(std::numeric_limits<T>::min()) &&
                                (std::is_unsigned_v<T> ? v.get<int64_t>() >= 0
                                                       : v.get<int64_t>() <= int64_t(std::numeric_limits<T>::max()));
    if (!fits) throw BadRequest(k + " is out of range");
    return v.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    T x;  // not get<T>(): 1e300 -> float is undefined behaviour (found by fuzz/server_request_fuzz.cpp)
    if (!json_number(v, &x)) throw BadRequest(k + " must be a number in range");
    return x;
  } else {
    try {
      return v.get<T>();
    } catch (const std::exception&) {
      throw BadRequest(k + " has the wrong type");
    }
  }
}

// The body as a JSON object, or BadRequest.
nlohmann::json parse_body(const std::string& body);

// What a request may ask for (server flags).
struct RequestLimits {
  int64_t ctx = std::numeric_limits<int64_t>::max();  // prompt + completion tokens per choice
  size_t max_choices = 256;                           // prompts x n
  int request_timeout_s = 0;                          // 0: no deadline
};

// /v1/completions (chat = false) or /v1/chat/completions (chat = true): one CompletionRequest
// per choice, prompt-major (choice i is sample i % n of prompt i / n).
struct ParsedCompletion {
  std::vector<CompletionRequest> choices;
  std::vector<std::string> echo_text;  // per choice: the prompt as the model sees it (decoded ids)
  size_t n = 1;
  bool stream = false, echo = false, include_usage = false;
};
ParsedCompletion parse_completion(const nlohmann::json& b, bool chat, const Tokenizer& tok,
                                  const RequestLimits& limits = {});

// /tokenize: the ids of "content"; /detokenize: the text of "tokens".
std::vector<int32_t> parse_tokenize(const nlohmann::json& b, const Tokenizer& tok);

// llama-server's adapter list: [{"id": int, "scale": number (default 0)}, ...] (a request's
// "lora", the body of POST /lora-adapters) -> (id, scale) pairs; ids are checked by the engine.
std::vector<std::pair<int, double>> parse_lora_list(const nlohmann::json& list, const char* what);
std::string parse_detokenize(const nlohmann::json& b, const Tokenizer& tok);

}  // namespace hymba::cli
