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

// Builds the rows [meta; embed(inputs)] of every sequence (one forward item each: a packed row of
// several conversations is several items, so nothing crosses a boundary) and gathers targets.
struct Rows {
  explicit Rows(std::vector<float>& buf) : x(buf) {}
  std::vector<float>& x;
  std::vector<ForwardItem> items;
  std::vector<int32_t> targets;  // [Σ n]
  int64_t n = 0;                 // real tokens
};
void build_rows(const HymbaModel& m, std::span<const SeqRef> seqs, Rows& r) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size;
  int64_t T = 0;
  r.n = 0;
  for (const auto& s : seqs) T += M + s.n, r.n += s.n;
  r.x.resize(size_t(T * H));
  r.items.clear();
  r.targets.clear();
  float* row = r.x.data();
  for (const auto& s : seqs) {
    HYMBA_CHECK(s.n >= 1, "empty training sequence");
    r.items.push_back({nullptr, M + s.n});
    if (M > 0) std::memcpy(row, m.weights().meta, size_t(M * H) * sizeof(float));
    m.embed(row + M * H, s.inputs, s.n);
    r.targets.insert(r.targets.end(), s.targets, s.targets + s.n);
    row += (M + s.n) * H;
  }
}

// Rows of real tokens (meta tokens never produce logits), gathered contiguously; and back.
void gather_tokens(const float* x, std::span<const SeqRef> seqs, int64_t M, int64_t H,
                   std::vector<float>& out) {
  int64_t n = 0;
  for (const auto& s : seqs) n += s.n;
  out.resize(size_t(n * H));
  int64_t src = 0, dst = 0;
  for (const auto& s : seqs) {
    std::memcpy(out.data() + dst * H, x + (src + M) * H, size_t(s.n * H) * sizeof(float));
    src += M + s.n, dst += s.n;
  }
}

std::vector<SeqRef> as_seqs(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t L) {
  std::vector<SeqRef> s;
  for (int64_t b = 0; b < B; ++b) s.push_back({inputs + b * L, targets + b * L, L});
  return s;
}

}  // namespace

double loss_and_grads(HymbaModel& m, ParamArena& arena, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale) {
  return loss_and_grads(m, arena.g, inputs, targets, B, L, grad_scale);
}

double loss_and_grads(HymbaModel& m, const Weights& grads, const int32_t* inputs,
                      const int32_t* targets, int64_t B, int64_t L, float grad_scale) {
  const auto seqs = as_seqs(inputs, targets, B, L);
  return loss_and_grads(m, grads, seqs, grad_scale);
}

double loss_and_grads(HymbaModel& m, const Weights& grads, std::span<const SeqRef> seqs,
                      float grad_scale, int64_t* counted_out) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, V = c.vocab_size;
  TrainScratch& ws = m.train_scratch();
  Rows r(ws.x);
  build_rows(m, seqs, r);
  ModelActs& acts = ws.acts;
  m.forward(r.x.data(), r.items, &acts);

  const int64_t n = r.n;
  std::vector<float> &xt = ws.xt, &xn = ws.xn, &rstd = ws.rstd, &logits = ws.logits, &losses = ws.losses;
  xn.resize(size_t(n * H)), rstd.resize(size_t(n)), logits.resize(size_t(n * V)), losses.resize(size_t(n));
  gather_tokens(r.x.data(), seqs, M, H, xt);
  m.logits(logits.data(), xt.data(), n, xn.data(), rstd.data());
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) counted += r.targets[size_t(i)] >= 0;
  if (counted_out) *counted_out = counted;
  const double loss = cross_entropy_forward(losses.data(), logits.data(), r.targets.data(), n, V);
  if (counted == 0) return 0.0;

  // Head and final norm backward; the tied head's gradient lands in the embedding's.
  std::vector<float>& dlogits = logits;  // in place
  cross_entropy_backward(dlogits.data(), logits.data(), r.targets.data(), n, V,
                         grad_scale / float(counted));
  // Overwritten whole (accumulate false, or copied), so kept from step to step unfilled.
  std::vector<float> &dxn = ws.dxn, &dxt = ws.dxt, &dx = ws.dx;
  dxn.resize(size_t(n * H)), dxt.resize(size_t(n * H)), dx.resize(r.x.size());
  adapted_backward(dxn.data(), static_cast<float*>(const_cast<void*>(grads.lm_head.data)), nullptr,
                   LoraGrad{}, dlogits.data(), xn.data(), m.weights().lm_head, LoraView{}, nullptr, n,
                   nullptr, nullptr, /*accumulate=*/false);
  rmsnorm_backward(dxt.data(), const_cast<float*>(grads.final_norm), dxn.data(), xt.data(),
                   m.weights().final_norm, rstd.data(), n, H, /*accumulate=*/false);
  {
    int64_t src = 0, dst = 0;
    for (const auto& s : seqs) {
      std::memset(dx.data() + dst * H, 0, size_t(M * H) * sizeof(float));  // meta rows: no loss
      std::memcpy(dx.data() + (dst + M) * H, dxt.data() + src * H, size_t(s.n * H) * sizeof(float));
      src += s.n, dst += M + s.n;
    }
  }

  m.backward(dx.data(), r.items, acts, grads);

  // Input rows: meta tokens and the embedding rows (scatter-add).
  float* gmeta = const_cast<float*>(grads.meta);
  float* gemb = static_cast<float*>(const_cast<void*>(grads.embed.data));
  const float* d = dx.data();
  for (const auto& s : seqs) {
    if (gmeta)
      for (int64_t i = 0; i < M * H; ++i) gmeta[i] += d[i];
    for (int64_t t = 0; gemb && t < s.n; ++t) {
      // nn.Embedding(padding_idx = pad_token_id): the pad row gets no gradient from lookups.
      if (s.inputs[t] == m.config().pad_token_id) continue;
      float* row = gemb + int64_t(s.inputs[t]) * H;
      const float* src = d + (M + t) * H;
      for (int64_t h = 0; h < H; ++h) row[h] += src[h];
    }
    d += (M + s.n) * H;
  }
  return loss;
}

double loss_only(HymbaModel& m, const int32_t* inputs, const int32_t* targets, int64_t B, int64_t L,
                 int64_t* counted) {
  const auto seqs = as_seqs(inputs, targets, B, L);
  return loss_only(m, seqs, counted);
}

double loss_only(HymbaModel& m, std::span<const SeqRef> seqs, int64_t* counted) {
  const auto& c = m.config();
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, V = c.vocab_size;
  std::vector<float> x;
  Rows r(x);
  build_rows(m, seqs, r);
  m.forward(r.x.data(), r.items);
  const int64_t n = r.n;
  std::vector<float> xt, logits(static_cast<size_t>(n * V)), losses(static_cast<size_t>(n));
  gather_tokens(r.x.data(), seqs, M, H, xt);
  m.logits(logits.data(), xt.data(), n);
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) k += r.targets[size_t(i)] >= 0;
  if (counted) *counted = k;
  return cross_entropy_forward(losses.data(), logits.data(), r.targets.data(), n, V);
}

}  // namespace hymba
