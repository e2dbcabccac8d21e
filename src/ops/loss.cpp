#include "ops/loss.h"

#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "ops/simd.h"

namespace hymba {

namespace {
// Row max and Σ exp(x - max), the sum in double over a fixed order (V is ~32k).
void row_stats(const float* x, int64_t V, float* mx, double* sum) {
  const float m = simd::max(x, V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += double(std::exp(x[i] - m));
  *mx = m, *sum = s;
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
    float m;
    double s;
    row_stats(r, V, &m, &s);
    const float inv = float(1.0 / s);
    for (int64_t i = 0; i < V; ++i) r[i] = std::exp(r[i] - m) * inv;
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
    float m;
    double s;
    row_stats(r, V, &m, &s);
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
    const float* r = logits + t * V;
    float m;
    double s;
    row_stats(r, V, &m, &s);
    const float k = float(double(scale) / s);
    for (int64_t i = 0; i < V; ++i) d[i] = std::exp(r[i] - m) * k;
    d[targets[t]] -= scale;
  }
}

}  // namespace hymba
