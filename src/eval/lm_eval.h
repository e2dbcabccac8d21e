// lm-evaluation-harness tasks, computed as the harness (v0.4.x, HFLM backend) computes them:
// the same prompts from the Hugging Face rows, the same context/continuation token split
// (trailing spaces of the context move to the continuation; continuation = tokens of
// context+continuation after the context's tokens; no BOS, except BOS alone for an empty
// context), the same per-document metrics, aggregations and standard errors (sample stddev/√n,
// and the harness's seeded bootstrap for perplexity), and its markdown table.
// reference/lm_eval_ref.py is the independent Python version the tests compare with.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/lm_tasks.h"
#include "runtime/engine.h"
#include "runtime/tokenizer.h"

namespace hymba::lmeval {

struct Options {
  int64_t max_length = 0;      // the harness's max_length (0: the model's max_position_embeddings, else 2048)
  bool share_context = true;   // process a shared context once and copy its state per continuation
  int64_t bootstrap_iters = 100000;
};

struct LL {
  double logprob = 0;
  bool greedy = false;
};

struct DocResult {
  std::vector<LL> resps;
  std::string generated;                       // generate tasks
  std::vector<std::vector<int32_t>> ctx_ids, cont_ids;  // per request (rolling: the whole text in cont_ids[0])
  std::map<std::string, double> metrics;       // per-document value (wikitext: the loglikelihood)
};

struct MetricValue {
  double value = 0;
  double stderr_ = 0;
  bool has_stderr = false;
  bool higher_is_better = true;
};
struct TaskResult {
  std::string name;  // task or "  - subject"
  double version = 0;
  int nshot = 0;
  int64_t n = 0;
  std::map<std::string, MetricValue> metrics;
};

class Evaluator {
 public:
  Evaluator(Engine& eng, const Tokenizer& tok, const Options& o);

  // lmeval::encode_pair with this model's BOS.
  std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const std::string& ctx,
                                                                    const std::string& cont) const;
  // Loglikelihood of each continuation given its context (token ids); requests with the same
  // context share its processing when share_context.
  std::vector<LL> loglikelihood(const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& reqs);
  // Sum of loglikelihoods of the harness's rolling windows over `ids`.
  double rolling(const std::vector<int32_t>& ids);
  // Greedy continuation until one of `until` or EOS or max_gen tokens; returns the text cut at the
  // first stop string and the generated ids.
  std::string generate_until(const std::vector<int32_t>& ctx, const std::vector<std::string>& until,
                             int64_t max_gen, std::vector<int32_t>* ids);

  DocResult run(const TaskInfo& task, const Doc& d);
  int64_t max_length() const { return max_len_; }
  int64_t tokens_processed() const { return tokens_; }

 private:
  Engine& eng_;
  const Tokenizer& tok_;
  Options o_;
  int64_t max_len_ = 2048;
  int64_t tokens_ = 0;  // rows fed to the model
};

// Aggregates per-document metrics into the harness's values and standard errors. Several
// subtasks (mmlu subjects) also give a group row (size-weighted mean, pooled stderr) first.
std::vector<TaskResult> aggregate(const TaskInfo& task, const std::vector<Doc>& docs,
                                  const std::vector<DocResult>& res, int nshot, int64_t bootstrap_iters);

// The harness's bootstrap standard error of exp(-mean(xs)) (its seeded chunks of 1000
// resamples with Python's random.Random(i).choices).
double bootstrap_perplexity_stderr(const std::vector<double>& xs, int64_t iters);

// The harness's markdown table (make_table).
std::string markdown_table(const std::vector<TaskResult>& rs);

// Harness-like results JSON ("results", "versions", "n-shot", "higher_is_better", "n-samples").
nlohmann::json results_json(const std::vector<TaskResult>& rs);

}  // namespace hymba::lmeval
