// LoRA / DoRA beside a frozen linear layer (src/ops/lora.h) against a double-precision model of
// the same formulas, and the backward against central finite differences of that double model.
// The DoRA norm is detached (PEFT): finite differences w.r.t. A and B hold the norm at its
// forward value; w.r.t. the magnitude the norm does not move, so the gradient is the full one.
#include <gtest/gtest.h>

#include <limits>

#include "base/dtype.h"
#include "ops/lora.h"
#include "test_util.h"

namespace hymba {
namespace {

using test::fd_grad;
using test::norm_err;
using test::Rng;
using test::to_d;

struct Case {
  int64_t M = 3, N = 7, K = 5, r = 2;
  float s = 1.5f;
  std::vector<float> W, bias, A, B, mag, x, c;  // c: weights of the scalar loss Σ c ⊙ y
};

Case make(bool bf16_exact, uint64_t seed) {
  Rng g(seed);
  Case k;
  k.W = g.vec(size_t(k.N * k.K));
  if (bf16_exact)  // values a bf16 base stores exactly, so F32 and BF16 runs see the same W
    for (auto& v : k.W) v = bf16_to_f32(f32_to_bf16(v));
  k.bias = g.vec(size_t(k.N)), k.A = g.vec(size_t(k.r * k.K)), k.B = g.vec(size_t(k.N * k.r));
  k.mag = g.vec(size_t(k.N), 0.5f, 2.0f), k.x = g.vec(size_t(k.M * k.K)), k.c = g.vec(size_t(k.M * k.N));
  return k;
}

// Double model. norm_fixed: use these norms instead of recomputing (the detached norm).
std::vector<double> row_norms(const Case& k, const std::vector<double>& A, const std::vector<double>& B) {
  std::vector<double> n(size_t(k.N));
  for (int64_t j = 0; j < k.N; ++j) {
    double s = 0;
    for (int64_t i = 0; i < k.K; ++i) {
      double w = k.W[size_t(j * k.K + i)];
      for (int64_t q = 0; q < k.r; ++q) w += k.s * B[size_t(j * k.r + q)] * A[size_t(q * k.K + i)];
      s += w * w;
    }
    n[size_t(j)] = std::sqrt(s);
  }
  return n;
}
std::vector<double> model(const Case& k, const std::vector<double>& x, const std::vector<double>& A,
                          const std::vector<double>& B, const std::vector<double>* mag,
                          const std::vector<double>* norm_fixed) {
  const auto n = norm_fixed ? *norm_fixed : row_norms(k, A, B);
  std::vector<double> y(size_t(k.M * k.N));
  for (int64_t m = 0; m < k.M; ++m)
    for (int64_t j = 0; j < k.N; ++j) {
      double z = 0;
      for (int64_t i = 0; i < k.K; ++i) {
        double w = k.W[size_t(j * k.K + i)];
        for (int64_t q = 0; q < k.r; ++q) w += k.s * B[size_t(j * k.r + q)] * A[size_t(q * k.K + i)];
        z += w * x[size_t(m * k.K + i)];
      }
      y[size_t(m * k.N + j)] = (mag ? (*mag)[size_t(j)] / n[size_t(j)] * z : z) + k.bias[size_t(j)];
    }
  return y;
}
double loss(const Case& k, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += k.c[i] * y[i];
  return s;
}

void run(bool dora, DType wt) {
  const Case k = make(true, dora ? 7 : 8);
  std::vector<uint16_t> Wb(k.W.size());
  for (size_t i = 0; i < Wb.size(); ++i) Wb[i] = f32_to_bf16(k.W[i]);
  MatView W;
  W.data = wt == DType::F32 ? static_cast<const void*>(k.W.data()) : Wb.data();
  W.dtype = wt, W.rows = k.N, W.cols = k.K;
  LoraView a{k.A.data(), k.B.data(), dora ? k.mag.data() : nullptr, k.r, k.s};
  std::vector<float> norm(size_t(k.N));
  dora_row_norms(norm.data(), W, a);
  const auto nd = row_norms(k, to_d(k.A), to_d(k.B));
  EXPECT_LT(norm_err(norm, nd), 1e-6);

  // Forward, and accumulate mode.
  std::vector<float> y(size_t(k.M * k.N), 0.0f);
  adapted_forward(y.data(), k.x.data(), W, k.bias.data(), a, norm.data(), k.M);
  const auto md = to_d(k.mag);
  const auto yd = model(k, to_d(k.x), to_d(k.A), to_d(k.B), dora ? &md : nullptr, nullptr);
  EXPECT_LT(norm_err(y, yd), 1e-5);
  std::vector<float> y2(y.size(), 1.0f);
  adapted_forward(y2.data(), k.x.data(), W, k.bias.data(), a, norm.data(), k.M, true);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y2[i], y[i] + 1.0f, 1e-5);

