#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <cblas.h>

#include "base/error.h"
#include "ops/simd.h"

namespace hymba {
namespace {

constexpr int64_t kBk = 64;  // keys per block: scores of a block stay in L1
constexpr float kNegInf = -INFINITY;

bool visible(int64_t i, int64_t j, const AttnRule& r) {
  return j >= 0 && j <= i && (r.window < 0 || i - j <= r.window || j < r.n_always);
}

// A block of keys of one segment with the range of its valid positions, so whole blocks can be
// skipped or left unmasked without looking at each key (positions may come in any order).
struct KeyBlock {
  int64_t seg, j0, n;
  int64_t pmin, pmax;  // over valid (pos >= 0) keys
  bool any_valid, all_valid;
};

KeyBlock make_block(int64_t seg, const int32_t* pos, int64_t j0, int64_t n) {
  KeyBlock b{seg, j0, n, INT64_MAX, INT64_MIN, false, true};
  for (int64_t j = j0; j < j0 + n; ++j) {
    if (pos[j] < 0) {
      b.all_valid = false;
      continue;
    }
    b.any_valid = true;
    b.pmin = std::min<int64_t>(b.pmin, pos[j]);
    b.pmax = std::max<int64_t>(b.pmax, pos[j]);
  }
  return b;
}

enum class Cover { None, Full, Partial };

// Sets the scores of keys the query does not see to -inf: S[(tq·G + gi)·lds + j] for queries at
// qp[tq] (tq < nt, each with G rows) and keys at kp[j] (j < n). The rule is evaluated once per
// query and key, not per head row.
void mask_block(float* S, int64_t lds, const int32_t* qp, int64_t nt, int64_t G, const int32_t* kp,
                int64_t n, const AttnRule& r) {
  float lim[64];
  for (int64_t tq = 0; tq < nt; ++tq) {
    for (int64_t j0 = 0; j0 < n; j0 += 64) {
      const int64_t nj = std::min<int64_t>(64, n - j0);
      for (int64_t j = 0; j < nj; ++j) lim[j] = visible(qp[tq], kp[j0 + j], r) ? INFINITY : -INFINITY;
      for (int64_t gi = 0; gi < G; ++gi) {
        float* Sr = S + (tq * G + gi) * lds + j0;
        for (int64_t j = 0; j < nj; ++j) Sr[j] = std::min(Sr[j], lim[j]);
      }
    }
  }
}

// How the keys of b are visible to queries with positions in [qmin, qmax].
Cover classify(const KeyBlock& b, int64_t qmin, int64_t qmax, const AttnRule& r) {
  if (!b.any_valid || b.pmin > qmax) return Cover::None;
  if (r.window >= 0 && b.pmin >= r.n_always && qmin - b.pmax > r.window) return Cover::None;
  if (b.all_valid && b.pmax <= qmin &&
      (r.window < 0 || qmax - b.pmin <= r.window || b.pmax < r.n_always))
    return Cover::Full;
  return Cover::Partial;
}

void check_shape(const AttnShape& s) {
  HYMBA_CHECK(s.n_kv > 0 && s.n_head > 0 && s.n_head % s.n_kv == 0,
              "attention: n_head must be a positive multiple of n_kv");
  HYMBA_CHECK(s.d_qk > 0 && s.d_v > 0, "attention: head dims must be positive");
}

const void* row_ptr(const void* base, DType t, int64_t elem) {
  return static_cast<const char*>(base) + elem * int64_t(dtype_size(t));
}

// Reads the K and V rows of key block b (contiguous: [n, n_kv, d]) once in order, one load per
// cache line, before the heads' passes read their slices of each row at a stride. Measured at decode
// (bench/attention_bench.cpp, 8,192 bf16 keys from DRAM, 1 thread): 3.5 ms -> 1.3 ms per call;
// software prefetches of the same lines did not help.
void stream_block(const KeyBlock& b, std::span<const KVSegment> segs, int64_t kw, int64_t vw) {
  const KVSegment& sg = segs[size_t(b.seg)];
  const int64_t es = int64_t(dtype_size(sg.dtype));
  const char* k = static_cast<const char*>(sg.k) + b.j0 * kw * es;
  const char* v = static_cast<const char*>(sg.v) + b.j0 * vw * es;
  uint64_t x = 0;
  for (int64_t o = 0; o < b.n * kw * es; o += 64) x += *reinterpret_cast<const uint64_t*>(k + o);
  for (int64_t o = 0; o < b.n * vw * es; o += 64) x += *reinterpret_cast<const uint64_t*>(v + o);
  asm volatile("" : : "r"(x));  // keep the loads
}

// Query rows handled together: the GQA group's heads of up to Tq consecutive queries, so every
// key row is read once for Tq·G query rows.
int64_t query_tile(int64_t G) { return std::max<int64_t>(1, 24 / G); }

// Prefill and training: with at least this many query rows (queries x GQA group) per K/V head,
// a tile of ~kGemmRows rows takes F32 key blocks as two sgemm calls (S = Q·Kᵀ, acc += P·V)
// instead of the per-row vector kernels: the forward of a sequence of `hymba bench --train`
// takes 0.66x the time (docs/RESULTS.md, Training speed). Decode (few rows) keeps the vector
// kernels; such items split their keys only below 4 tiles (training's 288 rows: 5 tiles).
constexpr int64_t kGemmRows = 256, kGemmMinRows = 128;

}  // namespace

namespace {

// How one item is cut into tasks: its key blocks, query tiles of Tq queries (R = Tq·G rows per
// K/V head) and key splits. Depends only on the item's own shapes, never on the batch or the
// thread count, so an item's result is the same alone, in a batch and on any number of threads.
struct ItemPlan {
  std::vector<KeyBlock> blocks;
  int64_t Tq = 0, R = 0, ntile = 0, nsplit = 1;
  bool gemm = false;  // F32 blocks as sgemm calls on tiles of ~kGemmRows rows
  int64_t task0 = 0;   // its first task (tile-major, then split)
  int64_t merge0 = 0;  // its first merge unit (tile, head) when nsplit > 1
  size_t part0 = 0;    // its partial results' first row in the pool
};

// A thread's working buffers, sized once per call for the largest tile.
struct Scratch {
  std::vector<float> Qs, S, acc, m, l;
};

}  // namespace

void attention_forward_batch(std::span<const AttnQuery> items, const AttnShape& shape,
                             const AttnRule& rule) {
  check_shape(shape);
  const int64_t H = shape.n_head, KV = shape.n_kv, G = H / KV, dq = shape.d_qk, dv = shape.d_v;
  const int64_t n_items = int64_t(items.size());

  std::vector<ItemPlan> plans(items.size());
  int64_t ntask = 0, nmerge = 0, Rmax = 1;
  size_t nparts = 0;
  double work = 0;
  for (int64_t it = 0; it < n_items; ++it) {
    const AttnQuery& a = items[size_t(it)];
    ItemPlan& p = plans[size_t(it)];
    int64_t nkeys = 0;
    for (size_t s = 0; s < a.segs.size(); ++s) {
      const KVSegment& sg = a.segs[s];
      HYMBA_CHECK(sg.dtype == DType::F32 || sg.dtype == DType::BF16 || sg.dtype == DType::F16,
                  "attention: KV segment dtype must be F32, BF16 or F16");
      if (sg.n > 0) HYMBA_CHECK(sg.k && sg.v && sg.pos, "attention: KV segment without data");
      for (int64_t j0 = 0; j0 < sg.n; j0 += kBk)
        p.blocks.push_back(make_block(int64_t(s), sg.pos, j0, std::min(kBk, sg.n - j0)));
      nkeys += sg.n;
    }
    p.task0 = ntask, p.merge0 = nmerge, p.part0 = nparts;
    if (a.Lq <= 0) continue;
    const int64_t U = int64_t(p.blocks.size());
    p.gemm = a.Lq * G >= kGemmMinRows;
    p.Tq = std::min(p.gemm ? std::max<int64_t>(1, kGemmRows / G) : query_tile(G), a.Lq);
    p.R = p.Tq * G, p.ntile = (a.Lq + p.Tq - 1) / p.Tq;
    // Few query tiles (decode): also split the keys so every core has work. Partial results
    // merge in a fixed order.
    const int64_t min_tiles = p.gemm ? 4 : 16;
    if (p.ntile < min_tiles && U > 1) p.nsplit = std::min<int64_t>(U, (min_tiles + p.ntile - 1) / p.ntile);
    ntask += p.ntile * p.nsplit;
    if (p.nsplit > 1) nmerge += p.ntile * KV, nparts += size_t(p.ntile * KV * p.nsplit * p.R);
    Rmax = std::max(Rmax, p.R);
    work += double(a.Lq) * double(H) * double(nkeys) * double(dq + dv);
  }
  if (ntask == 0) return;
  // Partial running max, sum and accumulator of each (tile, head, split), rows of R.
  std::vector<float> pm(nparts), pl(nparts), pacc(nparts * size_t(dv));

  auto finalize = [&](const AttnQuery& a, int64_t t0, int64_t g, int64_t Rt, const float* m,
                      const float* l, const float* acc) {
    for (int64_t r = 0; r < Rt; ++r) {
      const int64_t t = t0 + r / G, h = g * G + r % G;
      float* o = a.out + (t * H + h) * dv;
      if (l[r] > 0) {
        const float inv = 1.0f / l[r];
        for (int64_t i = 0; i < dv; ++i) o[i] = acc[r * dv + i] * inv;
        if (a.lse) a.lse[t * H + h] = m[r] + std::log(l[r]);
      } else {
        std::fill(o, o + dv, 0.0f);
        if (a.lse) a.lse[t * H + h] = kNegInf;
      }
    }
  };
  // One task per (item, query tile, key split) covering every K/V head: a key's row holds all
  // heads (K/V are [n, n_kv, d]), so one task can read each block whole and in order
  // (stream_block) before its heads' strided passes. Regrouping alone did not speed decode up;
  // the ordered read did.
  auto run_task = [&](Scratch& sc, int64_t it, int64_t task) {
    const AttnQuery& a = items[size_t(it)];
    const ItemPlan& p = plans[size_t(it)];
    const int64_t R = p.R, nsplit = p.nsplit, U = int64_t(p.blocks.size());
    const int64_t tile = task / nsplit, s = task % nsplit;
    const int64_t t0 = tile * p.Tq, nt = std::min(p.Tq, a.Lq - t0), Rt = nt * G;
    sc.acc.assign(size_t(KV * R * dv), 0.0f);
    sc.m.assign(size_t(KV * R), kNegInf);
    sc.l.assign(size_t(KV * R), 0.0f);
    int64_t qmin = INT64_MAX, qmax = INT64_MIN;
    for (int64_t tq = 0; tq < nt; ++tq) {
      const int64_t t = t0 + tq;
      qmin = std::min<int64_t>(qmin, a.qpos[t]), qmax = std::max<int64_t>(qmax, a.qpos[t]);
      for (int64_t g = 0; g < KV; ++g)
        std::memcpy(&sc.Qs[size_t((g * R + tq * G) * dq)], a.q + (t * H + g * G) * dq, size_t(G * dq) * 4);
    }
    for (int64_t g = 0; g < KV; ++g) simd::scale(&sc.Qs[size_t(g * R * dq)], shape.scale, Rt * dq);  // scores come out scaled

    for (int64_t u = s * U / nsplit; u < (s + 1) * U / nsplit; ++u) {
      const KeyBlock& b = p.blocks[size_t(u)];
      const Cover cover = classify(b, qmin, qmax, rule);
      if (cover == Cover::None) continue;
      const KVSegment& sg = a.segs[size_t(b.seg)];
      if (nsplit > 1) stream_block(b, a.segs, KV * dq, KV * dv);  // decode: the keys come from DRAM
      for (int64_t g = 0; g < KV; ++g) {
        float* acc = sc.acc.data() + g * R * dv;
        float* m = sc.m.data() + g * R;
        float* l = sc.l.data() + g * R;
        float* S = sc.S.data();
        const bool gemm = p.gemm && sg.dtype == DType::F32;
        if (gemm)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(Rt), int(b.n), int(dq), 1.0f,
                      &sc.Qs[size_t(g * R * dq)], int(dq), static_cast<const float*>(sg.k) + (b.j0 * KV + g) * dq,
                      int(KV * dq), 0.0f, S, int(kBk));
        else
          simd::rows_dot(S, kBk, &sc.Qs[size_t(g * R * dq)], dq, Rt,
                         row_ptr(sg.k, sg.dtype, (b.j0 * KV + g) * dq), KV * dq, sg.dtype, b.n, dq,
                         1.0f);
        if (cover == Cover::Partial) mask_block(S, kBk, a.qpos + t0, nt, G, sg.pos + b.j0, b.n, rule);
        // Online softmax: rescale the running sum and accumulator when the max grows.
        for (int64_t r = 0; r < Rt; ++r) {
          float* Sr = S + r * kBk;
          const float mnew = std::max(m[r], simd::max(Sr, b.n));
          if (mnew == kNegInf) {
            std::fill(Sr, Sr + b.n, 0.0f);
            continue;
          }
          if (mnew > m[r]) {
            const float corr = std::exp(m[r] - mnew);
            l[r] *= corr;
            simd::scale(acc + r * dv, corr, dv);
            m[r] = mnew;
          }
          l[r] += simd::exp_sub_sum(Sr, b.n, mnew);
        }
        if (gemm)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(Rt), int(dv), int(b.n), 1.0f, S,
                      int(kBk), static_cast<const float*>(sg.v) + (b.j0 * KV + g) * dv, int(KV * dv),
                      1.0f, acc, int(dv));
        else
          simd::rows_accum(acc, dv, S, kBk, Rt, row_ptr(sg.v, sg.dtype, (b.j0 * KV + g) * dv),
                           KV * dv, sg.dtype, b.n, dv);
      }
    }
    for (int64_t g = 0; g < KV; ++g) {
      const float* acc = sc.acc.data() + g * R * dv;
      const float* m = sc.m.data() + g * R;
      const float* l = sc.l.data() + g * R;
      if (nsplit == 1) {
        finalize(a, t0, g, Rt, m, l, acc);
        continue;
      }
      const size_t off = p.part0 + size_t((tile * KV + g) * nsplit + s) * size_t(R);
      std::copy(m, m + R, pm.begin() + ptrdiff_t(off));
      std::copy(l, l + R, pl.begin() + ptrdiff_t(off));
      std::copy(acc, acc + R * dv, pacc.begin() + ptrdiff_t(off * size_t(dv)));
    }
  };

  // Merges the key splits of one (query tile, head) in split order.
  auto run_merge = [&](Scratch& sc, int64_t it, int64_t bt) {
    const AttnQuery& a = items[size_t(it)];
    const ItemPlan& p = plans[size_t(it)];
    const int64_t R = p.R, nsplit = p.nsplit;
    const int64_t tile = bt / KV, g = bt % KV, t0 = tile * p.Tq, Rt = std::min(p.Tq, a.Lq - t0) * G;
    sc.m.assign(size_t(R), kNegInf), sc.l.assign(size_t(R), 0.0f), sc.acc.assign(size_t(R * dv), 0.0f);
    float *m = sc.m.data(), *l = sc.l.data(), *acc = sc.acc.data();
    const size_t off0 = p.part0 + size_t(bt * nsplit) * size_t(R);
    for (int64_t r = 0; r < Rt; ++r) {
      for (int64_t s = 0; s < nsplit; ++s) m[r] = std::max(m[r], pm[off0 + size_t(s * R + r)]);
      if (m[r] == kNegInf) continue;
      for (int64_t s = 0; s < nsplit; ++s) {
        const size_t o = off0 + size_t(s * R + r);
        if (pm[o] == kNegInf) continue;
        const float c = std::exp(pm[o] - m[r]);
        l[r] += pl[o] * c;
        simd::axpy(acc + r * dv, c, &pacc[o * size_t(dv)], dv);
      }
    }
    finalize(a, t0, g, Rt, m, l, acc);
  };

  // The item owning index x of the tasks (or merges): the last item whose first index <= x and
  // that has any.
  auto owner = [&](int64_t x, bool merge) {
    int64_t lo = 0, hi = n_items - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      const int64_t first = merge ? plans[size_t(mid)].merge0 : plans[size_t(mid)].task0;
      if (first <= x) lo = mid; else hi = mid - 1;
    }
    return lo;
  };

