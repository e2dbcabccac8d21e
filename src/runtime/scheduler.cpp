#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"

namespace hymba {

using Clock = std::chrono::steady_clock;

bool Job::wait(std::vector<TokenEvent>* out, std::chrono::milliseconds max_wait) {
  std::unique_lock<std::mutex> l(mu_);
  auto ready = [&] { return done_ || !events_.empty(); };
  if (max_wait == std::chrono::milliseconds::max()) cv_.wait(l, ready);
  else cv_.wait_for(l, max_wait, ready);
  for (auto& e : events_) out->push_back(std::move(e));
  const bool had = !events_.empty();
  events_.clear();
  return had || !done_;
}

void Job::cancel() {
  std::function<void()> wake;
  {
    std::lock_guard<std::mutex> l(mu_);
    cancelled_ = true;
    wake = on_cancel_;
  }
  if (wake) wake();
}

bool Job::cancelled() {
  std::lock_guard<std::mutex> l(mu_);
  return cancelled_;
}

void Job::push(TokenEvent e) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (done_) return;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Job::finish(std::string reason, std::string error) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (done_) return;  // ended already (cancel_all, timeout): the first reason stands
    stop_reason = std::move(reason);
    this->error = std::move(error);
    done_ = true;
  }
  cv_.notify_all();
}

namespace {

// log p of every token under `logits` is logits - lse.
double log_sum_exp(const float* logits, int64_t V) {
  const float m = *std::max_element(logits, logits + V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(double(logits[i]) - m);
  return double(m) + std::log(s);
}

void fill_logprobs(TokenEvent& e, const float* logits, int64_t V, int top) {
  const double lse = log_sum_exp(logits, V);
  e.logprob = double(logits[e.token]) - lse;
  if (top <= 0) return;
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  const int64_t k = std::min<int64_t>(top, V);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (int64_t i = 0; i < k; ++i) e.top.push_back({idx[size_t(i)], double(logits[idx[size_t(i)]]) - lse});
}

}  // namespace

struct Scheduler::Active {
  CompletionRequest req;
  std::shared_ptr<Job> job;
  SequenceState seq;
  std::unique_ptr<Generation> gen;
  bool prefilled = false;
  int32_t next = -1;  // the token to feed at the next step
};

Scheduler::Scheduler(Engine& eng, const Tokenizer& tok, SchedulerOptions opts) : eng_(eng), tok_(tok), opts_(opts) {
  opts_.max_parallel = std::max(1, opts_.max_parallel);
  opts_.max_queue = std::max(0, opts_.max_queue);
  opts_.max_snapshots = std::max(0, opts_.max_snapshots);
  if (opts_.store)
    for (int v = 0; v < eng_.num_variants(); ++v) model_tags_.push_back(eng_.model_tag(v));
  worker_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

std::shared_ptr<Job> Scheduler::submit(CompletionRequest r) {
  HYMBA_CHECK(!r.prompt.empty(), "empty prompt");
  const int64_t V = eng_.config().vocab_size;
  for (int32_t id : r.prompt)
    HYMBA_CHECK(id >= 0 && id < V, "token id " + std::to_string(id) + " out of range [0, " + std::to_string(V) + ")");
  for (auto& [id, b] : r.logit_bias) {
    HYMBA_CHECK(id >= 0 && id < V, "logit_bias: token id " + std::to_string(id) + " out of range [0, " +
                                       std::to_string(V) + ")");
    HYMBA_CHECK(b >= -100 && b <= 100, "logit_bias: values must be in [-100, 100]");
  }
  HYMBA_CHECK(r.top_logprobs <= 20, "logprobs: at most 20");
  if (r.lora) eng_.check_mix(*r.lora);
  else HYMBA_CHECK(r.adapter >= 0 && r.adapter < eng_.num_variants(), "no adapter " + std::to_string(r.adapter));
  Generation check(tok_, r.params, 0, r.prompt.back(), {});  // throws on bad parameters
  (void)check;
  auto job = std::make_shared<Job>();
  job->n_prompt = int64_t(r.prompt.size());
  job->on_cancel_ = [this] { cv_.notify_all(); };
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) throw Error("the server is shutting down");
    if (int(pending_.size()) >= opts_.max_queue)
      throw QueueFull("the queue is full (" + std::to_string(pending_.size()) + " requests waiting)");
    pending_.emplace_back(std::move(r), job);
  }
  cv_.notify_all();
  return job;
}

