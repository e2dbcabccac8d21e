// Perplexity of a token stream, as llama.cpp's `llama-perplexity` measures it: the stream is cut
// into chunks of `ctx` tokens, each evaluated from a fresh sequence state (meta-token prefix
// only) with its first token replaced by BOS; the tokens of the second half of each chunk are
// scored (each is predicted with at least ctx/2 tokens of context), or every token after the
// first with score_all.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/engine.h"

namespace hymba {

struct PerplexityOptions {
  int64_t ctx = 512;       // tokens per chunk (>= 2)
  int64_t max_chunks = 0;  // 0: every whole chunk of the stream
  bool score_all = false;  // score positions 1..ctx-1 instead of ctx/2..ctx-1
  int64_t first_chunk = 0; // start at this chunk (resuming a run); max_chunks still counts from 0
};

struct PerplexityResult {
  int64_t chunks = 0, scored = 0;
  double nll = 0;        // sum of -log p over scored tokens
  double nll2 = 0;       // sum of squares (for the standard error)
  double ppl() const;    // exp(nll / scored)
  double ppl_error() const;  // standard error of ppl (delta method, as llama.cpp reports)
};

// How many chunks `n_tokens` give (from chunk 0); throws hymba::Error if ctx < 2 or there is not
// one chunk, or none after first_chunk.
int64_t perplexity_chunks(int64_t n_tokens, const PerplexityOptions& o);
// `progress` (optional) is called after each chunk with the running result.
PerplexityResult perplexity(Engine& eng, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& o,
                            const std::function<void(const PerplexityResult&)>& progress = {});

}  // namespace hymba
