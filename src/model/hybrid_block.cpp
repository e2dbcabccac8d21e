// The hybrid-head block (paper §2.1, spec §3.3–3.8): attention heads and SSM heads read the same
// in_proj output in parallel; their outputs are normalised, averaged and projected back:
//   y = out_proj((RMSNorm1(attn) + RMSNorm2(ssm)) / 2), then the SwiGLU MLP
// (or out_proj([RMSNorm1(attn); RMSNorm2(ssm)]) with config "fusion": "concat", Table 9's ablation).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "model/hymba.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/conv.h"
#include "ops/lora.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/ssm_scan.h"
#include "ops/threads.h"

namespace hymba {

namespace {

void resize(std::vector<float>& v, int64_t n) { v.resize(size_t(n)); }

// Copies columns [c0, c0+w) of src[T, stride] into dst[T, w].
void take_cols(std::vector<float>& dst, const float* src, int64_t T, int64_t stride, int64_t c0,
               int64_t w) {
  resize(dst, T * w);
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(dst.data() + t * w, src + t * stride + c0, size_t(w) * sizeof(float));
}
// The inverse: src [T, w] into columns c0..c0+w of dst [T, stride].
void put_cols(float* dst, int64_t T, int64_t stride, int64_t c0, const float* src, int64_t w) {
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(dst + t * stride + c0, src + t * w, size_t(w) * sizeof(float));
}

// Sizes of one layer's tensors for a batch of T rows (shapes in hymba.h's LayerActs).
struct Dims {
  int64_t T, H, D, N, R, K, F, nq, nkv, qw, kw, vw, aw;
  Dims(const Config& c, std::span<const ForwardItem> items)
      : T(0), H(c.hidden_size), D(c.d_inner), N(c.mamba_d_state), R(c.dt_rank),
        K(c.mamba_d_conv), F(c.intermediate_size), nq(c.num_attention_heads),
        nkv(c.num_key_value_heads), qw(nq * c.d_qk), kw(nkv * c.d_qk), vw(nkv * c.d_v),
        aw(nq * c.d_v) {
    for (auto& it : items) T += it.n;
  }
};

}  // namespace

void HymbaModel::layer_forward(int l, float* x, std::span<const ForwardItem> items,
                               const int32_t* pos, LayerActs& a,
                               std::vector<std::vector<float>>& chunk_kv) {
  const Config& c = cfg_;
  const LayerPlan& p = plan_[size_t(l)];
  const LayerWeights& w = w_.layers[size_t(l)];
  const Dims d(c, items);
  const int64_t T = d.T, H = d.H, D = d.D, N = d.N, R = d.R, K = d.K, F = d.F;
  const int64_t nq = d.nq, nkv = d.nkv, qw = d.qw, kw = d.kw, vw = d.vw, aw = d.aw;
  const float eps = float(c.rms_norm_eps);
  const bool fresh = !a.x_in.empty();  // training: adapter weights change between forwards
  // Inference keeps no activations for a backward, so pointwise results overwrite their inputs:
  // a 512-token prefill of the 1.5B shape then needs 4 fewer [T, D or F] buffers (31 MB).
  const bool in_place = !fresh;

  // Input norm and the single input projection shared by both kinds of heads.
  resize(a.xn, T * H), resize(a.rstd_in, T);
  rmsnorm_forward(a.xn.data(), a.rstd_in.data(), x, w.input_norm, T, H, eps);
  const int64_t P = p.in_proj_rows;
  resize(a.proj, T * P);
  linear_forward(l, Slot::InProj, a.proj.data(), a.xn.data(), w.in_proj, w.in_proj_bias, T, false, fresh);

  int64_t col = 0;
  if (p.has_attn) {
    take_cols(a.q, a.proj.data(), T, P, col, qw), col += qw;
    if (p.producer()) {
      take_cols(a.k, a.proj.data(), T, P, col, kw), col += kw;
      take_cols(a.v, a.proj.data(), T, P, col, vw), col += vw;
    }
  }
  if (p.has_ssm) {
    take_cols(a.xs, a.proj.data(), T, P, col, D), col += D;
    take_cols(a.z, a.proj.data(), T, P, col, D), col += D;
  }

  // Attention heads. K is shared across layers after RoPE (spec §3.6).
  if (p.has_attn) {
    if (c.rope) rope_forward(a.q.data(), pos, T, nq, c.d_qk, inv_freq_.data());
    if (p.producer()) {
      if (c.rope) rope_forward(a.k.data(), pos, T, nkv, c.d_qk, inv_freq_.data());
      chunk_kv[size_t(2 * l)] = a.k;
      chunk_kv[size_t(2 * l + 1)] = a.v;
    }
    const int src = p.kv_source;
    const float* Kc = chunk_kv[size_t(2 * src)].data();
    const float* Vc = chunk_kv[size_t(2 * src + 1)].data();
    AttnShape shape{nq, nkv, c.d_qk, c.d_v, float(1.0 / std::sqrt(double(c.d_qk)))};
    AttnRule rule{p.global ? -1 : c.sliding_window, c.num_memory_tokens};
    resize(a.attn, T * aw), resize(a.lse, T * nq);
    // All items in one call (one fork/join per layer at a batched decode step).
    std::vector<std::array<KVSegment, 3>> segs(items.size());
    std::vector<AttnQuery> queries(items.size());
    int64_t r0 = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const ForwardItem& it = items[i];
      auto& sg = segs[i];
      size_t ns = 0;
      if (it.state) {
        if (it.state->prefix && !it.state->prefix->kv[size_t(src)].empty())
          sg[ns++] = it.state->prefix->kv[size_t(src)].segment();
        if (!it.state->kv[size_t(src)].empty()) sg[ns++] = it.state->kv[size_t(src)].segment();
      }
      sg[ns++] = KVSegment{Kc + r0 * kw, Vc + r0 * vw, DType::F32, pos + r0, it.n};
      queries[i] = AttnQuery{a.attn.data() + r0 * aw, a.lse.data() + r0 * nq, a.q.data() + r0 * qw,
                             pos + r0, it.n, std::span<const KVSegment>(sg.data(), ns)};
      r0 += it.n;
    }
    attention_forward_batch(queries, shape, rule);
  }

