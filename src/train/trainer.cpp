#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/hash.h"
#include "io/files.h"
#include "model/hymba.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/params.h"
#include "train/sft.h"
#include "train/step.h"
#include "train/train_state.h"

namespace hymba {

std::atomic<bool> g_train_stop{false};

namespace fs = std::filesystem;

namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}


// FNV-1a of a file: ties train_state.json to the model file it was written with.
std::string file_hash(const std::string& path) {
  // Started from this (non-standard) basis since the first runs: kept so their
  // train_state.json still matches.
  const uint64_t h = fnv1a64(read_file(path), 1469598103934665603ull);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

// Same tensors and same computation (dtype and bookkeeping keys such as torch_dtype may differ).
bool same_architecture(const Config& a, const Config& b) {
  const auto sa = param_specs(a), sb = param_specs(b);
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); ++i)
    if (sa[i].name != sb[i].name || sa[i].shape != sb[i].shape) return false;
  return a.sliding_window == b.sliding_window && a.global_attn_idx == b.global_attn_idx &&
         a.kv_reuse_group == b.kv_reuse_group && a.num_memory_tokens == b.num_memory_tokens &&
         a.layer_type == b.layer_type && a.rope == b.rope && a.rope_base == b.rope_base &&
         a.rms_norm_eps == b.rms_norm_eps && a.mamba_inner_layernorms == b.mamba_inner_layernorms &&
         a.tie_word_embeddings == b.tie_word_embeddings && a.pad_token_id == b.pad_token_id;
}

std::string fmt_eta(double s) {
  char b[32];
  if (s >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  return b;
}

void plot_loss(const std::string& out) {
  // gnuplot is optional at run time: no plot is not an error, the CSV is the record.
  const std::string png = out + "/loss.png", tmp = out + "/.loss.png.tmp";
  const std::string script = out + "/.loss.gp";
  std::ofstream gp(script);
  gp << "set terminal pngcairo size 900,500 noenhanced\nset output '" << tmp << "'\n"
     << "set datafile separator ','\nset key autotitle columnhead\nset xlabel 'step'\n"
     << "set ylabel 'loss'\nset grid\n"
     << "plot '" << out << "/metrics.csv' using 1:2 with lines title 'train loss', "
     << "'' using 1:($6 > 0 ? $6 : 1/0) with linespoints title 'val loss'\n";
  gp.close();
  const std::string cmd = "gnuplot '" + script + "' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) == 0) fs::rename(tmp, png);
  fs::remove(script);
}

}  // namespace

