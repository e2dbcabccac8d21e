#include "ops/rope.h"

#include <cmath>

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
void rotate(float* x, const int32_t* pos, int64_t n, int64_t n_head, int64_t head_dim,
            const float* inv_freq, float sign) {
  const int64_t half = head_dim / 2;
#pragma omp parallel if (n * n_head * head_dim > 65536)
  {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(pos[t]) * double(inv_freq[i]);
        cs[size_t(i)] = float(std::cos(a));
        sn[size_t(i)] = sign * float(std::sin(a));
      }
      for (int64_t h = 0; h < n_head; ++h) {
        float* r = x + (t * n_head + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = r[i], b = r[i + half];
          r[i] = a * cs[size_t(i)] - b * sn[size_t(i)];
          r[i + half] = b * cs[size_t(i)] + a * sn[size_t(i)];
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
