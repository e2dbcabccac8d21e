// hymba quantize -m DIR -o OUT --type q8_0|q4_0|q4_k: a model folder with block-quantized linear
// layers (src/ops/quant.h) that every command loads like any other, without conversion at start.
// The matrices are U8 tensors named as in the source; the metadata "hymba.quant.<name>" names
// each one's format and config.json records the type ("quantization_config"). The folder is
// built next to OUT and renamed into place at the end; an existing OUT is refused.
// hymba quantize --report -m DIR -f TEXT --type q8_0,q4_0,q4_k: the quality of each format on held-out
// text against the model as stored (src/eval/quant_quality.h), without writing anything.
// --imatrix FILE (`hymba imatrix`): the 4-bit formats weight their rounding by it (model/imatrix.h).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "eval/quant_quality.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "ops/quant.h"
#include "runtime/tokenizer.h"
#include "train/data.h"

namespace hymba::cli {
namespace {

namespace fs = std::filesystem;

struct Opts {
  std::string model, out, type;
  int threads = 0;
  bool report = false, json = false;
  std::string file, tokens, imatrix;
  PerplexityOptions p{256, 0, false};
};

std::vector<DType> parse_types(const std::string& s) {
  std::vector<DType> v;
  size_t i = 0;
  while (i <= s.size()) {
    const size_t j = std::min(s.find(',', i), s.size());
    DType t;
    HYMBA_CHECK(quant_from_name(s.substr(i, j - i), &t),
                "--type must be q8_0, q4_0 or q4_k, or a comma-separated list with --report (got '" + s + "')");
    v.push_back(t);
    i = j + 1;
  }
  return v;
}

// The quality table: each format at load (the same rule and bytes as its quantized folder)
// against the model as stored.
void report(const Opts& o, const std::vector<DType>& types) {
  const std::string dir = o.model.empty() ? default_model_dir() : o.model;
  const std::vector<int32_t> ids = read_eval_tokens(dir, o.file, o.tokens);
  EngineOptions eo;
  eo.cache_dtype = DType::F32;
  auto base = Engine::load(dir, eo);
  check_token_ids(ids, base->config().vocab_size);
  nlohmann::json rows = nlohmann::json::array();
  if (!o.json)
    std::printf("| format | bits/weight (quantized matrices) | PPL | PPL as stored | ΔPPL | mean KL | top-1 agreement |\n"
                "|---|---|---|---|---|---|---|\n");
  std::shared_ptr<const ImportanceMatrix> im;
  if (!o.imatrix.empty()) {
    HYMBA_CHECK(std::any_of(types.begin(), types.end(), [](DType t) { return t != DType::Q8; }),
                "--imatrix weights 4-bit rounding: --type must include q4_0 or q4_k");
    im = std::make_shared<const ImportanceMatrix>(ImportanceMatrix::load(o.imatrix));
  }
  // Each format as is, and with the importance matrix (4-bit formats, --imatrix) right after it.
  std::vector<std::pair<DType, bool>> rows_todo;
  for (DType t : types) {
    rows_todo.push_back({t, false});
    if (im && t != DType::Q8) rows_todo.push_back({t, true});
  }
  for (auto [t, weighted] : rows_todo) {
    eo.quantize = t;
    eo.imatrix = weighted ? im : nullptr;
    auto q = Engine::load(dir, eo);
    const QuantQuality r = compare_models(*base, *q, ids, o.p);
    const double bits = 8.0 * double(quant_matrix_bytes(t, 1, 256)) / 256.0;
    const std::string name = std::string(quant_name(t)) + (weighted ? "+imatrix" : "");
    rows.push_back({{"type", quant_name(t)}, {"imatrix", weighted}, {"bits_per_weight", bits}, {"ppl", r.test.ppl()},
                    {"ppl_base", r.base.ppl()}, {"ppl_delta", r.test.ppl() - r.base.ppl()},
                    {"mean_kl", r.mean_kl()}, {"top1_agreement", r.top1()}, {"scored_tokens", r.base.scored}});
    if (!o.json)
      std::printf("| %s | %.2f | %.4f | %.4f | %+.4f | %.6f | %.4f |\n", name.c_str(), bits, r.test.ppl(),
                  r.base.ppl(), r.test.ppl() - r.base.ppl(), r.mean_kl(), r.top1());
  }
  if (o.json)
    std::printf("%s\n", nlohmann::json({{"model", dir}, {"file", o.file.empty() ? o.tokens : o.file},
                                        {"ctx", o.p.ctx}, {"rows", rows}}).dump(2).c_str());
  else
    std::printf("%s, %s: %lld tokens, chunks of %lld, second half of each scored\n", dir.c_str(),
                (o.file.empty() ? o.tokens : o.file).c_str(), (long long)ids.size(), (long long)o.p.ctx);
}

bool is_weight_file(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".safetensors") || ends(".safetensors.index.json");
}

void run(const Opts& o) {
  apply_threads(o.threads);
  const auto types = parse_types(o.type);
  if (o.report) return report(o, types);
  HYMBA_CHECK(types.size() == 1, "--type: one format per quantized folder (lists are for --report)");
  const DType type = types[0];
  HYMBA_CHECK(!o.out.empty(), "-o OUT is required (or --report)");
  const std::string src = o.model.empty() ? default_model_dir() : o.model;
  HYMBA_CHECK(!fs::exists(o.out), "-o " + o.out + " already exists; choose a new folder (nothing is overwritten)");
  const double t0 = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();

  // mmap: each source matrix is read once, quantized and its pages dropped.
  auto ck = load_checkpoint(src, {.mmap = true, .mlock = false});
  for (auto& [name, t] : ck->file->tensors())
    HYMBA_CHECK(t.dtype != DType::U8, "-m " + src + " is already quantized (tensor '" + name + "')");
  const auto im = o.imatrix.empty() ? nullptr : load_imatrix(o.imatrix, type);
  const int nq = quantize_weights(*ck, type, im.get());

  std::map<std::string, std::string> meta = {{"format", "pt"}, {"hymba.quantization", quant_name(type)}};
  std::vector<TensorOut> outs;
  std::map<std::string, const MatView*> quantized;
  for (auto& [name, m] : named_matrices(ck->weights))
    if (is_block_quant(m->dtype)) quantized[name] = m;
  size_t bytes_in = 0, bytes_out = 0;
  auto add_quantized = [&](const std::string& name, const MatView& m) {
    const size_t b = quant_matrix_bytes(m.dtype, m.rows, m.cols);
    outs.push_back({name, DType::U8, {m.rows, int64_t(b / size_t(m.rows))}, m.data});
    meta[kQuantMetaPrefix + name] = quant_name(m.dtype);
    bytes_out += b;
  };
  for (auto& [name, t] : ck->file->tensors()) {
    bytes_in += t.nbytes;
    auto q = quantized.find(name);
    if (q != quantized.end()) {
      add_quantized(name, *q->second);
      quantized.erase(q);
    } else {
      outs.push_back({name, t.dtype, t.shape, t.data});  // as stored
      bytes_out += t.nbytes;
    }
  }
  for (auto& [name, m] : quantized) add_quantized(name, *m);  // a tied head's own copy

  // Build the folder beside OUT, then rename it into place.
  const fs::path out = fs::absolute(o.out).lexically_normal();
  const fs::path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(tmp, ec);
  HYMBA_CHECK(!ec, "cannot create " + tmp.string() + ": " + ec.message());
  try {
    write_safetensors((tmp / "model.safetensors").string(), outs, meta);
    for (const auto& e : fs::directory_iterator(src)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || is_weight_file(name)) continue;
      if (name == "config.json") {
        auto j = nlohmann::json::parse(read_file(e.path().string()));
        j["quantization_config"] = {{"quant_method", "hymba"}, {"weights", quant_name(type)},
                                    {"source", fs::absolute(src).lexically_normal().string()}};
        if (im) {
          auto& ji = j["quantization_config"]["imatrix"];
          ji["file"] = fs::absolute(o.imatrix).lexically_normal().string();
          for (const char* k : {"dataset", "chunks", "chunk_size"}) ji[k] = im->info_of(k);
        }
        write_file_atomic((tmp / name).string(), j.dump(2) + "\n");
      } else {
        fs::copy_file(e.path(), tmp / name);
      }
    }
    fs::rename(tmp, out);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() - t0;
  std::printf("wrote %s: %s%s, %d matrices quantized, %.1f MiB -> %.1f MiB (%.2fx) in %.1f s\n",
              o.out.c_str(), quant_name(type), im ? " with the importance matrix" : "", nq, double(bytes_in) / 1048576.0,
              double(bytes_out) / 1048576.0, double(bytes_out) / double(bytes_in), sec);
}

Register reg("quantize", "Write a model folder with 8- or 4-bit block-quantized linear layers", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "source model folder (default: the bundled model)");
  sub.add_option("-o,--out", o->out, "output folder (must not exist)");
  sub.add_option("--type", o->type, "q8_0 (8-bit blocks of 32, F32 scales) , q4_0 (llama.cpp's Q4_0) or q4_k "
                                    "(llama.cpp's Q4_K); with --report a list, e.g. q8_0,q4_0,q4_k")->required();
  sub.add_option("--imatrix", o->imatrix, "importance matrix from `hymba imatrix` weighting the 4-bit rounding "
                                          "(q4_0, q4_k); with --report adds each 4-bit format with it");
  sub.add_flag("--report", o->report, "measure each format's quality on held-out text (-f) instead of writing");
  sub.add_option("-f,--file", o->file, "with --report: held-out UTF-8 text");
  sub.add_option("--tokens", o->tokens, "with --report: held-out token file (`hymba tokenize`'s val.tok)");
  sub.add_option("-c,--ctx", o->p.ctx, "with --report: tokens per chunk (default 256)");
  sub.add_option("--chunks", o->p.max_chunks, "with --report: at most this many chunks (default all)");
  sub.add_flag("--json", o->json, "with --report: print JSON");
  sub.add_option("-t,--threads", o->threads, "threads (default: all cores)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
