// hymba logits: the logits of every given token as a float32 .npy [n, vocab], for checking the
// engine against other implementations. Computes in float32 throughout (f32 cache); with
// --quantize q8 the weights are the 8-bit ones, widened to float32.
#include <cstdio>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "io/files.h"
#include "runtime/engine.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {
namespace {

struct Opts : ModelFlags {
  std::string ids, prompt, out, mode = "prefix";
  int64_t chunk = 0;
};

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(o.ids.empty() != o.prompt.empty(), "give exactly one of --ids or --prompt");
  const std::string dir = o.dir();
  EngineOptions eo = o.engine_options();
  eo.cache_dtype = DType::F32;
  eo.use_prefix = o.mode != "stateless";
  std::vector<int32_t> ids;
  if (!o.ids.empty()) {
    ids = parse_ids(o.ids);
  } else {
    auto tok = Tokenizer::load(dir);
    ids = tok->encode(o.prompt, true);
    HYMBA_CHECK(!ids.empty(), "--prompt: the prompt encodes to no tokens");
  }
  auto eng = Engine::load(dir, eo);
  const auto& c = eng->config();
  const int64_t V = c.vocab_size, H = c.hidden_size, n = int64_t(ids.size());
  for (int32_t id : ids)
    HYMBA_CHECK(id >= 0 && id < V, "token id " + std::to_string(id) + " out of range [0, " +
                                       std::to_string(V) + ")");
  std::vector<float> logits(size_t(n * V));
  if (o.mode == "stateless") {
    // The official no-cache forward: [meta tokens; prompt] in one pass from an empty state.
    auto& m = eng->model();
    const int64_t M = c.num_memory_tokens;
    std::vector<float> x(size_t((M + n) * H));
    std::copy_n(m.weights().meta, M * H, x.data());
    m.embed(x.data() + M * H, ids.data(), n);
    ForwardItem item{nullptr, M + n};
    m.forward(x.data(), std::span<const ForwardItem>(&item, 1));
    m.logits(logits.data(), x.data() + M * H, n);
  } else {
    HYMBA_CHECK(o.mode == "prefix", "--mode must be prefix or stateless");
    auto seq = eng->new_sequence();
    const int64_t step = o.chunk > 0 ? o.chunk : n;
    for (int64_t s = 0; s < n; s += step) {
      std::vector<int32_t> part(ids.begin() + s, ids.begin() + std::min(n, s + step));
      std::vector<std::vector<float>> all;
      SequenceState* sp = &seq;
      eng->eval(std::span<SequenceState* const>(&sp, 1),
                std::span<const std::vector<int32_t>>(&part, 1), nullptr, &all);
      std::copy(all[0].begin(), all[0].end(), logits.begin() + s * V);
    }
  }
  write_npy_f32(o.out, logits.data(), {n, V});
  std::fprintf(stderr, "wrote %s: [%lld, %lld] float32\n", o.out.c_str(), (long long)n, (long long)V);
}

Register reg("logits", "Write the float32 logits of given tokens to a .npy file", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o, /*with_cache_type=*/false);
  sub.add_option("--ids", o->ids, "comma-separated token ids (no tokenizer needed)");
  sub.add_option("-p,--prompt", o->prompt, "text, encoded with the model's tokenizer (BOS added)");
  sub.add_option("-o,--out", o->out, "output .npy path")->required();
  sub.add_option("--mode", o->mode, "prefix (shared meta-token state, default) or stateless (official no-cache forward)");
  sub.add_option("--chunk", o->chunk, "feed the tokens in chunks of this many (tests continuation)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
