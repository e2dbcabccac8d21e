#include "runtime/generate.h"

#include <chrono>

#include "base/error.h"
#include "runtime/tokenizer.h"

namespace hymba {

namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Length of the longest complete-UTF-8 prefix of s (a character may be split across tokens).
size_t utf8_complete(const std::string& s) {
  size_t n = s.size(), i = n;
  int back = 0;
  while (i > 0 && back < 4) {
    unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {  // lead byte or ASCII
      int need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      return (n - (i - 1)) >= size_t(need) ? n : i - 1;
    }
    --i, ++back;
  }
  return n;
}

// How many trailing bytes of text might begin a stop string (held back until decided).
size_t stop_holdback(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) { hold = k; break; }
  return hold;
}

}  // namespace

GenerateResult generate(Engine& engine, SequenceState& seq, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateParams& params,
                        const std::function<void(const std::string&)>& on_text,
                        std::vector<int32_t>* history) {
  HYMBA_CHECK(!prompt.empty(), "empty prompt: nothing to generate from");
  HYMBA_CHECK(params.max_new_tokens >= 0, "max new tokens must be >= 0");
  for (const auto& s : params.stop) HYMBA_CHECK(!s.empty(), "empty stop string");
  GenerateResult r;
  r.n_prompt = int64_t(prompt.size());
  std::vector<int32_t> hist_local;
  std::vector<int32_t>& hist = history ? *history : hist_local;
  hist.insert(hist.end(), prompt.begin(), prompt.end());

  double t0 = now_s();
  std::vector<float> logits = engine.eval_one(seq, prompt);
  r.prompt_seconds = now_s() - t0;

  Sampler sampler(params.sampling);
  const int64_t V = engine.config().vocab_size;
  const int32_t eos = int32_t(engine.config().eos_token_id);
  // Text is the decode of (last prompt token + generated) minus the decode of that token, so a
  // leading space of the first generated piece survives SentencePiece's decode.
  const std::vector<int32_t> anchor = {prompt.back()};
  const std::string anchor_text = tok.decode(anchor);
  std::string text;
  size_t emitted = 0;
  r.stop_reason = "length";
  t0 = now_s();
  std::vector<int32_t> ids = anchor;
  for (int64_t step = 0; step < params.max_new_tokens; ++step) {
    const int32_t next = sampler.sample(logits.data(), V, hist);
    r.tokens.push_back(next);
    hist.push_back(next);
    if (next == eos && !params.ignore_eos) {
      r.stop_reason = "eos";
      logits = engine.eval_one(seq, {next});  // the sequence stays consistent for a next turn
      break;
    }
    ids.push_back(next);
    std::string full = tok.decode(ids);
    text = full.compare(0, anchor_text.size(), anchor_text) == 0 ? full.substr(anchor_text.size()) : full;
    bool stopped = false;
    size_t stop_at = std::string::npos;
    for (const auto& s : params.stop) {
      size_t p = text.find(s, emitted > s.size() ? emitted - s.size() : 0);
      if (p != std::string::npos && p < stop_at) stop_at = p;
    }
    size_t ready;
    if (stop_at != std::string::npos) {
      ready = stop_at, stopped = true;
    } else {
      ready = utf8_complete(text);
      ready -= std::min(ready, stop_holdback(text.substr(0, ready), params.stop));
    }
    if (ready > emitted) {
      on_text(text.substr(emitted, ready - emitted));
      emitted = ready;
    }
    logits = engine.eval_one(seq, {next});
    if (stopped) {
      r.stop_reason = "stop";
      text.resize(stop_at);
      break;
    }
  }
  if (r.stop_reason != "stop" && text.size() > emitted) on_text(text.substr(emitted)), emitted = text.size();
  r.text = text.substr(0, emitted);
  r.gen_seconds = now_s() - t0;
  return r;
}

}  // namespace hymba
