#include "ops/ssm_scan.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/error.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/ssm_scan.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>
#include <hwy/aligned_allocator.h>

// Vectorised over channels: one vector holds the same state index n of Lanes consecutive
// channels, so B[t,n] and C[t,n] are broadcasts and y needs no horizontal sum. A block of
// channels narrower than a vector (the tail of D) goes through zero-padded buffers, so every
// channel takes the same arithmetic path whatever D is.
//
// The recurrences over t are independent per state index n; only y (forward) and the gradients
// of delta and x (backward) sum over n. So each block runs t in an inner loop for kG state
// indices at a time, their states in registers (kG independent chains to overlap the exps), and
// the sums over n are carried per t in small L1-resident buffers. The n order of every sum is
// the plain loop's, so the results are those of one loop over (t, n).

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// State indices per pass over t: 4 chains hide the exp's latency; 8 run out of AVX2 registers.
constexpr int64_t kG = 4;

// Loads nc (<= Lanes) floats, zero padding the rest.
HWY_INLINE VF LoadPart(DF df, const float* p, int64_t nc, int64_t NL) {
  if (nc == NL) return hn::LoadU(df, p);
  HWY_ALIGN float buf[hn::MaxLanes(df)] = {};
  std::memcpy(buf, p, size_t(nc) * 4);
  return hn::Load(df, buf);
}
HWY_INLINE void StorePart(DF df, VF v, float* p, int64_t nc, int64_t NL) {
  if (nc == NL) return hn::StoreU(v, df, p);
  HWY_ALIGN float buf[hn::MaxLanes(df)];
  hn::Store(v, df, buf);
  std::memcpy(p, buf, size_t(nc) * 4);
}
HWY_INLINE VF Sigmoid(DF df, VF z) {
  const VF one = hn::Set(df, 1.0f);
  return hn::Div(one, hn::Add(one, hn::Exp(df, hn::Neg(z))));
}
// exp(x) for the scan's x = delta·A <= 0 (delta = softplus > 0, A = -exp(A_log) < 0): Cody-Waite
// reduction and Cephes expf's degree-5 polynomial (~1 ulp), without hn::Exp's handling of x > 0
// and overflow: 16 instructions instead of ~23, and the exps are most of the scan's work. x is
// clamped at -87 (exp = 1.6e-38, still normal); a positive x would be wrong (none occurs).
HWY_INLINE VF ExpNonPos(DF df, VF x) {
  const hn::RebindToSigned<DF> di;
  x = hn::Max(x, hn::Set(df, -87.0f));
  const VF k = hn::Round(hn::Mul(x, hn::Set(df, 1.44269504088896341f)));
  x = hn::MulAdd(k, hn::Set(df, -0.693359375f), x);
  x = hn::MulAdd(k, hn::Set(df, 2.12194440e-4f), x);
  VF p = hn::Set(df, 1.9875691500e-4f);
  p = hn::MulAdd(p, x, hn::Set(df, 1.3981999507e-3f));
  p = hn::MulAdd(p, x, hn::Set(df, 8.3334519073e-3f));
  p = hn::MulAdd(p, x, hn::Set(df, 4.1665795894e-2f));
  p = hn::MulAdd(p, x, hn::Set(df, 1.6666665459e-1f));
  p = hn::MulAdd(p, x, hn::Set(df, 5.0000001201e-1f));
  p = hn::MulAdd(p, hn::Mul(x, x), hn::Add(x, hn::Set(df, 1.0f)));
  const auto e = hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, k), hn::Set(di, 127)));  // 2^k
  return hn::Mul(p, hn::BitCast(df, e));
}
// A[c0.., n] and a state h[c0.., n] gathered as At[n·NL + lane] (padded lanes 0).
void Gather(float* dst, const float* src, int64_t c0, int64_t nc, int64_t N, int64_t NL) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < NL; ++i) dst[n * NL + i] = i < nc ? src[(c0 + i) * N + n] : 0.0f;
}
// Columns [c0, c0 + nc) of rows t < L of src[L, D] as dst[t·NL + lane] (padded lanes 0).
void Columns(float* dst, const float* src, int64_t L, int64_t D, int64_t c0, int64_t nc, int64_t NL) {
  const DF df;
  for (int64_t t = 0; t < L; ++t) hn::Store(LoadPart(df, src + t * D + c0, nc, NL), df, dst + t * NL);
}

