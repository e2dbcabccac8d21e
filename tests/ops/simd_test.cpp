// The Highway kernels on every target this CPU supports (SSE4, AVX2, AVX-512 ...), so a machine
// with AVX-512 also checks the AVX2 code CI machines run. Each primitive is compared with double
// loops (tolerance 2e-6 relative to the largest magnitude), and the scan / attention results of
// every target agree with the default target's within 1e-5.
#include <gtest/gtest.h>

#include <hwy/targets.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "base/dtype.h"
#include "ops/attention.h"
#include "ops/simd.h"
#include "ops/ssm_scan.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

struct TargetGuard {
  ~TargetGuard() { hwy::SetSupportedTargetsForTest(0); }
};

// rows_dot / rows_accum over row counts that take each row tiling (4-row passes, the 5-row pass
// of a GQA group of 5, single rows) and head sizes with and without a scalar tail.
void check_rows(Rng& rng, int64_t R, int64_t d) {
  SCOPED_TRACE("R " + std::to_string(R) + " d " + std::to_string(d));
  const int64_t nb = 9;
  auto a = rng.vec(size_t(R * d)), bf = rng.vec(size_t(nb * d)), P = rng.vec(size_t(R * nb));
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<uint16_t> b16(bf.size());
    std::vector<float> bv = bf;  // values as the kernel sees them
    for (size_t i = 0; i < bf.size(); ++i) {
      if (dt == DType::F32) break;
      b16[i] = dt == DType::BF16 ? f32_to_bf16(bf[i]) : f32_to_f16(bf[i]);
      bv[i] = dt == DType::BF16 ? bf16_to_f32(b16[i]) : f16_to_f32(b16[i]);
    }
    const void* b = dt == DType::F32 ? static_cast<const void*>(bf.data()) : b16.data();
    std::vector<float> S(size_t(R * nb));
    simd::rows_dot(S.data(), nb, a.data(), d, R, b, d, dt, nb, d, 0.5f);
    std::vector<double> Sr(S.size());
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < nb; ++j) {
        double s = 0;
        for (int64_t i = 0; i < d; ++i) s += double(a[size_t(r * d + i)]) * bv[size_t(j * d + i)];
        Sr[size_t(r * nb + j)] = 0.5 * s;
      }
    EXPECT_LT(test::norm_err(S, Sr), 2e-6);
    std::vector<float> acc(size_t(R * d), 1.0f);
    simd::rows_accum(acc.data(), d, P.data(), nb, R, b, d, dt, nb, d);
    std::vector<double> ar(acc.size(), 1.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < nb; ++j)
        for (int64_t i = 0; i < d; ++i) ar[size_t(r * d + i)] += double(P[size_t(r * nb + j)]) * bv[size_t(j * d + i)];
    EXPECT_LT(test::norm_err(acc, ar), 2e-6);
  }
}

void check_primitives() {
  Rng rng(1);
  for (int64_t R : {1, 4, 5, 7, 9, 10})
    for (int64_t d : {37, 64, 128}) check_rows(rng, R, d);
  const auto a = rng.vec(53);
  auto x = rng.vec(53, -10, 10);
  double m = -INFINITY, sum = 0;
  for (float v : x) m = std::max(m, double(v));
  EXPECT_EQ(simd::max(x.data(), 53), float(m));
  std::vector<double> e(x.size());
  for (size_t i = 0; i < x.size(); ++i) sum += (e[i] = std::exp(double(x[i]) - m));
  auto y = x;
  const float s = simd::exp_sub_sum(y.data(), 53, float(m));
  EXPECT_LT(test::norm_err(y, e), 2e-6);
  EXPECT_NEAR(s, sum, 2e-6 * sum);
  double dd = 0;
  for (size_t i = 0; i < x.size(); ++i) dd += double(x[i]) * a[i];
  EXPECT_NEAR(simd::dot(x.data(), a.data(), 53), dd, 2e-6 * 53 * 10);
  std::vector<float> si(x.size());
  simd::silu(si.data(), x.data(), 53);
  std::vector<double> sr(x.size());
  for (size_t i = 0; i < x.size(); ++i) sr[i] = x[i] / (1 + std::exp(-double(x[i])));
  EXPECT_LT(test::norm_err(si, sr), 2e-6);
}

