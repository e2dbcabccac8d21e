// attention_forward / attention_backward against naive double loops.
// Tolerances: forward outputs and lse within 5e-6 of the double reference (relative to the largest
// magnitude; measured ~3e-7); the backward within 1e-5 of central differences of the double
// forward (measured ~5e-7); multi-segment / shuffled / split runs within 1e-5 of a single-segment F32
// run of the same (rounded) keys; thread count: bit-identical.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "base/dtype.h"
#include "ops/attention.h"
#include "test_util.h"

namespace hymba {
namespace {
using test::Rng;

bool vis(int64_t i, int64_t j, const AttnRule& r) {
  return j >= 0 && j <= i && (r.window < 0 || i - j <= r.window || j < r.n_always);
}

// out[Lq, H, dv], lse[Lq, H] over keys k[n, KV, dqk], v[n, KV, dv] with positions kpos.
void naive(std::vector<double>& out, std::vector<double>& lse, const std::vector<double>& q,
           const std::vector<int32_t>& qpos, const std::vector<double>& k,
           const std::vector<double>& v, const std::vector<int32_t>& kpos, const AttnShape& s,
           const AttnRule& r) {
  const int64_t Lq = int64_t(qpos.size()), Lk = int64_t(kpos.size());
  const int64_t H = s.n_head, KV = s.n_kv, G = H / KV;
  out.assign(size_t(Lq * H * s.d_v), 0.0);
  lse.assign(size_t(Lq * H), -INFINITY);
  std::vector<double> sc(static_cast<size_t>(Lk));
  for (int64_t t = 0; t < Lq; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / G;
      double m = -INFINITY;
      for (int64_t j = 0; j < Lk; ++j) {
        sc[size_t(j)] = -INFINITY;
        if (!vis(qpos[size_t(t)], kpos[size_t(j)], r)) continue;
        double d = 0;
        for (int64_t i = 0; i < s.d_qk; ++i)
          d += q[size_t((t * H + h) * s.d_qk + i)] * k[size_t((j * KV + g) * s.d_qk + i)];
        sc[size_t(j)] = d * double(s.scale);
        m = std::max(m, sc[size_t(j)]);
      }
      if (m == -INFINITY) continue;
      double l = 0;
      for (int64_t j = 0; j < Lk; ++j) l += std::exp(sc[size_t(j)] - m);
      lse[size_t(t * H + h)] = m + std::log(l);
      for (int64_t j = 0; j < Lk; ++j) {
        const double p = std::exp(sc[size_t(j)] - m) / l;
        if (p == 0) continue;
        for (int64_t i = 0; i < s.d_v; ++i)
          out[size_t((t * H + h) * s.d_v + i)] += p * v[size_t((j * KV + g) * s.d_v + i)];
      }
    }
}

// Keys stored in a given dtype; `kf`/`vf` keep the values the kernel sees (after rounding).
struct Seg {
  std::vector<float> kf, vf;
  std::vector<uint16_t> k16, v16;
  std::vector<int32_t> pos;
  DType dt = DType::F32;
  KVSegment view() const {
    KVSegment s;
    s.dtype = dt;
    s.pos = pos.data();
    s.n = int64_t(pos.size());
    s.k = dt == DType::F32 ? static_cast<const void*>(kf.data()) : k16.data();
    s.v = dt == DType::F32 ? static_cast<const void*>(vf.data()) : v16.data();
    return s;
  }
};

Seg make_seg(const std::vector<float>& k, const std::vector<float>& v, std::vector<int32_t> pos, DType dt) {
  Seg s;
  s.dt = dt, s.pos = std::move(pos), s.kf = k, s.vf = v;
  auto round = [&](std::vector<float>& f, std::vector<uint16_t>& h) {
    if (dt == DType::F32) return;
    h.resize(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
      h[i] = dt == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      f[i] = dt == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
    }
  };
  round(s.kf, s.k16), round(s.vf, s.v16);
  return s;
}

struct Result {
  std::vector<float> out, lse;
};

Result run(const std::vector<float>& q, const std::vector<int32_t>& qpos, const std::vector<Seg>& segs,
           const AttnShape& s, const AttnRule& r) {
  const int64_t Lq = int64_t(qpos.size());
  Result res;
  res.out.assign(size_t(Lq * s.n_head * s.d_v), NAN);
  res.lse.assign(size_t(Lq * s.n_head), NAN);
  std::vector<KVSegment> views;
  for (auto& sg : segs) views.push_back(sg.view());
  attention_forward(res.out.data(), res.lse.data(), q.data(), qpos.data(), Lq, views, s, r);
  return res;
}

// Naive reference over the concatenation of the segments (as the kernel sees their values).
void reference(std::vector<double>& out, std::vector<double>& lse, const std::vector<float>& q,
               const std::vector<int32_t>& qpos, const std::vector<Seg>& segs, const AttnShape& s,
               const AttnRule& r) {
  std::vector<double> k, v;
  std::vector<int32_t> pos;
  for (auto& sg : segs) {
    k.insert(k.end(), sg.kf.begin(), sg.kf.end());
    v.insert(v.end(), sg.vf.begin(), sg.vf.end());
    pos.insert(pos.end(), sg.pos.begin(), sg.pos.end());
  }
  naive(out, lse, test::to_d(q), qpos, k, v, pos, s, r);
}

double lse_err(const std::vector<float>& a, const std::vector<double>& ref) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ref[i] == -INFINITY) {
      if (a[i] != -INFINITY) return INFINITY;
      continue;
    }
    e = std::max(e, std::abs(double(a[i]) - ref[i]) / std::max(1.0, std::abs(ref[i])));
  }
  return e;
}

