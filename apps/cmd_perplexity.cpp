// hymba perplexity: llama-perplexity for Hymba (src/eval/perplexity.h): a text file (or a token
// file from `hymba tokenize`, e.g. its val.tok) cut into chunks of --ctx tokens, the second half
// of each scored; running estimates on stderr, the final figure (or JSON) on stdout.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "eval/perplexity.h"
#include "io/files.h"
#include "runtime/engine.h"
#include "runtime/tokenizer.h"
#include "train/data.h"

namespace hymba::cli {
namespace {

struct Opts : ModelFlags {
  std::string file, tokens;
  PerplexityOptions p;
  bool json = false;
};

void run(const Opts& o) {
  apply_threads(o.threads);
  auto [eng, ids, dir] = load_eval_input(o, o.file, o.tokens);
  std::fprintf(stderr, "perplexity: %zu tokens, %lld chunks of %lld, scoring %s\n", ids.size(),
               (long long)perplexity_chunks(int64_t(ids.size()), o.p), (long long)o.p.ctx, o.p.score_all ? "every token" : "the second half of each chunk");
  const auto r = perplexity(*eng, ids, o.p, [](const PerplexityResult& x) {
    std::fprintf(stderr, "[%lld]%.4f,", (long long)x.chunks, x.ppl());
    std::fflush(stderr);
  });
  std::fprintf(stderr, "\n");
  if (o.json) {
    nlohmann::json j = {{"model", dir}, {"file", o.file.empty() ? o.tokens : o.file}, {"ctx", o.p.ctx}, {"chunks", r.chunks},
                        {"scored_tokens", r.scored}, {"nll_sum", r.nll}, {"mean_nll", r.nll / double(r.scored)},
                        {"ppl", r.ppl()}, {"ppl_stderr", r.ppl_error()}, {"quantize", o.quantize}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("Final estimate: PPL = %.4f +/- %.5f (%lld tokens scored, mean NLL %.6f)\n", r.ppl(),
                r.ppl_error(), (long long)r.scored, r.nll / double(r.scored));
  }
}

Register reg("perplexity", "Perplexity of a text file (llama-perplexity style chunks)", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o, /*with_cache_type=*/false);
  sub.add_option("-f,--file", o->file, "UTF-8 text file (encoded with the model's tokenizer, BOS first)");
  sub.add_option("--tokens", o->tokens, "token file from `hymba tokenize` (train.tok / val.tok) instead of text");
  sub.add_option("-c,--ctx", o->p.ctx, "tokens per chunk (default 512)");
  sub.add_option("--chunks", o->p.max_chunks, "evaluate at most this many chunks (default all)");
  sub.add_flag("--score-all", o->p.score_all, "score every token after the first, not the second half");
  sub.add_flag("--json", o->json, "print JSON");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
