#include "ops/ssm_scan.h"

#include <algorithm>
#include <cstring>
#include <vector>

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

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

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
// A[c0.., n] and a state h[c0.., n] gathered as At[n·NL + lane] (padded lanes 0).
void Gather(float* dst, const float* src, int64_t c0, int64_t nc, int64_t N, int64_t NL) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < NL; ++i) dst[n * NL + i] = i < nc ? src[(c0 + i) * N + n] : 0.0f;
}

void ScanForward(float* out, float* h, const float* x, const float* delta, const float* A,
                 const float* B, const float* C, const float* Dskip, const float* z, int64_t L,
                 int64_t D, int64_t N) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  const int64_t nblk = (D + NL - 1) / NL;
  const double work = double(L) * double(D) * double(N);
#pragma omp parallel for schedule(static) if (work > 65536)
  for (int64_t bi = 0; bi < nblk; ++bi) {
    const int64_t c0 = bi * NL, nc = std::min(NL, D - c0);
    auto At = hwy::AllocateAligned<float>(size_t(N * NL));
    auto hs = hwy::AllocateAligned<float>(size_t(N * NL));
    Gather(At.get(), A, c0, nc, N, NL);
    Gather(hs.get(), h, c0, nc, N, NL);
    const VF Dv = Dskip ? LoadPart(df, Dskip + c0, nc, NL) : hn::Zero(df);
    for (int64_t t = 0; t < L; ++t) {
      const VF dt = LoadPart(df, delta + t * D + c0, nc, NL);
      const VF xv = LoadPart(df, x + t * D + c0, nc, NL);
      const VF dx = hn::Mul(dt, xv);
      VF y = hn::Mul(Dv, xv);
      const float* Bt = B + t * N;
      const float* Ct = C + t * N;
      for (int64_t n = 0; n < N; ++n) {
        const VF a = hn::Exp(df, hn::Mul(dt, hn::Load(df, At.get() + n * NL)));
        const VF hn_ = hn::MulAdd(a, hn::Load(df, hs.get() + n * NL), hn::Mul(dx, hn::Set(df, Bt[n])));
        hn::Store(hn_, df, hs.get() + n * NL);
        y = hn::MulAdd(hn_, hn::Set(df, Ct[n]), y);
      }
      if (z) {
        const VF zv = LoadPart(df, z + t * D + c0, nc, NL);
        y = hn::Mul(y, hn::Mul(zv, Sigmoid(df, zv)));
      }
      StorePart(df, y, out + t * D + c0, nc, NL);
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < nc; ++i) h[(c0 + i) * N + n] = hs[size_t(n * NL + i)];
  }
}

