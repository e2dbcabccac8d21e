// A loaded model ready to run sequences: checkpoint + forward + the shared meta-token prefix.
#pragma once
#include <atomic>
#include <deque>
#include <map>
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
  // With a 4-bit `quantize`: weight the rounding by this importance matrix (--imatrix; null = no).
  std::shared_ptr<const ImportanceMatrix> imatrix;
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
  int num_variants() const { return n_variants_.load(); }  // any thread (mix_variant adds)

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

  // Mixes of the loaded adapters (llama-server's per-request "lora": [{"id", "scale"}]). Ids are
  // the load order: the unnamed `lora` first (if any), then options().adapters. A mix applies
  // Σ scale_i · delta_i over the base (each adapter's delta at its lora_alpha / r; scale 0 =
  // off): LoRA adapters are concatenated along the rank with the scales folded into B, so the
  // result equals the sum exactly. A DoRA adapter, or one with trained meta tokens, is not
  // additive: it can only be used alone (at any scale).
  using LoraMix = std::vector<std::pair<int, float>>;
  struct AdapterInfo {
    std::string name, dir;  // name "" for the unnamed one
    float scale = 1.0f;     // the load-time scale (--lora DIR:scale)
    bool dora = false, meta = false;  // DoRA; trains the meta tokens (both not additive)
  };
  const std::vector<AdapterInfo>& adapters() const { return adapter_info_; }
  // Throws an Error naming the problem (unknown id, a non-additive adapter mixed with others).
  // Reads load-time data only: safe from any thread.
  void check_mix(const LoraMix& m) const;
  // The variant of a mix (an existing one when it matches, else made once and kept). Runs the
  // meta tokens through it: call it from the thread that runs this engine.
  int mix_variant(const LoraMix& m);

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
  int add_variant(std::unique_ptr<AdapterSet> a, float scale);
  // A deque: the model keeps pointers to a variant's DoRA norms across later additions.
  std::deque<Variant> variants_;
  std::atomic<int> n_variants_{0};
  std::vector<AdapterInfo> adapter_info_;
  std::vector<int> adapter_variant_;        // adapter id -> its variant at the load-time scale
  std::map<std::vector<std::pair<int, float>>, int> mixes_;  // normalised mix -> variant
  int current_ = -1;
};

}  // namespace hymba
