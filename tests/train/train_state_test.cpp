#include "train/train_state.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "base/error.h"
#include "io/files.h"

namespace hymba {
namespace {

TEST(TrainState, SaveLoadRoundTrip) {
  const auto dir = (std::filesystem::temp_directory_path() / ("hymba_state_test_" + std::to_string(::getpid()))).string();
  std::vector<ParamGroup> groups{{"w", 0, 6, true}, {"b", 6, 2, false}};
  AdamW opt(groups, 8);
  std::vector<float> p(8, 1.0f), g{0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f, 0.7f, 0.8f};
  opt.step(p.data(), g.data(), 1e-2f);
  opt.step(p.data(), g.data(), 1e-2f);
  TrainState s;
  s.step = 2;
  s.data_rng = 0xfedcba9876543210ull;  // > 2^53: must not go through a double
  s.tokens_seen = 4096;
  s.schedule.kind = LrScheduleKind::Cosine;
  s.schedule.max_lr = 3e-4f;
  s.schedule.total_steps = 1000;
  s.run = {{"batch", 8}, {"seq_len", 256}};
  save_train_state(dir, s, opt);

  AdamW opt2(groups, 8);
  const TrainState r = load_train_state(dir, opt2);
  EXPECT_EQ(r.step, 2);
  EXPECT_EQ(r.data_rng, s.data_rng);
  EXPECT_EQ(r.tokens_seen, 4096);
  EXPECT_EQ(r.schedule.kind, LrScheduleKind::Cosine);
  EXPECT_EQ(r.schedule.max_lr, 3e-4f);
  EXPECT_EQ(r.schedule.total_steps, 1000);
  EXPECT_EQ(r.run["seq_len"], 256);
  EXPECT_EQ(opt2.serialize(), opt.serialize());

  // Mismatched step between the json and the optimizer is refused.
  s.step = 3;
  EXPECT_THROW(save_train_state(dir, s, opt), Error);
  write_file_atomic(dir + "/train_state.json", std::string("{\"format\": \"other\"}"));
  EXPECT_THROW(load_train_state(dir, opt2), Error);
  std::filesystem::remove_all(dir);
  EXPECT_THROW(load_train_state(dir, opt2), Error);
}

// A number the field's type cannot hold (1e300 as a float learning rate, 1e30 as the int
// version) was static_cast: undefined behaviour. Refused naming the key.
TEST(TrainStateBadInput, RejectsNumbersOutOfRange) {
  TrainState s;
  s.step = 5;
  const nlohmann::json good = train_state_to_json(s);
  EXPECT_EQ(train_state_from_json(good, "t.json").step, 5);
  for (auto [key, value] : {std::pair<const char*, double>{"max_lr", 1e300}, {"total_steps", 1e30}}) {
    nlohmann::json j = good;
    j["schedule"][key] = value;
    try {
      (void)train_state_from_json(j, "t.json");
      ADD_FAILURE() << key << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), std::string("t.json: '") + key + "' is not a number in range");
    }
  }
  nlohmann::json j = good;
  j["version"] = 1e30;
  EXPECT_THROW((void)train_state_from_json(j, "t.json"), Error);
}

}  // namespace
}  // namespace hymba
