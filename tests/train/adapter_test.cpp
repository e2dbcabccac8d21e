// Adapters at initialisation (PEFT's: B = 0, A bounded, DoRA magnitude = ‖W‖ rows) leave the
// model unchanged, and a PEFT save/load round trip is exact.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "base/error.h"
#include "model/hymba.h"
#include "train/adapter.h"
#include "train/params.h"

namespace hymba {
namespace {

const std::string kTiny = std::string(HYMBA_SOURCE_DIR) + "/tests/configs/tiny-hymba.json";

std::vector<float> run_forward(const ParamArena& p, const Adapters* ad) {
  HymbaModel m(p.config, p.w);
  m.set_adapters(ad);
  const int64_t H = p.config.hidden_size, T = 12;
  std::vector<int32_t> ids(T);
  for (int64_t i = 0; i < T; ++i) ids[size_t(i)] = int32_t(7 * i + 3);
  std::vector<float> x(size_t(T * H));
  m.embed(x.data(), ids.data(), T);
  ForwardItem it{nullptr, T};
  m.forward(x.data(), std::span<const ForwardItem>(&it, 1));
  return x;
}

TEST(Adapter, InitIsIdentityAndRoundTrips) {
  const ParamArena p = arena_from_init(load_config(kTiny), 4);
  const auto base = run_forward(p, nullptr);
  for (bool dora : {false, true}) {
    AdapterConfig cfg;
    cfg.rank = 3, cfg.alpha = 6, cfg.dora = dora, cfg.targets = parse_targets("all");
    AdapterSet a = init_adapters(p.config, p.w, cfg, 1);
    ASSERT_EQ(a.grad.size(), a.data.size());
    for (const auto& t : a.tensors) {
      const float* d = a.data.data() + t.offset;
      if (t.kind == 'B')
        for (int64_t i = 0; i < t.size; ++i) ASSERT_EQ(d[i], 0.0f) << t.name;
      if (t.kind == 'A')
        for (int64_t i = 0; i < t.size; ++i) ASSERT_LE(std::abs(d[i]), 1.0 / std::sqrt(double(t.shape[1]))) << t.name;
    }
    const auto adapted = run_forward(p, &a.view);
    double err = 0;
    for (size_t i = 0; i < base.size(); ++i) err = std::max(err, double(std::abs(adapted[i] - base[i])));
    EXPECT_LT(err, 1e-4) << (dora ? "DoRA" : "LoRA") << " at init must equal the base";

    const auto dir = std::filesystem::temp_directory_path() / ("hymba-adapter-test-" + std::to_string(dora));
    std::filesystem::remove_all(dir);
    save_peft_adapter(a, dir.string(), "base");
    const AdapterSet b = load_peft_adapter(dir.string(), p.config, p.w);
    EXPECT_EQ(b.cfg.rank, 3);
    EXPECT_EQ(b.cfg.alpha, 6.0);
    EXPECT_EQ(b.cfg.dora, dora);
    EXPECT_EQ(b.cfg.targets.size(), size_t(kNumSlots));
    ASSERT_EQ(b.tensors.size(), a.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      const AdapterTensor *ta = &a.tensors[i], *tb = b.tensors.data() + i;
      ASSERT_EQ(ta->name, tb->name);
      for (int64_t k = 0; k < ta->size; ++k)
        ASSERT_EQ(a.data[size_t(ta->offset + k)], b.data[size_t(tb->offset + k)]) << ta->name;
    }
    std::filesystem::remove_all(dir);
  }
}

TEST(Adapter, BadTargetsRejected) {
  EXPECT_THROW(parse_targets("in_proj,q_proj"), Error);
  EXPECT_THROW(parse_targets(""), Error);
  EXPECT_EQ(parse_targets("x_proj,mlp").size(), 4u);
}

}  // namespace
}  // namespace hymba