// Per-thread buffers of one channel block, allocated once per call.
struct Bufs {
  hwy::AlignedFreeUniquePtr<float[]> At, hs, dt, x, y;
  Bufs(int64_t L, int64_t N, int64_t NL)
      : At(hwy::AllocateAligned<float>(size_t(N * NL))), hs(hwy::AllocateAligned<float>(size_t(N * NL))),
        dt(hwy::AllocateAligned<float>(size_t(L * NL))), x(hwy::AllocateAligned<float>(size_t(L * NL))),
        y(hwy::AllocateAligned<float>(size_t(L * NL))) {}
};

// Advances states n0..n0+G-1 (hs, in place) over t < L, y[t] += Σ_n C[t,n]·h[n] in n order; with
// Hs / Es (the backward's buffers of this group only, G·NL floats per t), also stores the initial
// and every later state (h_t at Hs[(t+1)·G·NL + k·NL]) and exp(delta·A) (Es[t·G·NL + k·NL]).
template <int G>
HWY_INLINE void StatePass(int64_t n0, int64_t L, int64_t N, int64_t NL, const float* At, float* hs,
                          const float* dtb, const float* xb, float* yb, const float* B,
                          const float* C, float* Hs, float* Es) {
  const DF df;
  VF h[G], Av[G];
  for (int k = 0; k < G; ++k) h[k] = hn::Load(df, hs + (n0 + k) * NL), Av[k] = hn::Load(df, At + (n0 + k) * NL);
  if (Hs)
    for (int k = 0; k < G; ++k) hn::Store(h[k], df, Hs + k * NL);
  for (int64_t t = 0; t < L; ++t) {
    const VF dt = hn::Load(df, dtb + t * NL);
    const VF dx = hn::Mul(dt, hn::Load(df, xb + t * NL));
    VF y = hn::Load(df, yb + t * NL);
    for (int k = 0; k < G; ++k) {
      const VF a = ExpNonPos(df, hn::Mul(dt, Av[k]));
      h[k] = hn::MulAdd(a, h[k], hn::Mul(dx, hn::Set(df, B[t * N + n0 + k])));
      y = hn::MulAdd(h[k], hn::Set(df, C[t * N + n0 + k]), y);
      if (Hs) {
        hn::Store(h[k], df, Hs + ((t + 1) * G + k) * NL);
        hn::Store(a, df, Es + (t * G + k) * NL);
      }
    }
    hn::Store(y, df, yb + t * NL);
  }
  for (int k = 0; k < G; ++k) hn::Store(h[k], df, hs + (n0 + k) * NL);
}

void StatePasses(int64_t L, int64_t N, int64_t NL, const float* At, float* hs, const float* dtb,
                 const float* xb, float* yb, const float* B, const float* C) {
  int64_t n0 = 0;
  for (; n0 + kG <= N; n0 += kG) StatePass<kG>(n0, L, N, NL, At, hs, dtb, xb, yb, B, C, nullptr, nullptr);
  for (; n0 < N; ++n0) StatePass<1>(n0, L, N, NL, At, hs, dtb, xb, yb, B, C, nullptr, nullptr);
}

// The first row of each of S sequences lying one after another (row0[S] = all rows), and the
// longest length.
std::vector<int64_t> RowStarts(const int64_t* lens, int64_t S, int64_t* Lmax) {
  std::vector<int64_t> row0(size_t(S + 1), 0);
  for (int64_t s = 0; s < S; ++s) row0[size_t(s + 1)] = row0[size_t(s)] + lens[s], *Lmax = std::max(*Lmax, lens[s]);
  return row0;
}