TEST(Simd, EveryTarget) {
  TargetGuard guard;
  // Reference results on the default (best) target.
  Rng rng(2);
  const int64_t L = 13, D = 45, N = 16;
  auto x = rng.vec(size_t(L * D)), dl = rng.vec(size_t(L * D), 0.05f, 0.5f), A = rng.vec(size_t(D * N), -2, -0.1f);
  auto B = rng.vec(size_t(L * N)), C = rng.vec(size_t(L * N)), Ds = rng.vec(size_t(D)), z = rng.vec(size_t(L * D));
  auto dout = rng.vec(size_t(L * D));
  auto scan = [&]() {
    std::vector<float> r(size_t(L * D)), h(size_t(D * N), 0.1f);
    selective_scan_forward(r.data(), h.data(), x.data(), dl.data(), A.data(), B.data(), C.data(), Ds.data(),
                           z.data(), L, D, N);
    std::vector<float> g(size_t(3 * L * D + D * N + 2 * L * N + D), 0.0f);
    float *gx = g.data(), *gd = gx + L * D, *gz = gd + L * D, *gA = gz + L * D, *gB = gA + D * N,
          *gC = gB + L * N, *gD = gC + L * N;
    selective_scan_backward(gx, gd, gA, gB, gC, gD, gz, dout.data(), nullptr, x.data(), dl.data(), A.data(),
                            B.data(), C.data(), Ds.data(), z.data(), L, D, N);
    r.insert(r.end(), h.begin(), h.end());
    r.insert(r.end(), g.begin(), g.end());
    // One token: the decode step's kernel (vectorised over the state index).
    std::vector<float> r1(static_cast<size_t>(D)), h1(size_t(D * N), 0.1f);
    selective_scan_forward(r1.data(), h1.data(), x.data(), dl.data(), A.data(), B.data(), C.data(), Ds.data(),
                           z.data(), 1, D, N);
    r.insert(r.end(), r1.begin(), r1.end());
    r.insert(r.end(), h1.begin(), h1.end());
    return r;
  };
  const int64_t H = 10, KV = 2, dq = 24, dv = 40, Lk = 70;
  auto q = rng.vec(size_t(L * H * dq)), k = rng.vec(size_t(Lk * KV * dq)), v = rng.vec(size_t(Lk * KV * dv));
  // Keys 0..34 in BF16, 35..69 in F16: both widenings.
  const int64_t half = Lk / 2;
  std::vector<uint16_t> kb(k.size()), vb(v.size());
  for (size_t i = 0; i < k.size(); ++i) kb[i] = int64_t(i) < half * KV * dq ? f32_to_bf16(k[i]) : f32_to_f16(k[i]);
  for (size_t i = 0; i < v.size(); ++i) vb[i] = int64_t(i) < half * KV * dv ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
  std::vector<int32_t> kpos(static_cast<size_t>(Lk)), qpos(static_cast<size_t>(L));
  for (int64_t j = 0; j < Lk; ++j) kpos[size_t(j)] = int32_t(j);
  for (int64_t t = 0; t < L; ++t) qpos[size_t(t)] = int32_t(Lk - L + t);
  const AttnShape sh{H, KV, dq, dv, 0.2f};
  auto attn = [&]() {
    std::vector<float> out(size_t(L * H * dv)), lse(size_t(L * H));
    const KVSegment segs[2] = {{kb.data(), vb.data(), DType::BF16, kpos.data(), half},
                               {kb.data() + half * KV * dq, vb.data() + half * KV * dv, DType::F16,
                                kpos.data() + half, Lk - half}};
    attention_forward(out.data(), lse.data(), q.data(), qpos.data(), L, segs, sh, AttnRule{20, 5});
    out.insert(out.end(), lse.begin(), lse.end());
    return out;
  };
  const auto scan_ref = test::to_d(scan()), attn_ref = test::to_d(attn());
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    check_primitives();
    const double es = test::norm_err(scan(), scan_ref), ea = test::norm_err(attn(), attn_ref);
    std::printf("  %s: scan vs default %.1e, attention vs default %.1e\n", hwy::TargetName(target), es, ea);
    EXPECT_LT(es, 1e-5);
    EXPECT_LT(ea, 1e-5);
  }
}

}  // namespace
}  // namespace hymba