AttnShape shape(int64_t H, int64_t KV, int64_t dqk, int64_t dv) {
  return AttnShape{H, KV, dqk, dv, float(1.0 / std::sqrt(double(dqk)))};
}

std::vector<int32_t> iota_pos(int64_t n, int32_t start) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), start);
  return p;
}

void expect_matches_reference(const std::vector<float>& q, const std::vector<int32_t>& qpos,
                              const std::vector<Seg>& segs, const AttnShape& s, const AttnRule& r,
                              const char* what) {
  const Result res = run(q, qpos, segs, s, r);
  std::vector<double> out, lse;
  reference(out, lse, q, qpos, segs, s, r);
  const double eo = test::norm_err(res.out, out), el = lse_err(res.lse, lse);
  std::printf("  %s: out err %.2e, lse err %.2e\n", what, eo, el);
  EXPECT_LT(eo, 5e-6) << what;
  EXPECT_LT(el, 5e-6) << what;
}

// Single F32 segment, queries = keys (prefill of a fresh sequence), over GQA ratios and rules.
TEST(Attention, ForwardGqaWindowsAndDims) {
  Rng rng(1);
  const int64_t L = 37;
  for (auto [H, KV] : {std::pair<int64_t, int64_t>{3, 3}, {4, 2}, {10, 2}, {5, 1}})
    for (auto [dqk, dv] : {std::pair<int64_t, int64_t>{8, 16}, {13, 7}, {64, 128}})
      for (AttnRule r : {AttnRule{-1, 0}, AttnRule{5, 3}, AttnRule{0, 0}, AttnRule{7, 0}}) {
        const AttnShape s = shape(H, KV, dqk, dv);
        auto q = rng.vec(size_t(L * H * dqk), -2, 2);
        auto k = rng.vec(size_t(L * KV * dqk), -2, 2);
        auto v = rng.vec(size_t(L * KV * dv));
        auto pos = iota_pos(L, 0);
        char what[96];
        std::snprintf(what, sizeof what, "H%ld KV%ld dqk%ld dv%ld window%ld always%ld", long(H), long(KV),
                      long(dqk), long(dv), long(r.window), long(r.n_always));
        expect_matches_reference(q, pos, {make_seg(k, v, pos, DType::F32)}, s, r, what);
      }
}

