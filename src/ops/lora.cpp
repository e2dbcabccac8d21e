#include "ops/lora.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "ops/threads.h"

namespace hymba {

namespace {

MatView f32_view(const float* p, int64_t rows, int64_t cols) {
  MatView v;
  v.data = p, v.dtype = DType::F32, v.rows = rows, v.cols = cols;
  return v;
}

// u[M, r] = in[M, K] · Aᵀ
void lora_down(std::vector<float>& u, const float* in, const LoraView& a, int64_t M, int64_t K) {
  u.resize(size_t(M * a.rank));
  matmul_forward(u.data(), in, f32_view(a.A, a.rank, K), nullptr, M);
}

// z[M, N] = W·in + s·B(A·in) without bias (DoRA's un-normalised output).
void dora_inner(std::vector<float>& z, const float* in, const MatView& W, const LoraView& a,
                int64_t M) {
  const int64_t N = W.rows, K = W.cols;
  z.resize(size_t(M * N));
  matmul_forward(z.data(), in, W, nullptr, M);
  std::vector<float> u;
  lora_down(u, in, a, M, K);
  for (auto& v : u) v *= a.scale;
  matmul_forward(z.data(), u.data(), f32_view(a.B, N, a.rank), nullptr, M, /*accumulate=*/true);
}

}  // namespace

void dora_row_norms(float* norm, const MatView& W, const LoraView& a) {
  const int64_t N = W.rows, K = W.cols, r = a.rank;
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t j = 0; j < N; ++j) {
    matrow_to_f32(row.data(), W, j);
    for (int64_t q = 0; q < r; ++q) {
      const float b = a.scale * a.B[j * r + q];
      if (b == 0.0f) continue;
      const float* Aq = a.A + q * K;
      for (int64_t k = 0; k < K; ++k) row[size_t(k)] += b * Aq[k];
    }
    double s = 0.0;
    for (int64_t k = 0; k < K; ++k) s += double(row[size_t(k)]) * row[size_t(k)];
    norm[j] = float(std::sqrt(s));
  }
}

void adapted_forward(float* out, const float* in, const MatView& W, const float* bias,
                     const LoraView& a, const float* norm, int64_t M, bool accumulate,
                     const float* lora_in) {
  if (!a.active()) return matmul_forward(out, in, W, bias, M, accumulate);
  const int64_t N = W.rows, K = W.cols;
  if (!a.dora()) {
    matmul_forward(out, in, W, bias, M, accumulate);
    std::vector<float> u;
    lora_down(u, lora_in ? lora_in : in, a, M, K);
    for (auto& v : u) v *= a.scale;
    matmul_forward(out, u.data(), f32_view(a.B, N, a.rank), nullptr, M, /*accumulate=*/true);
    return;
  }
  HYMBA_CHECK(norm, "adapted_forward: DoRA needs the weight norms");
  std::vector<float> z;
  if (lora_in) {
    // PEFT (DoraLinearVariant.forward) with a dropout that is not the identity: the base output
    // on x, plus the DoRA part on d = dropout(x) with the base recomputed on it:
    //   y = W·x + b + (m/n - 1) ⊙ W·d + m/n ⊙ s·B·A·d = W·x + b + m/n ⊙ z(d) - W·d.
    matmul_forward(out, in, W, bias, M, accumulate);
    std::vector<float> wd(size_t(M * N));
    matmul_forward(wd.data(), lora_in, W, nullptr, M);
    dora_inner(z, lora_in, W, a, M);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < N; ++j) {
        const size_t i = size_t(m * N + j);
        out[i] += a.magnitude[j] / norm[j] * z[i] - wd[i];
      }
    return;
  }
  dora_inner(z, in, W, a, M);
  for (int64_t m = 0; m < M; ++m) {
    float* o = out + m * N;
    const float* zr = z.data() + m * N;
    for (int64_t j = 0; j < N; ++j) {
      const float y = a.magnitude[j] / norm[j] * zr[j] + (bias ? bias[j] : 0.0f);
      o[j] = accumulate ? o[j] + y : y;
    }
  }
}