  // Backward of Σ c ⊙ y.
  std::vector<float> dx(k.x.size(), 0.0f), dA(k.A.size(), 0.0f), dB(k.B.size(), 0.0f),
      dm(k.mag.size(), 0.0f), db(k.bias.size(), 0.0f);
  LoraGrad ga{dA.data(), dB.data(), dora ? dm.data() : nullptr};
  adapted_backward(dx.data(), nullptr, db.data(), ga, k.c.data(), k.x.data(), W, a, norm.data(), k.M);
  const std::vector<double>* fixed = dora ? &nd : nullptr;  // detached norm
  auto gx = fd_grad([&](const std::vector<double>& v) {
    return loss(k, model(k, v, to_d(k.A), to_d(k.B), dora ? &md : nullptr, fixed)); }, to_d(k.x));
  auto gA = fd_grad([&](const std::vector<double>& v) {
    return loss(k, model(k, to_d(k.x), v, to_d(k.B), dora ? &md : nullptr, fixed)); }, to_d(k.A));
  auto gB = fd_grad([&](const std::vector<double>& v) {
    return loss(k, model(k, to_d(k.x), to_d(k.A), v, dora ? &md : nullptr, fixed)); }, to_d(k.B));
  EXPECT_LT(norm_err(dx, gx), 1e-4);
  EXPECT_LT(norm_err(dA, gA), 1e-4);
  EXPECT_LT(norm_err(dB, gB), 1e-4);
  // accumulate = false: dx overwritten (NaN before), the same bits as adding into zeros.
  std::vector<float> dx1(dx.size(), std::numeric_limits<float>::quiet_NaN());
  adapted_backward(dx1.data(), nullptr, nullptr, LoraGrad{}, k.c.data(), k.x.data(), W, a, norm.data(),
                   k.M, nullptr, nullptr, false);
  EXPECT_EQ(dx1, dx);
  for (int64_t j = 0; j < k.N; ++j) {
    double s = 0;
    for (int64_t m = 0; m < k.M; ++m) s += k.c[size_t(m * k.N + j)];
    EXPECT_NEAR(db[size_t(j)], s, 1e-5);
  }
  if (dora) {  // the norm does not depend on m: the full finite difference (norm recomputed)
    auto gm = fd_grad([&](const std::vector<double>& v) {
      return loss(k, model(k, to_d(k.x), to_d(k.A), to_d(k.B), &v, nullptr)); }, md);
    EXPECT_LT(norm_err(dm, gm), 1e-4);
    // ...and the gradient through the norm is really different: the detach is a choice.
    auto gA_full = fd_grad([&](const std::vector<double>& v) {
      return loss(k, model(k, to_d(k.x), v, to_d(k.B), &md, nullptr)); }, to_d(k.A));
    EXPECT_GT(norm_err(dA, gA_full), 1e-2);
  }
}

TEST(Lora, LoraF32MatchesDoubleAndFiniteDifferences) { run(false, DType::F32); }
TEST(Lora, DoraF32MatchesDoubleAndFiniteDifferences) { run(true, DType::F32); }
TEST(Lora, LoraBf16Base) { run(false, DType::BF16); }
TEST(Lora, DoraBf16Base) { run(true, DType::BF16); }

// PEFT's lora_dropout: the adapter path reads d = mask ⊙ x / (1 - p), the base path x. The
// forward, dA, dB and dx (base part in dinp, adapter part in dlora_in mapped back through the
// mask by the caller) against the double model and its finite differences.
TEST(Lora, DropoutOnTheAdapterInputOnly) {
  const Case k = make(false, 11);
  MatView W;
  W.data = k.W.data(), W.rows = k.N, W.cols = k.K;
  LoraView a{k.A.data(), k.B.data(), nullptr, k.r, k.s};
  const double keep = 1.0 / (1.0 - 0.4);
  std::vector<double> mask(k.x.size());
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7 + 3) % 5 < 2 ? 0.0 : keep;
  auto dropped = [&](const std::vector<double>& x) {
    std::vector<double> d(x.size());
    for (size_t i = 0; i < x.size(); ++i) d[i] = mask[i] * x[i];
    return d;
  };
  // y = W x + b + s·B·A·d(x): the LoRA model on d(x), plus W·(x - d(x)).
  auto full = [&](const std::vector<double>& x, const std::vector<double>& A, const std::vector<double>& B) {
    auto y = model(k, dropped(x), A, B, nullptr, nullptr);
    const auto dx = dropped(x);
    for (int64_t m = 0; m < k.M; ++m)
      for (int64_t j = 0; j < k.N; ++j)
        for (int64_t i = 0; i < k.K; ++i)
          y[size_t(m * k.N + j)] += k.W[size_t(j * k.K + i)] * (x[size_t(m * k.K + i)] - dx[size_t(m * k.K + i)]);
    return y;
  };
  std::vector<float> d32(k.x.size());
  for (size_t i = 0; i < d32.size(); ++i) d32[i] = float(mask[i] * k.x[i]);
  std::vector<float> y(size_t(k.M * k.N));
  adapted_forward(y.data(), k.x.data(), W, k.bias.data(), a, nullptr, k.M, false, d32.data());
  EXPECT_LT(norm_err(y, full(to_d(k.x), to_d(k.A), to_d(k.B))), 1e-5);
  std::vector<float> y0(y.size());
  adapted_forward(y0.data(), k.x.data(), W, k.bias.data(), a, nullptr, k.M);
  EXPECT_GT(norm_err(y, to_d(y0)), 1e-3);  // the mask matters

