#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "base/error.h"

using hymba::Sampler;
using hymba::SamplerParams;

namespace {

SamplerParams plain(float temperature, uint64_t seed = 1) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = seed;
  return p;
}

std::set<int32_t> support(const Sampler& s, const std::vector<float>& l, std::span<const int32_t> hist = {}) {
  std::set<int32_t> out;
  for (const auto& [id, pr] : s.distribution(l.data(), static_cast<int64_t>(l.size()), hist)) out.insert(id);
  return out;
}

// Logits whose softmax is exactly `probs`.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

}  // namespace

TEST(Sampler, GreedyIsArgmax) {
  Sampler s(plain(0.0f));
  const std::vector<float> l = {0.1f, 2.5f, -1.0f, 2.4f, 0.0f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(l.data(), 5, {}), 1);
  const std::vector<float> tie = {1.0f, 3.0f, 3.0f};
  EXPECT_EQ(s.sample(tie.data(), 3, {}), 1);  // first maximum
  const std::vector<float> neg = {-5.0f, -std::numeric_limits<float>::infinity(), -4.0f};
  EXPECT_EQ(s.sample(neg.data(), 3, {}), 2);
}

TEST(Sampler, TopK1IsGreedy) {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 1.7f) * 3;
  int32_t best = 0;
  for (int i = 1; i < 100; ++i)
    if (l[i] > l[best]) best = i;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    SamplerParams p = plain(1.5f, seed);
    p.top_k = 1;
    Sampler s(p);
    EXPECT_EQ(s.sample(l.data(), 100, {}), best);
  }
}

// Temperature T sampling draws token i with probability softmax(l/T)_i. With N draws the count
// frequency has standard deviation sqrt(p(1-p)/N) <= 0.5/sqrt(N) = 0.0011 for N = 200000; the
// tolerance 0.006 is > 5 sigma, so the test fails on a wrong distribution, not by chance.
TEST(Sampler, FrequenciesMatchSoftmax) {
  const std::vector<float> l = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f};
  const int n = 200000;
  for (float temp : {1.0f, 0.7f}) {
    Sampler s(plain(temp, 42));
    std::vector<double> want(l.size());
    double sum = 0;
    for (size_t i = 0; i < l.size(); ++i) sum += want[i] = std::exp(static_cast<double>(l[i]) / temp);
    for (auto& w : want) w /= sum;
    std::vector<int> count(l.size(), 0);
    for (int i = 0; i < n; ++i) ++count[s.sample(l.data(), static_cast<int64_t>(l.size()), {})];
    for (size_t i = 0; i < l.size(); ++i)
      EXPECT_NEAR(static_cast<double>(count[i]) / n, want[i], 0.006) << "token " << i << " T=" << temp;
  }
}

TEST(Sampler, TopPKeepsSmallestNucleus) {
  const auto l = logits_of({0.05, 0.5, 0.15, 0.3});
  SamplerParams p = plain(1.0f);
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3
  Sampler s(p);
  EXPECT_EQ(support(s, l), (std::set<int32_t>{1, 3}));
  double total = 0;
  for (const auto& [id, pr] : s.distribution(l.data(), 4, {})) {
    total += pr;
    if (id == 1) EXPECT_NEAR(pr, 0.5 / 0.8, 1e-6);  // renormalised over the nucleus
  }
  EXPECT_NEAR(total, 1.0, 1e-9);
  for (int i = 0; i < 1000; ++i) {
    const int32_t t = s.sample(l.data(), 4, {});
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  p.top_p = 0.4f;
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{1}));
  p.top_p = 0.96f;  // needs all four
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  const auto l = logits_of({0.05, 0.5, 0.15, 0.3});
  SamplerParams p = plain(1.0f);
  p.min_p = 0.2f;  // cut at 0.2 * 0.5 = 0.1: drops only 0.05
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{1, 2, 3}));
  p.min_p = 0.5f;  // cut at 0.25
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{1, 3}));
  // min-p is applied before temperature: a high temperature does not bring tokens back.
  p.temperature = 5.0f;
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{1, 3}));
  // top-k then min-p.
  p.top_k = 1;
  EXPECT_EQ(support(Sampler(p), l), (std::set<int32_t>{1}));
}

TEST(Sampler, RepeatPenaltyChangesTheChoice) {
  SamplerParams p = plain(0.0f);
  p.repeat_penalty = 1.5f;
  Sampler s(p);
  const std::vector<float> pos = {2.0f, 1.9f, -1.0f};
  const std::vector<int32_t> hist = {0, 0, 2};
  EXPECT_EQ(Sampler(plain(0.0f)).sample(pos.data(), 3, hist), 0);
  EXPECT_EQ(s.sample(pos.data(), 3, hist), 1);  // 2.0 / 1.5 < 1.9
  const std::vector<float> neg = {-1.0f, -1.2f};
  const std::vector<int32_t> h0 = {0};
  EXPECT_EQ(s.sample(neg.data(), 2, h0), 1);  // -1.0 * 1.5 < -1.2
  // Only the last repeat_last_n tokens count.
  p.repeat_last_n = 2;
  const std::vector<int32_t> old = {0, 2, 2};
  EXPECT_EQ(Sampler(p).sample(pos.data(), 3, old), 0);
  p.repeat_last_n = 3;
  EXPECT_EQ(Sampler(p).sample(pos.data(), 3, old), 1);
  // Penalty applies once per distinct token (1.9 / 1.5 = 1.267 > 2.0 / 1.5 / 1.5 = 0.889 otherwise).
  const std::vector<float> both = {2.0f, 1.9f};
  const std::vector<int32_t> h01 = {0, 0, 1};
  EXPECT_EQ(Sampler(p).sample(both.data(), 2, h01), 0);
  // History ids outside the vocab are an error.
  const std::vector<int32_t> bad = {7};
  EXPECT_THROW(s.sample(pos.data(), 3, bad), hymba::Error);
}

TEST(Sampler, SameSeedSameSequence) {
  std::vector<float> l(50);
  for (int i = 0; i < 50; ++i) l[i] = std::cos(i * 0.9f);
  SamplerParams p;  // defaults: top-k 40, top-p 0.95, min-p 0.05, T 0.8
  p.seed = 1234;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(l.data(), 50, out));
    return out;
  };
  EXPECT_EQ(run(1234), run(1234));
  EXPECT_NE(run(1234), run(1235));
}

TEST(Sampler, RejectsBadInput) {
  SamplerParams p = plain(1.0f);
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, hymba::Error);
  p = plain(-1.0f);
  EXPECT_THROW(Sampler{p}, hymba::Error);
  p = plain(1.0f);
  p.repeat_penalty = 0.0f;
  EXPECT_THROW(Sampler{p}, hymba::Error);
  Sampler s(plain(1.0f));
  const std::vector<float> nan = {0.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(s.sample(nan.data(), 2, {}), hymba::Error);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> masked = {-inf, -inf};
  EXPECT_THROW(s.sample(masked.data(), 2, {}), hymba::Error);
  EXPECT_THROW(s.sample(nullptr, 0, {}), hymba::Error);
}