// One token (a decode step): a channel's state h[c, 0..N) is contiguous, so vectorise over n
// instead of channels: no gather/scatter of the state and no buffers. The state update is the
// same arithmetic as below (bit-identical states); y is summed over n in a different order.
void ScanStep(float* out, float* h, const float* x, const float* delta, const float* A,
              const float* B, const float* C, const float* Dskip, const float* z, int64_t D,
              int64_t N) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  for (int64_t c = 0; c < D; ++c) {
    const VF dt = hn::Set(df, delta[c]), dx = hn::Mul(dt, hn::Set(df, x[c]));
    float* hc = h + c * N;
    const float* Ac = A + c * N;
    VF y = hn::Zero(df);
    for (int64_t n = 0; n < N; n += NL) {
      const VF a = ExpNonPos(df, hn::Mul(dt, hn::LoadU(df, Ac + n)));
      const VF hv = hn::MulAdd(a, hn::LoadU(df, hc + n), hn::Mul(dx, hn::LoadU(df, B + n)));
      hn::StoreU(hv, df, hc + n);
      y = hn::MulAdd(hv, hn::LoadU(df, C + n), y);
    }
    out[c] = hn::GetLane(hn::SumOfLanes(df, y));
  }
  // Skip term and gate over channels, vectorised (through padded buffers at the tail).
  for (int64_t c0 = 0; c0 < D; c0 += NL) {
    const int64_t nc = std::min(NL, D - c0);
    const VF xv = LoadPart(df, x + c0, nc, NL);
    VF y = hn::Add(LoadPart(df, out + c0, nc, NL), Dskip ? hn::Mul(LoadPart(df, Dskip + c0, nc, NL), xv) : hn::Zero(df));
    if (z) {
      const VF zv = LoadPart(df, z + c0, nc, NL);
      y = hn::Mul(y, hn::Mul(zv, Sigmoid(df, zv)));
    }
    StorePart(df, y, out + c0, nc, NL);
  }
}

// S sequences one after another in the rows (lens[s] each), sequence s from state hs[s] (left as
// its final state), or from zeros with the final state dropped when hs is null: one parallel
// region over (sequence, channel block) tasks.
void ScanForward(float* out, float* const* hs, const float* x, const float* delta, const float* A,
                 const float* B, const float* C, const float* Dskip, const float* z,
                 const int64_t* lens, int64_t S, int64_t D, int64_t N) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  if (S == 1 && hs && lens[0] == 1 && N % NL == 0)
    return ScanStep(out, hs[0], x, delta, A, B, C, Dskip, z, D, N);
  const int64_t nblk = (D + NL - 1) / NL;
  int64_t Lmax = 0;
  const std::vector<int64_t> row0 = RowStarts(lens, S, &Lmax);
  const double work = double(row0[size_t(S)]) * double(D) * double(N);
#pragma omp parallel if (work > 65536)
  {
    Bufs b(Lmax, N, NL);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < S * nblk; ++task) {
      const int64_t s = task / nblk, bi = task % nblk, L = lens[s], r0 = row0[size_t(s)];
      float* h = hs ? hs[s] : nullptr;
      const int64_t c0 = bi * NL, nc = std::min(NL, D - c0);
      const float *Bs = B + r0 * N, *Cs = C + r0 * N, *zs = z ? z + r0 * D : nullptr;
      float* os = out + r0 * D;
      Gather(b.At.get(), A, c0, nc, N, NL);
      if (h) Gather(b.hs.get(), h, c0, nc, N, NL);
      else std::fill(b.hs.get(), b.hs.get() + N * NL, 0.0f);
      Columns(b.dt.get(), delta + r0 * D, L, D, c0, nc, NL);
      Columns(b.x.get(), x + r0 * D, L, D, c0, nc, NL);
      const VF Dv = Dskip ? LoadPart(df, Dskip + c0, nc, NL) : hn::Zero(df);
      for (int64_t t = 0; t < L; ++t)
        hn::Store(hn::Mul(Dv, hn::Load(df, b.x.get() + t * NL)), df, b.y.get() + t * NL);
      StatePasses(L, N, NL, b.At.get(), b.hs.get(), b.dt.get(), b.x.get(), b.y.get(), Bs, Cs);
      for (int64_t t = 0; t < L; ++t) {
        VF y = hn::Load(df, b.y.get() + t * NL);
        if (zs) {
          const VF zv = LoadPart(df, zs + t * D + c0, nc, NL);
          y = hn::Mul(y, hn::Mul(zv, Sigmoid(df, zv)));
        }
        StorePart(df, y, os + t * D + c0, nc, NL);
      }
      if (h)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < nc; ++i) h[(c0 + i) * N + n] = b.hs[size_t(n * NL + i)];
    }
  }
}

