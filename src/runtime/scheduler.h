// Continuous batching for the server: many requests, one Engine. A worker thread admits new
// requests as slots free up, feeds every new prompt and every running sequence's last token in
// one Engine::eval per step (the projections of all of them run as one matrix), and steps each
// request's Generation. Requests receive their tokens through a Job as they come.
// Prompt reuse: the states after recent prompts (all but their last token) and after finished
// completions are kept (a few, least recently used out first); a new prompt that starts with one
// of them continues from a copy of that state and feeds only the rest, so a chat that resends
// its whole history, or requests sharing a system prompt, are not processed again.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"

namespace hymba {

struct CompletionRequest {
  std::vector<int32_t> prompt;  // non-empty
  GenerateParams params;
  int top_logprobs = -1;        // -1: no logprobs; n >= 0: each token's logprob and the n best
  bool prompt_logprobs = false;  // also the prompt tokens' logprobs (OpenAI `echo` + `logprobs`)
};

// One token of a completion (or of the prompt, for prompt_logprobs): its id, the text it made
// final, and log p under the model (raw logits, before the sampler's filters) if asked.
struct TokenEvent {
  int32_t token = -1;
  std::string piece;
  double logprob = 0;                            // NaN for the first prompt token
  std::vector<std::pair<int32_t, double>> top;   // best `top_logprobs` tokens, best first
};

class Job {
 public:
  // Blocks until there are new events or the job ended; moves them into *out. Returns false
  // once the job has ended and every event was taken.
  bool wait(std::vector<TokenEvent>* out);
  void cancel();  // the client went away: the scheduler drops the sequence at its next step
  // Valid after wait() returned false:
  std::string stop_reason;  // "eos", "stop", "length", or "error"
  std::string error;        // when stop_reason == "error"
  std::vector<TokenEvent> prompt_events;  // prompt_logprobs: one per prompt token
  int64_t n_prompt = 0, n_generated = 0;
  int64_t n_cached = 0;  // prompt tokens taken from a kept state instead of being processed

 private:
  friend class Scheduler;
  void push(TokenEvent e);
  void finish(std::string reason, std::string error = {});
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TokenEvent> events_;
  bool done_ = false, cancelled_ = false;
};

class Scheduler {
 public:
  // At most `max_parallel` sequences decode together; the rest wait in order of arrival.
  // `max_snapshots` states are kept for prompt reuse (0: none).
  Scheduler(Engine& eng, const Tokenizer& tok, int max_parallel, int max_snapshots = 8);
  ~Scheduler();
  // Validates (throws hymba::Error: empty prompt, ids out of range, bad sampling parameters)
  // and queues the request.
  std::shared_ptr<Job> submit(CompletionRequest r);

 private:
  struct Active;
  struct Snapshot {
    std::vector<int32_t> tokens;  // what the state has consumed
    SequenceState state;
  };
  void loop();
  void step(std::vector<std::unique_ptr<Active>>& active);
  void start(Active& a);  // a fresh or reused state for a new request, all but its last prompt token fed
  void keep(std::vector<int32_t> tokens, SequenceState state);

  Engine& eng_;
  const Tokenizer& tok_;
  int max_parallel_, max_snapshots_;
  std::deque<Snapshot> snapshots_;  // worker thread only; most recently used first
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<CompletionRequest, std::shared_ptr<Job>>> pending_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace hymba
