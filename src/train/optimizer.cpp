#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "io/files.h"

namespace hymba {

namespace {

constexpr char kMagic[8] = {'H', 'Y', 'M', 'B', 'A', 'O', 'P', 'T'};
constexpr uint32_t kVersion = 1;
// Fixed chunking makes the norm's summation order independent of the thread count.
constexpr int64_t kChunk = 1 << 16;

template <class T>
void put(std::string& s, const T& x) {
  s.append(reinterpret_cast<const char*>(&x), sizeof(T));
}

struct Reader {
  const std::string& s;
  const std::string& what;
  size_t pos = 0;
  template <class T>
  T get() {
    T x;
    take(&x, sizeof(T));
    return x;
  }
  void take(void* dst, size_t n) {
    HYMBA_CHECK(pos + n <= s.size(), what + ": truncated");
    std::memcpy(dst, s.data() + pos, n);
    pos += n;
  }
};

}  // namespace

double grad_global_norm(const std::vector<ParamGroup>& groups, const float* grad, float scale) {
  struct Task {
    int64_t begin, len;
  };
  std::vector<Task> tasks;
  for (const auto& g : groups)
    for (int64_t i = 0; i < g.size; i += kChunk) tasks.push_back({g.offset + i, std::min(kChunk, g.size - i)});
  std::vector<double> part(tasks.size(), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < int64_t(tasks.size()); ++k) {
    double acc = 0;
    const float* p = grad + tasks[k].begin;
    for (int64_t i = 0; i < tasks[k].len; ++i) {
      double x = double(p[i]);
      acc += x * x;
    }
    part[k] = acc;
  }
  double total = 0;
  for (double x : part) total += x;
  return std::sqrt(total) * std::fabs(double(scale));
}

AdamW::AdamW(std::vector<ParamGroup> groups, int64_t numel, AdamWConfig cfg)
    : groups_(std::move(groups)), numel_(numel), cfg_(cfg) {
  HYMBA_CHECK(numel_ >= 0, "AdamW: negative numel");
  std::vector<std::pair<int64_t, size_t>> order;
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& g = groups_[i];
    HYMBA_CHECK(g.offset >= 0 && g.size >= 0 && g.offset + g.size <= numel_,
                "AdamW: group '" + g.name + "' [" + std::to_string(g.offset) + ", +" + std::to_string(g.size) +
                    ") outside the arena of " + std::to_string(numel_) + " floats");
    order.push_back({g.offset, i});
  }
  std::sort(order.begin(), order.end());
  for (size_t k = 1; k < order.size(); ++k) {
    const auto& a = groups_[order[k - 1].second];
    const auto& b = groups_[order[k].second];
    HYMBA_CHECK(a.offset + a.size <= b.offset, "AdamW: groups '" + a.name + "' and '" + b.name + "' overlap");
  }
  HYMBA_CHECK(cfg_.beta1 >= 0 && cfg_.beta1 < 1 && cfg_.beta2 >= 0 && cfg_.beta2 < 1,
              "AdamW: betas must be in [0, 1)");
  m_.assign(size_t(numel_), 0.0f);
  v_.assign(size_t(numel_), 0.0f);
}

double AdamW::step(float* params, const float* grad, float lr, float grad_scale) {
  const double norm = grad_global_norm(groups_, grad, grad_scale);
  HYMBA_CHECK(std::isfinite(norm), "AdamW: gradient norm is not finite (NaN/Inf in the gradients)");
  // Same coefficient as torch.nn.utils.clip_grad_norm_.
  double coef = 1.0;
  if (cfg_.clip_norm > 0) coef = std::min(1.0, double(cfg_.clip_norm) / (norm + 1e-6));
  const float gs = float(double(grad_scale) * coef);

  ++t_;
  const double bc1 = 1.0 - std::pow(double(cfg_.beta1), double(t_));
  const double bc2 = 1.0 - std::pow(double(cfg_.beta2), double(t_));
  const float step_size = float(double(lr) / bc1);
  const float inv_bc2_sqrt = float(1.0 / std::sqrt(bc2));
  const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  const float decay = 1.0f - lr * cfg_.weight_decay;

  for (const auto& g : groups_) {
    float* p = params + g.offset;
    const float* gr = grad + g.offset;
    float* m = m_.data() + g.offset;
    float* v = v_.data() + g.offset;
    const bool wd = g.decay && cfg_.weight_decay != 0.0f;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < g.size; ++i) {
      const float x = gr[i] * gs;
      m[i] = b1 * m[i] + (1.0f - b1) * x;
      v[i] = b2 * v[i] + (1.0f - b2) * x * x;
      float w = p[i];
      if (wd) w *= decay;
      p[i] = w - step_size * m[i] / (std::sqrt(v[i]) * inv_bc2_sqrt + eps);
    }
  }
  return norm;
}

std::string AdamW::serialize() const {
  std::string s;
  s.append(kMagic, 8);
  put(s, kVersion);
  put(s, numel_);
  put(s, t_);
  put(s, cfg_.beta1);
  put(s, cfg_.beta2);
  put(s, cfg_.eps);
  put(s, cfg_.weight_decay);
  put(s, cfg_.clip_norm);
  put(s, uint64_t(groups_.size()));
  for (const auto& g : groups_) {
    put(s, g.offset);
    put(s, g.size);
    put(s, uint8_t(g.decay));
  }
  s.append(reinterpret_cast<const char*>(m_.data()), m_.size() * sizeof(float));
  s.append(reinterpret_cast<const char*>(v_.data()), v_.size() * sizeof(float));
  return s;
}

void AdamW::deserialize(const std::string& bytes, const std::string& what) {
  Reader r{bytes, what};
  char magic[8];
  r.take(magic, 8);
  HYMBA_CHECK(std::memcmp(magic, kMagic, 8) == 0, what + ": not an AdamW state (bad magic)");
  HYMBA_CHECK(r.get<uint32_t>() == kVersion, what + ": unsupported version");
  const int64_t numel = r.get<int64_t>();
  HYMBA_CHECK(numel == numel_, what + ": state has " + std::to_string(numel) + " parameters, the model " +
                                   std::to_string(numel_));
  const int64_t t = r.get<int64_t>();
  AdamWConfig c;
  c.beta1 = r.get<float>();
  c.beta2 = r.get<float>();
  c.eps = r.get<float>();
  c.weight_decay = r.get<float>();
  c.clip_norm = r.get<float>();
  const uint64_t ng = r.get<uint64_t>();
  HYMBA_CHECK(ng == groups_.size(), what + ": group count differs from the model's");
  for (const auto& g : groups_) {
    const int64_t off = r.get<int64_t>(), size = r.get<int64_t>();
    const bool decay = r.get<uint8_t>() != 0;
    HYMBA_CHECK(off == g.offset && size == g.size && decay == g.decay,
                what + ": layout differs from the model's at group '" + g.name + "'");
  }
  std::vector<float> m(static_cast<size_t>(numel_)), v(static_cast<size_t>(numel_));
  r.take(m.data(), m.size() * sizeof(float));
  r.take(v.data(), v.size() * sizeof(float));
  HYMBA_CHECK(r.pos == bytes.size(), what + ": trailing bytes");
  // Commit only after every check passed. The stored config is informational: the caller's
  // (constructor) config stays, so hyperparameters may change on resume.
  (void)c;
  t_ = t;
  m_ = std::move(m);
  v_ = std::move(v);
}

void AdamW::save(const std::string& path) const {
  const std::string s = serialize();
  write_file_atomic(path, s);
}

void AdamW::load(const std::string& path) { deserialize(read_file(path), path); }

}  // namespace hymba
