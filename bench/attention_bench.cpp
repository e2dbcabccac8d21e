// Micro-benchmarks of attention_forward at decode (one query per sequence) against DRAM bandwidth:
// Hymba-1.5B's attention shape (25 query heads, 5 K/V heads, 64-dim heads), bf16 K/V cache.
// A global layer reads the whole cache, a sliding-window layer its 1024-token window plus the 128
// meta tokens. Like a decode step over many sequences, the calls rotate over enough caches
// (>= 256 MiB) that each one reads from DRAM. bytes_per_second = the K/V bytes read.
// BM_AttentionTrain*: one sequence of `hymba bench --train` (configs/bench-10m.json: 288 rows,
// 4 query heads, 1 K/V head, 64-dim heads, 32 meta tokens), forward with lse and backward;
// run with OMP_NUM_THREADS=1 for the time of one thread (the training step runs one sequence per
// thread).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "base/dtype.h"
#include "ops/attention.h"

namespace {
using namespace hymba;

constexpr int64_t kHeads = 25, kKV = 5, kDim = 64, kMeta = 128, kWindow = 1024;

struct Cache {
  std::vector<uint8_t> k, v;
  std::vector<int32_t> pos;
};

std::vector<Cache> make_caches(int64_t n, bool rotate) {
  const size_t elems = size_t(n * kKV * kDim), bytes = 2 * elems * dtype_size(DType::BF16);
  const size_t count = rotate ? std::max<size_t>(2, (size_t(256) << 20) / bytes + 1) : 1;
  std::vector<Cache> out(count);
  std::vector<float> f(elems);
  for (size_t c = 0; c < count; ++c) {
    for (size_t i = 0; i < elems; ++i) f[i] = float(int64_t((i * 13 + c * 7) % 29) - 14) * 0.02f;
    out[c].k.resize(elems * 2), out[c].v.resize(elems * 2);
    from_f32(out[c].k.data(), DType::BF16, f.data(), elems);
    from_f32(out[c].v.data(), DType::BF16, f.data(), elems);
    out[c].pos.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) out[c].pos[size_t(j)] = int32_t(j);
  }
  return out;
}

// Args: keys in the cache, window (-1: a global layer), 1 = rotate over caches (from DRAM) or 0 =
// one cache (cache-resident if it fits: the compute bound).
void BM_AttentionDecode(benchmark::State& st) {
  const int64_t n = st.range(0), window = st.range(1);
  static std::vector<Cache> caches;
  static int64_t made = -1;
  if (made != n * 2 + st.range(2)) caches = make_caches(n, st.range(2) != 0), made = n * 2 + st.range(2);
  std::vector<float> q(size_t(kHeads * kDim)), out(size_t(kHeads * kDim));
  for (size_t i = 0; i < q.size(); ++i) q[i] = float(int64_t(i % 11) - 5) * 0.1f;
  const int32_t qpos = int32_t(n);  // the token after the cache
  const AttnShape shape{kHeads, kKV, kDim, kDim, 0.125f};
  const AttnRule rule{window, kMeta};
  // Keys a query reads: all of them in a global layer; meta + window in a sliding-window layer.
  const int64_t read = window < 0 ? n : std::min(n, kMeta + window);
  size_t c = 0;
  for (auto _ : st) {
    const Cache& ca = caches[c++ % caches.size()];
    const KVSegment seg{ca.k.data(), ca.v.data(), DType::BF16, ca.pos.data(), n};
    attention_forward(out.data(), nullptr, q.data(), &qpos, 1, std::span<const KVSegment>(&seg, 1), shape, rule);
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * read * kKV * kDim * 2 * 2);
}
BENCHMARK(BM_AttentionDecode)
    ->Args({2048, -1, 1})->Args({8192, -1, 1})->Args({8192, kWindow, 1})->Args({2048, -1, 0})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// Args: window (-1: a global layer).
struct TrainShape {
  static constexpr int64_t L = 288, H = 4, KV = 1, D = 64, kMeta = 32;
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
  std::vector<int32_t> pos;
  TrainShape() : q(size_t(L * H * D)), k(size_t(L * KV * D)), v(size_t(L * KV * D)), out(q.size()),
                 lse(size_t(L * H)), dout(q.size()), dq(q.size()), dk(k.size()), dv(v.size()), pos(size_t(L)) {
    for (size_t i = 0; i < q.size(); ++i) q[i] = float(int64_t((i * 7) % 23) - 11) * 0.05f, dout[i] = float(int64_t(i % 13) - 6) * 0.01f;
    for (size_t i = 0; i < k.size(); ++i) k[i] = float(int64_t((i * 5) % 19) - 9) * 0.05f, v[i] = float(int64_t(i % 17) - 8) * 0.1f;
    for (int64_t j = 0; j < L; ++j) pos[size_t(j)] = int32_t(j);
  }
  void forward(const AttnRule& r) {
    const KVSegment seg{k.data(), v.data(), DType::F32, pos.data(), L};
    attention_forward(out.data(), lse.data(), q.data(), pos.data(), L, std::span<const KVSegment>(&seg, 1),
                      AttnShape{H, KV, D, D, 0.125f}, r);
  }
};

void BM_AttentionTrainForward(benchmark::State& st) {
  TrainShape s;
  const AttnRule rule{st.range(0), TrainShape::kMeta};
  for (auto _ : st) {
    s.forward(rule);
    benchmark::DoNotOptimize(s.out.data());
  }
}
BENCHMARK(BM_AttentionTrainForward)->Arg(-1)->Arg(128)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_AttentionTrainBackward(benchmark::State& st) {
  TrainShape s;
  const AttnRule rule{st.range(0), TrainShape::kMeta};
  s.forward(rule);
  for (auto _ : st) {
    attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.dout.data(), s.q.data(), s.k.data(),
                       s.v.data(), s.out.data(), s.lse.data(), s.pos.data(), s.pos.data(), TrainShape::L,
                       TrainShape::L, AttnShape{TrainShape::H, TrainShape::KV, TrainShape::D, TrainShape::D, 0.125f}, rule);
    benchmark::DoNotOptimize(s.dq.data());
  }
}
BENCHMARK(BM_AttentionTrainBackward)->Arg(-1)->Arg(128)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