void Scheduler::cancel_all(const std::string& why) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& p : pending_) p.second->finish("error", why);
  pending_.clear();
  for (auto& j : running_) {
    j->finish("error", why);
    j->cancel();
  }
}

Scheduler::Stats Scheduler::stats() const {
  Stats s;
  {
    std::lock_guard<std::mutex> l(mu_);
    s.running = int64_t(running_.size());
    s.waiting = int64_t(pending_.size());
  }
  s.prompt_tokens = n_prompt_;
  s.cached_tokens = n_cached_;
  s.generated_tokens = n_generated_;
  s.prefix_lookups = n_lookups_;
  s.prefix_hits = n_hits_;
  s.snapshots = n_snapshots_;
  s.snapshot_bytes = n_snapshot_bytes_;
  s.busy_seconds = double(busy_us_) * 1e-6;
  s.store_hits = n_store_hits_;
  s.store_errors = opts_.store ? opts_.store->errors() : 0;
  s.store_rejected = opts_.store ? opts_.store->rejected() : 0;
  return s;
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Active>> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !pending_.empty() || !active.empty(); });
      if (stop_) break;
      // Requests whose client left, or whose time ran out, while they waited.
      const auto now = Clock::now();
      std::erase_if(pending_, [&](auto& p) {
        if (p.second->cancelled()) return p.second->finish("cancelled"), true;
        if (now >= p.first.deadline) return p.second->finish("timeout"), true;
        return false;
      });
      while (int(active.size()) < opts_.max_parallel && !pending_.empty()) {
        auto a = std::make_unique<Active>();
        a->req = std::move(pending_.front().first);
        a->job = std::move(pending_.front().second);
        pending_.pop_front();
        running_.push_back(a->job);
        active.push_back(std::move(a));
      }
    }
    // Adapter mixes become variants here, on the thread that runs the engine (a new mix runs
    // the meta tokens through its adapters once).
    std::erase_if(active, [&](std::unique_ptr<Active>& a) {
      if (!a->req.lora) return false;
      try {
        a->req.adapter = eng_.mix_variant(*a->req.lora);
        a->req.lora.reset();
        while (opts_.store && model_tags_.size() < size_t(eng_.num_variants()))
          model_tags_.push_back(eng_.model_tag(int(model_tags_.size())));
        return false;
      } catch (const std::exception& e) {
        a->job->finish("error", e.what());
        return true;
      }
    });
    const auto t0 = Clock::now();
    try {
      step(active);
    } catch (const std::exception& e) {
      // A failed forward leaves the batch's states unknown: end those requests, keep serving.
      for (auto& a : active) a->job->finish("error", e.what());
      active.clear();
    }
    busy_us_ += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    std::lock_guard<std::mutex> l(mu_);
    std::erase_if(running_, [&](const std::shared_ptr<Job>& j) {
      return std::none_of(active.begin(), active.end(), [&](auto& a) { return a->job == j; });
    });
  }
  for (auto& a : active) a->job->finish("error", "server shutting down");
  std::lock_guard<std::mutex> l(mu_);
  for (auto& p : pending_) p.second->finish("error", "server shutting down");
  running_.clear();
}

void Scheduler::keep(int adapter, std::vector<int32_t> tokens, const SequenceState& state, bool to_store) {
  if (tokens.empty()) return;
  if (opts_.store && to_store) {
    const uint64_t tag = model_tags_[size_t(adapter)];
    opts_.store->put(state_key(tag, tokens), encode_state_entry(tag, tokens, state));
  }
  if (opts_.max_snapshots == 0) return;
  const size_t bytes = state.bytes() + tokens.size() * sizeof(int32_t);
  if (bytes > opts_.max_snapshot_bytes) return;
  for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it)
    if (it->adapter == adapter && it->tokens == tokens) {
      snapshot_bytes_ -= it->bytes;
      snapshots_.erase(it);
      break;
    }
  snapshots_.push_front({adapter, std::move(tokens), state, bytes});
  snapshot_bytes_ += bytes;
  while (int(snapshots_.size()) > opts_.max_snapshots || snapshot_bytes_ > opts_.max_snapshot_bytes) {
    snapshot_bytes_ -= snapshots_.back().bytes;
    snapshots_.pop_back();
  }
  n_snapshots_ = int64_t(snapshots_.size());
  n_snapshot_bytes_ = int64_t(snapshot_bytes_);
}

