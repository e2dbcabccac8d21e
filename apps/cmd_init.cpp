// hymba init CONFIG.json -o DIR [--seed N] [--dtype bf16|f16|f32]: a randomly initialised
// checkpoint in the official layout (spec §3.10), e.g. to train from scratch.
#include <cstdio>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "model/config.h"
#include "model/init.h"
#include "model/weights.h"

namespace {

struct InitOpts {
  std::string config, out, dtype = "bf16";
  uint64_t seed = 0;
};

static hymba::cli::Register reg("init", "Write a randomly initialised checkpoint for a config.json",
                                [](CLI::App& sub) {
  auto o = std::make_shared<InitOpts>();
  sub.add_option("config", o->config, "config.json (Hugging Face Hymba layout)")->required();
  sub.add_option("-o,--out", o->out, "output folder (created)")->required();
  sub.add_option("--seed", o->seed, "RNG seed")->capture_default_str();
  sub.add_option("--dtype", o->dtype, "checkpoint dtype: bf16, f16 or f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  sub.callback([o] {
    const hymba::Config c = hymba::load_config(o->config);
    const hymba::DType t = o->dtype == "f32"   ? hymba::DType::F32
                           : o->dtype == "f16" ? hymba::DType::F16
                                               : hymba::DType::BF16;
    hymba::init_checkpoint(c, o->out, o->seed, t);
    int64_t n = 0;
    for (auto& s : hymba::param_specs(c)) {
      int64_t k = 1;
      for (int64_t d : s.shape) k *= d;
      n += k;
    }
    std::printf("wrote %s: %lld parameters, %s, seed %llu\n", o->out.c_str(), (long long)n,
                o->dtype.c_str(), (unsigned long long)o->seed);
  });
});

}  // namespace
