// hymba imatrix: llama.cpp's `llama-imatrix` for Hymba (src/model/imatrix.h): runs the model over
// calibration text (chunks of --ctx tokens as `hymba perplexity` cuts them) and writes each linear
// layer's mean squared input per column, for `hymba quantize --imatrix`. Calibrate on text like
// what the model will see, not on the text you measure the quantized model with.
// The file is rewritten (atomically) every --output-frequency chunks, so an interrupted run keeps
// its chunks and `--resume` continues it; --in-file adds earlier files' sums (llama-imatrix's).
#include <charconv>
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
  std::vector<std::string> in_files;
  int64_t every = 10;
  bool resume = false;
  PerplexityOptions p;
};

// The "chunks" metadata of an imatrix file as a count.
int64_t chunks_of(const ImportanceMatrix& im, const std::string& file) {
  const std::string v = im.info_of("chunks");
  int64_t n = -1;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  HYMBA_CHECK(ec == std::errc() && end == v.data() + v.size() && n >= 0,
              "imatrix " + file + ": metadata hymba.imatrix.chunks '" + v + "' is not a chunk count");
  return n;
}

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(!o.out.empty(), "-o FILE is required (where to write the importance matrix)");
  HYMBA_CHECK(!std::filesystem::is_directory(o.out), "-o " + o.out + " is a folder; give a file name");
  HYMBA_CHECK(o.every > 0, "--output-frequency must be positive");
  HYMBA_CHECK(!(o.resume && !o.in_files.empty()), "--resume continues one run; combine files without it (--in-file)");
  const std::string dataset = o.file.empty() ? o.tokens : o.file;
  PerplexityOptions p = o.p;
  ImportanceMatrix im;
  if (std::filesystem::exists(o.out)) {
    HYMBA_CHECK(o.resume, "-o " + o.out + " exists; --resume continues it, or choose another name (nothing is overwritten)");
    im = ImportanceMatrix::load(o.out);
    HYMBA_CHECK(im.info_of("dataset") == dataset && im.info_of("chunk_size") == std::to_string(p.ctx),
                "--resume: " + o.out + " was collected from " + im.info_of("dataset") + " in chunks of " +
                    im.info_of("chunk_size") + ", not " + dataset + " in chunks of " + std::to_string(p.ctx));
    p.first_chunk = chunks_of(im, o.out);
  }
  int64_t merged_chunks = 0;
  for (const auto& f : o.in_files) {
    const ImportanceMatrix other = ImportanceMatrix::load(f);
    im.merge(other);
    merged_chunks += chunks_of(other, f);
  }
  const auto [eng, ids, dir] = load_eval_input(o, o.file, o.tokens);
  const int64_t chunks = perplexity_chunks(int64_t(ids.size()), p);
  std::fprintf(stderr, "imatrix: %zu tokens, chunks %lld..%lld of %lld tokens\n", ids.size(), (long long)p.first_chunk,
               (long long)chunks - 1, (long long)p.ctx);
  auto save = [&](int64_t done) {
    im.info = {{"dataset", dataset}, {"chunks", std::to_string(done)}, {"chunk_size", std::to_string(p.ctx)}};
    if (merged_chunks) im.info["merged_chunks"] = std::to_string(merged_chunks);
    im.save(o.out);
  };
  const auto r = collect_imatrix(*eng, ids, p, &im, [&](const PerplexityResult& x) {
    std::fprintf(stderr, "[%lld]%.4f,", (long long)(p.first_chunk + x.chunks), x.ppl());
    std::fflush(stderr);
    if (x.chunks % o.every == 0) save(p.first_chunk + x.chunks);
  });
  std::fprintf(stderr, "\n");
  save(p.first_chunk + r.chunks);
  std::printf("wrote %s: %zu matrices, %lld chunks of %lld tokens (calibration PPL %.4f over chunks %lld..%lld)\n",
              o.out.c_str(), im.entries.size(), (long long)(p.first_chunk + r.chunks), (long long)p.ctx, r.ppl(),
              (long long)p.first_chunk, (long long)chunks - 1);
}

Register reg("imatrix", "Importance matrix from calibration text, for `quantize --imatrix` (llama-imatrix)",
             [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o, /*with_cache_type=*/false);
  sub.add_option("-f,--file", o->file, "calibration UTF-8 text (encoded with the model's tokenizer, BOS first)");
  sub.add_option("--tokens", o->tokens, "calibration token file from `hymba tokenize` instead of text");
  sub.add_option("-o,--out", o->out, "output file (safetensors, written atomically; must not exist without --resume)");
  sub.add_option("-c,--ctx", o->p.ctx, "tokens per chunk (default 512)");
  sub.add_option("--chunks", o->p.max_chunks, "use at most this many chunks (default all)");
  sub.add_option("--output-frequency", o->every, "rewrite -o every N chunks (default 10), so an interrupted run keeps them");
  sub.add_flag("--resume", o->resume, "continue the run whose partial -o exists (same text and --ctx)");
  sub.add_option("--in-file", o->in_files, "add this imatrix's sums first (repeatable; combines runs)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
