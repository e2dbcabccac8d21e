// hymba bench: prefill and decode speed, like llama-bench, with the machine's limits measured in
// the same run (these machines are shared and noisy, so only ratios within one run mean much).
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "model/init.h"
#include "ops/peak.h"
#include "ops/quant.h"
#include "ops/threads.h"
#include "runtime/engine.h"
#include "train/params.h"
#include "train/step.h"

namespace hymba::cli {
namespace {

struct Opts : ModelFlags {
  std::string random_config, weight_type = "bf16";
  int64_t n_prompt = 512, n_gen = 64, depth = 0, batch = 1;
  bool json = false, no_peaks = false;
  // --train
  bool train = false, no_torch = false;
  std::string train_config;
  int64_t train_batch = 8, seq_len = 256, steps = 5;
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// A randomly initialised model (official init) with its matrices in `wt`, kept in memory.
std::unique_ptr<Checkpoint> random_checkpoint(const std::string& config_path, DType wt) {
  auto ck = std::make_unique<Checkpoint>();
  ck->config = load_config(config_path);
  const auto specs = param_specs(ck->config);
  auto params = init_params(ck->config, 42);
  std::vector<ParamRef> refs;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].matrix && wt != DType::F32) {
      std::vector<uint16_t> h(params[i].size());
      from_f32(h.data(), wt, params[i].data(), h.size());
      std::vector<float>().swap(params[i]);
      ck->bf16_store.push_back(std::move(h));
      refs.push_back({ck->bf16_store.back().data(), wt});
    } else {
      ck->f32_store.push_back(std::move(params[i]));
      refs.push_back({ck->f32_store.back().data(), DType::F32});
    }
  }
  ck->bf16_store.shrink_to_fit();
  ck->weights = bind_weights(ck->config, refs);
  return ck;
}

// This process's anonymous memory on transparent huge pages (/proc/self/smaps_rollup), in MiB.
double huge_page_mib() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("AnonHugePages:", 0) == 0) return std::atof(line.c_str() + 14) / 1024.0;
  return 0;
}

int64_t weight_bytes_per_token(const Weights& w) {
  auto mb = [](const MatView& m) { return int64_t(quant_matrix_bytes(m.dtype, m.rows, m.cols)); };
  int64_t b = mb(w.lm_head);
  for (const auto& l : w.layers) {
    b += mb(l.in_proj) + mb(l.out_proj) + mb(l.gate) + mb(l.up) + mb(l.down);
    if (l.x_proj.data) b += mb(l.x_proj) + mb(l.dt_proj);
  }
  return b;
}