void matview_backward_input(float* dinp, const float* dout, const MatView& W, int64_t M) {
  const int64_t N = W.rows, K = W.cols;
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (W.dtype == DType::F32)
    return matmul_backward(dinp, nullptr, nullptr, dout, nullptr, static_cast<const float*>(W.data),
                           M, N, K);
  ensure_threads_initialized();
  const int64_t nb = std::min<int64_t>(N, 256);
  std::vector<float> Wb(size_t(nb * K));
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t n = std::min(nb, N - n0);
    for (int64_t i = 0; i < n; ++i) matrow_to_f32(Wb.data() + i * K, W, n0 + i);
    // dinp[M, K] += dout[:, n0:n0+n] · Wb[n, K]  (dout read in place with its row stride N)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(K), int(n), 1.0f,
                dout + n0, int(N), Wb.data(), int(K), 1.0f, dinp, int(K));
  }
}

void adapted_backward(float* dinp, float* dW, float* dbias, const LoraGrad& ga, const float* dout,
                      const float* inp, const MatView& W, const LoraView& a, const float* norm,
                      int64_t M, const float* lora_in, float* dlora_in, bool accumulate) {
  const int64_t N = W.rows, K = W.cols;
  if (M <= 0) return;
  HYMBA_CHECK(!lora_in || dlora_in, "adapter dropout: the backward needs dlora_in");
  HYMBA_CHECK(!(lora_in && a.dora() && dW), "adapted_backward: DoRA dropout with a base gradient");
  HYMBA_CHECK(!dW || W.dtype == DType::F32, "adapted_backward: a weight gradient needs F32 weights");
  if (dbias)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) dbias[n] += dout[m * N + n];
  const float* W32 = W.dtype == DType::F32 ? static_cast<const float*>(W.data) : nullptr;
  // Only the plain F32 product can overwrite; every other path adds its parts into zeros.
  if (!accumulate && dinp && (a.active() || !W32)) std::memset(dinp, 0, size_t(M * K) * sizeof(float));
  if (!a.active()) {
    if (W32) matmul_backward(dinp, dW, nullptr, dout, inp, W32, M, N, K, accumulate);
    else if (dinp) matview_backward_input(dinp, dout, W, M);
    return;
  }
  // dz: gradient w.r.t. the un-normalised output (DoRA) or the output itself (LoRA).
  std::vector<float> dz(dout, dout + M * N);
  const bool dora_dropout = a.dora() && lora_in;
  if (a.dora()) {
    HYMBA_CHECK(norm, "adapted_backward: DoRA needs the weight norms");
    if (ga.magnitude) {  // dL/dm_j = Σ_t dout_tj · z_tj / ‖·‖_j (the norm is a constant; z of d with dropout)
      std::vector<float> z;
      dora_inner(z, lora_in ? lora_in : inp, W, a, M);
      for (int64_t j = 0; j < N; ++j) {
        double s = 0.0;
        for (int64_t m = 0; m < M; ++m) s += double(dout[m * N + j]) * z[size_t(m * N + j)];
        ga.magnitude[j] += float(s / norm[j]);
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < N; ++j) dz[size_t(m * N + j)] *= a.magnitude[j] / norm[j];
  }
  if (dora_dropout) {
    // y = W·x + m/n ⊙ z(d) - W·d: dx += dout·W; dd += (m/n ⊙ dout - dout)·W + the adapter's part.
    if (dinp) {
      matview_backward_input(dinp, dout, W, M);
      std::vector<float> g(dz);
      for (int64_t i = 0; i < M * N; ++i) g[size_t(i)] -= dout[i];
      matview_backward_input(dlora_in, g.data(), W, M);
    }
  } else if (dinp || dW) {
    if (W32) matmul_backward(dinp, dW, nullptr, dz.data(), inp, W32, M, N, K);
    else if (dinp) matview_backward_input(dinp, dz.data(), W, M);
  }
  // z += s·B·u, u = A·x:  dB += s·dzᵀ·u ; du = s·dz·B ; dA += duᵀ·x ; dx += du·A.
  // (x is lora_in when given: the adapter's own input.)
  const float* x = lora_in ? lora_in : inp;
  std::vector<float> u, du(size_t(M * a.rank), 0.0f);
  lora_down(u, x, a, M, K);
  for (auto& v : dz) v *= a.scale;
  matmul_backward(du.data(), ga.B, nullptr, dz.data(), u.data(), a.B, M, N, a.rank);
  matmul_backward(lora_in ? dlora_in : dinp, ga.A, nullptr, du.data(), x, a.A, M, a.rank, K);
}

}  // namespace hymba
