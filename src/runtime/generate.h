// Text generation on one sequence: prompt in, tokens out, streamed as UTF-8 text.
#pragma once
#include <atomic>
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
  std::string stop_reason;      // "eos", "stop", "length", "interrupted"
  int64_t n_prompt = 0;
  double prompt_seconds = 0, gen_seconds = 0;
};

// One generation in progress, one step per sampled token: sampling, EOS / stop strings / length,
// and the text that is final so far (never a partial UTF-8 character or a possible stop-string
// prefix). It owns no model state, so a caller can drive many of them in one batched forward
// (the server) or one in a loop (generate()).
class Generation {
 public:
  // last_prompt_token: the token fed just before the first sampled one (its decode is the
  // anchor that keeps a leading space of the first piece). history: the prompt tokens the
  // repetition penalty looks at.
  Generation(const Tokenizer& tok, const GenerateParams& params, int32_t eos, int32_t last_prompt_token,
             std::vector<int32_t> history);
  // Samples the next token from `logits` [vocab] and returns it; appends newly final text to
  // *piece. Call only while !done(). Whatever it returns, the caller feeds it to the sequence
  // if the sequence is to continue (e.g. the next chat turn).
  int32_t step(const float* logits, int64_t vocab, std::string* piece);
  bool done() const { return done_; }
  const std::string& stop_reason() const { return stop_reason_; }  // "eos", "stop", "length"
  const std::vector<int32_t>& tokens() const { return tokens_; }   // sampled (incl. a final EOS)
  const std::string& text() const { return released_; }            // all text released so far
  const std::vector<int32_t>& history() const { return hist_; }

 private:
  const Tokenizer& tok_;
  GenerateParams params_;
  Sampler sampler_;
  int32_t eos_;
  std::vector<int32_t> hist_, ids_, tokens_;
  std::string anchor_text_, text_, released_;  // text_: decode of the tokens so far
  bool done_ = false;
  std::string stop_reason_ = "length";
};

// Feeds `prompt` to `seq` (which may already hold earlier turns: only the new tokens are
// processed), then samples until EOS, a stop string or max_new_tokens. `on_text` receives each
// newly final piece of text (never a partial UTF-8 character or a possible stop-string prefix).
// `history` (optional) is the token history the repetition penalty looks at; it is extended.
// The last sampled token is fed to the sequence too, so a chat can continue from it.
// `interrupt` (optional, e.g. set by a SIGINT handler) ends the generation after the current
// token with stop_reason "interrupted"; the text so far is kept.
GenerateResult generate(Engine& engine, SequenceState& seq, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateParams& params,
                        const std::function<void(const std::string&)>& on_text,
                        std::vector<int32_t>* history = nullptr,
                        const std::atomic<bool>* interrupt = nullptr);

}  // namespace hymba
