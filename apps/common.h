// Helpers shared by the CLI subcommands.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/dtype.h"
#include "runtime/engine.h"

namespace hymba::cli {

// "1,2,3" -> ids; throws hymba::Error on anything else (also on an empty list).
std::vector<int32_t> parse_ids(const std::string& s);
// "bf16" | "f16" | "f32" -> DType; throws otherwise.
DType parse_cache_type(const std::string& s);
// The options of every command that runs a model: -m, --cache-type, --quantize, -t. A command's
// Opts derives from it.
struct ModelFlags {
  std::string model, cache_type = "bf16", quantize = "none", lora, imatrix;
  int threads = 0;
  // How the weights get into memory (src/io/safetensors.h): read by default, mapped with --mmap
  // or with --quantize (the stored copy is then dropped as it is converted) unless --no-mmap.
  bool mmap = false, no_mmap = false, mlock = false;
  int64_t ubatch = EngineOptions{}.max_chunk;  // --ubatch-size: prompt rows per forward
  std::string dir() const;                // -m, else the default model
  EngineOptions engine_options() const;   // --cache-type, --quantize, --imatrix, --lora, --mmap, --mlock, --ubatch-size
};
// with_cache_type = false for commands that compute with an f32 cache (logits, perplexity).
void add_model_flags(CLI::App& sub, ModelFlags& f, bool with_cache_type = true);

// --quantize: "none" -> F32 (as stored), "q8"/"q8_0" -> Q8, "q4_0" -> Q4_0, "q4_k" -> Q4_K
// (EngineOptions::quantize).
DType parse_quantize(const std::string& s);
inline constexpr const char* kQuantizeHelp =
    "quantize the weights at load: none (as stored, default), q8_0 (alias q8: 8-bit blocks of 32, "
    "0.56x the bytes of bf16 per token), q4_0 (4-bit blocks of 32, 0.28x) or q4_k (llama.cpp's "
    "Q4_K: super-blocks of 256 with 6-bit sub-block scales and mins, 0.28x); `hymba quantize` "
    "writes such a model once";
// --imatrix FILE for a 4-bit `type` (a clear error for another type): the loaded importance matrix.
std::shared_ptr<const ImportanceMatrix> load_imatrix(const std::string& file, DType type);
// "DIR" or "DIR:scale" (--lora) -> folder and scale; the folder must hold a PEFT adapter.
void parse_lora(const std::string& s, std::string* dir, float* scale);
// The model folder to use when -m is not given: $HYMBA_MODEL, else the bundled default model.
std::string default_model_dir();
// Token ids of held-out text: -f FILE through the model's tokenizer (BOS first), or --tokens
// FILE.tok from `hymba tokenize`; exactly one must be given.
std::vector<int32_t> read_eval_tokens(const std::string& model_dir, const std::string& file,
                                      const std::string& tokens);
// The model of -m (flags as given, an f32 cache: scoring) and the token ids of -f FILE or --tokens
// FILE (read_eval_tokens), checked against its vocabulary.
struct EvalInput {
  std::unique_ptr<Engine> eng;
  std::vector<int32_t> ids;
  std::string dir;
};
EvalInput load_eval_input(const ModelFlags& f, const std::string& file, const std::string& tokens);
// Throws hymba::Error naming the first id outside [0, vocab).
void check_token_ids(const std::vector<int32_t>& ids, int64_t vocab);
// Sets the thread count (0 = all cores).
void apply_threads(int n);

}  // namespace hymba::cli
