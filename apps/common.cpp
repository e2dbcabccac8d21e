#include "common.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "base/error.h"
#include "io/files.h"
#include "ops/quant.h"
#include "runtime/tokenizer.h"
#include "train/data.h"
#include "ops/threads.h"

#ifndef HYMBA_DEFAULT_MODEL_DIR
#define HYMBA_DEFAULT_MODEL_DIR "models/hymba-kjv"
#endif

namespace hymba::cli {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string tok = s.substr(i, j - i);
    while (!tok.empty() && tok.front() == ' ') tok.erase(tok.begin());
    while (!tok.empty() && tok.back() == ' ') tok.pop_back();
    HYMBA_CHECK(!tok.empty(), "--ids: empty entry in '" + s + "'");
    char* end = nullptr;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    HYMBA_CHECK(end && *end == 0 && v >= INT32_MIN && v <= INT32_MAX,
                "--ids: '" + tok + "' is not an integer token id");
    ids.push_back(int32_t(v));
    i = j + 1;
  }
  HYMBA_CHECK(!ids.empty(), "--ids: no token ids given");
  return ids;
}

DType parse_cache_type(const std::string& s) {
  if (s == "bf16") return DType::BF16;
  if (s == "f16") return DType::F16;
  if (s == "f32") return DType::F32;
  fail("--cache-type must be bf16, f16 or f32 (got '" + s + "')");
}

DType parse_quantize(const std::string& s) {
  DType t;
  if (s == "none") return DType::F32;
  if (quant_from_name(s, &t)) return t;
  fail("--quantize must be none, q8_0 (q8), q4_0 or q4_k (got '" + s + "')");
}

std::string default_model_dir() {
  if (const char* e = std::getenv("HYMBA_MODEL"); e && *e) return e;
  // The bundled model, found next to the source tree the binary was built from, or relative to
  // the working directory.
  for (std::string d : {std::string(HYMBA_DEFAULT_MODEL_DIR), std::string("models/hymba-kjv")})
    if (std::filesystem::exists(d + "/config.json")) return d;
  fail("no model given: pass -m DIR (a Hugging Face Hymba folder) or set HYMBA_MODEL");
}

std::string ModelFlags::dir() const {
  if (model.empty()) return default_model_dir();
  namespace fs = std::filesystem;
  HYMBA_CHECK(fs::exists(model), "model folder " + model + " does not exist");
  HYMBA_CHECK(fs::is_directory(model), model + " is not a folder: -m takes the model's folder "
                                       "(config.json, model.safetensors, tokenizer.model)");
  HYMBA_CHECK(fs::exists(model + "/config.json"),
              "model folder " + model + " has no config.json (not a Hugging Face model folder)");
  return model;
}

void parse_lora(const std::string& s, std::string* dir, float* scale) {
  namespace fs = std::filesystem;
  *dir = s, *scale = 1.0f;
  const size_t colon = s.rfind(':');
  if (colon != std::string::npos && !fs::exists(s)) {
    const std::string num = s.substr(colon + 1);
    char* end = nullptr;
    const float v = std::strtof(num.c_str(), &end);
    HYMBA_CHECK(!num.empty() && end && *end == '\0' && std::isfinite(v),
                "--lora " + s + ": the part after ':' must be a number (DIR:scale)");
    *dir = s.substr(0, colon), *scale = v;
  }
  HYMBA_CHECK(fs::exists(fs::path(*dir) / "adapter_config.json"),
              "--lora " + *dir + ": no adapter_config.json there (a PEFT adapter folder)");
}

EngineOptions ModelFlags::engine_options() const {
  EngineOptions eo;
  eo.cache_dtype = parse_cache_type(cache_type);
  eo.quantize = parse_quantize(quantize);
  if (!lora.empty()) parse_lora(lora, &eo.lora, &eo.lora_scale);
  if (!imatrix.empty()) eo.imatrix = load_imatrix(imatrix, eo.quantize);
  eo.io.mmap = mmap || (eo.quantize != DType::F32 && !no_mmap);
  eo.io.mlock = mlock;
  HYMBA_CHECK(ubatch > 0, "--ubatch-size must be positive, got " + std::to_string(ubatch));
  eo.max_chunk = ubatch;
  return eo;
}

std::shared_ptr<const ImportanceMatrix> load_imatrix(const std::string& file, DType type) {
  HYMBA_CHECK(type == DType::Q4_0 || type == DType::Q4_K,
              "--imatrix weights 4-bit rounding: it needs --quantize/--type q4_0 or q4_k");
  return std::make_shared<const ImportanceMatrix>(ImportanceMatrix::load(file));
}

void add_model_flags(CLI::App& sub, ModelFlags& f, bool with_cache_type) {
  sub.add_option("-m,--model", f.model, "Hugging Face model folder (default: the bundled model)");
  if (with_cache_type) sub.add_option("--cache-type", f.cache_type, "K/V cache: bf16 (default), f16, f32");
  sub.add_option("--quantize", f.quantize, kQuantizeHelp);
  sub.add_option("--imatrix", f.imatrix, "with --quantize q4_0/q4_k: importance matrix from `hymba imatrix`");
  sub.add_option("--lora", f.lora, "PEFT LoRA/DoRA adapter folder, applied without merging; DIR:scale scales it");
  sub.add_option("-t,--threads", f.threads, "threads (default: all cores)");
  sub.add_flag("--mmap", f.mmap,
               "map the weight files (instant start, shared page cache) instead of reading them "
               "into huge-page memory (faster, steadier decode); default with --quantize");
  sub.add_flag("--no-mmap", f.no_mmap, "read the weight files into memory (the default without --quantize)");
  sub.add_flag("--mlock", f.mlock, "keep the weights locked in RAM (needs `ulimit -l`)");
  sub.add_option("--ubatch-size", f.ubatch,
                 "prompt tokens per forward pass (default " + std::to_string(f.ubatch) +
                     "): smaller needs less activation memory, larger prefills faster");
}

EvalInput load_eval_input(const ModelFlags& f, const std::string& file, const std::string& tokens) {
  EvalInput in;
  in.dir = f.dir();
  in.ids = read_eval_tokens(in.dir, file, tokens);
  EngineOptions eo = f.engine_options();
  eo.cache_dtype = DType::F32;
  in.eng = Engine::load(in.dir, eo);
  check_token_ids(in.ids, in.eng->config().vocab_size);
  return in;
}

void check_token_ids(const std::vector<int32_t>& ids, int64_t vocab) {
  for (int32_t id : ids)
    HYMBA_CHECK(id >= 0 && id < vocab, "token id " + std::to_string(id) + " is outside the model's vocabulary (" +
                                           std::to_string(vocab) + ")");
}

std::vector<int32_t> read_eval_tokens(const std::string& dir, const std::string& file,
                                      const std::string& tokens) {
  HYMBA_CHECK(file.empty() != tokens.empty(), "give exactly one of -f FILE or --tokens FILE.tok");
  if (!tokens.empty()) return TokenFile(tokens).read_all();
  const std::string text = read_file(file);
  HYMBA_CHECK(!text.empty(), file + ": empty file");
  return Tokenizer::load(dir)->encode(text, true);
}

void apply_threads(int n) {
  if (n > 0) set_num_threads(n);
}

}  // namespace hymba::cli
