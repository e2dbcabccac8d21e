#include "eval/analyze.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "model/hymba.h"
#include "train/step.h"

namespace hymba::analysis {

namespace {

// The stateless forward over [meta; ids] (M = c.num_memory_tokens) keeping every intermediate.
ModelActs forward_acts(const Config& c, const Weights& w, const std::vector<int32_t>& ids) {
  HymbaModel m(c, w);
  const int64_t M = c.num_memory_tokens, H = c.hidden_size, n = int64_t(ids.size()), T = M + n;
  std::vector<float> x(size_t(T * H));
  if (M > 0) std::memcpy(x.data(), w.meta, size_t(M * H) * sizeof(float));
  m.embed(x.data() + M * H, ids.data(), n);
  ForwardItem item{nullptr, T};
  ModelActs acts;
  m.forward(x.data(), std::span<const ForwardItem>(&item, 1), &acts);
  return acts;
}

bool visible(int64_t i, int64_t j, int64_t M, int64_t window) {
  return j <= i && (window < 0 || i - j <= window || j < M);
}

// Softmax over the visible keys of head h, in double from the post-RoPE q and k.
Map attention_map(const Config& c, const LayerPlan& p, const ModelActs& acts, int h, int64_t M) {
  const auto& a = acts.layers[size_t(p.index)];
  const auto& k = acts.layers[size_t(p.kv_source)].k;
  const int64_t T = int64_t(acts.pos.size()), nq = c.num_attention_heads, nkv = c.num_key_value_heads, dqk = c.d_qk;
  const int64_t kvh = h / (nq / nkv), window = p.global ? -1 : c.sliding_window;
  const double scale = 1.0 / std::sqrt(double(dqk));
  Map mp;
  mp.kind = "attn", mp.layer = p.index, mp.head = h, mp.T = T, mp.M = M;
  mp.p.assign(size_t(T * T), 0.0), mp.visible.assign(size_t(T * T), 0);
  std::vector<double> s(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) {
    double mx = -INFINITY;
    for (int64_t j = 0; j <= i; ++j) {
      if (!visible(i, j, M, window)) continue;
      double d = 0;
      for (int64_t e = 0; e < dqk; ++e) d += double(a.q[size_t(i * nq * dqk + h * dqk + e)]) * k[size_t(j * nkv * dqk + kvh * dqk + e)];
      s[size_t(j)] = d * scale, mx = std::max(mx, s[size_t(j)]);
      mp.visible[size_t(i * T + j)] = 1;
    }
    double z = 0;
    for (int64_t j = 0; j <= i; ++j)
      if (mp.visible[size_t(i * T + j)]) z += std::exp(s[size_t(j)] - mx);
    for (int64_t j = 0; j <= i; ++j)
      if (mp.visible[size_t(i * T + j)]) mp.p[size_t(i * T + j)] = std::exp(s[size_t(j)] - mx) / z;
  }
  return mp;
}

// The selective scan's implicit attention, mean |α_d| over channels, rows normalised.
Map ssm_map(const Config& c, const LayerPlan& p, const ModelActs& acts, int64_t M) {
  const auto& a = acts.layers[size_t(p.index)];
  const int64_t T = int64_t(acts.pos.size()), D = c.d_inner, N = c.mamba_d_state;
  Map mp;
  mp.kind = "ssm", mp.layer = p.index, mp.T = T, mp.M = M;
  mp.p.assign(size_t(T * T), 0.0), mp.visible.assign(size_t(T * T), 0);
  std::vector<double> S(size_t(T * D));  // S[t, d] = Σ_{r<=t} Δ_r[d]
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d)
      S[size_t(t * D + d)] = (t ? S[size_t((t - 1) * D + d)] : 0.0) + a.delta[size_t(t * D + d)];
  for (int64_t t = 0; t < T; ++t) {
    double rowsum = 0;
    for (int64_t s = 0; s <= t; ++s) {
      double acc = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double gap = S[size_t(t * D + d)] - S[size_t(s * D + d)], ds = a.delta[size_t(s * D + d)];
        double v = 0;
        for (int64_t n = 0; n < N; ++n)
          v += double(a.Cn[size_t(t * N + n)]) * std::exp(double(a.A[size_t(d * N + n)]) * gap) * ds * a.Bn[size_t(s * N + n)];
        acc += std::abs(v);
      }
      mp.p[size_t(t * T + s)] = acc / double(D);
      mp.visible[size_t(t * T + s)] = 1;
      rowsum += acc / double(D);
    }
    if (rowsum > 0)
      for (int64_t s = 0; s <= t; ++s) mp.p[size_t(t * T + s)] /= rowsum;
  }
  return mp;
}

// Shares of Meta/BOS/Self/Cross and mean entropy over the text's query rows (i >= M).
void summarise(const Map& mp, std::array<double, 4>& share, double& entropy) {
  const int64_t T = mp.T, M = mp.M;
  for (int64_t i = M; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      const double p = mp.p[size_t(i * T + j)];
      if (p <= 0) continue;
      const int cat = j < M ? kMeta : j == M ? kBos : j == i ? kSelf : kCross;
      share[size_t(cat)] += p;
      entropy -= p * std::log(p);
    }
  }
}

