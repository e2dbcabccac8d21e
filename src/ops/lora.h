// Low-rank adapters beside a frozen linear layer, computed as Hugging Face PEFT computes them:
//   LoRA (Hu et al. 2021):  y = W x + b + s·B(A x)
//   DoRA (Liu et al. 2024): y = b + m / ‖W + s·B·A‖ ⊙ (W x + s·B(A x))
// with s = lora_alpha / r (times a user scale) and ‖·‖ the L2 norm of each output row of the
// [out, in] weight (the paper's "column" norm of Wᵀ). The DoRA norm is DETACHED, as PEFT does
// and as the DoRA paper §4.3 recommends: it is recomputed from the current A, B every forward
// but no gradient flows through it (so dL/dA, dL/dB treat it as a constant; dL/dm is exact).
// The base weight W is only ever read through matmul_forward / row by row (bf16, f16, Q8 bases
// stay as they are); the adapter matrices are F32.
#pragma once
#include <cstdint>

#include "ops/matmul.h"

namespace hymba {

struct LoraView {
  const float* A = nullptr;          // [r, in]   lora_A.weight
  const float* B = nullptr;          // [out, r]  lora_B.weight
  const float* magnitude = nullptr;  // [out]     lora_magnitude_vector (DoRA only)
  int64_t rank = 0;
  float scale = 0.0f;  // lora_alpha / r
  bool active() const { return A != nullptr; }
  bool dora() const { return magnitude != nullptr; }
};

// Gradients of one adapter (each may be null: frozen).
struct LoraGrad {
  float* A = nullptr;
  float* B = nullptr;
  float* magnitude = nullptr;
};

// norm[out] = ‖W[j,:] + s·B[j,:]·A‖₂ for every output row j (W widened one row at a time).
void dora_row_norms(float* norm, const MatView& W, const LoraView& a);

// out[M, N] (=, or += with accumulate) the adapted layer of in[M, K]. Without an active adapter
// this is exactly matmul_forward. DoRA needs norm = dora_row_norms(W, a). lora_in: what the
// adapter path reads instead of `in` (PEFT's lora_dropout(x), training), or null; with DoRA the
// DoRA part is computed on it as PEFT does: W·x + b + (m/n - 1) ⊙ W·d + m/n ⊙ s·B·A·d.
void adapted_forward(float* out, const float* in, const MatView& W, const float* bias,
                     const LoraView& a, const float* norm, int64_t M, bool accumulate = false,
                     const float* lora_in = nullptr);

// Backward of adapted_forward. dinp[M, K] += ; dbias[N] += ; the adapter's gradients += ; dW
// (F32 W only, full fine-tuning without adapters) +=. Each may be null. norm as in the forward.
// With lora_in (as in the forward), the adapter path's input gradient goes to dlora_in[M, K] +=
// instead of dinp (the caller maps it back through its dropout). With accumulate false dinp is
// overwritten (=) instead of added to.
void adapted_backward(float* dinp, float* dW, float* dbias, const LoraGrad& ga, const float* dout,
                      const float* inp, const MatView& W, const LoraView& a, const float* norm,
                      int64_t M, const float* lora_in = nullptr, float* dlora_in = nullptr,
                      bool accumulate = true);

// dinp[M, K] += dout[M, N] · W for W of any dtype (a frozen base): a block of rows is widened
// at a time, never the whole matrix.
void matview_backward_input(float* dinp, const float* dout, const MatView& W, int64_t M);

}  // namespace hymba