// A chunk of queries in the middle of a sequence, cached keys in BF16/F16 plus the chunk's own keys,
// the cache shuffled across several segments with empty slots; checked against the naive reference
// and against one F32 segment holding the same (rounded) keys in order.
TEST(Attention, ForwardSegmentsShuffledEmptySlotsMidChunk) {
  Rng rng(2);
  const int64_t H = 10, KV = 2, dqk = 8, dv = 16;
  const AttnShape s = shape(H, KV, dqk, dv);
  const int64_t past = 150;  // queries at positions past .. past + Lq - 1
  // Lq 40: 200 query rows per K/V head, the F32 segment's blocks as sgemm calls (kGemmMinRows).
  for (int64_t Lq : {23, 40})
  for (AttnRule r : {AttnRule{-1, 0}, AttnRule{40, 6}, AttnRule{3, 4}}) {
    const int64_t total = past + Lq;
    auto k = rng.vec(size_t(total * KV * dqk), -2, 2);
    auto v = rng.vec(size_t(total * KV * dv));
    auto q = rng.vec(size_t(Lq * H * dqk), -2, 2);
    // Cache rows 0..past-1 in shuffled order over 3 segments of different dtypes, plus empty slots.
    std::vector<int64_t> perm(static_cast<size_t>(past));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.g);
    const DType dts[3] = {DType::BF16, DType::F16, DType::F32};
    const int64_t cut[4] = {0, 61, 117, past};
    std::vector<Seg> segs;
    std::vector<Seg> ordered_parts;  // rounded values, for the F32 single-segment run
    std::vector<float> kr(size_t(total * KV * dqk)), vr(size_t(total * KV * dv));
    for (int si = 0; si < 3; ++si) {
      std::vector<float> ks, vs;
      std::vector<int32_t> ps;
      for (int64_t a = cut[si]; a < cut[si + 1]; ++a) {
        const int64_t row = perm[size_t(a)];
        ks.insert(ks.end(), k.begin() + row * KV * dqk, k.begin() + (row + 1) * KV * dqk);
        vs.insert(vs.end(), v.begin() + row * KV * dv, v.begin() + (row + 1) * KV * dv);
        ps.push_back(int32_t(row));
        if (a % 7 == 3) {  // an empty slot (finite stale data)
          for (int64_t i = 0; i < KV * dqk; ++i) ks.push_back(rng.uni(-50, 50));
          for (int64_t i = 0; i < KV * dv; ++i) vs.push_back(rng.uni(-50, 50));
          ps.push_back(-1);
        }
      }
      segs.push_back(make_seg(ks, vs, ps, dts[si]));
      const Seg& sg = segs.back();
      for (size_t a = 0; a < sg.pos.size(); ++a) {
        if (sg.pos[a] < 0) continue;
        std::copy(sg.kf.begin() + int64_t(a) * KV * dqk, sg.kf.begin() + int64_t(a + 1) * KV * dqk,
                  kr.begin() + sg.pos[a] * KV * dqk);
        std::copy(sg.vf.begin() + int64_t(a) * KV * dv, sg.vf.begin() + int64_t(a + 1) * KV * dv,
                  vr.begin() + sg.pos[a] * KV * dv);
      }
    }
    // The chunk's own keys (F32), in order.
    std::vector<float> kc(k.begin() + past * KV * dqk, k.end()), vc(v.begin() + past * KV * dv, v.end());
    std::copy(kc.begin(), kc.end(), kr.begin() + past * KV * dqk);
    std::copy(vc.begin(), vc.end(), vr.begin() + past * KV * dv);
    auto qpos = iota_pos(Lq, int32_t(past));
    segs.push_back(make_seg(kc, vc, qpos, DType::F32));
    std::swap(segs[0], segs[3]);  // the chunk first: segment order must not matter

    char what[64];
    std::snprintf(what, sizeof what, "4 segments Lq%ld window%ld always%ld", long(Lq), long(r.window),
                  long(r.n_always));
    expect_matches_reference(q, qpos, segs, s, r, what);

    const Result a = run(q, qpos, segs, s, r);
    const Result b = run(q, qpos, {make_seg(kr, vr, iota_pos(total, 0), DType::F32)}, s, r);
    double e = 0;
    for (size_t i = 0; i < a.out.size(); ++i) e = std::max(e, double(std::abs(a.out[i] - b.out[i])));
    for (size_t i = 0; i < a.lse.size(); ++i) e = std::max(e, double(std::abs(a.lse[i] - b.lse[i])));
    std::printf("  vs single F32 segment: max abs diff %.2e\n", e);
    EXPECT_LT(e, 1e-5);
  }
}