// The backward of states n0..n0+G-1 over t = L-1..0, from the group's recomputed states Hs and
// factors Es (StatePass's layout); dy[t] is dLoss/dy. Adds their terms to gd[t] (ddelta), gx[t]
// (dx), dAv[n], and the group's per-lane dB, dC partials vB, vC [t·G·NL + k·NL] (Es's layout).
template <int G>
HWY_INLINE void GradPass(int64_t n0, int64_t L, int64_t N, int64_t NL, const float* At,
                         const float* Hs, const float* Es, const float* dtb, const float* xb,
                         const float* dyb, const float* B, const float* C, float* gdb, float* gxb,
                         float* dAv, float* vB, float* vC) {
  const DF df;
  VF dh[G], dA[G], An[G], hcur[G];
  for (int k = 0; k < G; ++k) {
    dh[k] = hn::Zero(df), dA[k] = hn::Load(df, dAv + (n0 + k) * NL), An[k] = hn::Load(df, At + (n0 + k) * NL);
    hcur[k] = hn::Load(df, Hs + (L * G + k) * NL);
  }
  for (int64_t t = L - 1; t >= 0; --t) {
    const VF dt = hn::Load(df, dtb + t * NL);
    const VF xv = hn::Load(df, xb + t * NL);
    const VF dy = hn::Load(df, dyb + t * NL);
    const VF dtx = hn::Mul(dt, xv);
    VF gd = hn::Load(df, gdb + t * NL);
    VF gx = hn::Load(df, gxb + t * NL);
    for (int k = 0; k < G; ++k) {
      const int64_t n = n0 + k, o = (t * G + k) * NL;
      const VF Bn = hn::Set(df, B[t * N + n]);
      const VF a = hn::Load(df, Es + o);
      const VF hprev = hn::Load(df, Hs + o);
      hn::Store(hn::MulAdd(dy, hcur[k], hn::Load(df, vC + o)), df, vC + o);
      const VF g = hn::MulAdd(dy, hn::Set(df, C[t * N + n]), dh[k]);
      const VF gah = hn::Mul(g, hn::Mul(a, hprev));  // dh·∂h/∂(delta·A)
      gd = hn::MulAdd(gah, An[k], gd);
      const VF gB = hn::Mul(g, Bn);
      gd = hn::MulAdd(gB, xv, gd);
      dA[k] = hn::MulAdd(gah, dt, dA[k]);
      hn::Store(hn::MulAdd(g, dtx, hn::Load(df, vB + o)), df, vB + o);
      gx = hn::MulAdd(gB, dt, gx);
      dh[k] = hn::Mul(g, a);
      hcur[k] = hprev;
    }
    hn::Store(gd, df, gdb + t * NL);
    hn::Store(gx, df, gxb + t * NL);
  }
  for (int k = 0; k < G; ++k) hn::Store(dA[k], df, dAv + (n0 + k) * NL);
}

// S sequences, one after another in the rows (lens[s] of them each; h0s[s] or zeros initially):
// one parallel region over (sequence, channel chunk) tasks instead of a fork/join per sequence.
void ScanBackward(float* dx, float* ddelta, float* dA, float* dB, float* dC, float* dDskip,
                  float* dz, const float* dout, const float* const* h0s, const float* x,
                  const float* delta, const float* A, const float* B, const float* C,
                  const float* Dskip, const float* z, const int64_t* lens, int64_t S, int64_t D,
                  int64_t N, bool acc) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  // acc false: = instead of += (0 + v rounds as += into zeros does).
  auto old = [&](const float* p, int64_t nc) { return acc ? LoadPart(df, p, nc, NL) : hn::Zero(df); };
  int64_t Lmax = 0;
  const std::vector<int64_t> row0 = RowStarts(lens, S, &Lmax);
  const int64_t Lsum = row0[size_t(S)];
  // dB, dC sum over channels: each fixed chunk of channels sums its lanes into its own partial,
  // and the chunks are added in order at the end, whatever the thread count. dA and dDskip sum
  // over sequences: one partial per sequence (each chunk owns its channels), added in order.
  const int64_t kChunk = std::max<int64_t>(NL, 128 / NL * NL);
  const int64_t nchunk = (D + kChunk - 1) / kChunk;
  std::vector<float> partB(size_t(nchunk * Lsum * N), 0.0f), partC(size_t(nchunk * Lsum * N), 0.0f);
  std::vector<float> partA(dA ? size_t(S * D * N) : 0, 0.0f), partD(dDskip ? size_t(S * D) : 0, 0.0f);
  const double work = double(Lsum) * double(D) * double(N);
