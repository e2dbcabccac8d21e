#include "ops/peak.h"

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ops/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/peak.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace hymba {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Σ of n floats with 4 independent accumulators (enough loads in flight to saturate DRAM).
float SumFloats(const float* p, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t NL = int64_t(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 4 * NL <= n; i += 4 * NL) {
    a0 = hn::Add(a0, hn::Load(df, p + i));
    a1 = hn::Add(a1, hn::Load(df, p + i + NL));
    a2 = hn::Add(a2, hn::Load(df, p + i + 2 * NL));
    a3 = hn::Add(a3, hn::Load(df, p + i + 3 * NL));
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace HWY_NAMESPACE
}  // namespace hymba
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hymba {
HWY_EXPORT(SumFloats);

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

double measure_sgemm_gflops(int budget_ms, int n) {
  ensure_threads_initialized();
  const size_t nn = size_t(n) * size_t(n);
  std::vector<float> a(nn), b(nn), c(nn);
  for (size_t i = 0; i < nn; ++i) {
    a[i] = float(i % 13) * 0.01f;
    b[i] = float(i % 7) * 0.01f;
  }
  auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                n, 0.0f, c.data(), n);
  };
  run();  // warm-up: thread start, page faults
  double best = 1e30;
  const auto start = Clock::now();
  do {
    const auto t0 = Clock::now();
    run();
    best = std::min(best, seconds_since(t0));
  } while (seconds_since(start) * 1000.0 < budget_ms);
  return 2.0 * double(n) * double(n) * double(n) / best * 1e-9;
}

double measure_read_bandwidth_gbs(int budget_ms, int buffer_mib) {
  const int nt = num_threads();
  const size_t bytes = size_t(buffer_mib) << 20;
  const size_t align = size_t(2) << 20;
  float* p = static_cast<float*>(std::aligned_alloc(align, bytes));
  if (!p) return 0.0;
  madvise(p, bytes, MADV_HUGEPAGE);  // fewer faults and TLB misses; a hint only
  const int64_t n = int64_t(bytes / sizeof(float));
  const auto sum = HWY_DYNAMIC_DISPATCH(SumFloats);
  // Each thread touches and later reads the same contiguous slice (first-touch locality).
  auto slice = [&](int t, int T, int64_t* b, int64_t* e) {
    const int64_t per = (n / T) / 64 * 64;  // 256-byte aligned slices
    *b = per * t;
    *e = t == T - 1 ? n : per * (t + 1);
  };
#pragma omp parallel num_threads(nt)
  {
    int64_t b, e;
    slice(omp_get_thread_num(), omp_get_num_threads(), &b, &e);
    std::memset(p + b, 0, size_t(e - b) * sizeof(float));
  }
  double best = 1e30;
  volatile float sink = 0;
  const auto start = Clock::now();
  do {
    float total = 0;
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
    {
      int64_t b, e;
      slice(omp_get_thread_num(), omp_get_num_threads(), &b, &e);
      total += sum(p + b, e - b);
    }
    best = std::min(best, seconds_since(t0));
    sink = sink + total;
  } while (seconds_since(start) * 1000.0 < budget_ms);
  std::free(p);
  return double(bytes) / best * 1e-9;
}

}  // namespace hymba
#endif  // HWY_ONCE
