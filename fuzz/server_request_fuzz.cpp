// Request bodies of `hymba server`: the first byte picks the endpoint (completions, chat
// completions, tokenize, detokenize), the rest is the body (llama-server's "lora" list included).
// Parsing uses the bundled model's tokenizer, as the server would; anything but BadRequest /
// hymba::Error escaping is a bug.
#include <cmath>
#include <cstdint>

#include "fuzz_util.h"
#include "server_request.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = Tokenizer::load(fuzz::source_dir() + "/models/hymba-kjv");
  if (size < 1) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const auto b = cli::parse_body(body);
    switch (data[0] % 4) {
      case 0:
      case 1: {
        // llama-server's per-request adapter list (also the body of POST /lora-adapters)
        if (b.contains("lora") && !b["lora"].is_null())
          for (const auto& [id, scale] : cli::parse_lora_list(b["lora"], "'lora'"))
            fuzz::require(std::isfinite(scale), "finite adapter scales");
        const auto p = cli::parse_completion(b, data[0] % 4 == 1, *tok);
        fuzz::require(!p.choices.empty(), "a parsed request has a choice");
        for (const auto& c : p.choices) {
          fuzz::require(!c.prompt.empty(), "every choice has a prompt");
          for (int32_t id : c.prompt) fuzz::require(id >= 0 && id < tok->vocab_size(), "prompt ids in vocab");
        }
        break;
      }
      case 2:
        for (int32_t id : cli::parse_tokenize(b, *tok)) fuzz::require(id >= 0 && id < tok->vocab_size(), "ids in vocab");
        break;
      default:
        (void)cli::parse_detokenize(b, *tok);
    }
  } catch (const Error&) {  // BadRequest derives from it: HTTP 400
  }
  return 0;
}
