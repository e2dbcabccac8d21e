// hymba eval: lm-evaluation-harness tasks on a JSONL export of the task's Hugging Face rows
// (src/eval/lm_eval.h): the harness's markdown table on stdout, progress with ETA on stderr,
// --json for its results JSON, --log-samples for per-document requests and responses.
// --benchmark scores the same documents with and without sharing the context state.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "eval/lm_eval.h"
#include "eval/plot.h"
#include "eval/recall.h"
#include "io/files.h"
#include "model/config.h"
#include "runtime/engine.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {
namespace {

using namespace hymba::lmeval;
using Clock = std::chrono::steady_clock;

struct Opts : ModelFlags {
  std::string task, data, fewshot_data, json_out, log_samples;
  int64_t limit = 0, max_length = 0, bootstrap_iters = 100000;
  int num_fewshot = 0;
  bool no_share = false, benchmark = false;
  // needle / mqar
  std::string lengths = "1k,2k,4k,8k", depths = "0,25,50,75,100", png, make_data, data_format = "tok";
  int trials = 1;
  uint64_t seed = 0;
  int64_t mqar_pairs = 8, mqar_vocab = 256, samples = 100, train_samples = 20000, val_samples = 500;
};

std::string hms(double s) {
  char b[32];
  const int t = int(s + 0.5);
  std::snprintf(b, sizeof b, "%02d:%02d", t / 60, t % 60);
  return b;
}

// tqdm-like progress on stderr: redrawn in place on a terminal, a line per ~10% otherwise.
class Progress {
 public:
  Progress(std::string what, size_t total) : what_(std::move(what)), total_(total), t0_(Clock::now()), tty_(isatty(2)) {}
  void update(size_t done) {
    const double el = std::chrono::duration<double>(Clock::now() - t0_).count();
    const bool last = done == total_;
    if (!last && (tty_ ? el - shown_ < 0.25 : done * 10 / total_ == shown_step_)) return;
    shown_ = el, shown_step_ = done * 10 / total_;
    const double rate = el > 0 ? double(done) / el : 0;
    const double eta = rate > 0 ? double(total_ - done) / rate : 0;
    std::fprintf(stderr, "%s%s: %3d%% %zu/%zu [%s<%s, %.2f docs/s]%s", tty_ ? "\r" : "", what_.c_str(),
                 int(100 * done / total_), done, total_, hms(el).c_str(), hms(eta).c_str(), rate,
                 tty_ && !last ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  std::string what_;
  size_t total_;
  Clock::time_point t0_;
  bool tty_;
  double shown_ = -1;
  size_t shown_step_ = size_t(-1);
};

std::vector<DocResult> run_all(Evaluator& ev, const TaskInfo& task, const std::vector<Doc>& docs, const std::string& label) {
  std::vector<DocResult> res;
  Progress p(label, docs.size());
  for (auto& d : docs) {
    res.push_back(ev.run(task, d));
    p.update(res.size());
  }
  return res;
}

void write_samples(const std::string& path, const TaskInfo& task, const std::vector<Doc>& docs,
                   const std::vector<DocResult>& res) {
  std::string out;
  for (size_t i = 0; i < docs.size(); ++i) {
    const Doc& d = docs[i];
    const DocResult& r = res[i];
    nlohmann::json j = {{"doc_id", d.doc_id}, {"doc", d.row->j}};
    nlohmann::json args = nlohmann::json::array(), resps = nlohmann::json::array(), toks = nlohmann::json::array();
    for (auto& [c, k] : d.args) {
      if (task.kind == Kind::Generate) args.push_back({c, {{"until", {"\n"}}, {"max_gen_toks", 48}}});
      else if (task.kind == Kind::Rolling) args.push_back({k});
      else args.push_back({c, k});
    }
    if (task.kind == Kind::Generate) resps.push_back({r.generated});
    else
      for (auto& x : r.resps) {
        if (task.kind == Kind::Rolling) resps.push_back({x.logprob});
        else resps.push_back({x.logprob, x.greedy});
      }
    for (size_t q = 0; q < r.cont_ids.size(); ++q)
      toks.push_back({q < r.ctx_ids.size() ? nlohmann::json(r.ctx_ids[q]) : nlohmann::json::array(), r.cont_ids[q]});
    j["target"] = task.kind == Kind::MultipleChoice ? nlohmann::json(d.gold) : nlohmann::json(d.target);
    j["arguments"] = args;
    j["resps"] = resps;
    j["tokens"] = toks;  // ours: the token ids of each request (context, continuation / generated)
    for (auto& [m, v] : r.metrics) j[m] = v;
    out += j.dump() + "\n";
  }
  write_file_atomic(path, out);
}

void check_out_dirs(const Opts& o) {
  for (const std::string* out : {&o.json_out, &o.log_samples, &o.png}) {
    if (out->empty()) continue;
    const auto parent = std::filesystem::path(*out).parent_path();
    HYMBA_CHECK(parent.empty() || std::filesystem::is_directory(parent), *out + ": the folder " + parent.string() + " does not exist");
  }
}

std::string fmt_len(int64_t n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); }

// Needle in a haystack: a grid of lengths x depths, a table, JSON and a heatmap as the paper's Fig. 5.
void run_needle(const Opts& o) {
  HYMBA_CHECK(!o.data.empty(), "--task needle: --data FILE.txt is the haystack text");
  const auto lengths = recall::parse_lengths(o.lengths);
  const auto depths = recall::parse_depths(o.depths);
  const std::string dir = o.dir();
  auto tok = Tokenizer::load(dir);
  HYMBA_CHECK(file_exists(o.data), o.data + ": no such file");
  auto trials = recall::needle_trials(*tok, read_file(o.data), lengths, depths, o.trials, o.seed);
  EngineOptions eo = o.engine_options();
  auto eng = Engine::load(dir, eo);
  Progress p("needle", trials.size());
  for (size_t i = 0; i < trials.size(); ++i) {
    recall::needle_run(*eng, *tok, trials[i]);
    p.update(i + 1);
  }
  // acc[length][depth]
  std::vector<std::vector<double>> acc(lengths.size(), std::vector<double>(depths.size(), 0));
  for (auto& t : trials) {
    const size_t li = size_t(std::find(lengths.begin(), lengths.end(), t.length) - lengths.begin());
    const size_t di = size_t(std::find(depths.begin(), depths.end(), t.depth) - depths.begin());
    acc[li][di] += t.retrieved ? 1.0 / o.trials : 0;
  }
  std::string head = "|depth \\ length|", sep = "|---|";
  for (auto L : lengths) head += fmt_len(L) + "|", sep += "---:|";
  std::printf("needle in a haystack (%s), retrieved passkeys, %d trial(s) per cell\n%s\n%s\n", dir.c_str(), o.trials,
              head.c_str(), sep.c_str());
  for (size_t d = 0; d < depths.size(); ++d) {
    std::printf("|%g%%|", depths[d]);
    for (size_t l = 0; l < lengths.size(); ++l) std::printf("%.2f|", acc[l][d]);
    std::printf("\n");
  }
  if (!o.png.empty()) {
    std::string data, xt, yt;
    for (size_t l = 0; l < lengths.size(); ++l) {
      for (size_t d = 0; d < depths.size(); ++d) data += std::to_string(l) + " " + std::to_string(d) + " " + std::to_string(acc[l][d]) + "\n";
      data += "\n";
      xt += (l ? ", " : "") + gp_quote(fmt_len(lengths[l])) + " " + std::to_string(l);
    }
    for (size_t d = 0; d < depths.size(); ++d) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", depths[d]);
      yt += (d ? ", " : "") + gp_quote(b) + " " + std::to_string(d);
    }
    const std::string body = "$d << EOD\n" + data + "EOD\nset title " + gp_quote("Needle in a haystack: " + dir) +
                             "\nset xlabel 'context length (tokens)'\nset ylabel 'needle depth (%)'\nset cbrange [0:1]\n"
                             "set cblabel 'retrieved'\nset palette defined (0 '#c0392b', 0.5 '#f1c40f', 1 '#27ae60')\n"
                             "set xtics (" + xt + ")\nset ytics (" + yt + ")\nset xrange [-0.5:" + std::to_string(lengths.size()) +
                             "-0.5]\nset yrange [" + std::to_string(depths.size()) + "-0.5:-0.5]\n"
                             "plot $d using 1:2:3 with image notitle, $d using 1:2:(sprintf('%.2f', $3)) with labels notitle";
    if (gnuplot_png(o.png, body)) std::fprintf(stderr, "needle: heatmap written to %s\n", o.png.c_str());
    else std::fprintf(stderr, "needle: warning: gnuplot failed or is missing, no heatmap written\n");
  }
  if (!o.json_out.empty()) {
    nlohmann::json j = {{"task", "needle"}, {"model", dir}, {"lengths", lengths}, {"depths", depths}, {"trials", o.trials},
                        {"seed", o.seed}, {"retrieved", acc}};
    nlohmann::json tr = nlohmann::json::array();
    for (auto& t : trials)
      tr.push_back({{"length", t.length}, {"depth", t.depth}, {"passkey", t.passkey}, {"needle_pos", t.needle_pos},
                    {"needle_len", t.needle_len}, {"haystack_len", t.haystack_len}, {"prompt", t.prompt},
                    {"generated", t.generated}, {"text", t.text}, {"retrieved", t.retrieved}});
    j["trials_detail"] = tr;
    write_file_atomic(o.json_out, j.dump(1) + "\n");
  }
}

// MQAR: accuracy of generated associative-recall samples, or (--make-data) training data for them.
void run_mqar(const Opts& o) {
  const std::string dir = o.dir();
  recall::MqarOptions mo;
  mo.pairs = o.mqar_pairs, mo.vocab = o.mqar_vocab, mo.seed = o.seed;
  HYMBA_CHECK(o.mqar_vocab >= 2, "--mqar-vocab must be at least 2");
  if (!o.make_data.empty()) {
    int64_t vocab = 0;
    {
      const Config c = load_config(dir + "/config.json");  // validated as every command validates it
      vocab = c.vocab_size, mo.bos = int32_t(c.bos_token_id), mo.eos = int32_t(c.eos_token_id);
    }
    recall::mqar_write_data(o.make_data, mo, o.train_samples, o.val_samples, vocab, o.data_format);
    std::printf("mqar: wrote %lld training and %lld validation samples (%lld pairs, %lld tokens each) to %s\n",
                (long long)o.train_samples, (long long)o.val_samples, (long long)o.mqar_pairs, (long long)(4 * o.mqar_pairs + 2),
                o.make_data.c_str());
    return;
  }
  HYMBA_CHECK(o.samples >= 1, "--samples must be >= 1");
  EngineOptions eo = o.engine_options();
  eo.cache_dtype = DType::F32;
  auto eng = Engine::load(dir, eo);
  mo.bos = int32_t(eng->config().bos_token_id), mo.eos = int32_t(eng->config().eos_token_id);
  Progress p("mqar", size_t(o.samples));
  std::vector<recall::MqarSample> samples;
  const auto correct = recall::mqar_eval(*eng, mo, o.samples, &samples, [&](int64_t n) { p.update(size_t(n)); });
  std::vector<double> x(correct.begin(), correct.end());
  double m = 0;
  for (double v : x) m += v;
  m /= double(x.size());
  double var = 0;
  for (double v : x) var += (v - m) * (v - m);
  const double se = x.size() > 1 ? std::sqrt(var / double(x.size() - 1)) / std::sqrt(double(x.size())) : 0;
  std::printf("mqar (%s): %lld samples x %lld queries, key/value vocab %lld\n|Tasks|Metric|Value|   |Stderr|\n|----|---|---:|---|---:|\n"
              "|mqar|acc|%.4f|±|%.4f|\n", dir.c_str(), (long long)o.samples, (long long)o.mqar_pairs, (long long)o.mqar_vocab, m, se);
  if (!o.json_out.empty()) {
    nlohmann::json j = {{"task", "mqar"}, {"model", dir}, {"pairs", o.mqar_pairs}, {"mqar_vocab", o.mqar_vocab},
                        {"samples", o.samples}, {"seed", o.seed}, {"acc", m}, {"acc_stderr", se}, {"correct", correct}};
    nlohmann::json ss = nlohmann::json::array();
    for (auto& s : samples) ss.push_back({{"ids", s.ids}, {"query_pos", s.query_pos}, {"answers", s.answers}});
    j["samples_detail"] = ss;
    write_file_atomic(o.json_out, j.dump(1) + "\n");
  }
}

void run(const Opts& o) {
  apply_threads(o.threads);
  check_out_dirs(o);
  if (o.task == "needle") return run_needle(o);
  if (o.task == "mqar") return run_mqar(o);
  const TaskInfo& task = task_info(o.task);
  HYMBA_CHECK(!o.data.empty(), "--data FILE.jsonl is required (the task's rows, as `datasets` exports them)");
  HYMBA_CHECK(o.limit >= 0, "--limit must be >= 0");
  HYMBA_CHECK(!o.benchmark || task.kind == Kind::MultipleChoice, "--benchmark compares context sharing on multiple-choice tasks");
  const auto rows = read_jsonl(o.data);
  const std::vector<Row> shots = o.fewshot_data.empty() ? std::vector<Row>{} : read_jsonl(o.fewshot_data);
  auto docs = build_docs(task, rows, shots, o.num_fewshot);
  if (o.limit > 0 && int64_t(docs.size()) > o.limit) docs.resize(size_t(o.limit));
  const std::string dir = o.dir();
  auto tok = Tokenizer::load(dir);
  EngineOptions eo = o.engine_options();
  eo.cache_dtype = DType::F32;
  auto eng = Engine::load(dir, eo);
  Options eopt;
  eopt.max_length = o.max_length;
  eopt.share_context = !o.no_share;
  eopt.bootstrap_iters = o.bootstrap_iters;
  Evaluator ev(*eng, *tok, eopt);
  size_t nreq = 0;
  for (auto& d : docs) nreq += d.args.size();
  std::fprintf(stderr, "eval: %s, %zu documents, %zu requests, max_length %lld, %s\n", task.name.c_str(), docs.size(),
               nreq, (long long)ev.max_length(), eopt.share_context ? "shared contexts" : "every request from scratch");
  auto t0 = Clock::now();
  const auto res = run_all(ev, task, docs, task.name);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (o.benchmark) {
    Options other = eopt;
    other.share_context = !eopt.share_context;
    Evaluator ev2(*eng, *tok, other);
    t0 = Clock::now();
    const auto res2 = run_all(ev2, task, docs, task.name + (other.share_context ? " (shared)" : " (from scratch)"));
    const double secs2 = std::chrono::duration<double>(Clock::now() - t0).count();
    double maxdiff = 0;
    for (size_t i = 0; i < res.size(); ++i)
      for (size_t q = 0; q < res[i].resps.size(); ++q)
        maxdiff = std::max(maxdiff, std::abs(res[i].resps[q].logprob - res2[i].resps[q].logprob));
    const bool s1 = eopt.share_context;
    const double ts = s1 ? secs : secs2, tf = s1 ? secs2 : secs;
    const int64_t ns = s1 ? ev.tokens_processed() : ev2.tokens_processed(), nf = s1 ? ev2.tokens_processed() : ev.tokens_processed();
    int64_t scored = 0;
    for (auto& r : res)
      for (auto& k : r.cont_ids) scored += int64_t(k.size());
    std::printf("benchmark %s: %zu documents, %zu requests, %lld continuation tokens scored\n", task.name.c_str(),
                docs.size(), nreq, (long long)scored);
    std::printf("  shared context : %8.2f s, %8lld tokens fed, %8.1f tok/s fed, %8.1f requests/s\n", ts, (long long)ns,
                double(ns) / ts, double(nreq) / ts);
    std::printf("  from scratch   : %8.2f s, %8lld tokens fed, %8.1f tok/s fed, %8.1f requests/s\n", tf, (long long)nf,
                double(nf) / tf, double(nreq) / tf);
    std::printf("  speed-up %.2fx (wall time), max |loglikelihood difference| %.2e\n", tf / ts, maxdiff);
  }
  const auto results = aggregate(task, docs, res, o.num_fewshot, o.bootstrap_iters);
  std::printf("hymba (pretrained=%s%s), limit: %s, num_fewshot: %d\n", dir.c_str(),
              o.quantize != "none" ? (",quantize=" + o.quantize).c_str() : "",
              o.limit > 0 ? std::to_string(o.limit).c_str() : "None", o.num_fewshot);
  std::printf("%s", markdown_table(results).c_str());
  std::fprintf(stderr, "eval: %.1f s, %.1f tokens/s fed to the model\n", secs, double(ev.tokens_processed()) / secs);
  if (!o.json_out.empty()) {
    auto j = results_json(results);
    j["config"] = {{"model", "hymba"}, {"model_args", "pretrained=" + dir}, {"quantize", o.quantize},
                   {"limit", o.limit > 0 ? nlohmann::json(o.limit) : nlohmann::json(nullptr)},
                   {"bootstrap_iters", o.bootstrap_iters}, {"max_length", ev.max_length()}};
    j["harness_semantics"] = "lm-evaluation-harness v0.4.x (HFLM loglikelihood / loglikelihood_rolling / generate_until)";
    write_file_atomic(o.json_out, j.dump(2) + "\n");
  }
  if (!o.log_samples.empty()) write_samples(o.log_samples, task, docs, res);
}

Register reg("eval", "lm-evaluation-harness tasks (arc, piqa, hellaswag, winogrande, obqa, mmlu, lambada, wikitext, squad_completion, swde)", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o, /*with_cache_type=*/false);
  std::string names;
  for (auto& n : task_names()) names += (names.empty() ? "" : ", ") + n;
  sub.add_option("--task", o->task, "task: " + names + "; or needle, mqar")->required();
  sub.add_option("--data", o->data, "the task's rows as JSONL with the Hugging Face field names (datasets' to_json)");
  sub.add_option("--limit", o->limit, "evaluate the first N documents only");
  sub.add_option("--num-fewshot", o->num_fewshot, "few-shot examples (mmlu: the first K dev rows of the same subject)");
  sub.add_option("--fewshot-data", o->fewshot_data, "rows to draw few-shot examples from (mmlu's dev split)");
  sub.add_option("--json", o->json_out, "write the harness-style results JSON to this file");
  sub.add_option("--log-samples", o->log_samples, "write each document's requests, token ids and responses (JSONL)");
  sub.add_option("--max-length", o->max_length, "the harness's max_length (default: the model's max_position_embeddings, else 2048)");
  sub.add_option("--bootstrap-iters", o->bootstrap_iters, "bootstrap resamples for perplexity's stderr (default 100000, as the harness)");
  sub.add_flag("--no-share-context", o->no_share, "score every (context, continuation) pair from scratch");
  sub.add_flag("--benchmark", o->benchmark, "also score with the other mode and print tokens/s and the speed-up of sharing");
  sub.add_option("--lengths", o->lengths, "needle: prompt lengths in tokens (default 1k,2k,4k,8k)");
  sub.add_option("--depths", o->depths, "needle: needle depths in percent (default 0,25,50,75,100)");
  sub.add_option("--trials", o->trials, "needle: passkeys per cell (default 1)");
  sub.add_option("--png", o->png, "needle: heatmap PNG (gnuplot)");
  sub.add_option("--seed", o->seed, "needle / mqar: random seed (default 0)");
  sub.add_option("--mqar-pairs", o->mqar_pairs, "mqar: key-value pairs per sample (default 8)");
  sub.add_option("--mqar-vocab", o->mqar_vocab, "mqar: ids used for keys + values (default 256, from id 3)");
  sub.add_option("--samples", o->samples, "mqar: samples to evaluate (default 100)");
  sub.add_option("--make-data", o->make_data, "mqar: write train.tok/val.tok for `hymba train` to this folder instead");
  sub.add_option("--data-format", o->data_format,
                 "mqar --make-data: tok (default; train.tok/val.tok, samples back to back, loss on every token) or jsonl "
                 "(train.jsonl/val.jsonl, one sample per row with a completion_mask on the answers: Zoology's loss)");
  sub.add_option("--train-samples", o->train_samples, "mqar --make-data: training samples (default 20000)");
  sub.add_option("--val-samples", o->val_samples, "mqar --make-data: validation samples (default 500)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