double mean_row_norm(const std::vector<float>& v, int64_t T, int64_t W, int64_t from) {
  double s = 0;
  for (int64_t i = from; i < T; ++i) {
    double q = 0;
    for (int64_t e = 0; e < W; ++e) q += double(v[size_t(i * W + e)]) * v[size_t(i * W + e)];
    s += std::sqrt(q);
  }
  return s / double(T - from);
}

double text_loss(const Config& c, const Weights& w, const std::vector<int32_t>& ids) {
  HymbaModel m(c, w);
  const int64_t L = int64_t(ids.size()) - 1;
  return loss_only(m, ids.data(), ids.data() + 1, 1, L, nullptr);
}

bool wanted(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

Report analyze(const Config& c, const Weights& w, const std::vector<int32_t>& ids,
               const std::vector<int>& map_layers, const std::vector<int>& map_heads) {
  HYMBA_CHECK(ids.size() >= 2, "analyze: the text must have at least 2 tokens");
  const auto plan = make_layer_plan(c);
  for (int l : map_layers)
    HYMBA_CHECK(l >= 0 && l < int(plan.size()), "--layers: layer " + std::to_string(l) + " does not exist (the model has " +
                                                    std::to_string(plan.size()) + ")");
  for (int h : map_heads)
    HYMBA_CHECK(h >= 0 && h < c.num_attention_heads, "--heads: head " + std::to_string(h) + " does not exist (the model has " +
                                                         std::to_string(c.num_attention_heads) + ")");
  Report r;
  r.M = c.num_memory_tokens, r.n_tokens = int64_t(ids.size());
  r.loss = text_loss(c, w, ids);
  Config c0 = c;
  c0.num_memory_tokens = 0;
  const ModelActs acts = forward_acts(c, w, ids), acts0 = forward_acts(c0, w, ids);
  const int64_t T = int64_t(acts.pos.size()), n = int64_t(ids.size()), D = c.d_inner;
  for (const auto& p : plan) {
    LayerStats s;
    s.attn = p.has_attn, s.ssm = p.has_ssm, s.global = p.global;
    const auto& a = acts.layers[size_t(p.index)];
    if (p.has_attn) {
      const double rows = double(n * c.num_attention_heads);
      for (int h = 0; h < c.num_attention_heads; ++h) {
        Map with = attention_map(c, p, acts, h, r.M), without = attention_map(c0, p, acts0, h, 0);
        summarise(with, s.attn_share, s.attn_entropy);
        summarise(without, s.attn_share_nometa, s.attn_entropy_nometa);
        if (wanted(map_layers, p.index) && wanted(map_heads, h)) r.maps.push_back(std::move(with));
      }
      for (auto* v : {&s.attn_share, &s.attn_share_nometa})
        for (auto& x : *v) x /= rows;
      s.attn_entropy /= rows, s.attn_entropy_nometa /= rows;
      s.attn_out = mean_row_norm(a.attn, T, D, r.M), s.attn_normed = mean_row_norm(a.n1, T, D, r.M);
      for (int64_t e = 0; e < D; ++e) s.fusion_w_attn += std::abs(w.layers[size_t(p.index)].pre_avg_norm1[e]) / double(D);
    }
    if (p.has_ssm) {
      Map with = ssm_map(c, p, acts, r.M), without = ssm_map(c0, p, acts0, 0);
      summarise(with, s.ssm_share, s.ssm_entropy);
      summarise(without, s.ssm_share_nometa, s.ssm_entropy_nometa);
      for (auto* v : {&s.ssm_share, &s.ssm_share_nometa})
        for (auto& x : *v) x /= double(n);
      s.ssm_entropy /= double(n), s.ssm_entropy_nometa /= double(n);
      if (wanted(map_layers, p.index)) r.maps.push_back(std::move(with));
      s.ssm_out = mean_row_norm(a.ssm, T, D, r.M), s.ssm_normed = mean_row_norm(a.n2, T, D, r.M);
      for (int64_t e = 0; e < D; ++e) s.fusion_w_ssm += std::abs(w.layers[size_t(p.index)].pre_avg_norm2[e]) / double(D);
    }
    if (p.has_attn && p.has_ssm) {  // remove one branch: its fusion norm's weight -> 0
      const std::vector<float> zero(size_t(D), 0.0f);
      Weights w2 = w;
      w2.layers[size_t(p.index)].pre_avg_norm1 = zero.data();
      s.loss_without_attn = text_loss(c, w2, ids);
      w2 = w;
      w2.layers[size_t(p.index)].pre_avg_norm2 = zero.data();
      s.loss_without_ssm = text_loss(c, w2, ids);
    }
    r.layers.push_back(s);
  }
  return r;
}

}  // namespace hymba::analysis