// Training throughput of the C++ trainer (forward + backward + AdamW), its matmul FLOP rate against
// the sgemm peak measured in the same run, and the repo's PyTorch reference (reference/train_ref.py)
// training the same checkpoint on the same token batches; their first losses must agree.
void run_train(const Opts& o) {
  std::string cfg_path = o.train_config;
  if (cfg_path.empty()) cfg_path = std::string(HYMBA_SOURCE_DIR) + "/configs/bench-10m.json";
  HYMBA_CHECK(o.train_batch >= 1 && o.seq_len >= 1 && o.steps >= 1,
              "--train-batch, --seq-len and --steps must be >= 1");
  ParamArena a = arena_from_init(load_config(cfg_path), 1);
  const Config& c = a.config;
  HymbaModel m(c, a.w);
  AdamW opt(param_groups(a), a.numel());
  const int64_t B = o.train_batch, L = o.seq_len, M = c.num_memory_tokens, S = o.steps + 1;

  // The data: S batches of [B, L+1] random tokens (inputs = [:, :-1], targets = [:, 1:]).
  std::vector<int32_t> tok(size_t(S * B * (L + 1)));
  std::mt19937 g(3);
  for (auto& t : tok) t = int32_t(3 + g() % uint32_t(c.vocab_size - 3));
  // The same checkpoint and batches for PyTorch, written before any update.
  char tmpl[] = "/tmp/hymba-bench-train-XXXXXX";
  const bool torch = !o.no_torch;
  std::string dir;
  if (torch) {
    HYMBA_CHECK(mkdtemp(tmpl) != nullptr, "bench --train: cannot create a folder in /tmp");
    dir = tmpl;
    save_arena_checkpoint(a, dir, DType::F32);
    std::vector<float> tf(tok.begin(), tok.end());  // ids < 2^24: exact in float32
    write_npy_f32(dir + "/tokens.npy", tf.data(), {S, B, L + 1});
  }

  std::vector<int32_t> in(size_t(B * L)), tg(in.size());
  auto step = [&](int64_t s) {
    const int32_t* b = tok.data() + s * B * (L + 1);
    for (int64_t r = 0; r < B; ++r)
      for (int64_t t = 0; t < L; ++t)
        in[size_t(r * L + t)] = b[r * (L + 1) + t], tg[size_t(r * L + t)] = b[r * (L + 1) + t + 1];
    a.zero_grad();
    const double loss = loss_and_grads(m, a, in.data(), tg.data(), B, L);
    opt.step(a.data.data(), a.grad.data(), 1e-3f);
    return loss;
  };
  const double first_loss = step(0);  // also the warm-up
  const double t0 = now_s();
  for (int64_t i = 1; i < S; ++i) step(i);
  const double sec = (now_s() - t0) / double(o.steps);
  const double tps = double(B * L) / sec;
  // FLOPs of the matrix multiplies: forward 2 per weight per row, backward 4 (dX and dW).
  // Attention scores and the scan are left out, so this is a lower bound of the work done.
  const double rows_layers = double(B * (L + M)), rows_head = double(B * L);
  const double flops = 6.0 * (double(matmul_params_per_layer_row(a)) * rows_layers +
                              double(c.vocab_size * c.hidden_size) * rows_head);
  const double gflops = flops / sec / 1e9;
  const double peak = o.no_peaks ? 0 : measure_sgemm_gflops(700);

  double torch_tps = -1, torch_loss = NAN;
  std::string torch_note = "skipped (--no-torch)";
  if (torch) {
    const std::string script = std::string(HYMBA_SOURCE_DIR) + "/reference/train_ref.py";
    const std::string cmd = "/usr/bin/python3 '" + script + "' --model '" + dir + "' --tokens '" +
                            dir + "/tokens.npy' --steps " + std::to_string(std::min<int64_t>(o.steps, 3)) +
                            " --threads " + std::to_string(num_threads()) + " 2>&1";
    std::string out;
    int rc = -1;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[512];
      while (fgets(buf, sizeof buf, p)) out += buf;
      rc = pclose(p);
    }
    std::filesystem::remove_all(dir);
    const auto nl = out.find_last_of('{');
    auto j = nlohmann::json::parse(nl == std::string::npos ? std::string() : out.substr(nl), nullptr, false);
    if (rc == 0 && !j.is_discarded() && j.contains("tokens_per_s")) {
      torch_tps = j["tokens_per_s"].get<double>();
      torch_loss = j["first_loss"].get<double>();
      torch_note = "ok";
    } else {
      torch_note = "failed (needs /usr/bin/python3 with python3-torch and python3-numpy): " +
                   out.substr(out.size() > 300 ? out.size() - 300 : 0);
    }
  }
  if (o.json) {
    nlohmann::json j = {{"config", cfg_path}, {"parameters", a.numel()}, {"threads", num_threads()},
                        {"batch", B}, {"seq_len", L}, {"meta_tokens", M}, {"steps", o.steps},
                        {"tokens_per_s", tps}, {"step_seconds", sec}, {"matmul_gflop_s", gflops},
                        {"machine_sgemm_gflop_s", peak}, {"first_loss", first_loss},
                        {"torch_tokens_per_s", torch_tps},
                        {"torch_first_loss", torch ? nlohmann::json(torch_loss) : nlohmann::json()},
                        {"torch", torch_note}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("train: %s, %lld params, batch %lld x %lld tokens (+%lld meta rows), %d threads\n",
              cfg_path.c_str(), (long long)a.numel(), (long long)B, (long long)L, (long long)M, num_threads());
  std::printf("hymba.cpp   %9.1f tok/s  (%.3f s/step)  matmul %.1f GFLOP/s", tps, sec, gflops);
  if (peak > 0) std::printf(" = %.2f of sgemm peak (%.1f GFLOP/s)", gflops / peak, peak);
  std::printf("\n  FLOPs/step = 6 x (layer matrix params x B(L+M) + V*H x B*L); attention/scan not counted\n");
  if (torch_tps > 0)
    std::printf("PyTorch ref %9.1f tok/s  (reference/train_ref.py, float32, same checkpoint and batches)\n"
                "hymba.cpp / PyTorch = %.2f;  first-step loss %.6f (hymba.cpp) vs %.6f (PyTorch)\n",
                torch_tps, tps / torch_tps, first_loss, torch_loss);
  else
    std::printf("PyTorch ref %s\n", torch_note.c_str());
}

void run(const Opts& o) {
  apply_threads(o.threads);
  if (o.train) return run_train(o);
  HYMBA_CHECK(o.n_prompt >= 1 && o.n_gen >= 1 && o.batch >= 1 && o.depth >= 0,
              "-p, -n and --batch must be >= 1, --depth >= 0");
  const EngineOptions eo = o.engine_options();
  std::unique_ptr<Engine> eng;
  std::string what, load_how = "random";
  const double t_load = now_s();
  if (!o.random_config.empty()) {
    const DType wt = parse_cache_type(o.weight_type);
    eng = std::make_unique<Engine>(random_checkpoint(o.random_config, wt), eo);
    what = "random " + o.random_config + " (" + o.weight_type + " weights)";
  } else {
    const std::string dir = o.dir();
    eng = Engine::load(dir, eo);  // exactly as generate and server load it
    what = dir;
    load_how = std::string(eo.io.mmap ? "mmap" : "read") + (eo.io.mlock ? "+mlock" : "");
  }
  const double load_s = now_s() - t_load;
  const double huge_mib = huge_page_mib();
  const auto& c = eng->config();
  std::mt19937 g(7);
  auto ids = [&](int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = int32_t(3 + g() % uint32_t(c.vocab_size - 3));
    return v;
  };

  // Prefill: one sequence, n_prompt tokens.
  auto s = eng->new_sequence();
  auto p = ids(o.n_prompt);
  double t0 = now_s();
  eng->eval_one(s, p);
  const double prefill_s = now_s() - t0;

  // Decode: batch sequences, each first filled to `depth` tokens, then n_gen steps together.
  std::vector<SequenceState> seqs;
  for (int64_t b = 0; b < o.batch; ++b) {
    seqs.push_back(eng->new_sequence());
    if (o.depth > 0) eng->eval_one(seqs.back(), ids(o.depth));
  }
  std::vector<SequenceState*> sp;
  for (auto& x : seqs) sp.push_back(&x);
  std::vector<std::vector<int32_t>> feed(size_t(o.batch), std::vector<int32_t>{5});
  std::vector<float> last;
  t0 = now_s();
  for (int64_t i = 0; i < o.n_gen; ++i) {
    eng->eval(sp, feed, &last);
    for (int64_t b = 0; b < o.batch; ++b) {
      const float* l = last.data() + b * c.vocab_size;
      feed[size_t(b)][0] = int32_t(std::max_element(l, l + c.vocab_size) - l);
    }
  }
  const double decode_s = now_s() - t0;

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double peak_mib = double(ru.ru_maxrss) / 1024.0;
  const double pp = double(o.n_prompt) / prefill_s;
  const double tg = double(o.n_gen * o.batch) / decode_s;
  const int64_t wbytes = weight_bytes_per_token(eng->model().weights());
  const double decode_gbs = double(wbytes) * double(o.n_gen) / decode_s / 1e9;  // weights read per step
  int64_t params = 0;
  for (const auto& sp2 : param_specs(c)) {
    int64_t n = 1;
    for (auto d : sp2.shape) n *= d;
    params += n;
  }
  const double prefill_gflops = 2.0 * double(params) * pp / 1e9;  // matmul FLOPs, attention excluded
  double peak_bw = 0, peak_gemm = 0;
  if (!o.no_peaks) peak_bw = measure_read_bandwidth_gbs(), peak_gemm = measure_sgemm_gflops(700);

  if (o.json) {
    nlohmann::json j = {{"model", what}, {"threads", num_threads()}, {"n_prompt", o.n_prompt},
                        {"n_gen", o.n_gen}, {"depth", o.depth}, {"batch", o.batch},
                        {"cache_type", o.cache_type}, {"quantize", o.quantize}, {"prefill_tok_s", pp}, {"decode_tok_s", tg},
                        {"decode_weight_gb_s", decode_gbs}, {"prefill_gflop_s", prefill_gflops},
                        {"peak_rss_mib", peak_mib}, {"machine_read_gb_s", peak_bw},
                        {"load", load_how}, {"load_s", load_s}, {"huge_page_mib", huge_mib},
                        {"machine_sgemm_gflop_s", peak_gemm}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("model: %s, %lld params, %d threads, cache %s, quantize %s\n", what.c_str(),
              (long long)params, num_threads(), o.cache_type.c_str(), o.quantize.c_str());
  std::printf("load     %-8s %9.2f s  (%.0f MiB on 2 MiB pages)\n", load_how.c_str(), load_s, huge_mib);
  std::printf("prefill  pp%-6lld %9.2f tok/s  %7.1f GFLOP/s", (long long)o.n_prompt, pp, prefill_gflops);
  if (peak_gemm > 0) std::printf("  = %.2f of sgemm peak (%.1f GFLOP/s)", prefill_gflops / peak_gemm, peak_gemm);
  std::printf("\ndecode   tg%-6lld %9.2f tok/s  (batch %lld, depth %lld)  weights %.2f GB/s",
              (long long)o.n_gen, tg, (long long)o.batch, (long long)o.depth, decode_gbs);
  if (peak_bw > 0) std::printf("  = %.2f of read bandwidth (%.1f GB/s)", decode_gbs / peak_bw, peak_bw);
  std::printf("\npeak memory %.1f MiB\n", peak_mib);
}

Register reg("bench", "Measure prefill/decode speed against the machine's limits", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.add_option("--random", o->random_config, "benchmark a randomly initialised model of this config.json");
  sub.add_option("--weight-type", o->weight_type, "with --random: bf16 (default), f16, f32");
  sub.add_option("-p,--n-prompt", o->n_prompt, "prompt tokens (default 512)");
  sub.add_option("-n,--n-gen", o->n_gen, "generated tokens (default 64)");
  sub.add_option("-d,--depth", o->depth, "context already in each decoding sequence (default 0)");
  sub.add_option("-b,--batch", o->batch, "sequences decoded together (default 1)");
  sub.add_flag("--no-peaks", o->no_peaks, "skip measuring the machine's GEMM and bandwidth peaks");
  sub.add_flag("--json", o->json, "print JSON");
  sub.add_flag("--train", o->train, "training speed (forward+backward+AdamW) instead of inference");
  sub.add_option("--config", o->train_config, "with --train: model config (default configs/bench-10m.json, 10M parameters)");
  sub.add_option("--train-batch", o->train_batch, "with --train: sequences per step (default 8)");
  sub.add_option("--seq-len", o->seq_len, "with --train: tokens per sequence (default 256)");
  sub.add_option("--steps", o->steps, "with --train: timed steps (default 5)");
  sub.add_flag("--no-torch", o->no_torch, "with --train: skip the PyTorch reference");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
