// Text generation on one sequence: prompt in, tokens out, streamed as UTF-8 text.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace hymba {

class Tokenizer;

struct GenerateParams {
  int64_t max_new_tokens = 256;
  SamplerParams sampling;
  std::vector<std::string> stop;  // stop strings (not emitted)
  bool ignore_eos = false;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (incl. a final EOS if one was sampled)
  std::string text;             // emitted text
  std::string stop_reason;      // "eos", "stop", "length"
  int64_t n_prompt = 0;
  double prompt_seconds = 0, gen_seconds = 0;
};

// Feeds `prompt` to `seq` (which may already hold earlier turns: only the new tokens are
// processed), then samples until EOS, a stop string or max_new_tokens. `on_text` receives each
// newly final piece of text (never a partial UTF-8 character or a possible stop-string prefix).
// `history` (optional) is the token history the repetition penalty looks at; it is extended.
// The last sampled token is fed to the sequence too, so a chat can continue from it.
GenerateResult generate(Engine& engine, SequenceState& seq, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateParams& params,
                        const std::function<void(const std::string&)>& on_text,
                        std::vector<int32_t>* history = nullptr);

}  // namespace hymba
