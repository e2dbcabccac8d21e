#include "eval/recall.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "eval/lm_eval.h"
#include "io/files.h"
#include "train/data.h"

namespace hymba::recall {

namespace {
constexpr const char* kIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about it.\n";
constexpr const char* kQuestion = "\nWhat is the pass key? The pass key is";

std::string needle_text(const std::string& key) {
  return "\nThe pass key is " + key + ". Remember it. " + key + " is the pass key.\n";
}
}  // namespace

std::vector<int64_t> parse_lengths(const std::string& s) {
  std::vector<int64_t> out;
  for (std::string t : lmeval::split(s, ',')) {
    const std::string given = t;
    int64_t mul = 1;
    if (!t.empty() && (t.back() == 'k' || t.back() == 'K')) mul = 1024, t.pop_back();
    char* end = nullptr;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    HYMBA_CHECK(!t.empty() && end && *end == 0 && v > 0, "--lengths: '" + given + "' is not a length (e.g. 1k,2k,4096)");
    out.push_back(int64_t(v) * mul);
  }
  return out;
}

std::vector<double> parse_depths(const std::string& s) {
  std::vector<double> out;
  for (const std::string& t : lmeval::split(s, ',')) {
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    HYMBA_CHECK(!t.empty() && end && *end == 0 && v >= 0 && v <= 100, "--depths: '" + t + "' is not a percentage in [0, 100]");
    out.push_back(v);
  }
  return out;
}

bool passkey_retrieved(const std::string& text, const std::string& passkey) {
  const size_t a = text.find_first_of("0123456789");
  if (a == std::string::npos) return false;
  const size_t b = text.find_first_not_of("0123456789", a);
  return text.substr(a, b == std::string::npos ? std::string::npos : b - a) == passkey;
}

std::vector<NeedleTrial> needle_trials(const Tokenizer& tok, const std::string& haystack,
                                       const std::vector<int64_t>& lengths, const std::vector<double>& depths,
                                       int trials, uint64_t seed) {
  HYMBA_CHECK(trials >= 1, "--trials must be at least 1");
  const auto hay = tok.encode(haystack, false);
  HYMBA_CHECK(!hay.empty(), "the haystack text is empty");
  const auto intro = tok.encode(kIntro, false), question = tok.encode(kQuestion, false);
  uint64_t rng = seed ^ 0x6e6565646c65ull;
  std::vector<NeedleTrial> out;
  for (int64_t L : lengths)
    for (double d : depths)
      for (int k = 0; k < trials; ++k) {
        NeedleTrial t;
        t.length = L, t.depth = d;
        t.passkey = std::to_string(10000 + rng_below(rng, 90000));
        const auto needle = tok.encode(needle_text(t.passkey), false);
        const int64_t m = L - 1 - int64_t(intro.size() + needle.size() + question.size());
        HYMBA_CHECK(m >= 1, "--lengths: " + std::to_string(L) + " tokens leave no room for the haystack (the fixed parts take " +
                                std::to_string(L - m) + ")");
        const int64_t p = std::llround(d / 100.0 * double(m));
        t.prompt.push_back(int32_t(tok.bos()));
        t.prompt.insert(t.prompt.end(), intro.begin(), intro.end());
        for (int64_t i = 0; i < p; ++i) t.prompt.push_back(hay[size_t(i) % hay.size()]);
        t.needle_pos = int64_t(t.prompt.size()), t.needle_len = int64_t(needle.size()), t.haystack_len = m;
        t.prompt.insert(t.prompt.end(), needle.begin(), needle.end());
        for (int64_t i = p; i < m; ++i) t.prompt.push_back(hay[size_t(i) % hay.size()]);
        t.prompt.insert(t.prompt.end(), question.begin(), question.end());
        out.push_back(std::move(t));
      }
  return out;
}

void needle_run(Engine& eng, const Tokenizer& tok, NeedleTrial& t) {
  const int64_t V = eng.config().vocab_size;
  SequenceState s = eng.new_sequence();
  auto logits = eng.eval_one(s, t.prompt);
  t.generated.clear();
  for (int i = 0; i < 8; ++i) {
    const int32_t id = int32_t(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
    if (id == eng.config().eos_token_id) break;
    t.generated.push_back(id);
    t.text = tok.decode(t.generated);
    if (t.text.find('\n') != std::string::npos) break;
    logits = eng.eval_one(s, {id});
  }
  t.text = t.text.substr(0, t.text.find('\n'));
  t.retrieved = passkey_retrieved(t.text, t.passkey);
}

MqarSample mqar_sample(const MqarOptions& o, uint64_t& rng) {
  const int64_t half = o.vocab / 2;
  HYMBA_CHECK(o.pairs >= 1 && o.pairs <= half, "MQAR: --mqar-pairs must be in [1, vocab/2]");
  std::vector<int32_t> keys;
  while (int64_t(keys.size()) < o.pairs) {  // distinct keys
    const int32_t k = o.first + int32_t(rng_below(rng, uint64_t(half)));
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  }
  std::vector<int32_t> vals;
  for (int64_t i = 0; i < o.pairs; ++i) vals.push_back(o.first + int32_t(half + int64_t(rng_below(rng, uint64_t(half)))));
  MqarSample s;
  s.ids.push_back(o.bos);
  for (int64_t i = 0; i < o.pairs; ++i) s.ids.push_back(keys[size_t(i)]), s.ids.push_back(vals[size_t(i)]);
  std::vector<int64_t> order(size_t(o.pairs));
  for (int64_t i = 0; i < o.pairs; ++i) order[size_t(i)] = i;
  for (int64_t i = o.pairs - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng_below(rng, uint64_t(i + 1))]);
  for (int64_t q : order) {
    s.query_pos.push_back(int64_t(s.ids.size()));
    s.answers.push_back(vals[size_t(q)]);
    s.ids.push_back(keys[size_t(q)]), s.ids.push_back(vals[size_t(q)]);
  }
  s.ids.push_back(o.eos);
  return s;
}

std::vector<int> mqar_eval(Engine& eng, const MqarOptions& o, int64_t n, std::vector<MqarSample>* samples,
                           const std::function<void(int64_t)>& progress) {
  HYMBA_CHECK(o.first + o.vocab <= eng.config().vocab_size,
              "MQAR: ids up to " + std::to_string(o.first + o.vocab) + " do not fit the model's vocabulary (" +
                  std::to_string(eng.config().vocab_size) + "); lower --mqar-vocab");
  const int64_t V = eng.config().vocab_size;
  uint64_t rng = o.seed;
  std::vector<int> correct;
  const int64_t batch = 8;
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    std::vector<MqarSample> bs;
    std::vector<SequenceState> states;
    std::vector<std::vector<int32_t>> feed;
    for (int64_t i = b0; i < std::min(n, b0 + batch); ++i) {
      bs.push_back(mqar_sample(o, rng));
      states.push_back(eng.new_sequence());
      feed.push_back(bs.back().ids);
    }
    std::vector<SequenceState*> ptrs;
    for (auto& s : states) ptrs.push_back(&s);
    std::vector<std::vector<float>> all;
    eng.eval(ptrs, feed, nullptr, &all);
    for (size_t i = 0; i < bs.size(); ++i)
      for (size_t q = 0; q < bs[i].query_pos.size(); ++q) {
        const float* row = all[i].data() + size_t(bs[i].query_pos[q]) * size_t(V);
        correct.push_back(int(std::max_element(row, row + V) - row) == bs[i].answers[q]);
      }
    if (samples) samples->insert(samples->end(), bs.begin(), bs.end());
    if (progress) progress(std::min(n, b0 + batch));
  }
  return correct;
}

