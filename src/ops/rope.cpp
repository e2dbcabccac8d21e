#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/error.h"

namespace hymba {

std::vector<float> rope_inv_freq(double base, int64_t head_dim) {
  HYMBA_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even");
  std::vector<float> f(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i)
    f[size_t(i)] = float(std::pow(base, -2.0 * double(i) / double(head_dim)));
  return f;
}

namespace {
// sign = +1 rotates by +angle (forward), -1 by -angle (backward: the transpose of a rotation).
// The angles of each distinct position are computed once when positions repeat (a training batch:
// every sequence has 0..L-1), else per row.
void rotate(float* x, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
            const float* inv_freq, float sign) {
  if (n <= 0) return;
  const int64_t half = head_dim / 2;
  const auto [lo, hi] = std::minmax_element(pos, pos + n);
  const int64_t p0 = *lo, np = int64_t(*hi) - p0 + 1;
  const bool table = np < n;
  std::vector<float> cs(size_t((table ? np : n) * half)), sn(cs.size());
  auto angles = [&](int64_t row, int64_t p) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(p) * double(inv_freq[i]);
      cs[size_t(row * half + i)] = float(std::cos(a));
      sn[size_t(row * half + i)] = sign * float(std::sin(a));
    }
  };
  const bool par = n * n_head * head_dim > 65536;
#pragma omp parallel if (par)
  {
    if (table) {
#pragma omp for schedule(static)
      for (int64_t p = 0; p < np; ++p) angles(p, p0 + p);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = table ? int64_t(pos[t]) - p0 : t;
      if (!table) angles(t, pos[t]);
      const float* c = &cs[size_t(row * half)];
      const float* s = &sn[size_t(row * half)];
      for (int64_t h = 0; h < n_head; ++h) {
        float* r = x + (t * n_head + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = r[i], b = r[i + half];
          r[i] = a * c[i] - b * s[i];
          r[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
                  const float* inv_freq) {
  rotate(x, pos, n, n_head, head_dim, inv_freq, 1.0f);
}

void rope_backward(float* dx, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
                   const float* inv_freq) {
  rotate(dx, pos, n, n_head, head_dim, inv_freq, -1.0f);
}

}  // namespace hymba
