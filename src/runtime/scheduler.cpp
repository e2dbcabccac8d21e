#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"

namespace hymba {

bool Job::wait(std::vector<TokenEvent>* out) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return done_ || !events_.empty(); });
  for (auto& e : events_) out->push_back(std::move(e));
  const bool had = !events_.empty();
  events_.clear();
  return had || !done_;
}

void Job::cancel() {
  std::lock_guard<std::mutex> l(mu_);
  cancelled_ = true;
}

void Job::push(TokenEvent e) {
  {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Job::finish(std::string reason, std::string error) {
  {
    std::lock_guard<std::mutex> l(mu_);
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

Scheduler::Scheduler(Engine& eng, const Tokenizer& tok, int max_parallel, int max_snapshots)
    : eng_(eng), tok_(tok), max_parallel_(std::max(1, max_parallel)), max_snapshots_(std::max(0, max_snapshots)) {
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
  HYMBA_CHECK(r.top_logprobs <= 20, "logprobs: at most 20");
  Generation check(tok_, r.params, 0, r.prompt.back(), {});  // throws on bad parameters
  (void)check;
  auto job = std::make_shared<Job>();
  job->n_prompt = int64_t(r.prompt.size());
  {
    std::lock_guard<std::mutex> l(mu_);
    pending_.emplace_back(std::move(r), job);
  }
  cv_.notify_all();
  return job;
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Active>> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !pending_.empty() || !active.empty(); });
      if (stop_) break;
      while (int(active.size()) < max_parallel_ && !pending_.empty()) {
        auto a = std::make_unique<Active>();
        a->req = std::move(pending_.front().first);
        a->job = std::move(pending_.front().second);
        pending_.pop_front();
        active.push_back(std::move(a));
      }
    }
    try {
      step(active);
    } catch (const std::exception& e) {
      // A failed forward leaves the batch's states unknown: end those requests, keep serving.
      for (auto& a : active) a->job->finish("error", e.what());
      active.clear();
    }
  }
  for (auto& a : active) a->job->finish("error", "server shutting down");
  std::lock_guard<std::mutex> l(mu_);
  for (auto& p : pending_) p.second->finish("error", "server shutting down");
}

void Scheduler::keep(std::vector<int32_t> tokens, SequenceState state) {
  if (max_snapshots_ == 0 || tokens.empty()) return;
  for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it)
    if (it->tokens == tokens) {
      snapshots_.erase(it);
      break;
    }
  snapshots_.push_front({std::move(tokens), std::move(state)});
  while (int(snapshots_.size()) > max_snapshots_) snapshots_.pop_back();
}

void Scheduler::start(Active& a) {
  const auto& p = a.req.prompt;
  // The longest kept state whose tokens start this prompt, leaving at least its last token.
  auto best = snapshots_.end();
  for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it)
    if (it->tokens.size() < p.size() && std::equal(it->tokens.begin(), it->tokens.end(), p.begin()) &&
        (best == snapshots_.end() || it->tokens.size() > best->tokens.size()))
      best = it;
  size_t from = 0;
  if (best != snapshots_.end()) {
    a.seq = best->state;  // a copy: the kept one stays for others
    from = best->tokens.size();
    Snapshot used = std::move(*best);  // to the front: most recently used
    snapshots_.erase(best);
    snapshots_.push_front(std::move(used));
  } else {
    a.seq = eng_.new_sequence();
  }
  a.job->n_cached = int64_t(from);
  const std::vector<int32_t> mid(p.begin() + int64_t(from), p.end() - 1);
  if (!mid.empty()) {
    eng_.eval_one(a.seq, mid);
    keep(std::vector<int32_t>(p.begin(), p.end() - 1), a.seq);
  }
}

void Scheduler::step(std::vector<std::unique_ptr<Active>>& active) {
  const int64_t V = eng_.config().vocab_size;
  const int32_t eos = int32_t(eng_.config().eos_token_id);
  // Drop cancelled requests first: their sequences are simply discarded.
  active.erase(std::remove_if(active.begin(), active.end(),
                              [](const std::unique_ptr<Active>& a) {
                                std::lock_guard<std::mutex> l(a->job->mu_);
                                if (a->job->cancelled_) a->job->done_ = true, a->job->stop_reason = "cancelled";
                                return a->job->cancelled_;
                              }),
               active.end());
  if (active.empty()) return;

  std::vector<SequenceState*> seqs;
  std::vector<std::vector<int32_t>> feed;
  std::vector<Active*> who;
  std::vector<std::vector<float>> own_logits(active.size());  // rows computed apart (prompt logprobs)
  for (size_t i = 0; i < active.size(); ++i) {
    Active& a = *active[i];
    if (!a.prefilled) {
      a.gen = std::make_unique<Generation>(tok_, a.req.params, eos, a.req.prompt.back(), a.req.prompt);
      a.prefilled = true;
      if (a.req.prompt_logprobs) {  // needs every prompt row's logits: a forward of its own
        a.seq = eng_.new_sequence();
        SequenceState* sp = &a.seq;
        std::vector<std::vector<float>> all;
        eng_.eval(std::span<SequenceState* const>(&sp, 1),
                  std::span<const std::vector<int32_t>>(&a.req.prompt, 1), nullptr, &all);
        const auto& p = a.req.prompt;
        for (size_t t = 0; t < p.size(); ++t) {
          TokenEvent e;
          e.token = p[t];
          e.logprob = NAN;
          if (t > 0) fill_logprobs(e, all[0].data() + (t - 1) * size_t(V), V, a.req.top_logprobs);
          a.job->prompt_events.push_back(std::move(e));
        }
        own_logits[i].assign(all[0].end() - V, all[0].end());
        continue;
      }
      start(a);
      feed.push_back({a.req.prompt.back()});
    } else {
      feed.push_back({a.next});
    }
    seqs.push_back(&a.seq);
    who.push_back(&a);
  }
  std::vector<float> last;
  if (!seqs.empty()) eng_.eval(seqs, feed, &last);

  size_t k = 0;
  for (size_t i = 0; i < active.size(); ++i) {
    Active& a = *active[i];
    const float* row = nullptr;
    if (k < who.size() && who[k] == &a) row = last.data() + k++ * size_t(V);
    else row = own_logits[i].data();
    if (a.gen->done()) {  // max_tokens 0 (scoring a prompt): nothing to sample
      a.job->finish(a.gen->stop_reason());
      continue;
    }
    TokenEvent e;
    e.token = a.gen->step(row, V, &e.piece);
    if (a.req.top_logprobs >= 0) fill_logprobs(e, row, V, a.req.top_logprobs);
    a.next = e.token;
    a.job->n_generated = int64_t(a.gen->tokens().size());
    a.job->push(std::move(e));
    if (a.gen->done()) {
      // The state has consumed the prompt and every sampled token but this last one.
      std::vector<int32_t> t = a.req.prompt;
      t.insert(t.end(), a.gen->tokens().begin(), a.gen->tokens().end() - 1);
      keep(std::move(t), std::move(a.seq));
      a.job->finish(a.gen->stop_reason());
    }
  }
  active.erase(std::remove_if(active.begin(), active.end(),
                              [](const std::unique_ptr<Active>& a) { return a->gen->done(); }),
               active.end());
}

}  // namespace hymba
