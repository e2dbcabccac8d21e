#include "train/step.h"

#include <cstring>
#include <vector>

#include "base/error.h"
#include "ops/lora.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/norm.h"

namespace hymba {

namespace {

// Builds the rows [meta; embed(inputs[b])] of every sequence and the items of the batch.
void build_rows(const HymbaModel& m, const int32_t* inputs, int64_t B, int64_t L,
                std::vector<float>& x, std::vector<ForwardItem>& items) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, S = M + L;
  x.resize(size_t(B * S * H));
  items.assign(size_t(B), ForwardItem{nullptr, S});
  for (int64_t b = 0; b < B; ++b) {
    float* row = x.data() + b * S * H;
    if (M > 0) std::memcpy(row, m.weights().meta, size_t(M * H) * sizeof(float));
    m.embed(row + M * H, inputs + b * L, L);
  }
}

// Rows of real tokens (meta tokens never produce logits), gathered contiguously.
void gather_tokens(const float* x, int64_t B, int64_t M, int64_t L, int64_t H, std::vector<float>& out) {
  out.resize(size_t(B * L * H));
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(out.data() + b * L * H, x + (b * (M + L) + M) * H, size_t(L * H) * sizeof(float));
}

}  // namespace

double loss_and_grads(HymbaModel& m, ParamArena& arena, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale) {
  return loss_and_grads(m, arena.g, inputs, targets, B, L, grad_scale);
}

double loss_and_grads(HymbaModel& m, const Weights& grads, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, V = c.vocab_size, S = M + L;
  std::vector<float> x;
  std::vector<ForwardItem> items;
  build_rows(m, inputs, B, L, x, items);
  ModelActs acts;
  m.forward(x.data(), items, &acts);

  const int64_t n = B * L;
  std::vector<float> xt, xn(static_cast<size_t>(n * H)), rstd(static_cast<size_t>(n)),
      logits(static_cast<size_t>(n * V)), losses(static_cast<size_t>(n));
  gather_tokens(x.data(), B, M, L, H, xt);
  m.logits(logits.data(), xt.data(), n, xn.data(), rstd.data());
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) counted += targets[i] >= 0;
  const double loss = cross_entropy_forward(losses.data(), logits.data(), targets, n, V);
  if (counted == 0) return 0.0;

  // Head and final norm backward; the tied head's gradient lands in the embedding's.
  std::vector<float>& dlogits = logits;  // reused in place
  {
    std::vector<float> tmp(logits);
    cross_entropy_backward(dlogits.data(), tmp.data(), targets, n, V, grad_scale / float(counted));
  }
  std::vector<float> dxn(size_t(n * H), 0.0f), dxt(size_t(n * H), 0.0f);
  adapted_backward(dxn.data(), static_cast<float*>(const_cast<void*>(grads.lm_head.data)), nullptr,
                   LoraGrad{}, dlogits.data(), xn.data(), m.weights().lm_head, LoraView{}, nullptr, n);
  rmsnorm_backward(dxt.data(), const_cast<float*>(grads.final_norm), dxn.data(), xt.data(),
                   m.weights().final_norm, rstd.data(), n, H);
  std::vector<float> dx(size_t(B * S * H), 0.0f);
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(dx.data() + (b * S + M) * H, dxt.data() + b * L * H, size_t(L * H) * sizeof(float));

  m.backward(dx.data(), items, acts, grads);

  // Input rows: meta tokens and the embedding rows (scatter-add).
  float* gmeta = const_cast<float*>(grads.meta);
  float* gemb = static_cast<float*>(const_cast<void*>(grads.embed.data));
  for (int64_t b = 0; b < B; ++b) {
    const float* d = dx.data() + b * S * H;
    if (gmeta)
      for (int64_t i = 0; i < M * H; ++i) gmeta[i] += d[i];
    for (int64_t t = 0; gemb && t < L; ++t) {
      // nn.Embedding(padding_idx = pad_token_id): the pad row gets no gradient from lookups.
      if (inputs[b * L + t] == m.config().pad_token_id) continue;
      float* row = gemb + int64_t(inputs[b * L + t]) * H;
      const float* src = d + (M + t) * H;
      for (int64_t h = 0; h < H; ++h) row[h] += src[h];
    }
  }
  return loss;
}

double loss_only(HymbaModel& m, const int32_t* inputs, const int32_t* targets, int64_t B, int64_t L,
                 int64_t* counted) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, V = c.vocab_size;
  std::vector<float> x;
  std::vector<ForwardItem> items;
  build_rows(m, inputs, B, L, x, items);
  m.forward(x.data(), items);
  const int64_t n = B * L;
  std::vector<float> xt, logits(static_cast<size_t>(n * V)), losses(static_cast<size_t>(n));
  gather_tokens(x.data(), B, M, L, H, xt);
  m.logits(logits.data(), xt.data(), n);
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) k += targets[i] >= 0;
  if (counted) *counted = k;
  return cross_entropy_forward(losses.data(), logits.data(), targets, n, V);
}

}  // namespace hymba
