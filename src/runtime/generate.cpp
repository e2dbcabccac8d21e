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

Generation::Generation(const Tokenizer& tok, const GenerateParams& params, int32_t eos,
                       int32_t last_prompt_token, std::vector<int32_t> history)
    : tok_(tok), params_(params), sampler_(params.sampling), eos_(eos), hist_(std::move(history)) {
  HYMBA_CHECK(params.max_new_tokens >= 0, "max new tokens must be >= 0");
  for (const auto& s : params.stop) HYMBA_CHECK(!s.empty(), "empty stop string");
  // Text is the decode of (last prompt token + generated) minus the decode of that token, so a
  // leading space of the first generated piece survives SentencePiece's decode.
  ids_ = {last_prompt_token};
  anchor_text_ = tok.decode(ids_);
  done_ = params.max_new_tokens == 0;
}

int32_t Generation::step(const float* logits, int64_t vocab, std::string* piece) {
  HYMBA_CHECK(!done_, "Generation::step after the end");
  const int32_t next = sampler_.sample(logits, vocab, hist_);
  tokens_.push_back(next);
  hist_.push_back(next);
  const bool at_length = int64_t(tokens_.size()) >= params_.max_new_tokens;
  const size_t emitted = released_.size();
  if (next == eos_ && !params_.ignore_eos) {
    done_ = true, stop_reason_ = "eos";
    if (text_.size() > emitted) piece->append(text_, emitted), released_ = text_;  // held-back text
  } else {
    ids_.push_back(next);
    const std::string full = tok_.decode(ids_);
    text_ = full.compare(0, anchor_text_.size(), anchor_text_) == 0 ? full.substr(anchor_text_.size()) : full;
    const std::string& text = text_;
    size_t stop_at = std::string::npos;
    for (const auto& s : params_.stop) {
      size_t p = text.find(s, emitted > s.size() ? emitted - s.size() : 0);
      if (p != std::string::npos && p < stop_at) stop_at = p;
    }
    size_t ready;
    if (stop_at != std::string::npos) {
      ready = stop_at, done_ = true, stop_reason_ = "stop";
    } else if (at_length) {
      ready = text.size(), done_ = true;  // the end: release what was held back
    } else {
      ready = utf8_complete(text);
      ready -= std::min(ready, stop_holdback(text.substr(0, ready), params_.stop));
    }
    if (ready > emitted) {
      piece->append(text, emitted, ready - emitted);
      released_.append(text, emitted, ready - emitted);
    }
  }
  if (at_length) done_ = true;
  return next;
}

GenerateResult generate(Engine& engine, SequenceState& seq, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateParams& params,
                        const std::function<void(const std::string&)>& on_text,
                        std::vector<int32_t>* history, const std::atomic<bool>* interrupt) {
  HYMBA_CHECK(!prompt.empty(), "empty prompt: nothing to generate from");
  GenerateResult r;
  r.n_prompt = int64_t(prompt.size());
  std::vector<int32_t> hist = history ? *history : std::vector<int32_t>{};
  hist.insert(hist.end(), prompt.begin(), prompt.end());
  Generation g(tok, params, int32_t(engine.config().eos_token_id), prompt.back(), hist);

  double t0 = now_s();
  std::vector<float> logits = engine.eval_one(seq, prompt);
  r.prompt_seconds = now_s() - t0;
  t0 = now_s();
  const int64_t V = engine.config().vocab_size;
  bool interrupted = false;
  while (!g.done()) {
    if (interrupt && interrupt->load()) {
      interrupted = true;
      break;
    }
    std::string piece;
    const int32_t next = g.step(logits.data(), V, &piece);
    if (!piece.empty()) on_text(piece);
    logits = engine.eval_one(seq, {next});  // the sequence stays consistent for a next turn
  }
  r.gen_seconds = now_s() - t0;
  r.tokens = g.tokens();
  r.text = g.text();
  r.stop_reason = interrupted ? "interrupted" : g.stop_reason();
  if (history) *history = g.history();
  return r;
}

}  // namespace hymba
