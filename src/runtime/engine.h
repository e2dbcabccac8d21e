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
  // More adapters a caller picks per sequence (server --lora NAME=DIR[:scale]): each is used
  // instead of `lora` (not on top of it), over the same base weights.
  struct NamedAdapter {
    std::string name, dir;
    float scale = 1.0f;
  };
  std::vector<NamedAdapter> adapters;
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

  // Which adapter a sequence runs with: 0 = the default (the base alone, or `lora`), i >= 1 =
  // options().adapters[i - 1]. A sequence must be fed with the variant it was made with.
  int num_variants() const { return int(variants_.size()); }

  // A new sequence positioned after the meta tokens (computed through the variant's adapter).
  SequenceState new_sequence(int variant = 0);

  // Feeds tokens[i] to seqs[i] (any lengths, 0 allowed), in chunks of at most max_chunk rows in
  // total. For each sequence returns the logits of its last fed token in last_logits[i*V..], and,
  // if all_logits is non-null, the logits of every fed token (all_logits[i] = [n_i, V]).
  void eval(std::span<SequenceState* const> seqs, std::span<const std::vector<int32_t>> tokens,
            std::vector<float>* last_logits, std::vector<std::vector<float>>* all_logits = nullptr,
            int variant = 0);

  // Convenience for one sequence: returns the last token's logits [V].
  std::vector<float> eval_one(SequenceState& s, const std::vector<int32_t>& tokens, int variant = 0);

  // Identifies what a saved sequence state is valid for: the weights (through the meta-token
  // prefix and a few weight vectors), the dimensions, --quantize and --cache-type, and the
  // variant's adapter (its tensors and scale).
  uint64_t model_tag(int variant = 0) const;

 private:
  std::string dir_;
  std::unique_ptr<Checkpoint> ckpt_;
  HymbaModel model_;
  EngineOptions opts_;
  struct Variant {
    std::unique_ptr<AdapterSet> adapter;  // null: the base alone
    float scale = 1.0f;
    std::shared_ptr<const SequenceState> prefix;
    std::vector<std::vector<float>> dora_norms;  // this adapter's, kept across switches
  };
  void select(int variant);  // points the model at the variant's adapter
  std::vector<Variant> variants_;
  int current_ = -1;
};

}  // namespace hymba
