// Low-rank adapters (LoRA / DoRA, src/ops/lora.h) on Hymba: where they attach (the seven linear
// layers of a decoder layer, named by their official module paths, spec §2), their storage, and
// their files in Hugging Face PEFT's format (adapter_config.json + adapter_model.safetensors):
//   base_model.model.model.layers.N.<module>.lora_A.weight          [r, in]
//   base_model.model.model.layers.N.<module>.lora_B.weight          [out, r]
//   base_model.model.model.layers.N.<module>.lora_magnitude_vector  [out]   (DoRA)
//   base_model.model.model.memory_tokens                             [M, H]  (trained meta tokens)
// Trained meta tokens follow PEFT's modules_to_save convention: the whole tensor is saved under
// base_model.model.<its path> and adapter_config.json lists "memory_tokens" in modules_to_save.
// (memory_tokens is a bare nn.Parameter in the official model, which PEFT's ModulesToSaveWrapper
// cannot wrap: a PEFT user copies it in by hand; README.md.)
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "ops/lora.h"

namespace hymba {

enum class Slot { InProj, XProj, DtProj, OutProj, Gate, Up, Down };
inline constexpr int kNumSlots = 7;

// Module path inside model.layers.N (e.g. "mamba.x_proj.0", "moe.experts.0.gate_proj").
const char* slot_module(Slot s);
// PEFT target_modules entry ("in_proj", "x_proj.0", "gate_proj", ...): matches the module by suffix.
const char* slot_target(Slot s);
// Slots from a comma list of in_proj,out_proj,x_proj,dt_proj,gate_proj,up_proj,down_proj
// (x_proj.0 / dt_proj.0 accepted), "mlp" = gate+up+down, "all" = every slot. Error names the
// unknown entry.
std::vector<Slot> parse_targets(const std::string& list);
// The base matrix of a slot (empty view when the layer has no such module).
const MatView& slot_matrix(const LayerWeights& w, Slot s);

// What HymbaModel reads (set_adapters): per layer, per slot; inactive views where none.
struct Adapters {
  std::vector<std::array<LoraView, kNumSlots>> layers;
};
struct AdapterGrads {
  std::vector<std::array<LoraGrad, kNumSlots>> layers;
};

struct AdapterConfig {
  int64_t rank = 8;
  double alpha = 16.0;  // PEFT's lora_alpha; scale = alpha / rank (alpha / √rank with rslora)
  bool dora = false;
  bool rslora = false;
  std::vector<Slot> targets;
  double dropout = 0.0;  // recorded as lora_dropout
  float scale() const;
};

struct AdapterTensor {
  std::string name;  // PEFT key
  std::vector<int64_t> shape;
  int layer = 0;
  Slot slot = Slot::InProj;
  char kind = 'A';  // 'A', 'B', 'm' (DoRA magnitude) or 'M' (meta tokens; layer -1)
  int64_t offset = 0, size = 0;
};

// Every adapter tensor in one F32 arena (+ a gradient arena of the same layout for training,
// allocated on demand) and the views over them.
struct AdapterSet {
  AdapterConfig cfg;
  std::vector<AdapterTensor> tensors;
  std::vector<float> data, grad;
  Adapters view;       // into data
  AdapterGrads gview;  // into grad (after enable_grad)
  const float* meta = nullptr;  // [M, H] meta tokens replacing the base's, or null (into data)
  float* gmeta = nullptr;       // their gradient (into grad, after enable_grad)
  void enable_grad();
  void bind();  // (re)points the views at data and grad
  void zero_grad();
  // Scales every adapter's s (the user's --lora DIR:scale).
  void set_user_scale(float s);
};

std::string adapter_key(int layer, Slot s, char kind);
inline constexpr const char* kMetaTokensKey = "base_model.model.model.memory_tokens";

// Adds the meta tokens to the adapter (a copy of the base's, to be trained).
void add_meta_tokens(AdapterSet& a, const Config& c, const Weights& base);

// The layout for `base` (only modules the layer has: x_proj/dt_proj need SSM heads, the MLP ones
// a non-zero intermediate size), zero-filled, views bound. B = 0 makes it the identity adapter.
AdapterSet adapter_layout(const Config& c, const Weights& base, const AdapterConfig& cfg);

// PEFT folder (or the adapter_config.json / .safetensors pair inside it). Checks peft_type LORA,
// the options we implement, every key and every shape against `base`; errors name the file and
// tensor. Tensors in F32/BF16/F16 are widened to F32.
AdapterSet load_peft_adapter(const std::string& dir, const Config& c, const Weights& base);
// Writes adapter_config.json and adapter_model.safetensors (F32) into dir, each atomically.
void save_peft_adapter(const AdapterSet& a, const std::string& dir,
                       const std::string& base_model_name = "");

}  // namespace hymba