// Decode: one query over many keys (the key range is split across tasks), and a query that sees
// nothing (zeros, lse = -inf).
TEST(Attention, ForwardDecodeAndNoVisibleKey) {
  Rng rng(3);
  const int64_t H = 25, KV = 5, dqk = 64, dv = 128, Lk = 700;
  const AttnShape s = shape(H, KV, dqk, dv);
  auto k = rng.vec(size_t(Lk * KV * dqk), -1, 1);
  auto v = rng.vec(size_t(Lk * KV * dv));
  auto kpos = iota_pos(Lk, 0);
  auto q = rng.vec(size_t(H * dqk), -1, 1);
  for (AttnRule r : {AttnRule{-1, 0}, AttnRule{300, 128}}) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16})
      expect_matches_reference(q, {int32_t(Lk - 1)}, {make_seg(k, v, kpos, dt)}, s, r, "decode");
  }
  // Keys only in the future of the query.
  auto far = iota_pos(Lk, 1000);
  const Result res = run(q, {5}, {make_seg(k, v, far, DType::F32)}, s, AttnRule{-1, 0});
  for (float x : res.out) EXPECT_EQ(x, 0.0f);
  for (float x : res.lse) EXPECT_EQ(x, -INFINITY);
}

TEST(Attention, ForwardIndependentOfThreadCount) {
  Rng rng(4);
  const int64_t H = 25, KV = 5, dqk = 64, dv = 128, L = 300;
  const AttnShape s = shape(H, KV, dqk, dv);
  auto k = rng.vec(size_t(L * KV * dqk)), v = rng.vec(size_t(L * KV * dv)), q = rng.vec(size_t(L * H * dqk));
  auto pos = iota_pos(L, 0);
  std::vector<Seg> segs{make_seg(k, v, pos, DType::BF16)};
  const int nt = omp_get_max_threads();
  for (auto qs : {std::pair<int64_t, int64_t>{0, L}, {L - 1, 1}}) {  // prefill and decode
    std::vector<float> qq(q.begin() + qs.first * H * dqk, q.begin() + (qs.first + qs.second) * H * dqk);
    std::vector<int32_t> qp(pos.begin() + qs.first, pos.begin() + qs.first + qs.second);
    omp_set_num_threads(1);
    const Result a = run(qq, qp, segs, s, AttnRule{64, 16});
    omp_set_num_threads(std::max(2, nt));
    const Result b = run(qq, qp, segs, s, AttnRule{64, 16});
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
  }
  omp_set_num_threads(nt);
}