#pragma omp parallel if (work > 2e5)
  {
    Scratch sc;
    sc.Qs.resize(size_t(KV * Rmax * dq)), sc.S.resize(size_t(Rmax * kBk));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t it = owner(task, false);
      run_task(sc, it, task - plans[size_t(it)].task0);
    }
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t bt = 0; bt < nmerge; ++bt) {
      const int64_t it = owner(bt, true);
      run_merge(sc, it, bt - plans[size_t(it)].merge0);
    }
  }
}

void attention_forward(float* out, float* lse, const float* q, const int32_t* qpos, int64_t Lq,
                       std::span<const KVSegment> segs, const AttnShape& shape,
                       const AttnRule& rule) {
  const AttnQuery item{out, lse, q, qpos, Lq, segs};
  attention_forward_batch(std::span<const AttnQuery>(&item, 1), shape, rule);
}

void attention_backward(float* dq, float* dk, float* dv_out, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        const int32_t* qpos, const int32_t* kpos, int64_t Lq, int64_t Lk,
                        const AttnShape& shape, const AttnRule& rule, int64_t key_chunk) {
  check_shape(shape);
  if (Lq <= 0 || Lk <= 0) return;
  const int64_t H = shape.n_head, KV = shape.n_kv, G = H / KV, dqk = shape.d_qk, dv = shape.d_v;
  const float sc = shape.scale;
  const double work = double(Lq) * double(H) * double(Lk) * double(dqk + dv);

  // Dm[t,h] = dout·out: the softmax backward's row term.
  std::vector<float> Dm(size_t(Lq * H));
#pragma omp parallel for schedule(static) if (work > 2e5)
  for (int64_t th = 0; th < Lq * H; ++th) Dm[size_t(th)] = simd::dot(dout + th * dv, out + th * dv, dv);

  // The six products are sgemm calls on blocks of a K/V head's group: row r = t·G + gi of group
  // g is query t, head g·G + gi, so a block of queries is one matrix of G times the rows (with one
  // K/V head q, dout and dq are that matrix already; else packed copies). Measured against the
  // per-row vector dots this replaced: see docs/RESULTS.md (Training speed).
  const int64_t GL = Lq * G;
  std::vector<float> pq, po, pdq;
  if (KV > 1) {
    pq.resize(size_t(KV * GL * dqk)), po.resize(size_t(KV * GL * dv)), pdq.assign(size_t(KV * GL * dqk), 0.0f);
    for (int64_t t = 0; t < Lq; ++t)
      for (int64_t g = 0; g < KV; ++g) {
        std::memcpy(&pq[size_t((g * GL + t * G) * dqk)], q + (t * H + g * G) * dqk, size_t(G * dqk) * 4);
        std::memcpy(&po[size_t((g * GL + t * G) * dv)], dout + (t * H + g * G) * dv, size_t(G * dv) * 4);
      }
  }
  const float* Qg0 = KV > 1 ? pq.data() : q;
  const float* Og0 = KV > 1 ? po.data() : dout;
  float* dQg0 = KV > 1 ? pdq.data() : dq;

  // Query blocks of kBq, key blocks of kBk, and how each pair is covered (one table for both
  // passes, so pass B reads exactly the blocks pass A wrote). A query block's range includes
  // invalid (< 0) positions, so such rows are never taken as fully visible.
  constexpr int64_t kBq = 64;
  const int64_t nqb = (Lq + kBq - 1) / kBq, nkb = (Lk + kBk - 1) / kBk;
  std::vector<KeyBlock> kblocks;
  for (int64_t j0 = 0; j0 < Lk; j0 += kBk) kblocks.push_back(make_block(0, kpos, j0, std::min(kBk, Lk - j0)));
  std::vector<Cover> cover(size_t(nqb * nkb));
  for (int64_t b = 0; b < nqb; ++b) {
    const int64_t t0 = b * kBq, t1 = std::min(Lq, t0 + kBq);
    const int64_t qmin = *std::min_element(qpos + t0, qpos + t1), qmax = *std::max_element(qpos + t0, qpos + t1);
    for (int64_t u = 0; u < nkb; ++u) cover[size_t(b * nkb + u)] = classify(kblocks[size_t(u)], qmin, qmax, rule);
  }
  auto visible_pair = [&](int64_t b, int64_t u) { return cover[size_t(b * nkb + u)] != Cover::None; };

  // Keys in chunks [k0, k0 + W) of whole key blocks. Pass A computes P and dS of every (query,
  // head) against the chunk's keys into P[g][r][j - k0] and dS[g][r][j - k0] (only visible block
  // pairs are written and read) and accumulates dq; pass B reads them for dv = Pᵀ·dout and
  // dk = dSᵀ·q. W bounds that memory to ~kKeep bytes (depends on the shapes only, so the result
  // does not depend on the thread count; each key's dk and dv sums are the same for any W).
  constexpr double kKeep = 64.0 * (1 << 20);
  const int64_t W = key_chunk > 0 ? (key_chunk + kBk - 1) / kBk * kBk
                                  : std::max<int64_t>(kBk, int64_t(kKeep / (8.0 * double(H) * double(Lq))) / kBk * kBk);
  const int64_t Wc = std::min(W, nkb * kBk);
  // The calling thread's buffers, kept between calls (no page faults each call); the workers of
  // the regions below use them through the pointers.
  thread_local std::vector<float> P_keep, dS_keep;
  if (P_keep.size() < size_t(KV * GL * Wc)) P_keep.resize(size_t(KV * GL * Wc)), dS_keep.resize(size_t(KV * GL * Wc));
  float* const P = P_keep.data();
  float* const dS = dS_keep.data();
  auto I = [](int64_t x) { return int(x); };

  for (int64_t k0 = 0; k0 < Lk; k0 += Wc) {
    const int64_t u0 = k0 / kBk, u1 = std::min(nkb, (k0 + Wc) / kBk);

    // Pass A: one task per (kv head, query block), the later (costlier under causality) first.
#pragma omp parallel for schedule(dynamic, 1) if (work > 2e5)
    for (int64_t task = 0; task < KV * nqb; ++task) {
      const int64_t g = task / nqb, b = nqb - 1 - task % nqb;
      const int64_t t0 = b * kBq, nt = std::min(kBq, Lq - t0), r0 = t0 * G, nr = nt * G;
      const float* Qb = Qg0 + (g * GL + r0) * dqk;
      const float* Ob = Og0 + (g * GL + r0) * dv;
      float* Pg = P + (g * GL + r0) * Wc;
      float* dSg = dS + (g * GL + r0) * Wc;
      for (int64_t ua = u0; ua < u1;) {  // runs of consecutive visible key blocks
        if (!visible_pair(b, ua)) { ++ua; continue; }
        int64_t uz = ua + 1;
        while (uz < u1 && visible_pair(b, uz)) ++uz;
        const int64_t j0 = kblocks[size_t(ua)].j0, nj = kblocks[size_t(uz - 1)].j0 + kblocks[size_t(uz - 1)].n - j0;
        const int64_t c0 = j0 - k0;
        const float* Kb = k + (j0 * KV + g) * dqk;
        // S = scale · Q Kᵀ into P's place, dP = dout Vᵀ into dS's place, a key block per call:
        // OpenBLAS's sums depend on the call's N, and these must not depend on the chunk.
        for (int64_t u = ua; u < uz; ++u) {
          const KeyBlock& kb = kblocks[size_t(u)];
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, I(nr), I(kb.n), I(dqk), sc, Qb, I(dqk),
                      k + (kb.j0 * KV + g) * dqk, I(KV * dqk), 0.0f, Pg + (kb.j0 - k0), I(Wc));
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, I(nr), I(kb.n), I(dv), 1.0f, Ob, I(dv),
                      v + (kb.j0 * KV + g) * dv, I(KV * dv), 0.0f, dSg + (kb.j0 - k0), I(Wc));
        }
        for (int64_t u = ua; u < uz; ++u) {
          if (cover[size_t(b * nkb + u)] != Cover::Partial) continue;
          const KeyBlock& kb = kblocks[size_t(u)];
          mask_block(Pg + (kb.j0 - k0), Wc, qpos + t0, nt, G, kpos + kb.j0, kb.n, rule);
        }
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t th = (t0 + r / G) * H + g * G + r % G;
          float* Sr = Pg + r * Wc + c0;
          float* dSr = dSg + r * Wc + c0;
          const float l = lse[th], D = Dm[size_t(th)];
          if (l == kNegInf) {  // sees no key
            std::fill(Sr, Sr + nj, 0.0f), std::fill(dSr, dSr + nj, 0.0f);
            continue;
          }
          simd::exp_sub_sum(Sr, nj, l);  // P
          for (int64_t j = 0; j < nj; ++j) dSr[j] = Sr[j] * (dSr[j] - D);
        }
        // dq += scale · dS K
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, I(nr), I(dqk), I(nj), sc, dSg + c0, I(Wc),
                    Kb, I(KV * dqk), 1.0f, dQg0 + (g * GL + r0) * dqk, I(dqk));
        ua = uz;
      }
    }

    // Pass B: dk and dv, one task per (kv head, key block), over runs of visible query blocks.
