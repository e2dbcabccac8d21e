#include "eval/lm_eval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "base/error.h"

namespace hymba::lmeval {

using nlohmann::json;

// ---- scoring ----------------------------------------------------------------------------------

namespace {

// log softmax of row[t] in double, and whether t is the first argmax (torch's argmax).
LL score_token(const float* row, int64_t V, int32_t t) {
  int64_t am = 0;
  for (int64_t v = 1; v < V; ++v)
    if (row[v] > row[am]) am = v;
  const double mx = row[am];
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - mx);
  return {double(row[t]) - mx - std::log(s), am == t};
}

}  // namespace

Evaluator::Evaluator(Engine& eng, const Tokenizer& tok, const Options& o) : eng_(eng), tok_(tok), o_(o) {
  const int64_t mp = eng.config().max_position_embeddings;
  max_len_ = o.max_length > 0 ? o.max_length : (mp > 0 ? mp : 2048);
  HYMBA_CHECK(max_len_ >= 2, "--max-length must be at least 2");
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> Evaluator::encode_pair(const std::string& context,
                                                                             const std::string& continuation) const {
  return lmeval::encode_pair(tok_, int32_t(eng_.config().bos_token_id), context, continuation);
}

std::vector<LL> Evaluator::loglikelihood(const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& reqs) {
  const int64_t V = eng_.config().vocab_size;
  std::vector<LL> out(reqs.size());
  // The model input is (context + continuation)[-(max_length+1):][:-1]: a long context loses its
  // first tokens; requests whose (truncated) contexts are equal form one group.
  std::vector<std::vector<int32_t>> ctxs(reqs.size());
  std::vector<std::pair<std::vector<int32_t>, std::vector<size_t>>> groups;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& [c, k] = reqs[i];
    HYMBA_CHECK(!k.empty(), "a continuation encodes to no tokens");
    HYMBA_CHECK(int64_t(k.size()) <= max_len_, "a continuation of " + std::to_string(k.size()) +
                                                   " tokens is longer than --max-length " + std::to_string(max_len_));
    const int64_t drop = std::max<int64_t>(0, int64_t(c.size() + k.size()) - (max_len_ + 1));
    ctxs[i].assign(c.begin() + drop, c.end());
    HYMBA_CHECK(!ctxs[i].empty(), "an empty context cannot be scored");
    auto g = std::find_if(groups.begin(), groups.end(), [&](auto& x) { return o_.share_context && x.first == ctxs[i]; });
    if (g == groups.end()) groups.push_back({ctxs[i], {i}});
    else g->second.push_back(i);
  }
  for (auto& [ctx, members] : groups) {
    std::vector<SequenceState> states;
    std::vector<std::vector<int32_t>> feed;
    std::vector<float> first;  // logits predicting each member's first continuation token
    if (o_.share_context) {
      SequenceState s = eng_.new_sequence();
      first = eng_.eval_one(s, ctx);
      tokens_ += int64_t(ctx.size());
      for (size_t m : members) {
        states.push_back(s);  // states are plain data: a copy continues independently
        feed.emplace_back(reqs[m].second.begin(), reqs[m].second.end() - 1);
      }
    } else {
      for (size_t m : members) {
        states.push_back(eng_.new_sequence());
        std::vector<int32_t> f = ctx;
        f.insert(f.end(), reqs[m].second.begin(), reqs[m].second.end() - 1);
        feed.push_back(std::move(f));
      }
    }
    std::vector<SequenceState*> ptrs;
    for (auto& s : states) ptrs.push_back(&s);
    std::vector<std::vector<float>> all;
    eng_.eval(ptrs, feed, nullptr, &all);
    for (size_t j = 0; j < members.size(); ++j) {
      const auto& cont = reqs[members[j]].second;
      tokens_ += int64_t(feed[j].size());
      LL r{0, true};
      // Row of the logits predicting continuation token t.
      const size_t off = o_.share_context ? 0 : ctx.size();
      for (size_t t = 0; t < cont.size(); ++t) {
        const float* row = o_.share_context && t == 0 ? first.data()
                                                      : all[j].data() + (off + t - 1) * size_t(V);
        const LL x = score_token(row, V, cont[t]);
        r.logprob += x.logprob;
        r.greedy = r.greedy && x.greedy;
      }
      out[members[j]] = r;
    }
  }
  return out;
}

