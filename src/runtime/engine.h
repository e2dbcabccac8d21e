// A loaded model ready to run sequences: checkpoint + forward + the shared meta-token prefix.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/adapter.h"
#include "model/hymba.h"
#include "model/weights.h"

namespace hymba {

struct EngineOptions {
  DType cache_dtype = DType::BF16;  // K/V storage (--cache-type)
  int64_t max_chunk = 512;          // prefill rows per forward (bounds activation memory)
  bool use_prefix = true;           // share the meta-token prefix (false: recompute per sequence)
  // Block-quantize the linear layers at load (--quantize): DType::Q8 or DType::Q4_0; F32 = no
  // (the weights as stored, which may already be quantized: `hymba quantize`).
  DType quantize = DType::F32;
  std::string lora;                 // PEFT adapter folder applied beside the base (--lora), or ""
  float lora_scale = 1.0f;          // multiplies the adapter's lora_alpha / r (--lora DIR:scale)
  LoadOptions io;                   // --mmap / --no-mmap / --mlock (src/io/safetensors.h)
};

class Engine {
 public:
  static std::unique_ptr<Engine> load(const std::string& dir, const EngineOptions& opts = {});
  Engine(std::unique_ptr<Checkpoint> ckpt, const EngineOptions& opts);

  const Config& config() const { return model_.config(); }
  HymbaModel& model() { return model_; }
  const EngineOptions& options() const { return opts_; }
  const std::string& dir() const { return dir_; }

  // A new sequence positioned after the meta tokens.
  SequenceState new_sequence();

  // Feeds tokens[i] to seqs[i] (any lengths, 0 allowed), in chunks of at most max_chunk rows in
  // total. For each sequence returns the logits of its last fed token in last_logits[i*V..], and,
  // if all_logits is non-null, the logits of every fed token (all_logits[i] = [n_i, V]).
  void eval(std::span<SequenceState* const> seqs, std::span<const std::vector<int32_t>> tokens,
            std::vector<float>* last_logits, std::vector<std::vector<float>>* all_logits = nullptr);

  // Convenience for one sequence: returns the last token's logits [V].
  std::vector<float> eval_one(SequenceState& s, const std::vector<int32_t>& tokens);

  // Identifies what a saved sequence state is valid for: the weights (through the meta-token
  // prefix and a few weight vectors), the dimensions, --quantize and --cache-type.
  uint64_t model_tag() const;

 private:
  std::string dir_;
  std::unique_ptr<Checkpoint> ckpt_;
  HymbaModel model_;
  EngineOptions opts_;
  std::shared_ptr<const SequenceState> prefix_;
  std::unique_ptr<AdapterSet> adapter_;
};

}  // namespace hymba
