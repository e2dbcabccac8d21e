// A PEFT adapter folder (hymba generate/server/merge --lora DIR): adapter_config.json, then a
// "\n@@\n" line, then adapter_model.safetensors, loaded against a base of
// tests/configs/tiny-hymba.json (its shapes, and meta tokens that modules_to_save replaces).
// An adapter that loads must match the base tensor by tensor, with every view inside its arena.
#include <cmath>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "model/adapter.h"

using namespace hymba;

namespace {
struct Base {
  Config c = load_config(fuzz::source_dir() + "/tests/configs/tiny-hymba.json");
  Weights w;
  float dummy = 0;
  std::vector<float> meta = std::vector<float>(size_t(c.num_memory_tokens * c.hidden_size), 0.5f);
  Base() {
    w.meta = meta.data();
    const int64_t H = c.hidden_size, D = c.d_inner, N = c.mamba_d_state, R = c.dt_rank, I = c.intermediate_size;
    auto m = [&](int64_t r, int64_t k) { return MatView{&dummy, DType::F32, r, k, nullptr}; };
    for (const LayerPlan& p : make_layer_plan(c)) {
      LayerWeights L;
      L.in_proj = m(p.in_proj_rows, H);
      if (p.has_ssm) L.x_proj = m(R + 2 * N, D), L.dt_proj = m(D, R);
      L.out_proj = m(H, D);
      if (I > 0) L.gate = m(I, H), L.up = m(I, H), L.down = m(H, I);
      w.layers.push_back(L);
    }
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Base base;
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t at = in.find("\n@@\n");
  if (at == std::string::npos) return 0;
  fuzz::put_file("adapter_config.json", in.data(), at);
  fuzz::put_file("adapter_model.safetensors", in.data() + at + 4, in.size() - at - 4);
  AdapterSet a;
  try {
    a = load_peft_adapter(fuzz::scratch(), base.c, base.w);
  } catch (const Error&) {
    return 0;
  }
  fuzz::require(a.cfg.rank >= 1 && std::isfinite(a.cfg.scale()), "a rank and a finite scale");
  fuzz::require(!a.tensors.empty(), "at least one tensor");
  for (const AdapterTensor& t : a.tensors) {
    fuzz::require(t.offset >= 0 && t.size >= 0 && size_t(t.offset + t.size) <= a.data.size(), "tensors inside the arena");
    for (int64_t i = 0; i < t.size; ++i) fuzz::require(std::isfinite(a.data[size_t(t.offset + i)]), "finite values");
    if (t.kind == 'M') {  // trained meta tokens (modules_to_save)
      fuzz::require(t.shape == std::vector<int64_t>{base.c.num_memory_tokens, base.c.hidden_size}, "meta tokens [M, H]");
      continue;
    }
    const MatView& W = slot_matrix(base.w.layers[size_t(t.layer)], t.slot);
    const std::vector<int64_t> want = t.kind == 'A'   ? std::vector<int64_t>{a.cfg.rank, W.cols}
                                      : t.kind == 'B' ? std::vector<int64_t>{W.rows, a.cfg.rank}
                                                      : std::vector<int64_t>{W.rows};
    fuzz::require(t.shape == want, "shapes of the base");
    fuzz::require(t.kind != 'm' || a.cfg.dora, "magnitudes only with use_dora");
    const LoraView& v = a.view.layers[size_t(t.layer)][size_t(t.slot)];
    fuzz::require(v.A && v.B && (!a.cfg.dora || v.magnitude) && v.rank == a.cfg.rank, "complete views");
  }
  return 0;
}