void ScanBackward(float* dx, float* ddelta, float* dA, float* dB, float* dC, float* dDskip,
                  float* dz, const float* dout, const float* h0, const float* x,
                  const float* delta, const float* A, const float* B, const float* C,
                  const float* Dskip, const float* z, int64_t L, int64_t D, int64_t N) {
  const DF df;
  const int64_t NL = int64_t(hn::Lanes(df));
  // dB, dC sum over channels: each fixed chunk of channels sums its lanes into its own partial,
  // and the chunks are added in order at the end, whatever the thread count.
  const int64_t kChunk = std::max<int64_t>(NL, 128 / NL * NL);
  const int64_t nchunk = (D + kChunk - 1) / kChunk;
  std::vector<float> partB(size_t(nchunk * L * N), 0.0f), partC(size_t(nchunk * L * N), 0.0f);
  const double work = double(L) * double(D) * double(N);
#pragma omp parallel for schedule(dynamic, 1) if (work > 65536)
  for (int64_t ch = 0; ch < nchunk; ++ch) {
    const int64_t cbeg = ch * kChunk, cend = std::min(D, cbeg + kChunk);
    auto At = hwy::AllocateAligned<float>(size_t(N * NL));
    auto Hs = hwy::AllocateAligned<float>(size_t((L + 1) * N * NL));  // states h_{-1}..h_{L-1}
    auto dh = hwy::AllocateAligned<float>(size_t(N * NL));
    auto dAv = hwy::AllocateAligned<float>(size_t(N * NL));
    auto vB = hwy::AllocateAligned<float>(size_t(L * N * NL));  // per-lane dB, dC partials
    auto vC = hwy::AllocateAligned<float>(size_t(L * N * NL));
    std::fill(vB.get(), vB.get() + L * N * NL, 0.0f);
    std::fill(vC.get(), vC.get() + L * N * NL, 0.0f);
    for (int64_t c0 = cbeg; c0 < cend; c0 += NL) {
      const int64_t nc = std::min(NL, cend - c0);
      Gather(At.get(), A, c0, nc, N, NL);
      if (h0) Gather(Hs.get(), h0, c0, nc, N, NL);
      else std::fill(Hs.get(), Hs.get() + N * NL, 0.0f);
      const VF Dv = Dskip ? LoadPart(df, Dskip + c0, nc, NL) : hn::Zero(df);
      for (int64_t t = 0; t < L; ++t) {  // recompute the states exactly as the forward does
        const VF dt = LoadPart(df, delta + t * D + c0, nc, NL);
        const VF dxv = hn::Mul(dt, LoadPart(df, x + t * D + c0, nc, NL));
        const float* hp = Hs.get() + t * N * NL;
        float* hc = Hs.get() + (t + 1) * N * NL;
        for (int64_t n = 0; n < N; ++n) {
          const VF a = hn::Exp(df, hn::Mul(dt, hn::Load(df, At.get() + n * NL)));
          hn::Store(hn::MulAdd(a, hn::Load(df, hp + n * NL), hn::Mul(dxv, hn::Set(df, B[t * N + n]))),
                    df, hc + n * NL);
        }
      }
      std::fill(dh.get(), dh.get() + N * NL, 0.0f);
      VF dDv = hn::Zero(df);
      std::fill(dAv.get(), dAv.get() + N * NL, 0.0f);
      for (int64_t t = L - 1; t >= 0; --t) {
        const VF dt = LoadPart(df, delta + t * D + c0, nc, NL);
        const VF xv = LoadPart(df, x + t * D + c0, nc, NL);
        const VF go = LoadPart(df, dout + t * D + c0, nc, NL);
        const float* hp = Hs.get() + t * N * NL;
        const float* hc = Hs.get() + (t + 1) * N * NL;
        VF dy = go;
        if (z) {
          VF y = hn::Mul(Dv, xv);
          for (int64_t n = 0; n < N; ++n) y = hn::MulAdd(hn::Load(df, hc + n * NL), hn::Set(df, C[t * N + n]), y);
          const VF zv = LoadPart(df, z + t * D + c0, nc, NL);
          const VF sg = Sigmoid(df, zv);
          dy = hn::Mul(go, hn::Mul(zv, sg));
          // silu'(z) = σ(z)·(1 + z·(1 - σ(z)))
          const VF dsilu = hn::Mul(sg, hn::MulAdd(zv, hn::Sub(hn::Set(df, 1.0f), sg), hn::Set(df, 1.0f)));
          if (dz) StorePart(df, hn::MulAdd(hn::Mul(go, y), dsilu, LoadPart(df, dz + t * D + c0, nc, NL)),
                            dz + t * D + c0, nc, NL);
        }
        dDv = hn::MulAdd(dy, xv, dDv);
        VF gx = hn::Mul(dy, Dv);
        VF gd = hn::Zero(df);
        const VF dtx = hn::Mul(dt, xv);
        for (int64_t n = 0; n < N; ++n) {
          const VF Bn = hn::Set(df, B[t * N + n]);
          const VF An = hn::Load(df, At.get() + n * NL);
          const VF a = hn::Exp(df, hn::Mul(dt, An));
          const VF hprev = hn::Load(df, hp + n * NL);
          float* vc = vC.get() + (t * N + n) * NL;
          hn::Store(hn::MulAdd(dy, hn::Load(df, hc + n * NL), hn::Load(df, vc)), df, vc);
          const VF g = hn::MulAdd(dy, hn::Set(df, C[t * N + n]), hn::Load(df, dh.get() + n * NL));
          const VF gah = hn::Mul(g, hn::Mul(a, hprev));  // dh·∂h/∂(delta·A)
          gd = hn::MulAdd(gah, An, gd);
          gd = hn::MulAdd(hn::Mul(g, Bn), xv, gd);
          hn::Store(hn::MulAdd(gah, dt, hn::Load(df, dAv.get() + n * NL)), df, dAv.get() + n * NL);
          float* vb = vB.get() + (t * N + n) * NL;
          hn::Store(hn::MulAdd(g, dtx, hn::Load(df, vb)), df, vb);
          gx = hn::MulAdd(hn::Mul(g, Bn), dt, gx);
          hn::Store(hn::Mul(g, a), df, dh.get() + n * NL);
        }
        if (ddelta) StorePart(df, hn::Add(LoadPart(df, ddelta + t * D + c0, nc, NL), gd), ddelta + t * D + c0, nc, NL);
        if (dx) StorePart(df, hn::Add(LoadPart(df, dx + t * D + c0, nc, NL), gx), dx + t * D + c0, nc, NL);
      }
      if (dDskip) StorePart(df, hn::Add(LoadPart(df, dDskip + c0, nc, NL), dDv), dDskip + c0, nc, NL);
      if (dA)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < nc; ++i) dA[(c0 + i) * N + n] += dAv[size_t(n * NL + i)];
    }
    for (int64_t tn = 0; tn < L * N; ++tn) {
      partB[size_t((ch * L) * N + tn)] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, vB.get() + tn * NL)));
      partC[size_t((ch * L) * N + tn)] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, vC.get() + tn * NL)));
    }
  }
  for (int64_t ch = 0; ch < nchunk; ++ch)
    for (int64_t tn = 0; tn < L * N; ++tn) {
      if (dB) dB[tn] += partB[size_t(ch * L * N + tn)];
      if (dC) dC[tn] += partC[size_t(ch * L * N + tn)];
    }
}

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hymba {
HWY_EXPORT(ScanForward);
HWY_EXPORT(ScanBackward);

void selective_scan_forward(float* out, float* h, const float* x, const float* delta,
                            const float* A, const float* B, const float* C, const float* Dskip,
                            const float* z, int64_t L, int64_t D, int64_t N) {
  if (L <= 0 || D <= 0) return;
  HWY_DYNAMIC_DISPATCH(ScanForward)(out, h, x, delta, A, B, C, Dskip, z, L, D, N);
}

void selective_scan_forward_steps(float* out, float* const* hs, const float* x, const float* delta,
                                  const float* A, const float* B, const float* C, const float* Dskip,
                                  const float* z, int64_t S, int64_t D, int64_t N) {
  if (S <= 0 || D <= 0) return;
  const auto scan = HWY_DYNAMIC_DISPATCH(ScanForward);
  // Dynamic: on a loaded machine a descheduled thread's sequences go to the other threads.
#pragma omp parallel for schedule(dynamic, 1) if (S > 1)
  for (int64_t s = 0; s < S; ++s)
    scan(out + s * D, hs[s], x + s * D, delta + s * D, A, B + s * N, C + s * N, Dskip, z ? z + s * D : nullptr, 1, D, N);
}

void selective_scan_backward(float* dx, float* ddelta, float* dA, float* dB, float* dC,
                             float* dDskip, float* dz, const float* dout, const float* h0,
                             const float* x, const float* delta, const float* A, const float* B,
                             const float* C, const float* Dskip, const float* z, int64_t L,
                             int64_t D, int64_t N) {
  if (L <= 0 || D <= 0) return;
  HWY_DYNAMIC_DISPATCH(ScanBackward)(dx, ddelta, dA, dB, dC, dDskip, dz, dout, h0, x, delta, A, B,
                                     C, Dskip, z, L, D, N);
}
}  // namespace hymba
#endif