double Evaluator::rolling(const std::vector<int32_t>& ids) {
  // utils.get_rolling_token_windows(context_len=1) + make_disjoint_window.
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> windows;
  if (ids.empty()) return 0;
  const int64_t n = int64_t(ids.size()), pred_len = max_len_;
  const int64_t first = std::min(max_len_, n);
  std::vector<int32_t> a{int32_t(eng_.config().bos_token_id)};
  a.insert(a.end(), ids.begin(), ids.begin() + first - 1);
  std::vector<int32_t> b(ids.begin(), ids.begin() + first);
  windows.push_back({a, b});
  for (int64_t predicted = first; predicted < n;) {
    const int64_t wl = std::min(n - predicted, pred_len), end = predicted + wl;
    const int64_t s = std::max<int64_t>(0, end - max_len_ - 1);  // Python slice with a negative start clamps
    windows.push_back({std::vector<int32_t>(ids.begin() + s, ids.begin() + end - 1),
                       std::vector<int32_t>(ids.begin() + end - wl, ids.begin() + end)});
    predicted += wl;
  }
  for (auto& [x, y] : windows) x.resize(x.size() - (y.size() - 1));
  double total = 0;
  for (auto& w : windows) total += loglikelihood({w})[0].logprob;
  return total;
}

std::string Evaluator::generate_until(const std::vector<int32_t>& context, const std::vector<std::string>& until,
                                      int64_t max_gen, std::vector<int32_t>* ids) {
  const int64_t keep = std::max<int64_t>(1, max_len_ - max_gen);
  std::vector<int32_t> ctx(context.end() - std::min<int64_t>(keep, int64_t(context.size())), context.end());
  HYMBA_CHECK(!ctx.empty(), "generation needs a non-empty context");
  const int64_t V = eng_.config().vocab_size;
  SequenceState s = eng_.new_sequence();
  std::vector<float> logits = eng_.eval_one(s, ctx);
  tokens_ += int64_t(ctx.size());
  ids->clear();
  std::string text;
  for (int64_t i = 0; i < max_gen; ++i) {
    const int32_t t = int32_t(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
    if (t == eng_.config().eos_token_id) break;
    ids->push_back(t);
    text = tok_.decode(*ids);
    if (std::any_of(until.begin(), until.end(), [&](auto& u) { return !u.empty() && text.find(u) != std::string::npos; }))
      break;
    if (i + 1 < max_gen) {
      logits = eng_.eval_one(s, {t});
      ++tokens_;
    }
  }
  for (auto& u : until)
    if (!u.empty()) text = text.substr(0, text.find(u));
  return text;
}

DocResult Evaluator::run(const TaskInfo& task, const Doc& d) {
  DocResult r;
  auto has = [&](const char* m) { return std::find(task.metrics.begin(), task.metrics.end(), m) != task.metrics.end(); };
  if (task.kind == Kind::MultipleChoice || task.kind == Kind::Loglikelihood) {
    std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> reqs;
    for (auto& [c, k] : d.args) reqs.push_back(encode_pair(c, k));
    for (auto& [c, k] : reqs) r.ctx_ids.push_back(c), r.cont_ids.push_back(k);
    r.resps = loglikelihood(reqs);
    if (task.kind == Kind::Loglikelihood) {
      r.metrics["perplexity"] = r.resps[0].logprob;
      r.metrics["acc"] = r.resps[0].greedy ? 1 : 0;
      return r;
    }
    size_t pred = 0, pred_norm = 0;
    std::vector<double> norm(r.resps.size());
    for (size_t i = 0; i < r.resps.size(); ++i) {
      norm[i] = r.resps[i].logprob / double(n_codepoints(d.choices[i]));
      if (r.resps[i].logprob > r.resps[pred].logprob) pred = i;
      if (norm[i] > norm[pred_norm]) pred_norm = i;
    }
    r.metrics["acc"] = int64_t(pred) == d.gold ? 1 : 0;
    if (has("acc_norm")) r.metrics["acc_norm"] = int64_t(pred_norm) == d.gold ? 1 : 0;
  } else if (task.kind == Kind::Rolling) {
    const auto ids = tok_.encode(d.target, false);
    r.cont_ids.push_back(ids);
    const double ll = rolling(ids);
    r.resps.push_back({ll, false});
    for (auto& m : task.metrics) r.metrics[m] = ll;
  } else {
    const auto ctx = tok_.encode(d.args[0].first, false);
    std::vector<int32_t> gen;
    r.generated = generate_until(ctx, {"\n"}, 48, &gen);
    r.ctx_ids.push_back(ctx);
    r.cont_ids.push_back(gen);
    r.metrics["contains"] = lower_ascii(r.generated).find(lower_ascii(d.target)) != std::string::npos ? 1 : 0;
  }
  return r;
}

// ---- aggregation ------------------------------------------------------------------------------

namespace {

// CPython's Mersenne Twister (random.Random): seed(int) via init_by_array, random() with 53 bits.
class PyRandom {
 public:
  explicit PyRandom(uint32_t seed) {
    init_genrand(19650218u);
    const uint32_t key = seed;
    size_t i = 1, j = 0;
    for (size_t k = kN; k; --k) {
      mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key + uint32_t(j);
      ++i, ++j;
      if (i >= kN) mt_[0] = mt_[kN - 1], i = 1;
      if (j >= 1) j = 0;
    }
    for (size_t k = kN - 1; k; --k) {
      mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - uint32_t(i);
      if (++i >= kN) mt_[0] = mt_[kN - 1], i = 1;
    }
    mt_[0] = 0x80000000u;
    mti_ = kN;
  }
  double random() {
    const uint32_t a = next() >> 5, b = next() >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
  }

 private:
  static constexpr size_t kN = 624, kM = 397;
  void init_genrand(uint32_t s) {
    mt_[0] = s;
    for (mti_ = 1; mti_ < kN; ++mti_) mt_[mti_] = 1812433253u * (mt_[mti_ - 1] ^ (mt_[mti_ - 1] >> 30)) + uint32_t(mti_);
  }
  uint32_t next() {
    static const uint32_t mag01[2] = {0u, 0x9908b0dfu};
    if (mti_ >= kN) {
      size_t k = 0;
      for (; k < kN - kM; ++k) {
        const uint32_t y = (mt_[k] & 0x80000000u) | (mt_[k + 1] & 0x7fffffffu);
        mt_[k] = mt_[k + kM] ^ (y >> 1) ^ mag01[y & 1u];
      }
      for (; k < kN - 1; ++k) {
        const uint32_t y = (mt_[k] & 0x80000000u) | (mt_[k + 1] & 0x7fffffffu);
        mt_[k] = mt_[k + kM - kN] ^ (y >> 1) ^ mag01[y & 1u];
      }
      const uint32_t y = (mt_[kN - 1] & 0x80000000u) | (mt_[0] & 0x7fffffffu);
      mt_[kN - 1] = mt_[kM - 1] ^ (y >> 1) ^ mag01[y & 1u];
      mti_ = 0;
    }
    uint32_t y = mt_[mti_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
  }
  uint32_t mt_[kN];
  size_t mti_ = kN + 1;
};

double mean(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v;
  return s / double(x.size());
}

double sample_stddev(const std::vector<double>& x) {
  const double mu = mean(x);
  double s = 0;
  for (double v : x) s += (v - mu) * (v - mu);
  return std::sqrt(s / double(x.size() - 1));
}

bool higher_is_better(const std::string& m) { return m == "acc" || m == "acc_norm" || m == "contains"; }

TaskResult aggregate_one(const TaskInfo& task, const std::string& name, const std::vector<const Doc*>& docs,
                         const std::vector<const DocResult*>& res, int nshot, int64_t iters) {
  TaskResult t;
  t.name = name, t.version = task.version, t.nshot = nshot, t.n = int64_t(docs.size());
  for (auto& m : task.metrics) {
    std::vector<double> x;
    for (auto* r : res) x.push_back(r->metrics.at(m));
    MetricValue v;
    v.higher_is_better = higher_is_better(m);
    if (m == "perplexity") {
      v.value = std::exp(-mean(x));
      if (iters > 0 && x.size() > 1) v.stderr_ = bootstrap_perplexity_stderr(x, iters), v.has_stderr = true;
    } else if (task.kind == Kind::Rolling) {
      double ll = 0, w = 0;
      for (size_t i = 0; i < x.size(); ++i) ll += x[i], w += double(m == "word_perplexity" ? docs[i]->words : docs[i]->bytes);
      v.value = m == "bits_per_byte" ? -(ll / w) / std::log(2.0) : std::exp(-(ll / w));
    } else {
      v.value = mean(x);
      if (x.size() > 1) v.stderr_ = sample_stddev(x) / std::sqrt(double(x.size())), v.has_stderr = true;
    }
    t.metrics[m] = v;
  }
  return t;
}

}  // namespace

double bootstrap_perplexity_stderr(const std::vector<double>& xs, int64_t iters) {
  const int64_t chunk = std::min<int64_t>(1000, iters);
  std::vector<double> res;
  const double n = double(xs.size());
  for (int64_t c = 0; c < iters / chunk; ++c) {
    PyRandom rnd{uint32_t(c)};
    for (int64_t b = 0; b < chunk; ++b) {
      double s = 0;
      for (size_t i = 0; i < xs.size(); ++i) s += xs[size_t(std::floor(rnd.random() * n))];
      res.push_back(std::exp(-(s / n)));
    }
  }
  return sample_stddev(res);
}

std::vector<TaskResult> aggregate(const TaskInfo& task, const std::vector<Doc>& docs,
                                  const std::vector<DocResult>& res, int nshot, int64_t iters) {
  std::vector<std::string> subs;
  for (auto& d : docs)
    if (std::find(subs.begin(), subs.end(), d.subtask) == subs.end()) subs.push_back(d.subtask);
  auto pick = [&](const std::string& sub, std::vector<const Doc*>& ds, std::vector<const DocResult*>& rs) {
    for (size_t i = 0; i < docs.size(); ++i)
      if (sub == "\x01" || docs[i].subtask == sub) ds.push_back(&docs[i]), rs.push_back(&res[i]);
  };
  if (task.name != "mmlu") {
    std::vector<const Doc*> ds;
    std::vector<const DocResult*> rs;
    pick("\x01", ds, rs);
    return {aggregate_one(task, task.name, ds, rs, nshot, iters)};
  }
  // mmlu: one row per subject, and the group: size-weighted mean, pooled sample stderr.
  std::sort(subs.begin(), subs.end());
  std::vector<TaskResult> out(1);
  for (auto& s : subs) {
    std::vector<const Doc*> ds;
    std::vector<const DocResult*> rs;
    pick(s, ds, rs);
    out.push_back(aggregate_one(task, "  - " + s, ds, rs, nshot, iters));
  }
  TaskResult& g = out[0];
  g.name = "mmlu", g.version = 2.0, g.nshot = nshot;
  for (auto& m : task.metrics) {
    double sum = 0, nn = 0, var = 0;
    for (size_t i = 1; i < out.size(); ++i) {
      const double n = double(out[i].n), se = out[i].metrics[m].stderr_;
      sum += n * out[i].metrics[m].value, nn += n, var += (n - 1) * se * se * n;
      g.n += out[i].n;
    }
    MetricValue v;
    v.value = sum / nn;
    v.higher_is_better = higher_is_better(m);
    if (nn > double(out.size() - 1)) v.stderr_ = std::sqrt(var / (nn - double(out.size() - 1)) / nn), v.has_stderr = true;
    g.metrics[m] = v;
  }
  return out;
}

namespace {
std::string fmt4(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}
std::string fmt_version(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}
}  // namespace

std::string markdown_table(const std::vector<TaskResult>& rs) {
  const std::vector<std::string> head = {"Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"};
  const std::vector<bool> right = {false, true, false, true, false, false, true, false, true};
  std::vector<std::vector<std::string>> rows;
  for (auto& t : rs) {
    bool first = true;
    for (auto& [m, v] : t.metrics) {  // std::map: sorted by name, as the harness sorts them
      rows.push_back({first ? t.name : "", first ? fmt_version(t.version) : "", "none", std::to_string(t.nshot), m,
                      v.higher_is_better ? "\xE2\x86\x91" : "\xE2\x86\x93", fmt4(v.value), "\xC2\xB1",
                      v.has_stderr ? fmt4(v.stderr_) : "   N/A"});
      first = false;
    }
  }
  auto width = [](const std::string& s) { return n_codepoints(s); };
  std::vector<int64_t> w(head.size(), 3);
  for (size_t c = 0; c < head.size(); ++c) {
    w[c] = std::max(w[c], width(head[c]));
    for (auto& r : rows) w[c] = std::max(w[c], width(r[c]));
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = "|";
    for (size_t c = 0; c < r.size(); ++c) {
      const std::string pad(size_t(w[c] - width(r[c])), ' ');
      s += (right[c] ? pad + r[c] : r[c] + pad) + "|";
    }
    return s + "\n";
  };
  std::string out = line(head) + "|";
  for (size_t c = 0; c < head.size(); ++c) out += std::string(size_t(w[c] - (right[c] ? 1 : 0)), '-') + (right[c] ? ":" : "") + "|";
  out += "\n";
  for (auto& r : rows) out += line(r);
  return out;
}

json results_json(const std::vector<TaskResult>& rs) {
  json j = {{"results", json::object()}, {"versions", json::object()}, {"n-shot", json::object()},
            {"higher_is_better", json::object()}, {"n-samples", json::object()}};
  for (auto& t : rs) {
    std::string key = t.name;
    if (key.rfind("  - ", 0) == 0) key = "mmlu_" + key.substr(4);
    json r = {{"alias", t.name}};
    for (auto& [m, v] : t.metrics) {
      r[m + ",none"] = v.value;
      r[m + "_stderr,none"] = v.has_stderr ? json(v.stderr_) : json("N/A");
      j["higher_is_better"][key][m] = v.higher_is_better;
    }
    j["results"][key] = r;
    j["versions"][key] = t.version;
    j["n-shot"][key] = t.nshot;
    j["n-samples"][key] = {{"original", t.n}, {"effective", t.n}};
  }
  return j;
}

}  // namespace hymba::lmeval