  // SSM heads: causal conv + SiLU, input-dependent dt/B/C, selective scan gated by SiLU(z).
  if (p.has_ssm) {
    resize(a.xc_pre, T * D);
    if (!in_place) resize(a.xc, T * D);
    int64_t r0 = 0;
    for (const auto& it : items) {
      float* conv_state = it.state ? it.state->conv[size_t(l)].data() : nullptr;
      causal_conv1d_forward(a.xc_pre.data() + r0 * D, a.xs.data() + r0 * D, w.conv_w, w.conv_b,
                            conv_state, it.n, D, K);
      r0 += it.n;
    }
    float* xc = in_place ? a.xc_pre.data() : a.xc.data();
    silu_forward(xc, a.xc_pre.data(), T * D);

    const int64_t XW = R + 2 * N;
    resize(a.xdbl, T * XW);
    linear_forward(l, Slot::XProj, a.xdbl.data(), xc, w.x_proj, nullptr, T, false, fresh);
    take_cols(a.dtn, a.xdbl.data(), T, XW, 0, R);
    take_cols(a.Bn, a.xdbl.data(), T, XW, R, N);
    take_cols(a.Cn, a.xdbl.data(), T, XW, R + N, N);
    if (c.mamba_inner_layernorms) {
      resize(a.dt_rstd, T), resize(a.B_rstd, T), resize(a.C_rstd, T);
      rmsnorm_forward(a.dtn.data(), a.dt_rstd.data(), a.dtn.data(), w.dt_norm, T, R, eps);
      rmsnorm_forward(a.Bn.data(), a.B_rstd.data(), a.Bn.data(), w.B_norm, T, N, eps);
      rmsnorm_forward(a.Cn.data(), a.C_rstd.data(), a.Cn.data(), w.C_norm, T, N, eps);
    }
    resize(a.delta_pre, T * D);
    if (!in_place) resize(a.delta, T * D);
    float* delta = in_place ? a.delta_pre.data() : a.delta.data();
    linear_forward(l, Slot::DtProj, a.delta_pre.data(), a.dtn.data(), w.dt_proj, w.dt_bias, T, false,
                   fresh);
    softplus_forward(delta, a.delta_pre.data(), T * D);

    if (frozen_A_.empty()) {
      resize(a.A, D * N);
      for (int64_t i = 0; i < D * N; ++i) a.A[size_t(i)] = -std::exp(w.A_log[i]);
    }
    const float* A = frozen_A_.empty() ? a.A.data() : frozen_A_[size_t(l)].data();
    resize(a.ssm, T * D);
    std::vector<float> h0;
    bool steps = items.size() > 1;  // a decode step: one row per sequence, each with its state
    for (const auto& it : items) steps = steps && it.state && it.n == 1;
    // (A one-row sequence alone takes the one-step kernel, rounded differently: kept per item.)
    bool stateless = true;
    for (const auto& it : items) stateless = stateless && !it.state && it.n > 1;
    if (steps) {
      std::vector<float*> hs;
      for (const auto& it : items) hs.push_back(it.state->ssm[size_t(l)].data());
      selective_scan_forward_steps(a.ssm.data(), hs.data(), xc, delta, A, a.Bn.data(), a.Cn.data(), w.D,
                                   a.z.data(), int64_t(items.size()), D, N);
    } else if (stateless && items.size() > 1) {  // training: all sequences in one parallel region
      std::vector<int64_t> lens;
      for (const auto& it : items) lens.push_back(it.n);
      selective_scan_forward_seqs(a.ssm.data(), xc, delta, A, a.Bn.data(), a.Cn.data(), w.D, a.z.data(),
                                  lens, D, N);
    } else {
      r0 = 0;
      for (const auto& it : items) {
        float* h;
        if (it.state) {
          h = it.state->ssm[size_t(l)].data();
        } else {
          h0.assign(size_t(D * N), 0.0f);
          h = h0.data();
        }
        selective_scan_forward(a.ssm.data() + r0 * D, h, xc + r0 * D, delta + r0 * D, A, a.Bn.data() + r0 * N,
                               a.Cn.data() + r0 * N, w.D, a.z.data() + r0 * D, it.n, D, N);
        r0 += it.n;
      }
    }
  }

