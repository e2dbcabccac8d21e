// hymba imatrix: llama.cpp's `llama-imatrix` for Hymba (src/model/imatrix.h): runs the model over
// calibration text (chunks of --ctx tokens as `hymba perplexity` cuts them) and writes each linear
// layer's mean squared input per column, for `hymba quantize --imatrix`. Calibrate on text like
// what the model will see, not on the text you measure the quantized model with.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "eval/quant_quality.h"
#include "runtime/engine.h"

namespace hymba::cli {
namespace {

struct Opts : ModelFlags {
  std::string file, tokens, out;
  PerplexityOptions p;
};

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(!o.out.empty(), "-o FILE is required (where to write the importance matrix)");
  HYMBA_CHECK(!std::filesystem::is_directory(o.out), "-o " + o.out + " is a folder; give a file name");
  const std::string dir = o.dir();
  const std::vector<int32_t> ids = read_eval_tokens(dir, o.file, o.tokens);
  EngineOptions eo = o.engine_options();
  eo.cache_dtype = DType::F32;
  auto eng = Engine::load(dir, eo);
  for (int32_t id : ids)
    HYMBA_CHECK(id >= 0 && id < eng->config().vocab_size,
                "token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                    std::to_string(eng->config().vocab_size) + ")");
  const int64_t chunks = perplexity_chunks(int64_t(ids.size()), o.p);
  std::fprintf(stderr, "imatrix: %zu tokens, %lld chunks of %lld\n", ids.size(), (long long)chunks, (long long)o.p.ctx);
  ImportanceMatrix im;
  const auto r = collect_imatrix(*eng, ids, o.p, &im, [](const PerplexityResult& x) {
    std::fprintf(stderr, "[%lld]%.4f,", (long long)x.chunks, x.ppl());
    std::fflush(stderr);
  });
  std::fprintf(stderr, "\n");
  im.info = {{"dataset", o.file.empty() ? o.tokens : o.file},
             {"chunks", std::to_string(r.chunks)},
             {"chunk_size", std::to_string(o.p.ctx)}};
  im.save(o.out);
  std::printf("wrote %s: %zu matrices, %lld chunks of %lld tokens (calibration PPL %.4f)\n", o.out.c_str(),
              im.entries.size(), (long long)r.chunks, (long long)o.p.ctx, r.ppl());
}

Register reg("imatrix", "Importance matrix from calibration text, for `quantize --imatrix` (llama-imatrix)",
             [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o, /*with_cache_type=*/false);
  sub.add_option("-f,--file", o->file, "calibration UTF-8 text (encoded with the model's tokenizer, BOS first)");
  sub.add_option("--tokens", o->tokens, "calibration token file from `hymba tokenize` instead of text");
  sub.add_option("-o,--out", o->out, "output file (safetensors; replaced atomically)");
  sub.add_option("-c,--ctx", o->p.ctx, "tokens per chunk (default 512)");
  sub.add_option("--chunks", o->p.max_chunks, "use at most this many chunks (default all)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
