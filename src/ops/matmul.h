// Linear layers: the one matrix-multiply used by inference and training.
#pragma once
#include <cstdint>

#include "base/dtype.h"

namespace hymba {

// A weight matrix W[rows, cols] in PyTorch nn.Linear layout (out_features x in_features),
// row-major, in F32, BF16, F16, Q8 (int8 data + `scales`) or Q4_0 / Q4_K (blocks), src/ops/quant.h
// (cols a multiple of the block). Not owned.
struct MatView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const float* scales = nullptr;  // Q8 only: [rows, cols / kQ8Block]
  // Q4_0 only: the blocks in the x8 layout (rows interleaved in tiles of 8, repack_q4_0x8 in
  // src/ops/quant.h), as the loader stores Q4_0 matrices where matmul_q4_0x8_preferred().
  bool x8 = false;
};

// out[M, N] = in[M, K] · Wᵀ (+ bias[N] if bias) ; N = W.rows, K = W.cols.
// With accumulate, out += instead of =. BF16/F16 weights are widened on the fly (activations stay
// F32); Q8/Q4_0 weights multiply 8-bit activations (quantize_act_q8) in integers. Small M
// (decode) runs a bandwidth-bound GEMV; larger M BLAS sgemm, or for Q8/Q4_0 an int8 GEMM, or for
// BF16 on AVX-512 CPUs a packed GEMM (on AMD with activations rounded to bf16; see MatmulPath).
// Threaded internally; must not be called from inside an OpenMP parallel region.
void matmul_forward(float* out, const float* in, const MatView& W, const float* bias, int64_t M,
                    bool accumulate = false);

// out0 = in · W0ᵀ and out1 = in · W1ᵀ (two matrices reading one input, as the MLP's gate and up),
// the same values as two matmul_forward calls. At decode (the GEMV path, W0 and W1 of one dtype
// and width) the input is quantized once and both run in one parallel region.
void matmul_forward2(float* out0, float* out1, const float* in, const MatView& W0, const MatView& W1,
                     int64_t M);

// Backward of matmul_forward with F32 weights (training). Each gradient pointer may be null.
// dinp[M, K] += dout[M, N] · W ;  dW[N, K] += doutᵀ · inp ;  dbias[N] += Σ_m dout[m, :]
// With accumulate false dinp is overwritten (=; sgemm's beta 0) and needs no zero-fill; the
// parameter gradients always add.
void matmul_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp,
                     const float* W, int64_t M, int64_t N, int64_t K, bool accumulate = true);

// Row `row` of W widened to F32 (embedding lookup from a possibly bf16 table).
void matrow_to_f32(float* dst, const MatView& W, int64_t row);

// Which kernel matmul_forward uses: Auto picks GEMV for M <= matmul_gemv_max_m(W.dtype), else
// BLAS: the int8 GEMM for Q8/Q4_0 weights; for BF16 weights on AVX-512 (Highway's AVX3_DL target)
// a packed GEMM, with vdpbf16ps on activations rounded to bf16 where that instruction out-runs the
// F32 FMA (AMD; HYMBA_BF16_GEMM=1 forces it where the CPU has AVX512-BF16), else with F32 FMAs on
// the weights widened while packed (Intel; HYMBA_BF16_GEMM=0 forces it); on other targets the
// weights widened to F32 for OpenBLAS sgemm. Sgemm forces that widen + sgemm path (= Blas for the
// other dtypes); Bf16Dot / Bf16F32 force the vdpbf16ps / F32 packed kernel where it exists (else
// as Blas / Sgemm). Forcing a path is for tests and benchmarks; all give the same result up to
// rounding (and the bf16 rounding of the activations under vdpbf16ps).
enum class MatmulPath { Auto, Gemv, Blas, Sgemm, Bf16Dot, Bf16F32 };
void matmul_forward_path(MatmulPath path, float* out, const float* in, const MatView& W,
                         const float* bias, int64_t M, bool accumulate = false);
// Largest M that Auto sends to the GEMV kernel (crossover measured, see matmul.cpp).
int64_t matmul_gemv_max_m(DType t);
// The kernel that a path's BF16 GEMM (M above the GEMV's) runs on this CPU and dispatched target.
enum class Bf16Kernel { Sgemm, F32, Dot };
Bf16Kernel matmul_bf16_kernel(MatmulPath path);
// True where the Blas path of BF16 weights is the vdpbf16ps GEMM, i.e. rounds its activations to
// bf16 (see above).
bool matmul_bf16_gemm();
// True where the dispatched target's decode GEMV is faster on Q4_0 in the x8 layout than on the
// plain one (AVX2; AVX3_DL's 512-bit kernel reads both at the same rate, measured on an Emerald
// Rapids). Every path reads the x8 layout on every target, with the plain layout's bits.
bool matmul_q4_0x8_preferred();

}  // namespace hymba