  // Fusion: mean of the normalised head outputs (the norms' weights are the paper's β1, β2), or
  // with fusion "concat" (Table 9's ablation) both side by side, out_proj reading 2 * D columns.
  const bool own_fused = !in_place || p.concat;  // else the mean (or the one branch) is in n1/n2
  if (own_fused) resize(a.fused, T * p.out_proj_cols);
  if (p.has_attn) {
    resize(a.n1, T * D), resize(a.rstd1, T);
    rmsnorm_forward(a.n1.data(), a.rstd1.data(), a.attn.data(), w.pre_avg_norm1, T, D, eps);
  }
  if (p.has_ssm) {
    resize(a.n2, T * D), resize(a.rstd2, T);
    rmsnorm_forward(a.n2.data(), a.rstd2.data(), a.ssm.data(), w.pre_avg_norm2, T, D, eps);
  }
  if (p.concat) {
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(a.fused.data() + t * 2 * D, a.n1.data() + t * D, size_t(D) * sizeof(float));
      std::memcpy(a.fused.data() + t * 2 * D + D, a.n2.data() + t * D, size_t(D) * sizeof(float));
    }
  } else if (p.has_attn && p.has_ssm) {
    float* f = own_fused ? a.fused.data() : a.n1.data();
    for (int64_t i = 0; i < T * D; ++i) f[i] = (a.n1[size_t(i)] + a.n2[size_t(i)]) * 0.5f;
  } else if (own_fused) {
    a.fused = p.has_attn ? a.n1 : a.n2;
  }
  const float* fused = own_fused ? a.fused.data() : p.has_attn ? a.n1.data() : a.n2.data();
  linear_forward(l, Slot::OutProj, x, fused, w.out_proj, w.out_proj_bias, T, true, fresh);

  // SwiGLU MLP with its residual.
  if (!a.x_in.empty()) a.h_mid.assign(x, x + T * H);  // training keeps it
  resize(a.xm, T * H), resize(a.rstd_m, T);
  rmsnorm_forward(a.xm.data(), a.rstd_m.data(), x, w.pre_mlp_norm, T, H, eps);
  resize(a.gate, T * F), resize(a.up, T * F);
  if (!in_place) resize(a.act, T * F);
  linear_forward2(l, Slot::Gate, Slot::Up, a.gate.data(), a.up.data(), a.xm.data(), w.gate, w.up, T, fresh);
  float* act = in_place ? a.up.data() : a.act.data();
  swiglu_forward(act, a.gate.data(), a.up.data(), T * F);
  linear_forward(l, Slot::Down, x, act, w.down, nullptr, T, true, fresh);
}