TrainResult train(const TrainOptions& o) {
  HYMBA_CHECK(!o.out.empty(), "--out is required");
  HYMBA_CHECK(o.batch >= 1 && o.seq_len >= 1 && o.grad_accum >= 1 && o.steps >= 1,
              "--batch, --seq-len, --grad-accum and --steps must be >= 1");
  // Data parallel (mpirun -np K): every rank draws the same global batch and computes its share
  // of the rows; gradients are summed over ranks; rank 0 alone writes.
  const DistInfo& dp = dist();
  HYMBA_CHECK(o.batch >= dp.size, "--batch " + std::to_string(o.batch) + " is smaller than the " +
                                      std::to_string(dp.size) + " MPI ranks (each needs a row)");
  const auto [row_lo, row_hi] = dist_share(o.batch);
  if (dp.size > 1 && dp.root() && !o.quiet)
    std::fprintf(stderr, "data parallel over %d MPI ranks: %lld rows of each batch per rank\n", dp.size,
                 (long long)(row_hi - row_lo));
  // Everything that can be refused is checked before any work.
  std::error_code ec;
  fs::create_directories(o.out, ec);
  HYMBA_CHECK(!ec, "cannot create output folder " + o.out + ": " + ec.message());
  if (dp.root()) {
    write_file_atomic(o.out + "/.write-test", std::string("ok"));
    fs::remove(o.out + "/.write-test");
  }
  const std::string ck = current_checkpoint(o.out);
  if (o.resume) HYMBA_CHECK(!ck.empty(), "--resume: no checkpoint (train_state.json) in " + o.out);
  else HYMBA_CHECK(ck.empty(), "--out " + o.out + " already holds a training run: pass --resume to "
                               "continue it, or choose another folder");
  // Token stream (train.tok: random windows, loss on every token) or pre-tokenized rows
  // (train.jsonl or a .jsonl file: one row per sequence, loss on its completion only).
  const bool rows = fs::is_regular_file(o.data) || fs::exists(o.data + "/train.jsonl");
  const std::string train_rows = fs::is_regular_file(o.data) ? o.data : o.data + "/train.jsonl";
  if (rows)
    HYMBA_CHECK(!fs::exists(o.data + "/train.tok"),
                o.data + " holds both train.tok and train.jsonl: keep the one to train on");
  std::unique_ptr<TokenWindows> train_data, val_data;
  if (!rows) {
    train_data = std::make_unique<TokenWindows>(o.data + "/train.tok");
    if (fs::exists(o.data + "/val.tok")) val_data = std::make_unique<TokenWindows>(o.data + "/val.tok");
    HYMBA_CHECK(train_data->num_tokens() > o.seq_len + 1,
                "training data " + o.data + "/train.tok has fewer tokens than --seq-len + 2");
  }

  if (dp.root()) clean_stale_checkpoints(o.out);
  ParamArena arena;
  if (o.resume) {
    arena = arena_from_checkpoint(ck);
    if (!o.config.empty()) {
      Config want = load_config(o.config);
      HYMBA_CHECK(same_architecture(want, arena.config),
                  "--resume: the checkpoint in " + o.out + " was trained with another config than " + o.config);
    }
  } else if (!o.init_from.empty()) {
    arena = arena_from_checkpoint(o.init_from);
  } else {
    HYMBA_CHECK(!o.config.empty(), "--config is required for a new model");
    arena = arena_from_init(load_config(o.config), o.seed);
  }
  const Config& c = arena.config;
  if (train_data)
    HYMBA_CHECK(train_data->vocab_size() <= c.vocab_size,
                "data vocabulary (" + std::to_string(train_data->vocab_size()) +
                    ") is larger than the model's vocab_size (" + std::to_string(c.vocab_size) + ")");
  std::vector<SftExample> train_ex, val_ex;
  if (rows) {
    train_ex = load_token_jsonl(train_rows, c.vocab_size, o.seq_len);
    if (!fs::is_regular_file(o.data) && fs::exists(o.data + "/val.jsonl"))
      val_ex = load_token_jsonl(o.data + "/val.jsonl", c.vocab_size, o.seq_len);
  }
  // A row is one sequence of its own length (a forward item from position 0, as at inference; no
  // padding, never packed): SftExample::seq(), as hymba finetune passes its conversations.

  AdamW opt(param_groups(arena), arena.numel(), o.adamw);
  TrainState ts;
  ts.schedule = o.schedule;
  ts.schedule.total_steps = o.steps;
  ts.data_rng = o.seed * 0x9E3779B97F4A7C15ull + 1;
  if (o.resume) {
    ts = load_train_state(ck, opt);
    HYMBA_CHECK(ts.run.value("model_hash", "") == file_hash(ck + "/model.safetensors"),
                "--resume: " + ck + "/model.safetensors does not belong to train_state.json");
    HYMBA_CHECK(ts.schedule.total_steps == o.steps,
                "--resume: --steps differs from the run being resumed (" +
                    std::to_string(ts.schedule.total_steps) + ")");
  }
  const LrSchedule& sched = ts.schedule;
  int64_t& step = ts.step;
  uint64_t& data_rng = ts.data_rng;
  dist_broadcast(arena.data.data(), arena.data.size());  // identical start on every rank
  HymbaModel model(c, arena.w);

  std::string csv_text = o.resume && fs::exists(ck + "/metrics.csv") ? read_file(ck + "/metrics.csv")
                                                      : "step,loss,lr,grad_norm,tokens_per_s,val_loss\n";
  if (o.resume) {  // keep only rows up to the checkpoint, so a resumed run's CSV has no duplicates
    std::istringstream in(csv_text);
    std::string line, kept;
    std::getline(in, line), kept = line + "\n";
    while (std::getline(in, line))
      if (!line.empty() && std::stoll(line) <= step) kept += line + "\n";
    csv_text = kept;
  }

  auto eval_val = [&]() -> double {
    if (rows) {  // the first eval_batches * batch validation rows, in order
      if (val_ex.empty()) return -1;
      const int64_t n = std::min(int64_t(val_ex.size()), o.eval_batches * o.batch);
      std::vector<SeqRef> seqs;
      double sum = 0;
      int64_t cnt = 0;
      for (int64_t i0 = 0; i0 < n; i0 += o.batch) {
        seqs.clear();
        for (int64_t i = i0; i < std::min(n, i0 + o.batch); ++i) seqs.push_back(val_ex[size_t(i)].seq());
        int64_t k = 0;
        const double l = loss_only(model, seqs, &k);
        sum += l * double(k), cnt += k;
      }
      return cnt ? sum / double(cnt) : -1;
    }
    if (!val_data || val_data->num_sequential(o.seq_len) == 0) return -1;
    SequentialWindows it(*val_data, o.batch, o.seq_len, o.eval_batches * o.batch);
    std::vector<int32_t> in(size_t(o.batch * o.seq_len)), tg(in.size());
    double sum = 0;
    int64_t cnt = 0;
    int rows = 0;
    while (it.next(in.data(), tg.data(), rows)) {
      int64_t k = 0;
      const double l = loss_only(model, in.data(), tg.data(), rows, o.seq_len, &k);
      sum += l * double(k), cnt += k;
    }
    return cnt ? sum / double(cnt) : -1;
  };

  // A resumed run's tokenizer files (OUT/tokenizer.model -> the current checkpoint's) travel on.
  const std::string tokenizer_from = !o.tokenizer.empty() ? o.tokenizer
                                     : fs::exists(o.out + "/tokenizer.model") ? o.out : std::string();
  auto save = [&]() {
    if (!dp.root()) return;
    const std::string dir = begin_checkpoint(o.out, step);
    save_arena_checkpoint(arena, dir, DType::F32);
    if (!tokenizer_from.empty()) copy_tokenizer_files(tokenizer_from, dir);
    write_file_atomic(dir + "/metrics.csv", csv_text);
    ts.run = {{"model_hash", file_hash(dir + "/model.safetensors")}, {"data", o.data},
              {"batch", o.batch}, {"seq_len", o.seq_len}, {"grad_accum", o.grad_accum}, {"seed", o.seed}};
    save_train_state(dir, ts, opt);
    commit_checkpoint(o.out, dir, step, o.keep_checkpoints);
    plot_loss(o.out);
  };

  TrainResult r;
  // A step's sequences: --grad-accum micro-batches of --batch each, all drawn before the first is
  // computed (in the order one micro-batch at a time would draw them) so that each can be weighted
  // by its share of the step's counted targets.
  const int64_t n_seq = int64_t(o.grad_accum) * o.batch;
  std::vector<int32_t> in(rows ? 0 : size_t(n_seq * o.seq_len)), tg(in.size());
  std::vector<SeqRef> seqs(static_cast<size_t>(n_seq));
  std::vector<int64_t> seq_count(seqs.size());
  const double t_start = now_s();
  const int64_t first_step = step;
  double t_log = now_s();
  int64_t tokens_since_log = 0;
  double comm_since_log = 0;  // seconds in the gradient all-reduce (incl. waiting for slower ranks)
  while (step < o.steps) {
    arena.zero_grad();
    int64_t step_tokens = 0, step_count = 0;
    for (int64_t k = 0; k < o.grad_accum; ++k) {
      SeqRef* s = seqs.data() + k * o.batch;
      if (rows) {  // rows drawn uniformly (with replacement), one example each
        for (int b = 0; b < o.batch; ++b) s[b] = train_ex[size_t(rng_below(data_rng, train_ex.size()))].seq();
      } else {
        const size_t at = size_t(k * o.batch * o.seq_len);
        train_data->sample(o.batch, o.seq_len, data_rng, in.data() + at, tg.data() + at);
        for (int b = 0; b < o.batch; ++b)
          s[b] = {in.data() + at + size_t(b * o.seq_len), tg.data() + at + size_t(b * o.seq_len), o.seq_len};
      }
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      const SeqRef& q = seqs[i];
      seq_count[i] = std::count_if(q.targets, q.targets + q.n, [](int32_t t) { return t >= 0; });
      step_count += seq_count[i], step_tokens += q.n;
    }
    // The loss and gradient are the mean over all counted targets of the step (every micro-batch
    // and every rank): this rank's rows of each micro-batch are weighted by their share of the
    // step's targets, which every rank knows since all draw the same sequences; the sum over
    // micro-batches and ranks (the all-reduce) is the mean.
    double loss = 0;
    for (int64_t k = 0; k < o.grad_accum; ++k) {
      const int64_t lo = k * o.batch + row_lo, hi = k * o.batch + row_hi;
      int64_t mine = 0;
      for (int64_t i = lo; i < hi; ++i) mine += seq_count[size_t(i)];
      const double w = step_count ? double(mine) / double(step_count) : 0.0;
      loss += w * loss_and_grads(model, arena.g, std::span<const SeqRef>(seqs).subspan(size_t(lo), size_t(hi - lo)), float(w));
    }
    comm_since_log += dist_reduce_step(arena.grad.data(), arena.grad.size(), std::span<double>(&loss, 1), g_train_stop);
    HYMBA_CHECK(std::isfinite(loss), "loss became " + std::to_string(loss) + " at step " +
                                         std::to_string(step) + " (try a lower --lr)");
    const float lr = sched.lr(step);
    const double gnorm = opt.step(arena.data.data(), arena.grad.data(), lr);
    ++step;
    ts.tokens_seen += step_tokens;
    tokens_since_log += step_tokens;
    r.last_loss = loss;
    double val = -1;
    if (dp.root() && o.eval_every > 0 && (step % o.eval_every == 0 || step == o.steps)) val = eval_val(), r.last_val_loss = val;
    const double now = now_s();
    const double tps = double(tokens_since_log) / std::max(now - t_log, 1e-9);
    char row[160];
    std::snprintf(row, sizeof row, "%lld,%.6f,%.6g,%.4f,%.1f,%.6f\n", (long long)step, loss, lr, gnorm, tps, val);
    csv_text += row;
    if (dp.root() && !o.quiet && (step % o.log_every == 0 || step == o.steps || val >= 0)) {
      const double rate = double(step - first_step) / std::max(now - t_start, 1e-9);
      std::fprintf(stderr, "step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %s",
                   (long long)step, (long long)o.steps, loss, lr, gnorm, tps,
                   fmt_eta(double(o.steps - step) / std::max(rate, 1e-9)).c_str());
      if (val >= 0) std::fprintf(stderr, " | val %.4f (ppl %.2f)", val, std::exp(val));
      if (dp.size > 1) std::fprintf(stderr, " | allreduce %.0f%%", 100 * comm_since_log / std::max(now - t_log, 1e-9));
      std::fprintf(stderr, "\n");
      t_log = now, tokens_since_log = 0, comm_since_log = 0;
    }
    if (g_train_stop.load() || (o.stop_after > 0 && step >= o.stop_after && step < o.steps)) {
      r.interrupted = true;
      break;
    }
    if (o.save_every > 0 && step % o.save_every == 0 && step < o.steps) save();
  }
  save();
  dist_barrier();  // the other ranks end once rank 0's checkpoint is complete
  r.steps_done = step;
  if (dp.root() && !o.quiet)
    std::fprintf(stderr, "%s at step %lld; checkpoint in %s\n",
                 r.interrupted ? "interrupted, saved" : "done", (long long)step, o.out.c_str());
  return r;
}

}  // namespace hymba