// A batch of items as a batched decode step (plus a prefill chunk, a query-less item and an item
// without keys) in one attention_forward_batch: each item bit-identical to attention_forward of it
// alone, on 1 and 2+ threads, and within the usual tolerance of the double reference.
TEST(Attention, BatchEqualsItemsAlone) {
  Rng rng(7);
  const int64_t H = 25, KV = 5, dqk = 64, dv = 128;
  const AttnShape s = shape(H, KV, dqk, dv);
  const AttnRule r{100, 16};
  struct Item {
    std::vector<Seg> segs;
    std::vector<KVSegment> views;
    std::vector<float> q;
    std::vector<int32_t> qpos;
  };
  std::vector<Item> items;
  // Decode items over 1 to 20 key blocks (a meta segment + a cache segment, bf16), one prefill chunk.
  for (int64_t n : {5, 64, 130, 700, 1290}) {
    Item it;
    auto meta_k = rng.vec(size_t(16 * KV * dqk)), meta_v = rng.vec(size_t(16 * KV * dv));
    it.segs.push_back(make_seg(meta_k, meta_v, iota_pos(16, 0), DType::BF16));
    auto k = rng.vec(size_t(n * KV * dqk)), v = rng.vec(size_t(n * KV * dv));
    it.segs.push_back(make_seg(k, v, iota_pos(n, 16), DType::BF16));
    it.qpos = {int32_t(16 + n)};
    it.q = rng.vec(size_t(H * dqk));
    items.push_back(std::move(it));
  }
  {
    Item it;
    const int64_t L = 40;
    auto k = rng.vec(size_t(L * KV * dqk)), v = rng.vec(size_t(L * KV * dv));
    it.qpos = iota_pos(L, 0);
    it.segs.push_back(make_seg(k, v, it.qpos, DType::F32));
    it.q = rng.vec(size_t(L * H * dqk));
    items.push_back(std::move(it));
  }
  items.push_back(Item{});  // no queries
  {
    Item it;  // a query without keys
    it.qpos = {3};
    it.q = rng.vec(size_t(H * dqk));
    items.push_back(std::move(it));
  }
  for (auto& it : items)
    for (auto& sg : it.segs) it.views.push_back(sg.view());

  auto batch = [&]() {
    std::vector<Result> res(items.size());
    std::vector<AttnQuery> qs;
    for (size_t i = 0; i < items.size(); ++i) {
      const int64_t Lq = int64_t(items[i].qpos.size());
      res[i].out.assign(size_t(Lq * H * dv), NAN), res[i].lse.assign(size_t(Lq * H), NAN);
      qs.push_back(AttnQuery{res[i].out.data(), res[i].lse.data(), items[i].q.data(), items[i].qpos.data(), Lq,
                             items[i].views});
    }
    attention_forward_batch(qs, s, r);
    return res;
  };
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = batch();
  omp_set_num_threads(std::max(2, nt));
  const auto two = batch();
  for (size_t i = 0; i < items.size(); ++i) {
    const Result alone = run(items[i].q, items[i].qpos, items[i].segs, s, r);
    EXPECT_EQ(one[i].out, alone.out) << "item " << i;
    EXPECT_EQ(one[i].lse, alone.lse) << "item " << i;
    EXPECT_EQ(two[i].out, alone.out) << "item " << i;
    EXPECT_EQ(two[i].lse, alone.lse) << "item " << i;
    if (items[i].qpos.empty()) continue;
    std::vector<double> out, lse;
    reference(out, lse, items[i].q, items[i].qpos, items[i].segs, s, r);
    const double eo = test::norm_err(two[i].out, out), el = lse_err(two[i].lse, lse);
    std::printf("  item %zu: out err %.2e, lse err %.2e\n", i, eo, el);
    EXPECT_LT(eo, 5e-6) << "item " << i;
    EXPECT_LT(el, 5e-6) << "item " << i;
  }
  omp_set_num_threads(nt);
}

