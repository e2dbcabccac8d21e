// Continuous batching for the server: many requests, one Engine. A worker thread admits new
// requests as slots free up, feeds every new prompt and every running sequence's last token in
// one Engine::eval per step (the projections of all of them run as one matrix), and steps each
// request's Generation. Requests receive their tokens through a Job as they come.
// Prefix reuse at token-prefix granularity: a Hymba state cannot be rewound (the SSM and conv
// states fold in every token), so states are kept at chosen points of each prompt: every
// `cache_block` tokens, at the points the request names (chat message boundaries), after all
// but the last prompt token, and after each finished completion. A new prompt continues from a
// copy of the longest kept state that is a prefix of it and feeds only the rest, so requests
// sharing a system prompt or few-shot examples, and a chat resending its history, are not
// processed again. Kept states are evicted least recently used first (count and byte bounds).
// Per-request adapters (Engine variants): a kept state is only reused by a request with the same
// adapter (and the --state-store key carries the variant's model tag); each step runs one
// Engine::eval per adapter among the running sequences (grouped: the base weights are read once
// per group; the adapter's own low-rank product is per group too).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/error.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/state_store.h"
#include "runtime/tokenizer.h"

namespace hymba {

struct CompletionRequest {
  std::vector<int32_t> prompt;  // non-empty
  GenerateParams params;
  int top_logprobs = -1;        // -1: no logprobs; n >= 0: each token's logprob and the n best
  bool prompt_logprobs = false;  // also the prompt tokens' logprobs (OpenAI `echo` + `logprobs`)
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the logits before sampling only
  std::vector<size_t> keep_at;  // prompt lengths worth keeping a state at (message boundaries)
  int adapter = 0;              // Engine variant: 0 = the default, i = options().adapters[i - 1]
  // A mix of adapters by id and scale (Engine::mix_variant; the server's "lora" list): when set,
  // it picks the variant instead of `adapter` (resolved by the worker, which runs the engine).
  std::optional<Engine::LoraMix> lora;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
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
  // Blocks until there are new events, the job ended, or `max_wait` passed; moves the events
  // into *out. Returns false once the job has ended and every event was taken.
  bool wait(std::vector<TokenEvent>* out,
            std::chrono::milliseconds max_wait = std::chrono::milliseconds::max());
  void cancel();  // the client went away: the scheduler drops the sequence at its next step
  // Valid after wait() returned false:
  std::string stop_reason;  // "eos", "stop", "length", "cancelled", "timeout" or "error"
  std::string error;        // when stop_reason == "error"
  std::vector<TokenEvent> prompt_events;  // prompt_logprobs: one per prompt token
  int64_t n_prompt = 0, n_generated = 0;
  int64_t n_cached = 0;  // prompt tokens taken from a kept state instead of being processed

 private:
  friend class Scheduler;
  void push(TokenEvent e);
  void finish(std::string reason, std::string error = {});
  bool cancelled();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TokenEvent> events_;
  bool done_ = false, cancelled_ = false;
  std::function<void()> on_cancel_;  // wakes the scheduler
};

// submit() when the queue of waiting requests is full (the server answers 503 + Retry-After).
struct QueueFull : Error {
  using Error::Error;
};

struct SchedulerOptions {
  int max_parallel = 4;          // sequences decoded together; the rest wait in order of arrival
  int max_queue = 256;           // waiting requests beyond the running ones (then QueueFull)
  int max_snapshots = 32;        // kept states for prefix reuse (0: none)
  size_t max_snapshot_bytes = size_t(1) << 30;
  size_t cache_block = 256;      // also keep a state every this many prompt tokens (0: no)
  StateStore* store = nullptr;   // kept states also go there, and are looked up there (replicas)
};

class Scheduler {
 public:
  Scheduler(Engine& eng, const Tokenizer& tok, SchedulerOptions opts);
  ~Scheduler();
  // Validates (throws hymba::Error: empty prompt, ids out of range, bad sampling parameters;
  // QueueFull) and queues the request.
  std::shared_ptr<Job> submit(CompletionRequest r);
  // Ends every running and waiting request with stop_reason "error" (shutdown).
  void cancel_all(const std::string& why);

  struct Stats {
    int64_t running = 0, waiting = 0;
    int64_t prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0;
    int64_t prefix_lookups = 0, prefix_hits = 0, snapshots = 0, snapshot_bytes = 0;
    int64_t store_hits = 0, store_errors = 0, store_rejected = 0;  // --state-store
    double busy_seconds = 0;  // wall time the worker spent in forwards
  };
  Stats stats() const;

 private:
  struct Active;
  struct Snapshot {
    int adapter = 0;              // the Engine variant the state was computed with
    std::vector<int32_t> tokens;  // what the state has consumed
    SequenceState state;
    size_t bytes = 0;
  };
  void loop();
  void step(std::vector<std::unique_ptr<Active>>& active);
  void start(Active& a);  // a fresh or reused state for a new request, all but its last prompt token fed
  void keep(int adapter, std::vector<int32_t> tokens, const SequenceState& state, bool to_store = true);
  bool restore_from_store(Active& a, size_t from, size_t* restored);

  Engine& eng_;
  const Tokenizer& tok_;
  SchedulerOptions opts_;
  std::deque<Snapshot> snapshots_;  // worker thread only; most recently used first
  size_t snapshot_bytes_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<CompletionRequest, std::shared_ptr<Job>>> pending_;
  std::vector<std::shared_ptr<Job>> running_;  // under mu_, for cancel_all and stats
  bool stop_ = false;
  std::atomic<int64_t> n_prompt_{0}, n_cached_{0}, n_generated_{0}, n_lookups_{0}, n_hits_{0};
  std::atomic<int64_t> n_snapshots_{0}, n_snapshot_bytes_{0}, busy_us_{0}, n_store_hits_{0};
  std::vector<uint64_t> model_tags_;  // per Engine variant (--state-store keys)
  std::thread worker_;
};

}  // namespace hymba
