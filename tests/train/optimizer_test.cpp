// AdamW against an independent double-precision implementation written here.
#include "train/optimizer.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "base/error.h"

namespace hymba {
namespace {

struct RefAdamW {  // float64, straight from the AdamW paper / torch.optim.AdamW docs
  std::vector<double> m, v;
  int t = 0;
  double b1, b2, eps, wd, clip;
  RefAdamW(size_t n, const AdamWConfig& c)
      : m(n, 0), v(n, 0), b1(c.beta1), b2(c.beta2), eps(c.eps), wd(c.weight_decay), clip(c.clip_norm) {}
  double step(std::vector<double>& p, const std::vector<float>& grad, const std::vector<ParamGroup>& groups,
              double lr, double scale) {
    double ss = 0;
    for (auto& g : groups)
      for (int64_t i = g.offset; i < g.offset + g.size; ++i) ss += double(grad[i]) * grad[i];
    const double norm = std::sqrt(ss) * scale;
    const double coef = clip > 0 ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
    ++t;
    for (auto& g : groups)
      for (int64_t i = g.offset; i < g.offset + g.size; ++i) {
        const double x = grad[i] * scale * coef;
        if (g.decay) p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * x;
        v[i] = b2 * v[i] + (1 - b2) * x * x;
        const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
        p[i] -= lr * mh / (std::sqrt(vh) + eps);
      }
    return norm;
  }
};

std::vector<ParamGroup> test_groups() {
  // Arena of 100: [0,40) decay, [40,50) no decay (a "norm"), [50,55) uncovered, [55,100) decay.
  return {{"w1", 0, 40, true}, {"norm", 40, 10, false}, {"w2", 55, 45, true}};
}

std::vector<float> random_vec(size_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

TEST(AdamW, MatchesDoubleReference) {
  // Tolerance: float32 vs float64 over 8 steps, relative ~1e-5 of the parameter scale.
  AdamWConfig c;
  c.weight_decay = 0.1f;
  c.clip_norm = 0;  // no clipping here
  auto groups = test_groups();
  AdamW opt(groups, 100, c);
  RefAdamW ref(100, c);
  auto p = random_vec(100, 1, 1.0f);
  std::vector<double> pd(p.begin(), p.end());
  for (int s = 0; s < 8; ++s) {
    auto g = random_vec(100, 100 + s, 0.5f);
    const float lr = 1e-2f * (s + 1);
    const double n1 = opt.step(p.data(), g.data(), lr, 0.5f);
    const double n2 = ref.step(pd, g, groups, lr, 0.5);
    EXPECT_NEAR(n1, n2, 1e-9 * n2);
  }
  EXPECT_EQ(opt.step_count(), 8);
  for (int i = 0; i < 100; ++i) EXPECT_NEAR(p[i], pd[i], 1e-5 * (1 + std::fabs(pd[i]))) << i;
}

TEST(AdamW, ClipsToGlobalNorm) {
  AdamWConfig c;
  c.clip_norm = 1.0f;
  auto groups = test_groups();
  AdamW opt(groups, 100, c);
  RefAdamW ref(100, c);
  auto p = random_vec(100, 2, 1.0f);
  std::vector<double> pd(p.begin(), p.end());
  for (int s = 0; s < 4; ++s) {
    auto g = random_vec(100, 200 + s, 10.0f);  // norm ~100 >> 1: always clipped
    // Uncovered elements must not count toward the norm.
    for (int i = 50; i < 55; ++i) g[i] = 1e6f;
    const double n1 = opt.step(p.data(), g.data(), 1e-2f);
    const double n2 = ref.step(pd, g, groups, 1e-2, 1.0);
    EXPECT_GT(n1, 10.0);  // returned norm is the pre-clip norm
    EXPECT_NEAR(n1, n2, 1e-9 * n2);
  }
  for (int i = 0; i < 100; ++i) EXPECT_NEAR(p[i], pd[i], 1e-5 * (1 + std::fabs(pd[i]))) << i;

  // The first Adam step moves every element by ~lr whatever the scale; so check clipping through
  // the second moment instead: v = (1-b2) * clipped_g^2, whose sum is (1-b2) * clip^2.
  AdamW o2(groups, 100, c);
  auto q = random_vec(100, 3, 1.0f);
  auto g = random_vec(100, 4, 10.0f);
  o2.step(q.data(), g.data(), 1e-3f);
  double vs = 0;
  for (auto& gr : groups)
    for (int64_t i = gr.offset; i < gr.offset + gr.size; ++i) vs += o2.v()[i];
  EXPECT_NEAR(vs / (1 - c.beta2), 1.0, 1e-4);
}

TEST(AdamW, NoDecayOnFlaggedTensorsAndUncoveredUntouched) {
  AdamWConfig c;
  c.weight_decay = 0.5f;
  AdamW opt(test_groups(), 100, c);
  std::vector<float> p(100, 2.0f), g(100, 0.0f);  // zero grads: only decay moves anything
  opt.step(p.data(), g.data(), 0.1f);
  for (int i = 0; i < 40; ++i) EXPECT_FLOAT_EQ(p[i], 2.0f * (1 - 0.1f * 0.5f));
  for (int i = 40; i < 50; ++i) EXPECT_EQ(p[i], 2.0f);  // "norm": no decay
  for (int i = 50; i < 55; ++i) EXPECT_EQ(p[i], 2.0f);  // not in any group
  for (int i = 55; i < 100; ++i) EXPECT_FLOAT_EQ(p[i], 2.0f * (1 - 0.1f * 0.5f));
}

TEST(AdamW, GradScaleEqualsAveragedGradients) {
  // Accumulation: sum of 2 micro-batch grads with scale 1/2 == their mean with scale 1.
  AdamWConfig c;
  c.clip_norm = 0.5f;
  auto groups = test_groups();
  AdamW a(groups, 100, c), b(groups, 100, c);
  auto p1 = random_vec(100, 5, 1.0f), p2 = p1;
  auto g1 = random_vec(100, 6, 1.0f), g2 = random_vec(100, 7, 1.0f);
  std::vector<float> sum(100), mean(100);
  for (int i = 0; i < 100; ++i) {
    sum[i] = g1[i] + g2[i];
    mean[i] = sum[i] * 0.5f;  // exact in float (power of two)
  }
  const double na = a.step(p1.data(), sum.data(), 1e-2f, 0.5f);
  const double nb = b.step(p2.data(), mean.data(), 1e-2f, 1.0f);
  EXPECT_DOUBLE_EQ(na, nb);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(p1[i], p2[i]);
}

TEST(AdamW, SaveLoadThenContinueIsBitExact) {
  AdamWConfig c;
  auto groups = test_groups();
  AdamW full(groups, 100, c);
  auto p_full = random_vec(100, 8, 1.0f);
  std::vector<std::vector<float>> grads;
  for (int s = 0; s < 6; ++s) grads.push_back(random_vec(100, 300 + s, 1.0f));
  for (int s = 0; s < 6; ++s) full.step(p_full.data(), grads[s].data(), 1e-2f);

  AdamW first(groups, 100, c);
  auto p = random_vec(100, 8, 1.0f);
  for (int s = 0; s < 3; ++s) first.step(p.data(), grads[s].data(), 1e-2f);
  const auto dir = std::filesystem::temp_directory_path() / ("hymba_opt_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "opt.bin").string();
  first.save(path);
  AdamW resumed(groups, 100, c);
  resumed.load(path);
  EXPECT_EQ(resumed.step_count(), 3);
  for (int s = 3; s < 6; ++s) resumed.step(p.data(), grads[s].data(), 1e-2f);
  EXPECT_EQ(std::memcmp(p.data(), p_full.data(), 100 * sizeof(float)), 0);
  EXPECT_EQ(resumed.serialize(), full.serialize());

  // A state from another layout is refused, naming what differs.
  AdamW other({{"w1", 0, 40, true}, {"norm", 40, 10, true}, {"w2", 55, 45, true}}, 100, c);
  try {
    other.load(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm"), std::string::npos) << e.what();
  }
  AdamW bigger({{"w", 0, 10, true}}, 200, c);
  EXPECT_THROW(bigger.load(path), Error);
  std::string bytes = first.serialize();
  AdamW trunc(groups, 100, c);
  EXPECT_THROW(trunc.deserialize(bytes.substr(0, bytes.size() - 4)), Error);
  EXPECT_THROW(trunc.deserialize("garbage"), Error);
  EXPECT_EQ(trunc.step_count(), 0);  // failed loads leave the state alone
  std::filesystem::remove_all(dir);
}

TEST(AdamW, RejectsBadGroups) {
  EXPECT_THROW(AdamW({{"a", 0, 10, true}, {"b", 5, 10, true}}, 100), Error);  // overlap
  EXPECT_THROW(AdamW({{"a", 95, 10, true}}, 100), Error);                      // out of range
}

TEST(AdamW, NormIsIndependentOfThreadCount) {
  // Larger than the 65536-element chunk so several partial sums are combined.
  const int64_t n = 300000;
  auto g = random_vec(size_t(n), 9, 1.0f);
  std::vector<ParamGroup> groups{{"a", 0, 100000, true}, {"b", 100000, n - 100000, false}};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double n1 = grad_global_norm(groups, g.data());
  omp_set_num_threads(3);
  const double n3 = grad_global_norm(groups, g.data());
  omp_set_num_threads(saved);
  EXPECT_EQ(n1, n3);
  double ss = 0;
  for (float x : g) ss += double(x) * x;
  EXPECT_NEAR(n1, std::sqrt(ss), 1e-12 * std::sqrt(ss));
}

TEST(AdamW, NonFiniteGradientIsAnError) {
  AdamW opt({{"w", 0, 4, true}}, 4);
  std::vector<float> p(4, 1.0f), g{1.0f, NAN, 0.0f, 0.0f};
  EXPECT_THROW(opt.step(p.data(), g.data(), 1e-3f), Error);
}

}  // namespace
}  // namespace hymba