#pragma omp parallel if (work > 65536)
  {
    Bufs b(Lmax, N, NL);
    // One state group's recomputed states and factors at a time (kG·NL floats per t, ~74 KB at
    // L = 288): with the group's dB, dC partials they stay in L2, where all N states' (~600 KB
    // with vB, vC) did not. The arithmetic is the same, in the same order.
    auto Hs = hwy::AllocateAligned<float>(size_t((Lmax + 1) * kG * NL));  // states h_{-1}..h_{L-1}
    auto Es = hwy::AllocateAligned<float>(size_t(Lmax * kG * NL));        // exp(delta_t·A)
    auto dyb = hwy::AllocateAligned<float>(size_t(Lmax * NL));
    auto gdb = hwy::AllocateAligned<float>(size_t(Lmax * NL));
    auto gxb = hwy::AllocateAligned<float>(size_t(Lmax * NL));
    auto dsb = hwy::AllocateAligned<float>(size_t(Lmax * NL));  // silu'(z)
    auto dAv = hwy::AllocateAligned<float>(size_t(N * NL));
    // Per-lane dB, dC partials, state group by group: group n0 (G states) at n0·L·NL, [t·G·NL + k·NL].
    auto vB = hwy::AllocateAligned<float>(size_t(Lmax * N * NL));
    auto vC = hwy::AllocateAligned<float>(size_t(Lmax * N * NL));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < S * nchunk; ++task) {
      const int64_t s = task / nchunk, ch = task % nchunk, L = lens[s], r0 = row0[size_t(s)];
      const float* h0 = h0s ? h0s[s] : nullptr;
      const float *xs = x + r0 * D, *ds = delta + r0 * D, *Bs = B + r0 * N, *Cs = C + r0 * N;
      const float *os = dout + r0 * D, *zs = z ? z + r0 * D : nullptr;
      const int64_t cbeg = ch * kChunk, cend = std::min(D, cbeg + kChunk);
      std::fill(vB.get(), vB.get() + L * N * NL, 0.0f);
      std::fill(vC.get(), vC.get() + L * N * NL, 0.0f);
      for (int64_t c0 = cbeg; c0 < cend; c0 += NL) {
        const int64_t nc = std::min(NL, cend - c0);
        Gather(b.At.get(), A, c0, nc, N, NL);
        if (h0) Gather(b.hs.get(), h0, c0, nc, N, NL);
        else std::fill(b.hs.get(), b.hs.get() + N * NL, 0.0f);
        Columns(b.dt.get(), ds, L, D, c0, nc, NL);
        Columns(b.x.get(), xs, L, D, c0, nc, NL);
        const VF Dv = Dskip ? LoadPart(df, Dskip + c0, nc, NL) : hn::Zero(df);
        for (int64_t t = 0; t < L; ++t)
          hn::Store(hn::Mul(Dv, hn::Load(df, b.x.get() + t * NL)), df, b.y.get() + t * NL);
        // dy does not depend on y (only dz does, below, once y is complete).
        VF dDv = hn::Zero(df);
        for (int64_t t = L - 1; t >= 0; --t) {
          const VF xv = hn::Load(df, b.x.get() + t * NL);
          const VF go = LoadPart(df, os + t * D + c0, nc, NL);
          VF dy = go;
          if (zs) {
            const VF zv = LoadPart(df, zs + t * D + c0, nc, NL);
            const VF sg = Sigmoid(df, zv);
            dy = hn::Mul(go, hn::Mul(zv, sg));
            // silu'(z) = σ(z)·(1 + z·(1 - σ(z)))
            hn::Store(hn::Mul(sg, hn::MulAdd(zv, hn::Sub(hn::Set(df, 1.0f), sg), hn::Set(df, 1.0f))), df,
                      dsb.get() + t * NL);
          }
          dDv = hn::MulAdd(dy, xv, dDv);
          hn::Store(dy, df, dyb.get() + t * NL);
          hn::Store(hn::Zero(df), df, gdb.get() + t * NL);
          hn::Store(hn::Mul(dy, Dv), df, gxb.get() + t * NL);
        }
        std::fill(dAv.get(), dAv.get() + N * NL, 0.0f);
        // Per state group: recompute its states exactly as the forward does (adding to y in the
        // forward's n order), then its backward.
        int64_t n0 = 0;
        for (; n0 + kG <= N; n0 += kG) {
          StatePass<kG>(n0, L, N, NL, b.At.get(), b.hs.get(), b.dt.get(), b.x.get(), b.y.get(), Bs, Cs, Hs.get(),
                        Es.get());
          GradPass<kG>(n0, L, N, NL, b.At.get(), Hs.get(), Es.get(), b.dt.get(), b.x.get(), dyb.get(), Bs, Cs,
                       gdb.get(), gxb.get(), dAv.get(), vB.get() + n0 * L * NL, vC.get() + n0 * L * NL);
        }
        for (; n0 < N; ++n0) {
          StatePass<1>(n0, L, N, NL, b.At.get(), b.hs.get(), b.dt.get(), b.x.get(), b.y.get(), Bs, Cs, Hs.get(),
                       Es.get());
          GradPass<1>(n0, L, N, NL, b.At.get(), Hs.get(), Es.get(), b.dt.get(), b.x.get(), dyb.get(), Bs, Cs,
                      gdb.get(), gxb.get(), dAv.get(), vB.get() + n0 * L * NL, vC.get() + n0 * L * NL);
        }
        if (zs && dz)
          for (int64_t t = L - 1; t >= 0; --t) {
            const VF go = LoadPart(df, os + t * D + c0, nc, NL);
            const VF y = hn::Load(df, b.y.get() + t * NL);
            float* dzs = dz + (r0 + t) * D + c0;
            StorePart(df, hn::MulAdd(hn::Mul(go, y), hn::Load(df, dsb.get() + t * NL), old(dzs, nc)), dzs, nc, NL);
          }
        for (int64_t t = 0; t < L; ++t) {
          const int64_t o = (r0 + t) * D + c0;
          if (ddelta) StorePart(df, hn::Add(old(ddelta + o, nc), hn::Load(df, gdb.get() + t * NL)), ddelta + o, nc, NL);
          if (dx) StorePart(df, hn::Add(old(dx + o, nc), hn::Load(df, gxb.get() + t * NL)), dx + o, nc, NL);
        }
        if (dDskip) StorePart(df, dDv, partD.data() + s * D + c0, nc, NL);
        if (dA)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < nc; ++i) partA[size_t((s * D + c0 + i) * N + n)] = dAv[size_t(n * NL + i)];
      }
      float* pB = partB.data() + (ch * Lsum + r0) * N;
      float* pC = partC.data() + (ch * Lsum + r0) * N;
      for (int64_t n0 = 0, G = kG; n0 < N; n0 += G) {
        if (n0 + kG > N) G = 1;
        const float *gB = vB.get() + n0 * L * NL, *gC = vC.get() + n0 * L * NL;
        for (int64_t t = 0; t < L; ++t)
          for (int64_t k = 0; k < G; ++k) {
            pB[t * N + n0 + k] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, gB + (t * G + k) * NL)));
            pC[t * N + n0 + k] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, gC + (t * G + k) * NL)));
          }
      }
    }
  }
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; dA && i < D * N; ++i) dA[i] += partA[size_t(s * D * N + i)];
    for (int64_t c = 0; dDskip && c < D; ++c) dDskip[c] += partD[size_t(s * D + c)];
  }
  if (!acc) {
    if (dB) std::fill(dB, dB + Lsum * N, 0.0f);
    if (dC) std::fill(dC, dC + Lsum * N, 0.0f);
  }
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t tn = 0; tn < Lsum * N; ++tn) {
      if (dB) dB[tn] += partB[size_t(ch * Lsum * N + tn)];
      if (dC) dC[tn] += partC[size_t(ch * Lsum * N + tn)];
    }
}

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hymba {
HWY_EXPORT(ScanForward);
HWY_EXPORT(ScanBackward);

namespace {
// Σ lens, each of which must be a sequence of at least one row.
int64_t total_rows(std::span<const int64_t> lens, const char* who) {
  int64_t T = 0;
  for (int64_t L : lens) {
    HYMBA_CHECK(L >= 1, std::string(who) + ": empty sequence");
    T += L;
  }
  return T;
}
}  // namespace

void selective_scan_forward(float* out, float* h, const float* x, const float* delta,
                            const float* A, const float* B, const float* C, const float* Dskip,
                            const float* z, int64_t L, int64_t D, int64_t N) {
  if (L <= 0 || D <= 0) return;
  HWY_DYNAMIC_DISPATCH(ScanForward)(out, &h, x, delta, A, B, C, Dskip, z, &L, 1, D, N);
}

void selective_scan_forward_seqs(float* out, const float* x, const float* delta, const float* A,
                                 const float* B, const float* C, const float* Dskip, const float* z,
                                 std::span<const int64_t> lens, int64_t D, int64_t N) {
  const int64_t T = total_rows(lens, "selective_scan_forward_seqs");
  if (T <= 0 || D <= 0) return;
  HWY_DYNAMIC_DISPATCH(ScanForward)(out, nullptr, x, delta, A, B, C, Dskip, z, lens.data(),
                                    int64_t(lens.size()), D, N);
}

void selective_scan_forward_steps(float* out, float* const* hs, const float* x, const float* delta,
                                  const float* A, const float* B, const float* C, const float* Dskip,
                                  const float* z, int64_t S, int64_t D, int64_t N) {
  if (S <= 0 || D <= 0) return;
  const auto scan = HWY_DYNAMIC_DISPATCH(ScanForward);
  static constexpr int64_t kOne = 1;
  // Dynamic: on a loaded machine a descheduled thread's sequences go to the other threads.
#pragma omp parallel for schedule(dynamic, 1) if (S > 1)
  for (int64_t s = 0; s < S; ++s)
    scan(out + s * D, hs + s, x + s * D, delta + s * D, A, B + s * N, C + s * N, Dskip,
         z ? z + s * D : nullptr, &kOne, 1, D, N);
}

void selective_scan_backward(float* dx, float* ddelta, float* dA, float* dB, float* dC,
                             float* dDskip, float* dz, const float* dout, const float* h0,
                             const float* x, const float* delta, const float* A, const float* B,
                             const float* C, const float* Dskip, const float* z, int64_t L,
                             int64_t D, int64_t N, bool accumulate) {
  if (L <= 0 || D <= 0) return;
  if (!accumulate && dz && !z) std::fill(dz, dz + L * D, 0.0f);  // no gate: no gradient
  HWY_DYNAMIC_DISPATCH(ScanBackward)(dx, ddelta, dA, dB, dC, dDskip, dz, dout, h0 ? &h0 : nullptr, x,
                                     delta, A, B, C, Dskip, z, &L, 1, D, N, accumulate);
}

void selective_scan_backward_seqs(float* dx, float* ddelta, float* dA, float* dB, float* dC,
                                  float* dDskip, float* dz, const float* dout, const float* x,
                                  const float* delta, const float* A, const float* B, const float* C,
                                  const float* Dskip, const float* z, std::span<const int64_t> lens,
                                  int64_t D, int64_t N, bool accumulate) {
  const int64_t T = total_rows(lens, "selective_scan_backward_seqs");
  if (T <= 0 || D <= 0) return;
  if (!accumulate && dz && !z) std::fill(dz, dz + T * D, 0.0f);
  HWY_DYNAMIC_DISPATCH(ScanBackward)(dx, ddelta, dA, dB, dC, dDskip, dz, dout, nullptr, x, delta, A,
                                     B, C, Dskip, z, lens.data(), int64_t(lens.size()), D, N, accumulate);
}
}  // namespace hymba
#endif
