// The OpenAI request bodies of `hymba server` -> what the scheduler runs. Apart from the server so
// that the parsing of what clients send can be fuzzed (fuzz/server_request_fuzz.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {

// A client mistake: HTTP 400.
struct BadRequest : Error {
  using Error::Error;
};

// j[key] as T, `dflt` if absent or null; BadRequest naming the key if it has another type.
template <class T>
T get_or(const nlohmann::json& j, const char* key, T dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  try {
    return j[key].get<T>();
  } catch (const std::exception&) {
    throw BadRequest(std::string("'") + key + "' has the wrong type");
  }
}

// The body as a JSON object, or BadRequest.
nlohmann::json parse_body(const std::string& body);

// /v1/completions (chat = false) or /v1/chat/completions (chat = true).
struct ParsedCompletion {
  CompletionRequest req;
  bool stream = false, echo = false;
  std::string prompt_text;
};
ParsedCompletion parse_completion(const nlohmann::json& b, bool chat, const Tokenizer& tok);

// /tokenize: the ids of "content"; /detokenize: the text of "tokens".
std::vector<int32_t> parse_tokenize(const nlohmann::json& b, const Tokenizer& tok);
std::string parse_detokenize(const nlohmann::json& b, const Tokenizer& tok);

}  // namespace hymba::cli
