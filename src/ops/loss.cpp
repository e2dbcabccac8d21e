#include "ops/loss.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "ops/simd.h"

namespace hymba {

namespace {
// e[i] = exp(x[i] - max) (vectorised); returns max, *sum = Σ e (lane sums in a fixed order).
float row_exp(float* e, const float* x, int64_t V, double* sum) {
  const float m = simd::max(x, V);
  if (e != x) std::copy(x, x + V, e);
  *sum = simd::exp_sub_sum(e, V, m);
  return m;
}
void check_targets(const int32_t* targets, int64_t n, int64_t V) {
  for (int64_t t = 0; t < n; ++t)
    HYMBA_CHECK(targets[t] < V, "cross_entropy: target " + std::to_string(targets[t]) +
                                    " out of range for vocab " + std::to_string(V));
}
}  // namespace

void softmax_rows(float* x, int64_t n, int64_t V) {
#pragma omp parallel for schedule(static) if (n * V > 65536)
  for (int64_t t = 0; t < n; ++t) {
    float* r = x + t * V;
    double s;
    row_exp(r, r, V, &s);
    simd::scale(r, float(1.0 / s), V);
  }
}

double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t n,
                             int64_t V) {
  check_targets(targets, n, V);
#pragma omp parallel for schedule(static) if (n * V > 65536)
  for (int64_t t = 0; t < n; ++t) {
    if (targets[t] < 0) {
      losses[t] = 0.0f;
      continue;
    }
    const float* r = logits + t * V;
    thread_local std::vector<float> e;
    e.resize(size_t(V));
    double s;
    const float m = row_exp(e.data(), r, V, &s);
    losses[t] = float(std::log(s) + double(m) - double(r[targets[t]]));
  }
  double total = 0;
  int64_t counted = 0;
  for (int64_t t = 0; t < n; ++t)
    if (targets[t] >= 0) total += losses[t], ++counted;
  return counted ? total / double(counted) : 0.0;
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                            int64_t V, float scale) {
  check_targets(targets, n, V);
#pragma omp parallel for schedule(static) if (n * V > 65536)
  for (int64_t t = 0; t < n; ++t) {
    float* d = dlogits + t * V;
    if (targets[t] < 0) {
      for (int64_t i = 0; i < V; ++i) d[i] = 0.0f;
      continue;
    }
    double s;
    row_exp(d, logits + t * V, V, &s);
    simd::scale(d, float(double(scale) / s), V);
    d[targets[t]] -= scale;
  }
}

}  // namespace hymba
