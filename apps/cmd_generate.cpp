// hymba generate: complete a prompt, streaming tokens to stdout (llama-cli style).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/prompt_cache.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {

void add_sampling_options(CLI::App& sub, GenerateParams& g, int64_t& seed) {
  sub.add_option("-n,--n-predict", g.max_new_tokens, "max new tokens (default 256)");
  sub.add_option("--temp", g.sampling.temperature, "temperature; 0 = greedy (default 0.8)");
  sub.add_option("--top-k", g.sampling.top_k, "top-k, 0 = off (default 40)");
  sub.add_option("--top-p", g.sampling.top_p, "top-p, 1 = off (default 0.95)");
  sub.add_option("--min-p", g.sampling.min_p, "min-p, 0 = off (default 0.05)");
  sub.add_option("--repeat-penalty", g.sampling.repeat_penalty, "repetition penalty, 1 = off (default 1.0)");
  sub.add_option("--repeat-last-n", g.sampling.repeat_last_n, "tokens the penalty looks back (default 64)");
  sub.add_option("-s,--seed", seed, "RNG seed (default: random)");
  sub.add_option("--stop", g.stop, "stop string (repeatable)");
  sub.add_flag("--ignore-eos", g.ignore_eos, "keep generating after EOS");
}

void finish_sampling_options(GenerateParams& g, int64_t seed) {
  g.sampling.seed = seed >= 0 ? uint64_t(seed) : uint64_t(std::time(nullptr));
}

std::string speed_line(const GenerateResult& r) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "prompt: %lld tokens, %.2f tok/s | generated: %zu tokens, %.2f tok/s | stop: %s",
                (long long)r.n_prompt, double(r.n_prompt) / std::max(r.prompt_seconds, 1e-9),
                r.tokens.size(), double(r.tokens.size()) / std::max(r.gen_seconds, 1e-9),
                r.stop_reason.c_str());
  return buf;
}

namespace {

struct Opts : ModelFlags {
  std::string prompt, prompt_cache;
  GenerateParams gen;
  int64_t seed = -1;
  bool no_display_prompt = false, no_bos = false, print_ids = false;
};

void run(Opts& o) {
  apply_threads(o.threads);
  finish_sampling_options(o.gen, o.seed);
  HYMBA_CHECK(!o.prompt.empty(), "empty prompt: give some text with -p");
  const std::string dir = o.dir();
  if (!o.prompt_cache.empty()) check_prompt_cache_path(o.prompt_cache, dir);
  auto tok = Tokenizer::load(dir);
  auto ids = tok->encode(o.prompt, !o.no_bos);
  HYMBA_CHECK(!ids.empty(), "empty prompt: give some text with -p");
  const EngineOptions eo = o.engine_options();
  auto eng = Engine::load(dir, eo);
  auto seq = eng->new_sequence();
  std::vector<int32_t> history, feed = ids;  // history: tokens already in seq
  int64_t cached_fed = 0;
  double cached_s = 0;
  if (!o.prompt_cache.empty()) {
    // Reuse the saved state if its tokens start this prompt; then feed all but the last prompt
    // token and save, so that the same prompt next time is found again (a state cannot be
    // rolled back, so the last token is always fed by generate()).
    std::vector<int32_t> saved;
    std::string why;
    SequenceState loaded = eng->new_sequence();
    bool used = load_prompt_cache(*eng, o.prompt_cache, &saved, &loaded, &why);
    if (used && !(saved.size() < ids.size() && std::equal(saved.begin(), saved.end(), ids.begin())))
      used = false, why = "its tokens are not a prefix of this prompt";
    if (used) {
      seq = std::move(loaded), history = saved;
      std::fprintf(stderr, "prompt cache %s: reused %zu of %zu prompt tokens\n", o.prompt_cache.c_str(),
                   saved.size(), ids.size());
    } else {
      std::fprintf(stderr, "prompt cache %s: not used: %s\n", o.prompt_cache.c_str(), why.c_str());
    }
    const std::vector<int32_t> mid(ids.begin() + int64_t(history.size()), ids.end() - 1);
    if (!mid.empty()) {
      const auto t0 = std::chrono::steady_clock::now();
      eng->eval_one(seq, mid);
      cached_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      cached_fed = int64_t(mid.size());
    }
    history.assign(ids.begin(), ids.end() - 1);
    if (!used || !mid.empty()) save_prompt_cache(*eng, o.prompt_cache, history, seq);
    feed = {ids.back()};
  }
  if (!o.no_display_prompt) std::fputs(o.prompt.c_str(), stdout), std::fflush(stdout);
  auto r = generate(*eng, seq, *tok, feed, o.gen, [](const std::string& s) {
    std::fputs(s.c_str(), stdout);
    std::fflush(stdout);
  }, &history);
  r.n_prompt += cached_fed, r.prompt_seconds += cached_s;
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (o.print_ids) {
    auto join = [](const std::vector<int32_t>& v) {
      std::string s;
      for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
      return s;
    };
    std::fprintf(stderr, "prompt ids: %s\ngenerated ids: %s\n", join(ids).c_str(), join(r.tokens).c_str());
  }
  std::fprintf(stderr, "%s\n", speed_line(r).c_str());
}

Register reg("generate", "Complete a prompt (streams to stdout)", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.add_option("-p,--prompt", o->prompt, "prompt text")->required();
  sub.add_option("--prompt-cache", o->prompt_cache,
                 "file holding the processed prompt's state: reused when it starts this prompt, written otherwise");
  sub.add_flag("--no-display-prompt", o->no_display_prompt, "do not echo the prompt");
  sub.add_flag("--no-bos", o->no_bos, "do not prepend BOS");
  sub.add_flag("--print-token-ids", o->print_ids, "print prompt and generated token ids on stderr");
  add_sampling_options(sub, o->gen, o->seed);
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
