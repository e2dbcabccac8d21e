// Helpers shared by the ops tests: random data, double-precision finite differences, error norms.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace hymba::test {

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  float uni(float a = -1.0f, float b = 1.0f) { return std::uniform_real_distribution<float>(a, b)(g); }
  std::vector<float> vec(size_t n, float a = -1.0f, float b = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = uni(a, b);
    return v;
  }
};

inline std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// max_i |a_i - ref_i| / max(max_i |ref_i|, floor): error relative to the size of the result.
inline double norm_err(const float* a, const double* ref, size_t n, double floor = 1e-6) {
  double e = 0, m = floor;
  for (size_t i = 0; i < n; ++i) {
    e = std::max(e, std::abs(double(a[i]) - ref[i]));
    m = std::max(m, std::abs(ref[i]));
  }
  return e / m;
}
inline double norm_err(const std::vector<float>& a, const std::vector<double>& ref) {
  return norm_err(a.data(), ref.data(), std::min(a.size(), ref.size()));
}

// Central differences of f (a double function) at x: g[i] = (f(x + h e_i) - f(x - h e_i)) / 2h.
inline std::vector<double> fd_grad(const std::function<double(const std::vector<double>&)>& f,
                                   std::vector<double> x, double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// Central differences at the coordinates idx only: g[k] = ∂f/∂x[idx[k]].
inline std::vector<double> fd_grad(const std::function<double(const std::vector<double>&)>& f,
                                   std::vector<double> x, const std::vector<size_t>& idx,
                                   double h = 1e-5) {
  std::vector<double> g(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    const size_t i = idx[k];
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[k] = (fp - fm) / (2 * h);
  }
  return g;
}

// All of 0..n-1 when m == 0 or m >= n, else m distinct random indices (sorted).
inline std::vector<size_t> sample_indices(size_t n, size_t m, std::mt19937_64& g) {
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = i;
  if (m == 0 || m >= n) return idx;
  std::shuffle(idx.begin(), idx.end(), g);
  idx.resize(m);
  std::sort(idx.begin(), idx.end());
  return idx;
}

inline double dotd(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace hymba::test
