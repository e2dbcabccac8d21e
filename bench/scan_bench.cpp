// Micro-benchmarks of the selective scan at `hymba bench --train`'s shape (configs/bench-10m.json:
// 8 sequences of 288 rows, d_inner 512, d_state 16, gated, with the skip term): the batched forward
// and backward (selective_scan_forward_seqs / selective_scan_backward_seqs) as one layer's call.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/ssm_scan.h"

namespace {
using namespace hymba;

constexpr int64_t kSeqs = 8, kLen = 288, kD = 512, kN = 16;

struct ScanData {
  std::vector<float> x, delta, A, B, C, Dskip, z, dout;
  std::vector<int64_t> lens = std::vector<int64_t>(size_t(kSeqs), kLen);
  ScanData() {
    const int64_t T = kSeqs * kLen;
    auto fill = [](std::vector<float>& v, size_t n, float scale, float bias, int salt) {
      v.resize(n);
      for (size_t i = 0; i < n; ++i) v[i] = bias + scale * float(int64_t((i * 7919 + size_t(salt)) % 97) - 48) / 48.0f;
    };
    fill(x, size_t(T * kD), 1.0f, 0.0f, 1);
    fill(delta, size_t(T * kD), 0.05f, 0.06f, 2);  // softplus outputs, > 0
    fill(A, size_t(kD * kN), 0.5f, -1.0f, 3);      // -exp(A_log) < 0
    fill(B, size_t(T * kN), 1.0f, 0.0f, 4);
    fill(C, size_t(T * kN), 1.0f, 0.0f, 5);
    fill(Dskip, size_t(kD), 0.5f, 1.0f, 6);
    fill(z, size_t(T * kD), 2.0f, 0.0f, 7);
    fill(dout, size_t(T * kD), 0.1f, 0.0f, 8);
  }
};

void BM_ScanForwardTrain(benchmark::State& st) {
  static ScanData d;
  std::vector<float> out(d.x.size());
  for (auto _ : st) {
    selective_scan_forward_seqs(out.data(), d.x.data(), d.delta.data(), d.A.data(), d.B.data(), d.C.data(),
                                d.Dskip.data(), d.z.data(), d.lens, kD, kN);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_ScanForwardTrain)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_ScanBackwardTrain(benchmark::State& st) {
  static ScanData d;
  std::vector<float> dx(d.x.size()), ddelta(d.x.size()), dz(d.x.size()), dA(d.A.size()), dB(d.B.size()),
      dC(d.C.size()), dDskip(d.Dskip.size());
  for (auto _ : st) {
    selective_scan_backward_seqs(dx.data(), ddelta.data(), dA.data(), dB.data(), dC.data(), dDskip.data(),
                                 dz.data(), d.dout.data(), d.x.data(), d.delta.data(), d.A.data(), d.B.data(),
                                 d.C.data(), d.Dskip.data(), d.z.data(), d.lens, kD, kN, false);
    benchmark::DoNotOptimize(dx.data());
  }
}
BENCHMARK(BM_ScanBackwardTrain)->Unit(benchmark::kMicrosecond)->UseRealTime();
}  // namespace
