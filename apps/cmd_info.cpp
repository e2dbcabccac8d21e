// hymba info: what a model is and how much state one sequence needs (paper §2.4, spec §6.3).
// Needs only config.json: the parameter count and state sizes follow from the config.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"

namespace hymba::cli {
namespace {

struct Opts {
  std::string model, cache_type = "bf16";
  int64_t context = 8192;
  bool json = false;
};

void run(const Opts& o) {
  const std::string dir = o.model.empty() ? default_model_dir() : o.model;
  // A folder, or a config.json file itself.
  const bool is_file = dir.size() > 5 && dir.compare(dir.size() - 5, 5, ".json") == 0;
  const Config c = load_config(is_file ? dir : dir + "/config.json");
  HYMBA_CHECK(o.context >= 0, "--context must be >= 0");
  const auto plan = make_layer_plan(c);
  const DType ct = parse_cache_type(o.cache_type);
  int64_t params = 0;
  for (const auto& s : param_specs(c)) {
    int64_t n = 1;
    for (auto d : s.shape) n *= d;
    params += n;
  }
  int n_global = 0, n_swa = 0, n_prod = 0, n_cons = 0, n_attn = 0, n_ssm = 0;
  std::string map;
  for (const auto& p : plan) {
    n_attn += p.has_attn, n_ssm += p.has_ssm;
    if (p.has_attn) (p.global ? n_global : n_swa)++;
    if (p.producer()) n_prod++;
    else if (p.has_attn) n_cons++;
  }
  const StateBytes b = state_bytes(c, plan, o.context, ct);
  if (o.json) {
    nlohmann::json j = {
        {"parameters", params},
        {"layers", c.num_hidden_layers},
        {"attention_layers", n_attn}, {"ssm_layers", n_ssm},
        {"global_layers", n_global}, {"swa_layers", n_swa},
        {"kv_producers", n_prod}, {"kv_consumers", n_cons},
        {"meta_tokens", c.num_memory_tokens}, {"sliding_window", c.sliding_window},
        {"context", o.context}, {"cache_type", o.cache_type},
        {"state", {{"kv_global", b.kv_global}, {"kv_swa", b.kv_swa}, {"conv", b.conv}, {"ssm", b.ssm}}},
        {"state_bytes", b.total()},
        {"prefix_shared_bytes", b.prefix_shared}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  auto mib = [](int64_t x) { return double(x) / (1024.0 * 1024.0); };
  std::printf("model          %s\n", dir.c_str());
  std::printf("parameters     %lld (%.3f B)\n", (long long)params, double(params) / 1e9);
  std::printf("layers         %lld: %d with attention heads (%d global, %d sliding-window %lld), "
              "%d with SSM heads\n",
              (long long)c.num_hidden_layers, n_attn, n_global, n_swa, (long long)c.sliding_window, n_ssm);
  std::printf("KV sharing     %d producers, %d consumers\n", n_prod, n_cons);
  std::printf("meta tokens    %lld\n", (long long)c.num_memory_tokens);
  std::printf("state per sequence at %lld tokens (%s K/V, f32 SSM/conv):\n", (long long)o.context,
              o.cache_type.c_str());
  std::printf("  kv global    %14lld B  %9.2f MiB\n", (long long)b.kv_global, mib(b.kv_global));
  std::printf("  kv window    %14lld B  %9.2f MiB\n", (long long)b.kv_swa, mib(b.kv_swa));
  std::printf("  conv         %14lld B  %9.2f MiB\n", (long long)b.conv, mib(b.conv));
  std::printf("  ssm          %14lld B  %9.2f MiB\n", (long long)b.ssm, mib(b.ssm));
  std::printf("  total        %14lld B  %9.2f MiB\n", (long long)b.total(), mib(b.total()));
  std::printf("meta prefix    %14lld B  %9.2f MiB (shared by all sequences)\n",
              (long long)b.prefix_shared, mib(b.prefix_shared));
}

Register reg("info", "Parameters and per-sequence state size of a model", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "model folder (only config.json is read)");
  sub.add_option("-c,--context", o->context, "context length in tokens (default 8192)");
  sub.add_option("--cache-type", o->cache_type, "K/V cache type: bf16 (default), f16, f32");
  sub.add_flag("--json", o->json, "print JSON");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
