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
#include "runtime/prompt_cache.h"
#include "train/adapter.h"
#include "train/finetune.h"
#include "train/params.h"
#include "train/step.h"

namespace hymba::cli {
namespace {

struct Opts : ModelFlags {
  std::string random_config, weight_type = "bf16", prompt_cache;
  std::vector<int64_t> n_prompt{512}, n_gen{64}, depth{0}, batch{1};
  int reps = 1;
  bool json = false, no_peaks = false;
  // --train
  bool train = false, no_torch = false;
  std::string train_config;
  int64_t train_batch = 8, seq_len = 256, steps = 5;
  // --finetune
  bool finetune = false;
  std::string method = "lora", targets = "in_proj,out_proj,x_proj,dt_proj,mlp", grad_ckpt = "auto";
  int64_t rank = 8, grad_accum = 1;
  double alpha = 16.0;
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
                        {"batch", B}, {"seq_len", L}, {"meta_tokens", M}, {"steps", o.steps}, {"blas_core", blas_core()},
                        {"tokens_per_s", tps}, {"step_seconds", sec}, {"matmul_gflop_s", gflops},
                        {"machine_sgemm_gflop_s", peak}, {"first_loss", first_loss},
                        {"torch_tokens_per_s", torch_tps},
                        {"torch_first_loss", torch ? nlohmann::json(torch_loss) : nlohmann::json()},
                        {"torch", torch_note}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("train: %s, %lld params, batch %lld x %lld tokens (+%lld meta rows), %d threads, OpenBLAS %s\n",
              cfg_path.c_str(), (long long)a.numel(), (long long)B, (long long)L, (long long)M, num_threads(), blas_core());
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

double peak_rss_mib();

// Adapter fine-tuning throughput on the loaded (or --random) model: one LoRA/DoRA step = grad_accum
// micro-batches of one row of seq_len tokens (forward + backward through the frozen base, the
// adapters' gradients) and one AdamW step on the adapters. FLOPs are the matrix multiplies done:
// per base weight and row 2 (forward) + 2 (input gradient; the base gets none) + 2 more when
// activation checkpointing reruns the forward; the adapters' own and DoRA's row norms are added.
void run_finetune(const Opts& o) {
  HYMBA_CHECK(o.method == "lora" || o.method == "dora", "bench --finetune: --method must be lora or dora");
  HYMBA_CHECK(o.seq_len >= 2 && o.steps >= 1 && o.grad_accum >= 1 && o.rank >= 1,
              "--seq-len >= 2, --steps, --grad-accum and --rank >= 1");
  HYMBA_CHECK(o.grad_ckpt == "auto" || o.grad_ckpt == "on" || o.grad_ckpt == "off",
              "--grad-checkpointing must be auto, on or off (got '" + o.grad_ckpt + "')");
  std::unique_ptr<Checkpoint> ck;
  std::string what;
  if (!o.random_config.empty()) {
    ck = random_checkpoint(o.random_config, parse_cache_type(o.weight_type));
    what = "random " + o.random_config + " (" + o.weight_type + " weights)";
  } else {
    ck = load_checkpoint(o.dir(), o.engine_options().io);
    what = o.dir();
  }
  const DType qt = parse_quantize(o.quantize);
  HYMBA_CHECK(qt == DType::F32 || qt == DType::Q8, "bench --finetune: --quantize none or q8");
  if (qt == DType::Q8) quantize_weights(*ck, DType::Q8);
  const Config& c = ck->config;
  AdapterConfig ac;
  ac.rank = o.rank, ac.alpha = o.alpha, ac.dora = o.method == "dora";
  ac.targets = parse_targets(o.targets);
  AdapterSet ad = init_adapters(c, ck->weights, ac, 1);
  HymbaModel m(c, ck->weights);
  m.set_adapters(&ad.view, &ad.gview);
  const bool ckpt = o.grad_ckpt == "auto" ? auto_grad_checkpointing(m, o.seq_len) : o.grad_ckpt == "on";
  m.set_grad_checkpointing(ckpt);
  Weights frozen;
  frozen.layers.resize(ck->weights.layers.size());
  AdamW opt(adapter_groups(ad), int64_t(ad.data.size()));
  const int64_t L = o.seq_len, A = o.grad_accum, M = c.num_memory_tokens;

  std::mt19937 g(3);
  std::vector<int32_t> tok(static_cast<size_t>(L + 1));
  std::vector<int32_t> in(static_cast<size_t>(L)), tg(static_cast<size_t>(L));
  auto step = [&]() {
    ad.zero_grad();
    double loss = 0;
    for (int64_t k = 0; k < A; ++k) {
      for (auto& t : tok) t = int32_t(3 + g() % uint32_t(c.vocab_size - 3));
      for (int64_t t = 0; t < L; ++t) in[size_t(t)] = tok[size_t(t)], tg[size_t(t)] = tok[size_t(t + 1)];
      loss += loss_and_grads(m, frozen, in.data(), tg.data(), 1, L, 1.0f / float(A)) / double(A);
    }
    opt.step(ad.data.data(), ad.grad.data(), 1e-4f);
    return loss;
  };
  const double first_loss = step();  // also the warm-up
  const double t0 = now_s();
  double last_loss = first_loss;
  for (int64_t i = 0; i < o.steps; ++i) last_loss = step();
  const double sec = (now_s() - t0) / double(o.steps);
  const double tps = double(A * L) / sec;

  const double rows = double(L + M), fwd = ckpt ? 2.0 : 1.0;
  double base_w = 0, adapter_w = 0, dora_norm = 0;
  for (size_t l = 0; l < ck->weights.layers.size(); ++l)
    for (int s = 0; s < kNumSlots; ++s) {
      const MatView& w = slot_matrix(ck->weights.layers[l], Slot(s));
      if (!w.data) continue;
      base_w += double(w.rows * w.cols);
      const LoraView& v = ad.view.layers[l][size_t(s)];
      if (!v.active()) continue;
      adapter_w += double(o.rank * (w.rows + w.cols));
      if (v.dora()) dora_norm += double((2 * o.rank + 2) * w.rows * w.cols);
    }
  const double flops_micro = (2.0 * fwd + 2.0) * base_w * rows + (2.0 * fwd + 4.0) * adapter_w * rows +
                             fwd * dora_norm + 4.0 * double(c.vocab_size * c.hidden_size) * double(L);
  const double gflops = flops_micro * double(A) / sec / 1e9;
  const double peak = o.no_peaks ? 0 : measure_sgemm_gflops(700);
  const double rss = peak_rss_mib();
  if (o.json) {
    nlohmann::json j = {{"model", what}, {"method", o.method}, {"rank", o.rank}, {"alpha", o.alpha},
                        {"targets", o.targets}, {"quantize", o.quantize}, {"threads", num_threads()},
                        {"seq_len", L}, {"meta_tokens", M}, {"grad_accum", A}, {"steps", o.steps},
                        {"grad_checkpointing", ckpt}, {"trainable_params", int64_t(ad.data.size())},
                        {"tokens_per_s", tps}, {"step_seconds", sec}, {"matmul_gflop_s", gflops},
                        {"machine_sgemm_gflop_s", peak},
                        {"fraction_of_peak", peak > 0 ? nlohmann::json(gflops / peak) : nlohmann::json()},
                        {"first_loss", first_loss}, {"last_loss", last_loss}, {"peak_rss_mib", rss}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("finetune: %s, %s r=%lld on %s, %lld trainable params, %d threads\n", what.c_str(),
              o.method.c_str(), (long long)o.rank, o.targets.c_str(), (long long)ad.data.size(), num_threads());
  std::printf("step = %lld x 1 row of %lld tokens (+%lld meta rows), activation checkpointing %s\n",
              (long long)A, (long long)L, (long long)M, ckpt ? "on" : "off");
  std::printf("hymba.cpp   %9.1f tok/s  (%.3f s/step)  matmul %.1f GFLOP/s", tps, sec, gflops);
  if (peak > 0) std::printf(" = %.2f of sgemm peak (%.1f GFLOP/s)", gflops / peak, peak);
  std::printf("\npeak RSS %.0f MiB; loss %.4f -> %.4f\n", rss, first_loss, last_loss);
  std::printf("  FLOPs/row = (2 fwd%s + 2 dX) x base matrix params + adapters + DoRA norms, + 4 V*H for the head;"
              " attention/scan not counted\n", ckpt ? " x2 (recompute)" : "");
}

// One row of the table: a test's speeds over the repetitions and the limit it is held to.
struct Row {
  std::string test;
  int64_t n_prompt = 0, n_gen = 0, depth = 0, batch = 1;
  std::vector<double> tok_s;
  double work_per_s = 0;  // prefill: GFLOP/s, decode: weight GB/s (mean over repetitions)
  double peak_rss_mib = 0;
};

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}
double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;
}

void run(const Opts& o) {
  apply_threads(o.threads);
  if (o.train) return run_train(o);
  if (o.finetune) return run_finetune(o);
  auto all = [](const std::vector<int64_t>& v, int64_t lo) {
    for (auto x : v)
      if (x < lo) return false;
    return !v.empty();
  };
  HYMBA_CHECK(all(o.n_prompt, 0) && all(o.n_gen, 0) && all(o.batch, 1) && all(o.depth, 0) && o.reps >= 1,
              "-p and -n must be >= 0 (0 skips), -b and -r >= 1, -d >= 0");
  const std::string cache_stem = o.prompt_cache;
  auto cache_path = [&](int64_t d) { return cache_stem + ".d" + std::to_string(d); };
  if (!cache_stem.empty())
    for (int64_t d : o.depth)
      if (d > 0) check_prompt_cache_path(cache_path(d), o.random_config.empty() ? o.dir() : "");
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
  int64_t params = 0;
  for (const auto& sp2 : param_specs(c)) {
    int64_t n = 1;
    for (auto d : sp2.shape) n *= d;
    params += n;
  }
  const int64_t wbytes = weight_bytes_per_token(eng->model().weights());

  {  // warm-up, untimed (first-touch of buffers and weights), as llama-bench does
    auto w = eng->new_sequence();
    eng->eval_one(w, ids(8));
  }
  std::vector<Row> rows;
  // Prefill: one fresh sequence per repetition, p tokens. FLOPs: 2 per parameter per token
  // (attention scores excluded, so a lower bound of the work).
  for (int64_t p : o.n_prompt) {
    if (p == 0) continue;
    Row r{"pp" + std::to_string(p), p, 0, 0, 1};
    for (int rep = 0; rep < o.reps; ++rep) {
      auto s = eng->new_sequence();
      auto toks = ids(p);
      const double t0 = now_s();
      eng->eval_one(s, toks);
      r.tok_s.push_back(double(p) / (now_s() - t0));
    }
    r.work_per_s = 2.0 * double(params) * mean(r.tok_s) / 1e9;
    r.peak_rss_mib = peak_rss_mib();
    rows.push_back(r);
  }
  // Decode: the context of each depth is built once and copied into every sequence (states are
  // plain data); then b sequences take n greedy steps together. Weights are read once per step.
  for (int64_t d : o.depth) {
    bool any = false;
    for (int64_t n : o.n_gen) any |= n > 0;
    if (!any) break;
    auto base = eng->new_sequence();
    if (d > 0) {
      // With --prompt-cache the context is the saved state of the same tokens (a long context's
      // prefill costs minutes; the decode steps measured after it are the same).
      const auto toks = ids(d);
      std::vector<int32_t> saved;
      std::string why;
      if (cache_stem.empty() || !load_prompt_cache(*eng, cache_path(d), &saved, &base, &why) ||
          saved != toks) {
        base = eng->new_sequence();
        eng->eval_one(base, toks);
        if (!cache_stem.empty()) save_prompt_cache(*eng, cache_path(d), toks, base);
      }
    }
    for (int64_t b : o.batch)
      for (int64_t n : o.n_gen) {
        if (n == 0) continue;
        Row r{"tg" + std::to_string(n) + (d > 0 ? " @ d" + std::to_string(d) : "") +
                  (b > 1 ? " x" + std::to_string(b) : ""), 0, n, d, b};
        double steps_per_s = 0;
        for (int rep = 0; rep < o.reps; ++rep) {
          std::vector<SequenceState> seqs(size_t(b), base);
          std::vector<SequenceState*> sp;
          for (auto& x : seqs) sp.push_back(&x);
          std::vector<std::vector<int32_t>> feed(size_t(b), std::vector<int32_t>{5});
          std::vector<float> last;
          eng->eval(sp, feed, &last);  // warm-up step, untimed (buffers sized for this batch)
          const double t0 = now_s();
          for (int64_t i = 0; i < n; ++i) {
            eng->eval(sp, feed, &last);
            for (int64_t k = 0; k < b; ++k) {
              const float* l = last.data() + k * c.vocab_size;
              feed[size_t(k)][0] = int32_t(std::max_element(l, l + c.vocab_size) - l);
            }
          }
          const double sec = now_s() - t0;
          r.tok_s.push_back(double(n * b) / sec);
          steps_per_s += double(n) / sec / o.reps;
        }
        r.work_per_s = double(wbytes) * steps_per_s / 1e9;
        r.peak_rss_mib = peak_rss_mib();
        rows.push_back(r);
      }
  }

  double peak_bw = 0, peak_gemm = 0;
  if (!o.no_peaks) peak_bw = measure_read_bandwidth_gbs(), peak_gemm = measure_sgemm_gflops(700);
  auto limit_of = [&](const Row& r) { return r.n_prompt > 0 ? peak_gemm : peak_bw; };

  if (o.json) {
    nlohmann::json jr = nlohmann::json::array();
    for (const Row& r : rows) {
      const double lim = limit_of(r);
      nlohmann::json x = {{"test", r.test}, {"n_prompt", r.n_prompt}, {"n_gen", r.n_gen},
                          {"depth", r.depth}, {"batch", r.batch}, {"repetitions", o.reps},
                          {"tok_s", mean(r.tok_s)}, {"tok_s_stddev", stddev(r.tok_s)},
                          {"samples_tok_s", r.tok_s}, {"peak_rss_mib", r.peak_rss_mib}};
      if (r.n_prompt > 0) x["prefill_gflop_s"] = r.work_per_s, x["machine_sgemm_gflop_s"] = lim;
      else x["decode_weight_gb_s"] = r.work_per_s, x["machine_read_gb_s"] = lim;
      x["fraction_of_limit"] = lim > 0 ? nlohmann::json(r.work_per_s / lim) : nlohmann::json();
      jr.push_back(x);
    }
    nlohmann::json j = {{"model", what}, {"params", params}, {"weight_bytes_per_token", wbytes},
                        {"threads", num_threads()}, {"openmp_waiting", openmp_waiting()}, {"blas_core", blas_core()},
                        {"cache_type", o.cache_type}, {"quantize", o.quantize}, {"load", load_how}, {"load_s", load_s}, {"huge_page_mib", huge_mib},
                        {"machine_read_gb_s", peak_bw}, {"machine_sgemm_gflop_s", peak_gemm},
                        {"peak_rss_mib", peak_rss_mib()}, {"rows", jr}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("model: %s, %lld params, %.0f MiB of weights read per decode step, %d threads (%s), OpenBLAS %s, cache %s, quantize %s\n",
              what.c_str(), (long long)params, double(wbytes) / 1048576.0, num_threads(), openmp_waiting().c_str(), blas_core(),
              o.cache_type.c_str(), o.quantize.c_str());
  std::printf("load: %s in %.2f s (%.0f MiB on 2 MiB pages)\n", load_how.c_str(), load_s, huge_mib);
  if (!o.no_peaks)
    std::printf("limits measured in this run: read bandwidth %.1f GB/s, sgemm %.1f GFLOP/s\n", peak_bw, peak_gemm);
  std::printf("\n| test | t/s | work | of the limit | peak RSS |\n|---|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    const double lim = limit_of(r);
    char work[64], frac[32] = "-";
    std::snprintf(work, sizeof work, r.n_prompt > 0 ? "%.1f GFLOP/s" : "%.2f GB/s", r.work_per_s);
    if (lim > 0) std::snprintf(frac, sizeof frac, "%.2f", r.work_per_s / lim);
    std::printf("| %s | %.2f ± %.2f | %s | %s | %.0f MiB |\n", r.test.c_str(), mean(r.tok_s), stddev(r.tok_s),
                work, frac, r.peak_rss_mib);
  }
  std::printf("\nprefill work: 2 FLOPs per parameter per token (attention scores not counted), against sgemm;\n"
              "decode work: the weights read per step (once for the whole batch), against read bandwidth.\n");
}

Register reg("bench", "Measure prefill/decode speed against the machine's limits", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.add_option("--random", o->random_config, "benchmark a randomly initialised model of this config.json");
  sub.add_option("--weight-type", o->weight_type, "with --random: bf16 (default), f16, f32");
  sub.add_option("-p,--n-prompt", o->n_prompt, "prompt tokens, a comma list like llama-bench's (default 512; 0 skips)")
      ->delimiter(',');
  sub.add_option("-n,--n-gen", o->n_gen, "generated tokens, a comma list (default 64; 0 skips)")->delimiter(',');
  sub.add_option("-d,--depth", o->depth, "context already in each decoding sequence, a comma list (default 0)")
      ->delimiter(',');
  sub.add_option("--prompt-cache", o->prompt_cache,
                 "keep each depth's context in the file PATH.dDEPTH (a prompt cache) and reuse it in later runs")
      ->type_name("PATH");
  sub.add_option("-b,--batch", o->batch, "sequences decoded together, a comma list (default 1)")->delimiter(',');
  sub.add_option("-r,--repetitions", o->reps, "repetitions of each test (default 1); t/s is their mean ± stddev");
  sub.add_flag("--no-peaks", o->no_peaks, "skip measuring the machine's GEMM and bandwidth peaks");
  sub.add_flag("--json", o->json, "print JSON");
  sub.add_flag("--train", o->train, "training speed (forward+backward+AdamW) instead of inference");
  sub.add_option("--config", o->train_config, "with --train: model config (default configs/bench-10m.json, 10M parameters)");
  sub.add_option("--train-batch", o->train_batch, "with --train: sequences per step (default 8)");
  sub.add_option("--seq-len", o->seq_len, "with --train/--finetune: tokens per sequence (default 256)");
  sub.add_option("--steps", o->steps, "with --train/--finetune: timed steps after one untimed (default 5)");
  sub.add_flag("--no-torch", o->no_torch, "with --train: skip the PyTorch reference");
  sub.add_flag("--finetune", o->finetune,
               "LoRA/DoRA fine-tuning speed on the model (-m or --random): batch 1, --seq-len tokens, --steps steps");
  sub.add_option("--method", o->method, "with --finetune: lora (default) or dora");
  sub.add_option("--rank", o->rank, "with --finetune: adapter rank (default 8)");
  sub.add_option("--alpha", o->alpha, "with --finetune: lora_alpha (default 16)");
  sub.add_option("--target", o->targets, "with --finetune: adapted modules, as hymba finetune --target");
  sub.add_option("--grad-accum", o->grad_accum, "with --finetune: micro-batches (rows) per optimizer step (default 1)");
  sub.add_option("--grad-checkpointing", o->grad_ckpt, "with --finetune: auto (default), on or off, as hymba finetune");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