void Scheduler::start(Active& a) {
  const auto& p = a.req.prompt;
  // The longest kept state whose tokens start this prompt, leaving at least its last token.
  auto best = snapshots_.end();
  for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it)
    if (it->adapter == a.req.adapter && it->tokens.size() < p.size() &&
        std::equal(it->tokens.begin(), it->tokens.end(), p.begin()) &&
        (best == snapshots_.end() || it->tokens.size() > best->tokens.size()))
      best = it;
  size_t from = 0;
  ++n_lookups_;
  if (best != snapshots_.end()) {
    a.seq = best->state;  // a copy: the kept one stays for others
    from = best->tokens.size();
    ++n_hits_;
    Snapshot used = std::move(*best);  // to the front: most recently used
    snapshots_.erase(best);
    snapshots_.push_front(std::move(used));
  } else {
    a.seq = eng_.new_sequence(a.req.adapter);
  }
  size_t restored = 0;
  if (opts_.store && restore_from_store(a, from, &restored)) {
    if (from == 0) ++n_hits_;
    from = restored;
  }
  a.job->n_cached = int64_t(from);
  n_cached_ += int64_t(from);
  n_prompt_ += int64_t(p.size());
  // Feed all but the last prompt token, stopping to keep a state at each point worth keeping.
  const size_t end = p.size() - 1;
  std::vector<size_t> at;
  for (size_t k : a.req.keep_at)
    if (k > from && k < end) at.push_back(k);
  if (opts_.cache_block > 0)
    for (size_t k = (from / opts_.cache_block + 1) * opts_.cache_block; k < end; k += opts_.cache_block) at.push_back(k);
  if (end > from) at.push_back(end);
  std::sort(at.begin(), at.end());
  at.erase(std::unique(at.begin(), at.end()), at.end());
  size_t cur = from;
  for (size_t k : at) {
    eng_.eval_one(a.seq, std::vector<int32_t>(p.begin() + int64_t(cur), p.begin() + int64_t(k)), a.req.adapter);
    keep(a.req.adapter, std::vector<int32_t>(p.begin(), p.begin() + int64_t(k)), a.seq);
    cur = k;
  }
}

// The longest state another replica (or this one) stored for a prefix of this prompt longer than
// `from`, looked up at the points a request keeps states at.
bool Scheduler::restore_from_store(Active& a, size_t from, size_t* restored) {
  const auto& p = a.req.prompt;
  const size_t end = p.size() - 1;
  std::vector<size_t> at;
  for (size_t k : a.req.keep_at)
    if (k > from && k <= end) at.push_back(k);
  if (opts_.cache_block > 0)
    for (size_t k = (from / opts_.cache_block + 1) * opts_.cache_block; k <= end; k += opts_.cache_block) at.push_back(k);
  if (end > from) at.push_back(end);
  std::sort(at.rbegin(), at.rend());
  at.erase(std::unique(at.begin(), at.end()), at.end());
  for (size_t k : at) {
    const std::vector<int32_t> prefix(p.begin(), p.begin() + int64_t(k));
    const uint64_t tag = model_tags_[size_t(a.req.adapter)];
    const auto v = opts_.store->get(state_key(tag, prefix));
    if (!v) continue;
    SequenceState s = eng_.new_sequence(a.req.adapter);
    if (!decode_state_entry(*v, tag, prefix, s)) continue;  // damaged or foreign: process instead
    a.seq = std::move(s);
    keep(a.req.adapter, prefix, a.seq, false);
    ++n_store_hits_;
    *restored = k;
    return true;
  }
  return false;
}