void mqar_write_data(const std::string& dir, const MqarOptions& o, int64_t n_train, int64_t n_val, int64_t model_vocab,
                     const std::string& format) {
  HYMBA_CHECK(format == "tok" || format == "jsonl", "MQAR data: --data-format must be tok or jsonl (got '" + format + "')");
  HYMBA_CHECK(n_train >= 1 && n_val >= 1, "MQAR data: --train-samples and --val-samples must be >= 1");
  HYMBA_CHECK(o.first + o.vocab <= model_vocab, "MQAR data: ids up to " + std::to_string(o.first + o.vocab) +
                                                    " do not fit a vocabulary of " + std::to_string(model_vocab));
  std::filesystem::create_directories(dir);
  const bool jsonl = format == "jsonl";
  auto write = [&](const std::string& name, int64_t n, uint64_t seed) {
    std::vector<int32_t> ids;
    std::string rows;
    uint64_t rng = seed;
    for (int64_t i = 0; i < n; ++i) {
      const auto s = mqar_sample(o, rng);
      ids.insert(ids.end(), s.ids.begin(), s.ids.end());
      if (!jsonl) continue;
      std::vector<int> mask(s.ids.size(), 0);
      for (int64_t q : s.query_pos) mask[size_t(q + 1)] = 1;  // the value that answers the query key
      rows += "{\"input_ids\": [";
      for (size_t k = 0; k < s.ids.size(); ++k) rows += (k ? ", " : "") + std::to_string(s.ids[k]);
      rows += "], \"completion_mask\": [";
      for (size_t k = 0; k < mask.size(); ++k) rows += (k ? ", " : "") + std::to_string(mask[k]);
      rows += "]}\n";
    }
    if (jsonl) write_file_atomic(dir + "/" + name, rows);
    else write_token_file(dir + "/" + name, ids, model_vocab);
    return int64_t(ids.size());
  };
  const std::string ext = jsonl ? ".jsonl" : ".tok";
  const int64_t nt = write("train" + ext, n_train, o.seed), nv = write("val" + ext, n_val, o.seed + 0x5eed);
  nlohmann::json meta = {{"format", jsonl ? "jsonl-completion-mask" : "hymba-tokens"}, {"generator", "mqar"}, {"pairs", o.pairs},
                         {"mqar_vocab", o.vocab}, {"first_id", o.first}, {"seed", o.seed}, {"sample_tokens", 4 * o.pairs + 2},
                         {"train", {{"file", "train" + ext}, {"documents", n_train}, {"tokens", nt}}},
                         {"val", {{"file", "val" + ext}, {"documents", n_val}, {"tokens", nv}}}};
  write_file_atomic(dir + "/meta.json", meta.dump(2) + "\n");
}

}  // namespace hymba::recall