// ---------------------------------------------------------------------------------------------
// Backward of one layer (training). dx[T, H] holds dLoss/d(layer output) on entry and
// dLoss/d(layer input) on return. dkv[2s], dkv[2s+1] collect dK, dV of producer s from its
// consumers (later layers, visited first) and from itself.
namespace {
float* mut(const float* p) { return const_cast<float*>(p); }
float* mut(const MatView& m) { return static_cast<float*>(const_cast<void*>(m.data)); }
}  // namespace

void HymbaModel::layer_backward(int l, float* dx, std::span<const ForwardItem> items,
                                const int32_t* pos, const LayerActs& a,
                                const std::vector<std::vector<float>>& kv, const LayerWeights& g,
                                std::vector<std::vector<float>>& dkv) {
  const Config& c = cfg_;
  const LayerPlan& p = plan_[size_t(l)];
  const LayerWeights& w = w_.layers[size_t(l)];
  const Dims d(c, items);
  const int64_t T = d.T, H = d.H, D = d.D, N = d.N, R = d.R, K = d.K, F = d.F;
  const int64_t nq = d.nq, nkv = d.nkv, qw = d.qw, kw = d.kw, vw = d.vw, aw = d.aw;
  // Every buffer below is written whole by its first op (accumulate = false, or a copy), so none
  // is zero-filled; `+=` ops (false omitted) come after that first writer.
  LayerGradScratch& s = train_scratch_.layer_grads;
  constexpr bool kSet = false;

  // MLP: x_out = h_mid + down(swiglu(gate(xm), up(xm))), xm = norm(h_mid).
  resize(s.dact, T * F), resize(s.dgate, T * F), resize(s.dup, T * F), resize(s.dxm, T * H);
  linear_backward(l, Slot::Down, s.dact.data(), mut(g.down), nullptr, dx, a.act.data(), w.down, T, kSet);
  swiglu_backward(s.dgate.data(), s.dup.data(), s.dact.data(), a.gate.data(), a.up.data(), T * F, kSet);
  linear_backward(l, Slot::Gate, s.dxm.data(), mut(g.gate), nullptr, s.dgate.data(), a.xm.data(), w.gate, T,
                  kSet);
  linear_backward(l, Slot::Up, s.dxm.data(), mut(g.up), nullptr, s.dup.data(), a.xm.data(), w.up, T);
  rmsnorm_backward(dx, mut(g.pre_mlp_norm), s.dxm.data(), a.h_mid.data(), w.pre_mlp_norm,
                   a.rstd_m.data(), T, H);  // dx is now dLoss/d h_mid

  // Fusion: h_mid = x_in + out_proj(fused).
  // dfused1 / dfused2: the gradients reaching norm1(attn) / norm2(ssm).
  resize(s.dfused, T * p.out_proj_cols);
  linear_backward(l, Slot::OutProj, s.dfused.data(), mut(g.out_proj), mut(g.out_proj_bias), dx,
                  a.fused.data(), w.out_proj, T, kSet);
  if (p.concat) {
    std::vector<float> cat;
    cat.swap(s.dfused);
    take_cols(s.dfused, cat.data(), T, 2 * D, 0, D);
    take_cols(s.dfused2, cat.data(), T, 2 * D, D, D);
  } else if (p.has_attn && p.has_ssm) {
    for (auto& v : s.dfused) v *= 0.5f;
  }
  const std::vector<float>& dfused1 = s.dfused;
  const std::vector<float>& dfused_ssm = p.concat ? s.dfused2 : s.dfused;

  // in_proj's output gradient: each piece copied into its columns (they tile all P of them).
  const int64_t P = p.in_proj_rows;
  resize(s.dproj, T * P);
  int64_t covered = 0;
  auto put_proj = [&](const float* src, int64_t c0, int64_t width) {
    put_cols(s.dproj.data(), T, P, c0, src, width);
    covered += width;
  };
  int64_t col = 0;
  const int64_t q_col = col;
  if (p.has_attn) col += qw;
  const int64_t kv_col = col;
  if (p.has_attn && p.producer()) col += kw + vw;
  const int64_t x_col = col, z_col = col + D;

  if (p.has_ssm) {
    resize(s.dssm, T * D), resize(s.dxc, T * D), resize(s.ddelta, T * D), resize(s.dz, T * D);
    resize(s.dB, T * N), resize(s.dC, T * N);
    s.dA.assign(size_t(D * N), 0.0f);  // summed over the sequences
    rmsnorm_backward(s.dssm.data(), mut(g.pre_avg_norm2), dfused_ssm.data(), a.ssm.data(),
                     w.pre_avg_norm2, a.rstd2.data(), T, D, kSet);
    std::vector<int64_t> lens;
    for (const auto& it : items) lens.push_back(it.n);
    selective_scan_backward_seqs(s.dxc.data(), s.ddelta.data(), s.dA.data(), s.dB.data(), s.dC.data(),
                                 mut(g.D), s.dz.data(), s.dssm.data(), a.xc.data(), a.delta.data(),
                                 a.A.data(), a.Bn.data(), a.Cn.data(), w.D, a.z.data(), lens, D, N, kSet);
    if (g.A_log)
      for (int64_t i = 0; i < D * N; ++i) mut(g.A_log)[i] += s.dA[size_t(i)] * a.A[size_t(i)];
    resize(s.ddelta_pre, T * D), resize(s.ddtn, T * R);
    softplus_backward(s.ddelta_pre.data(), s.ddelta.data(), a.delta_pre.data(), T * D, kSet);
    linear_backward(l, Slot::DtProj, s.ddtn.data(), mut(g.dt_proj), mut(g.dt_bias), s.ddelta_pre.data(),
                    a.dtn.data(), w.dt_proj, T, kSet);
    // x_proj output pieces: dt (R), B (N), C (N), each through its RMSNorm; copied into their
    // columns, which tile the row.
    const int64_t XW = R + 2 * N;
    resize(s.dxdbl, T * XW);
    if (c.mamba_inner_layernorms) {
      auto norm_back = [&](int64_t c0, int64_t width, const std::vector<float>& dy, const float* wn,
                           float* gw, const std::vector<float>& rstd) {
        take_cols(s.raw, a.xdbl.data(), T, XW, c0, width);
        resize(s.draw, T * width);
        rmsnorm_backward(s.draw.data(), gw, dy.data(), s.raw.data(), wn, rstd.data(), T, width, kSet);
        put_cols(s.dxdbl.data(), T, XW, c0, s.draw.data(), width);
      };
      norm_back(0, R, s.ddtn, w.dt_norm, mut(g.dt_norm), a.dt_rstd);
      norm_back(R, N, s.dB, w.B_norm, mut(g.B_norm), a.B_rstd);
      norm_back(R + N, N, s.dC, w.C_norm, mut(g.C_norm), a.C_rstd);
    } else {
      put_cols(s.dxdbl.data(), T, XW, 0, s.ddtn.data(), R);
      put_cols(s.dxdbl.data(), T, XW, R, s.dB.data(), N);
      put_cols(s.dxdbl.data(), T, XW, R + N, s.dC.data(), N);
    }
    linear_backward(l, Slot::XProj, s.dxc.data(), mut(g.x_proj), nullptr, s.dxdbl.data(), a.xc.data(),
                    w.x_proj, T);
    resize(s.dxc_pre, T * D), resize(s.dxs, T * D);
    silu_backward(s.dxc_pre.data(), s.dxc.data(), a.xc_pre.data(), T * D, kSet);
    int64_t r0 = 0;
    for (const auto& it : items) {
      causal_conv1d_backward(s.dxs.data() + r0 * D, mut(g.conv_w), mut(g.conv_b),
                             s.dxc_pre.data() + r0 * D, a.xs.data() + r0 * D, w.conv_w, it.n, D, K,
                             kSet);
      r0 += it.n;
    }
    put_proj(s.dxs.data(), x_col, D);
    put_proj(s.dz.data(), z_col, D);
  }

  if (p.has_attn) {
    resize(s.dattn, T * aw);
    s.dq.assign(size_t(T * qw), 0.0f);  // attention_backward adds
    rmsnorm_backward(s.dattn.data(), mut(g.pre_avg_norm1), dfused1.data(), a.attn.data(),
                     w.pre_avg_norm1, a.rstd1.data(), T, D, kSet);
    const int src = p.kv_source;
    const float* Ks = kv[size_t(2 * src)].data();
    const float* Vs = kv[size_t(2 * src + 1)].data();
    auto& dK = dkv[size_t(2 * src)];
    auto& dV = dkv[size_t(2 * src + 1)];
    if (dK.empty()) dK.assign(size_t(T * kw), 0.0f), dV.assign(size_t(T * vw), 0.0f);
    AttnShape shape{nq, nkv, c.d_qk, c.d_v, float(1.0 / std::sqrt(double(c.d_qk)))};
    AttnRule rule{p.global ? -1 : c.sliding_window, c.num_memory_tokens};
    const int64_t ni = int64_t(items.size()), nt = num_threads();
    std::vector<int64_t> row0(size_t(ni + 1), 0);
    int64_t nmax = 0;
    for (int64_t i = 0; i < ni; ++i)
      row0[size_t(i + 1)] = row0[size_t(i)] + items[size_t(i)].n, nmax = std::max(nmax, items[size_t(i)].n);
    // Enough sequences to balance: one thread each (the inner regions then run on one thread; the
    // backward is independent of the thread count), one fork/join instead of three per sequence;
    // if all threads' kept probabilities (2·nq·n² floats a call) fit the one call's 64 MiB.
    const bool by_seq = ni >= 2 * nt && double(nt) * 8.0 * double(nq) * double(nmax) * double(nmax) <= 64.0 * (1 << 20);
#pragma omp parallel for schedule(dynamic, 1) if (by_seq)
    for (int64_t i = 0; i < ni; ++i) {
      const int64_t r0 = row0[size_t(i)], n = items[size_t(i)].n;
      attention_backward(s.dq.data() + r0 * qw, dK.data() + r0 * kw, dV.data() + r0 * vw,
                         s.dattn.data() + r0 * aw, a.q.data() + r0 * qw, Ks + r0 * kw,
                         Vs + r0 * vw, a.attn.data() + r0 * aw, a.lse.data() + r0 * nq,
                         pos + r0, pos + r0, n, n, shape, rule);
    }
    if (c.rope) rope_backward(s.dq.data(), pos, T, nq, c.d_qk, inv_freq_.data());
    put_proj(s.dq.data(), q_col, qw);
    if (p.producer()) {  // every consumer (a later layer) has added its share by now
      if (c.rope) rope_backward(dK.data(), pos, T, nkv, c.d_qk, inv_freq_.data());
      put_proj(dK.data(), kv_col, kw);
      put_proj(dV.data(), kv_col + kw, vw);
    }
  }
  HYMBA_CHECK(covered == P, "layer_backward: the gradient pieces do not tile in_proj's rows");

  // Input projection and norm; the residual passes dx through unchanged.
  resize(s.dxn, T * H);
  linear_backward(l, Slot::InProj, s.dxn.data(), mut(g.in_proj), mut(g.in_proj_bias), s.dproj.data(),
                  a.xn.data(), w.in_proj, T, kSet);
  rmsnorm_backward(dx, mut(g.input_norm), s.dxn.data(), a.x_in.data(), w.input_norm,
                   a.rstd_in.data(), T, H);
}

}  // namespace hymba