#pragma omp parallel for schedule(dynamic, 1) if (work > 2e5)
    for (int64_t task = 0; task < KV * (u1 - u0); ++task) {
      const int64_t g = task / (u1 - u0), u = u0 + task % (u1 - u0);
      const KeyBlock& kb = kblocks[size_t(u)];
      const int64_t c0 = kb.j0 - k0;
      for (int64_t ba = 0; ba < nqb;) {
        if (!visible_pair(ba, u)) { ++ba; continue; }
        int64_t bz = ba + 1;
        while (bz < nqb && visible_pair(bz, u)) ++bz;
        const int64_t r0 = ba * kBq * G, nr = (std::min(Lq, bz * kBq) - ba * kBq) * G;
        const float* Pg = P + (g * GL + r0) * Wc + c0;
        const float* dSg = dS + (g * GL + r0) * Wc + c0;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, I(kb.n), I(dv), I(nr), 1.0f, Pg, I(Wc),
                    Og0 + (g * GL + r0) * dv, I(dv), 1.0f, dv_out + (kb.j0 * KV + g) * dv, I(KV * dv));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, I(kb.n), I(dqk), I(nr), sc, dSg, I(Wc),
                    Qg0 + (g * GL + r0) * dqk, I(dqk), 1.0f, dk + (kb.j0 * KV + g) * dqk, I(KV * dqk));
        ba = bz;
      }
    }
  }
  if (KV > 1)
    for (int64_t t = 0; t < Lq; ++t)
      for (int64_t g = 0; g < KV; ++g)
        simd::axpy(dq + (t * H + g * G) * dqk, 1.0f, &pdq[size_t((g * GL + t * G) * dqk)], G * dqk);
}

}  // namespace hymba
