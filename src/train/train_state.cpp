#include "train/train_state.h"

#include <filesystem>

#include "base/error.h"
#include "io/files.h"
#include "io/json_num.h"

namespace hymba {

nlohmann::json train_state_to_json(const TrainState& s) {
  nlohmann::ordered_json j;
  j["format"] = "hymba-train-state";
  j["version"] = 1;
  j["step"] = s.step;
  // As a string: the u64 must survive JSON tools that parse numbers as doubles.
  j["data_rng"] = std::to_string(s.data_rng);
  j["tokens_seen"] = s.tokens_seen;
  j["schedule"] = {{"kind", to_string(s.schedule.kind)},   {"max_lr", s.schedule.max_lr},
                   {"min_lr", s.schedule.min_lr},          {"total_steps", s.schedule.total_steps},
                   {"warmup_frac", s.schedule.warmup_frac}, {"warmup_steps", s.schedule.warmup_steps},
                   {"decay_frac", s.schedule.decay_frac}};
  j["run"] = s.run;
  return nlohmann::json(j);
}

TrainState train_state_from_json(const nlohmann::json& j, const std::string& what) {
  TrainState s;
  try {
    const auto num = [&](const nlohmann::json& o, const char* key, auto* out) {
      HYMBA_CHECK(json_number(o.at(key), out), what + ": '" + key + "' is not a number in range");
    };
    HYMBA_CHECK(j.value("format", "") == "hymba-train-state", what + ": not a hymba training state");
    int version = 0;
    num(j, "version", &version);
    HYMBA_CHECK(version == 1, what + ": unsupported version");
    num(j, "step", &s.step);
    s.data_rng = std::stoull(j.at("data_rng").get<std::string>());
    num(j, "tokens_seen", &s.tokens_seen);
    const auto& sc = j.at("schedule");
    s.schedule.kind = parse_lr_schedule(sc.at("kind").get<std::string>());
    num(sc, "max_lr", &s.schedule.max_lr);
    num(sc, "min_lr", &s.schedule.min_lr);
    num(sc, "total_steps", &s.schedule.total_steps);
    num(sc, "warmup_frac", &s.schedule.warmup_frac);
    num(sc, "warmup_steps", &s.schedule.warmup_steps);
    num(sc, "decay_frac", &s.schedule.decay_frac);
    if (j.contains("run")) s.run = j["run"];
  } catch (const nlohmann::json::exception& e) {
    fail(what + ": " + e.what());
  } catch (const std::logic_error& e) {  // stoull
    fail(what + ": bad data_rng (" + e.what() + ")");
  }
  return s;
}

void save_train_state(const std::string& dir, const TrainState& s, const AdamW& opt) {
  HYMBA_CHECK(opt.step_count() == s.step, "save_train_state: optimizer is at step " +
                                              std::to_string(opt.step_count()) + ", state at " +
                                              std::to_string(s.step));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  HYMBA_CHECK(!ec, "cannot create " + dir + ": " + ec.message());
  opt.save(dir + "/optimizer.bin");
  write_file_atomic(dir + "/train_state.json", train_state_to_json(s).dump(2) + "\n");
}

TrainState load_train_state(const std::string& dir, AdamW& opt) {
  const std::string jpath = dir + "/train_state.json";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(jpath));
  } catch (const nlohmann::json::exception& e) {
    fail(jpath + ": " + e.what());
  }
  TrainState s = train_state_from_json(j, jpath);
  opt.load(dir + "/optimizer.bin");
  HYMBA_CHECK(opt.step_count() == s.step, dir + ": optimizer.bin is at step " + std::to_string(opt.step_count()) +
                                              " but train_state.json at " + std::to_string(s.step));
  return s;
}

}  // namespace hymba