void Scheduler::step(std::vector<std::unique_ptr<Active>>& active) {
  const int64_t V = eng_.config().vocab_size;
  const int32_t eos = int32_t(eng_.config().eos_token_id);
  // Drop requests whose client left or whose time ran out: their sequences are discarded.
  const auto now = Clock::now();
  std::erase_if(active, [&](const std::unique_ptr<Active>& a) {
    if (a->job->cancelled()) return a->job->finish("cancelled"), true;
    if (now >= a->req.deadline) return a->job->finish("timeout"), true;
    return false;
  });
  if (active.empty()) return;

  // Each running sequence's token for this step, fed in one eval per adapter.
  std::vector<std::vector<int32_t>> feed(active.size());
  std::vector<const float*> rows(active.size(), nullptr);
  std::vector<std::vector<float>> own_logits(active.size());  // rows computed apart (prompt logprobs)
  for (size_t i = 0; i < active.size(); ++i) {
    Active& a = *active[i];
    if (!a.prefilled) {
      a.gen = std::make_unique<Generation>(tok_, a.req.params, eos, a.req.prompt.back(), a.req.prompt);
      a.prefilled = true;
      if (a.req.prompt_logprobs) {  // needs every prompt row's logits: a forward of its own
        a.seq = eng_.new_sequence(a.req.adapter);
        SequenceState* sp = &a.seq;
        std::vector<std::vector<float>> all;
        eng_.eval(std::span<SequenceState* const>(&sp, 1),
                  std::span<const std::vector<int32_t>>(&a.req.prompt, 1), nullptr, &all, a.req.adapter);
        n_prompt_ += int64_t(a.req.prompt.size());
        const auto& p = a.req.prompt;
        for (size_t t = 0; t < p.size(); ++t) {
          TokenEvent e;
          e.token = p[t];
          e.logprob = NAN;
          if (t > 0) fill_logprobs(e, all[0].data() + (t - 1) * size_t(V), V, a.req.top_logprobs);
          a.job->prompt_events.push_back(std::move(e));
        }
        own_logits[i].assign(all[0].end() - V, all[0].end());
        rows[i] = own_logits[i].data();
        continue;
      }
      start(a);
      feed[i] = {a.req.prompt.back()};
    } else {
      feed[i] = {a.next};
    }
  }
  std::vector<std::vector<float>> last(size_t(eng_.num_variants()));
  for (int v = 0; v < eng_.num_variants(); ++v) {
    std::vector<SequenceState*> seqs;
    std::vector<std::vector<int32_t>> toks;
    std::vector<size_t> idx;
    for (size_t i = 0; i < active.size(); ++i)
      if (!rows[i] && active[i]->req.adapter == v) seqs.push_back(&active[i]->seq), toks.push_back(feed[i]), idx.push_back(i);
    if (seqs.empty()) continue;
    eng_.eval(seqs, toks, &last[size_t(v)], nullptr, v);
    for (size_t k = 0; k < idx.size(); ++k) rows[idx[k]] = last[size_t(v)].data() + k * size_t(V);
  }

  std::vector<float> biased;
  for (size_t i = 0; i < active.size(); ++i) {
    Active& a = *active[i];
    const float* row = rows[i];
    if (a.gen->done()) {  // max_tokens 0 (scoring a prompt): nothing to sample
      a.job->finish(a.gen->stop_reason());
      continue;
    }
    TokenEvent e;
    const float* sample_row = row;
    if (!a.req.logit_bias.empty()) {
      biased.assign(row, row + V);
      for (auto& [id, b] : a.req.logit_bias) biased[size_t(id)] += b;
      sample_row = biased.data();
    }
    e.token = a.gen->step(sample_row, V, &e.piece);
    if (a.req.top_logprobs >= 0) fill_logprobs(e, row, V, a.req.top_logprobs);
    a.next = e.token;
    a.job->n_generated = int64_t(a.gen->tokens().size());
    ++n_generated_;
    a.job->push(std::move(e));
    if (a.gen->done()) {
      // The state has consumed the prompt and every sampled token but this last one.
      std::vector<int32_t> t = a.req.prompt;
      t.insert(t.end(), a.gen->tokens().begin(), a.gen->tokens().end() - 1);
      keep(a.req.adapter, std::move(t), a.seq);
      a.job->finish(a.gen->stop_reason());
    }
  }
  active.erase(std::remove_if(active.begin(), active.end(),
                              [](const std::unique_ptr<Active>& a) { return a->gen->done(); }),
               active.end());
}

}  // namespace hymba