// Backward against central differences of the double forward, loss = Σ dout · out.
TEST(Attention, BackwardFiniteDifferences) {
  Rng rng(5);
  struct Case {
    int64_t H, KV, dqk, dv, L;
    int32_t p0;
    AttnRule r;
  };
  for (const Case& c : {Case{2, 2, 8, 16, 13, 0, {-1, 0}}, Case{4, 2, 8, 16, 11, 0, {3, 2}},
                        Case{5, 1, 7, 5, 9, 20, {2, 0}}, Case{10, 2, 8, 16, 70, 0, {20, 4}},
                        Case{4, 1, 16, 12, 150, 3, {40, 8}}}) {
    // The large cases (several key and query blocks; the last with one K/V head, whose q, dout and
    // dq the backward reads in place) check 150 random coordinates per input.
    const size_t sample = c.L > 40 ? 150 : 0;
    const AttnShape s = shape(c.H, c.KV, c.dqk, c.dv);
    const int64_t L = c.L;
    auto q = rng.vec(size_t(L * c.H * c.dqk), -1.5, 1.5);
    auto k = rng.vec(size_t(L * c.KV * c.dqk), -1.5, 1.5);
    auto v = rng.vec(size_t(L * c.KV * c.dv));
    auto dout = rng.vec(size_t(L * c.H * c.dv));
    auto pos = iota_pos(L, c.p0);
    const Result fw = run(q, pos, {make_seg(k, v, pos, DType::F32)}, s, c.r);
    // Keys in chunks of 64 (the large case: two) as for long sequences, else in one.
    const int64_t chunk = c.L > 64 ? 64 : 0;
    std::vector<float> dq(q.size(), 0.5f), dk(k.size(), -0.25f), dv(v.size(), 0.125f);  // +=
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                       fw.out.data(), fw.lse.data(), pos.data(), pos.data(), L, L, s, c.r, chunk);
    if (chunk > 0) {  // and one chunk gives the same up to rounding
      std::vector<float> dq1(q.size(), 0.5f), dk1(k.size(), -0.25f), dv1(v.size(), 0.125f);
      attention_backward(dq1.data(), dk1.data(), dv1.data(), dout.data(), q.data(), k.data(), v.data(),
                         fw.out.data(), fw.lse.data(), pos.data(), pos.data(), L, L, s, c.r);
      EXPECT_LT(test::norm_err(dq1, test::to_d(dq)), 1e-6);
      EXPECT_EQ(dk1, dk);  // each key is in one chunk: its sums are the same
      EXPECT_EQ(dv1, dv);
    }
    for (auto& x : dq) x -= 0.5f;
    for (auto& x : dk) x += 0.25f;
    for (auto& x : dv) x -= 0.125f;
    const auto qd = test::to_d(q), kd = test::to_d(k), vd = test::to_d(v), dod = test::to_d(dout);
    auto loss = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv) {
      std::vector<double> out, lse;
      naive(out, lse, qq, pos, kk, vv, pos, s, c.r);
      return test::dotd(out, dod);
    };
    auto check = [&](const std::vector<float>& g, const std::vector<double>& x0, int which) {
      auto f = [&](const std::vector<double>& x) {
        return loss(which == 0 ? x : qd, which == 1 ? x : kd, which == 2 ? x : vd);
      };
      const auto idx = test::sample_indices(x0.size(), sample, rng.g);
      const auto fd = test::fd_grad(f, x0, idx);
      std::vector<float> gs;
      for (size_t i : idx) gs.push_back(g[i]);
      return test::norm_err(gs, fd);
    };
    const double eq = check(dq, qd, 0), ek = check(dk, kd, 1), ev = check(dv, vd, 2);
    std::printf("  H%ld KV%ld L%ld window%ld: dq %.2e dk %.2e dv %.2e\n", long(c.H), long(c.KV), long(L),
                long(c.r.window), eq, ek, ev);
    EXPECT_LT(eq, 1e-5);
    EXPECT_LT(ek, 1e-5);
    EXPECT_LT(ev, 1e-5);
  }
}

TEST(Attention, BackwardIndependentOfThreadCount) {
  Rng rng(6);
  const int64_t H = 10, KV = 2, dqk = 16, dv = 32, L = 200;
  const AttnShape s = shape(H, KV, dqk, dv);
  auto q = rng.vec(size_t(L * H * dqk)), k = rng.vec(size_t(L * KV * dqk)), v = rng.vec(size_t(L * KV * dv));
  auto dout = rng.vec(size_t(L * H * dv));
  auto pos = iota_pos(L, 0);
  const AttnRule r{50, 8};
  const Result fw = run(q, pos, {make_seg(k, v, pos, DType::F32)}, s, r);
  auto go = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> g(q.size() + k.size() + v.size(), 0.0f);
    attention_backward(g.data(), g.data() + q.size(), g.data() + q.size() + k.size(), dout.data(),
                       q.data(), k.data(), v.data(), fw.out.data(), fw.lse.data(), pos.data(),
                       pos.data(), L, L, s, r);
    return g;
  };
  const int nt = omp_get_max_threads();
  EXPECT_EQ(go(1), go(std::max(2, nt)));
  omp_set_num_threads(nt);
}

}  // namespace
}  // namespace hymba