  std::vector<float> dx(k.x.size(), 0.0f), dd(k.x.size(), 0.0f), dA(k.A.size(), 0.0f), dB(k.B.size(), 0.0f);
  LoraGrad ga{dA.data(), dB.data(), nullptr};
  adapted_backward(dx.data(), nullptr, nullptr, ga, k.c.data(), k.x.data(), W, a, nullptr, k.M, d32.data(), dd.data());
  for (size_t i = 0; i < dx.size(); ++i) dx[i] += float(mask[i]) * dd[i];
  auto gx = fd_grad([&](const std::vector<double>& v) { return loss(k, full(v, to_d(k.A), to_d(k.B))); }, to_d(k.x));
  auto gA = fd_grad([&](const std::vector<double>& v) { return loss(k, full(to_d(k.x), v, to_d(k.B))); }, to_d(k.A));
  auto gB = fd_grad([&](const std::vector<double>& v) { return loss(k, full(to_d(k.x), to_d(k.A), v)); }, to_d(k.B));
  EXPECT_LT(norm_err(dx, gx), 1e-4);
  EXPECT_LT(norm_err(dA, gA), 1e-4);
  EXPECT_LT(norm_err(dB, gB), 1e-4);
}

TEST(Lora, NoAdapterIsThePlainMatmul) {
  const Case k = make(false, 9);
  MatView W;
  W.data = k.W.data(), W.rows = k.N, W.cols = k.K;
  std::vector<float> y1(size_t(k.M * k.N)), y2(y1.size());
  adapted_forward(y1.data(), k.x.data(), W, k.bias.data(), LoraView{}, nullptr, k.M);
  matmul_forward(y2.data(), k.x.data(), W, k.bias.data(), k.M);
  EXPECT_EQ(y1, y2);
}

TEST(Lora, BackwardInputOfWideBf16BaseInBlocks) {
  Rng g(10);
  const int64_t M = 4, N = 600, K = 9;  // N > one 256-row block
  auto W = g.vec(size_t(N * K)), dy = g.vec(size_t(M * N));
  std::vector<uint16_t> Wb(W.size());
  for (size_t i = 0; i < W.size(); ++i) W[i] = bf16_to_f32(Wb[i] = f32_to_bf16(W[i]));
  MatView v;
  v.data = Wb.data(), v.dtype = DType::BF16, v.rows = N, v.cols = K;
  std::vector<float> dx(size_t(M * K), 0.0f);
  matview_backward_input(dx.data(), dy.data(), v, M);
  std::vector<double> ref(dx.size(), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) ref[size_t(m * K + k)] += double(dy[size_t(m * N + n)]) * W[size_t(n * K + k)];
  EXPECT_LT(norm_err(dx, ref), 1e-5);
}

}  // namespace
}  // namespace hymba
