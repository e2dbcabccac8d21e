#include "train/finetune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "base/error.h"
#include "base/hash.h"
#include "io/files.h"
#include "model/adapter.h"
#include "model/hymba.h"
#include "runtime/tokenizer.h"
#include "train/adapter.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/dpo.h"
#include "train/params.h"
#include "train/sft.h"
#include "train/step.h"
#include "train/train_state.h"
#include "train/trainer.h"

namespace hymba {

namespace fs = std::filesystem;

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

bool auto_grad_checkpointing(const HymbaModel& m, int64_t seq_len) {
  return m.activation_bytes_per_row() * (seq_len + m.config().num_memory_tokens) > kAutoCheckpointBytes;
}

FinetuneResult finetune(const FinetuneOptions& o) {
  // Everything that can be refused is checked before any step.
  HYMBA_CHECK(o.method == "full" || o.method == "lora" || o.method == "dora",
              "--method must be full, lora or dora (got '" + o.method + "')");
  const bool adapters = o.method != "full";
  const bool train_meta = o.train_meta_tokens < 0 ? !adapters : o.train_meta_tokens > 0;
  HYMBA_CHECK(!(o.q8 && !adapters), "--quantize q8 needs --method lora or dora (the base is frozen)");
  HYMBA_CHECK(o.dropout >= 0 && o.dropout < 1, "--dropout must be in [0, 1)");
  HYMBA_CHECK(o.dropout == 0 || o.method != "full", "--dropout is for --method lora or dora (adapters)");
  HYMBA_CHECK(o.seq_len >= 2 && o.grad_accum >= 1 && o.epochs >= 1, "--seq-len >= 2, --grad-accum >= 1, --epochs >= 1");
  HYMBA_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction must be in [0, 1)");
  // Data parallel (mpirun -np K): a step's --grad-accum micro-batches are the global batch; each
  // rank computes a contiguous share of them (as `hymba train` shares its rows), the gradients are
  // summed over ranks, rank 0 alone validates and writes.
  const DistInfo& dp = dist();
  HYMBA_CHECK(o.grad_accum >= dp.size, "--grad-accum " + std::to_string(o.grad_accum) + " is smaller than the " +
                                           std::to_string(dp.size) + " MPI ranks (each needs a micro-batch)");
  const auto [k_lo, k_hi] = dist_share(o.grad_accum);
  HYMBA_CHECK(!o.out.empty(), "--out is required");
  std::error_code ec;
  fs::create_directories(o.out, ec);
  HYMBA_CHECK(!ec, "cannot create output folder " + o.out + ": " + ec.message());
  const std::string ck = current_checkpoint(o.out);
  if (o.resume) HYMBA_CHECK(!ck.empty(), "--resume: no checkpoint in " + o.out);
  else HYMBA_CHECK(ck.empty(), "--out " + o.out + " already holds a run: pass --resume to continue it, "
                               "or choose another folder");

  if (dp.root()) clean_stale_checkpoints(o.out);
  auto tok = Tokenizer::load(o.model);
  const bool dpo = o.dpo_beta > 0;
  std::vector<SftExample> all;
  std::vector<PreferencePair> all_pairs;
  if (dpo) all_pairs = load_preference_jsonl(o.data, *tok, o.seq_len);
  else all = load_sft_jsonl(o.data, *tok, o.seq_len);
  const size_t n_all = dpo ? all_pairs.size() : all.size();
  // Held-out split: a seeded shuffle, the first val_fraction of it.
  std::vector<int64_t> order(n_all);
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  std::mt19937_64 rng(o.seed);
  std::shuffle(order.begin(), order.end(), rng);
  const size_t n_val = size_t(double(n_all) * o.val_fraction);
  HYMBA_CHECK(n_val < n_all, "--val-fraction leaves no training data");
  std::vector<SftExample> train, val;
  std::vector<PreferencePair> train_pairs, val_pairs;
  for (size_t i = 0; i < order.size(); ++i) {
    if (dpo) (i < n_val ? val_pairs : train_pairs).push_back(all_pairs[size_t(order[i])]);
    else (i < n_val ? val : train).push_back(all[size_t(order[i])]);
  }
  // DPO: one preference pair per micro-batch.
  std::vector<std::vector<int64_t>> packs;
  if (dpo)
    for (int64_t i = 0; i < int64_t(train_pairs.size()); ++i) packs.push_back({i});
  else
    packs = pack_examples(train, o.packing ? o.seq_len : 1);
  const int64_t per_epoch = (int64_t(packs.size()) + o.grad_accum - 1) / o.grad_accum;
  int64_t total = per_epoch * o.epochs;
  if (o.max_steps > 0) total = std::min(total, o.max_steps);

  // The model: a frozen base with adapters, or every parameter in F32.
  std::unique_ptr<Checkpoint> base;
  ParamArena arena;
  AdapterSet ad;
  Weights frozen;
  if (adapters) {
    base = load_checkpoint(o.model);
    if (o.q8) quantize_weights(*base, DType::Q8);
    if (o.resume) {
      ad = load_peft_adapter(ck, base->config, base->weights);
      ad.enable_grad();
    } else {
      AdapterConfig ac;
      ac.rank = o.rank, ac.alpha = o.alpha, ac.dora = o.method == "dora", ac.dropout = o.dropout;
      ac.targets = parse_targets(o.targets);
      ad = init_adapters(base->config, base->weights, ac, o.seed);
      if (train_meta) add_meta_tokens(ad, base->config, base->weights);
    }
    HYMBA_CHECK(!train_meta || ad.meta, "--train-meta-tokens: the model has no meta tokens");
    frozen.layers.resize(base->weights.layers.size());
  } else {
    arena = arena_from_checkpoint(o.resume ? ck : o.model);
  }
  const Config& c = adapters ? base->config : arena.config;
  HYMBA_CHECK(!train_meta || c.num_memory_tokens > 0, "--train-meta-tokens: the model has no meta tokens");
  HymbaModel model(c, adapters ? base->weights : arena.w);
  // DPO's reference log-probabilities, once: the base model (adapters off; for full fine-tuning
  // the model before any step, which a resumed run reloads from --model).
  auto ref_logps = [&](HymbaModel& m, std::vector<PreferencePair>& ps) {
    // Each rank computes its share; the sum over ranks hands every rank all of them.
    const auto [lo, hi] = dist_share(int64_t(ps.size()));
    std::vector<double> v(2 * ps.size(), 0.0);
    for (int64_t i = lo; i < hi; ++i)
      v[size_t(2 * i)] = sequence_logp(m, ps[size_t(i)].chosen.seq()),
                    v[size_t(2 * i + 1)] = sequence_logp(m, ps[size_t(i)].rejected.seq());
    dist_sum(v.data(), v.size());
    for (size_t i = 0; i < ps.size(); ++i) ps[i].ref_chosen = v[2 * i], ps[i].ref_rejected = v[2 * i + 1];
  };
  if (dpo) {
    if (adapters && ad.meta) {  // the model below uses the adapter's meta tokens, the reference the base's
      HymbaModel m0(c, base->weights);
      ref_logps(m0, train_pairs), ref_logps(m0, val_pairs);
    } else if (!adapters && o.resume) {
      ParamArena start = arena_from_checkpoint(o.model);
      HymbaModel m0(start.config, start.w);
      ref_logps(m0, train_pairs), ref_logps(m0, val_pairs);
    } else {
      ref_logps(model, train_pairs), ref_logps(model, val_pairs);
    }
  }
  if (adapters) model.set_adapters(&ad.view, &ad.gview), model.set_meta_tokens(ad.meta), frozen.meta = ad.gmeta;
  const bool ckpt = o.grad_checkpointing < 0 ? auto_grad_checkpointing(model, o.seq_len) : o.grad_checkpointing > 0;
  model.set_grad_checkpointing(ckpt);
  Weights full_grads = arena.g;
  std::vector<ParamGroup> groups = adapters ? adapter_groups(ad) : param_groups(arena);
  if (!adapters && !train_meta) {  // frozen: no gradient, no update
    full_grads.meta = nullptr;
    std::erase_if(groups, [](const ParamGroup& g) { return g.name == "model.memory_tokens"; });
  }
  const Weights& grads = adapters ? frozen : full_grads;
  float* params = adapters ? ad.data.data() : arena.data.data();
  float* gradbuf = adapters ? ad.grad.data() : arena.grad.data();
  AdamW opt(groups, int64_t(adapters ? ad.data.size() : arena.data.size()), o.adamw);

  TrainState ts;
  ts.schedule = o.schedule;
  ts.schedule.total_steps = total;
  const nlohmann::json run = {{"method", o.method}, {"data", o.data}, {"seq_len", o.seq_len},
                              {"grad_accum", o.grad_accum}, {"epochs", o.epochs}, {"seed", o.seed},
                              {"val_fraction", o.val_fraction}, {"packing", o.packing},
                              {"dpo_beta", o.dpo_beta}, {"train_meta_tokens", train_meta}, {"dropout", o.dropout}};
  if (o.resume) {
    ts = load_train_state(ck, opt);
    // Runs from before these options had their defaults.
    if (!ts.run.contains("train_meta_tokens")) ts.run["train_meta_tokens"] = !adapters;
    if (!ts.run.contains("dropout")) ts.run["dropout"] = 0.0;
    for (const auto& [k, v] : run.items())
      HYMBA_CHECK(ts.run.contains(k) && ts.run[k] == v,
                  "--resume: --" + k + " differs from the run in " + o.out + " (" + ts.run.value(k, nlohmann::json()).dump() + ")");
  }
  ts.run = run;
  int64_t& step = ts.step;

  // Micro-batch k of the whole run: pack k mod |packs| of epoch k / |packs|, epochs reshuffled.
  auto pack_of = [&](int64_t k) -> const std::vector<int64_t>& {
    const int64_t np = int64_t(packs.size()), epoch = k / np;
    std::vector<int64_t> perm(static_cast<size_t>(np));
    for (int64_t i = 0; i < np; ++i) perm[size_t(i)] = i;
    std::mt19937_64 r(o.seed * 1000003ull + uint64_t(epoch));
    std::shuffle(perm.begin(), perm.end(), r);
    return packs[size_t(perm[size_t(k % np)])];
  };
  auto refs = [&](const std::vector<SftExample>& ex, const std::vector<int64_t>& idx) {
    std::vector<SeqRef> s;
    for (int64_t i : idx) s.push_back({ex[size_t(i)].inputs.data(), ex[size_t(i)].targets.data(),
                                       int64_t(ex[size_t(i)].inputs.size())});
    return s;
  };
  auto pair_of = [&](const PreferencePair& p) {
    return DpoPair{p.chosen.seq(), p.rejected.seq(), p.ref_chosen, p.ref_rejected};
  };
  auto eval_val = [&]() -> double {
    if (dpo) {
      if (val_pairs.empty()) return -1;
      double sum = 0;
      for (const auto& p : val_pairs) {
        const DpoPair q = pair_of(p);
        const double z = o.dpo_beta * ((sequence_logp(model, q.chosen) - q.ref_chosen) -
                                       (sequence_logp(model, q.rejected) - q.ref_rejected));
        sum += std::log1p(std::exp(-z));
      }
      return sum / double(val_pairs.size());
    }
    if (val.empty()) return -1;
    double sum = 0;
    int64_t cnt = 0;
    for (const auto& p : pack_examples(val, o.seq_len)) {
      int64_t k = 0;
      const double l = loss_only(model, refs(val, p), &k);
      sum += l * double(k), cnt += k;
    }
    return cnt ? sum / double(cnt) : -1;
  };

  std::string csv = o.resume && fs::exists(ck + "/metrics.csv") ? read_file(ck + "/metrics.csv")
                                                                 : std::string("step,loss,lr,grad_norm,tokens_per_s,val_loss") +
                                                                       (dpo ? ",rewards/chosen,rewards/rejected,rewards/accuracies,rewards/margins,logps/chosen,logps/rejected\n" : "\n");
  auto save = [&]() {
    if (!dp.root()) return;
    const std::string dir = begin_checkpoint(o.out, step);
    if (adapters) save_peft_adapter(ad, dir, fs::absolute(o.model).string());
    else save_arena_checkpoint(arena, dir, DType::F32);
    copy_tokenizer_files(o.model, dir);
    write_file_atomic(dir + "/metrics.csv", csv);
    save_train_state(dir, ts, opt);
    commit_checkpoint(o.out, dir, step, 1);
  };

  const size_t n_params = adapters ? ad.data.size() : arena.data.size();
  dist_broadcast(params, n_params);  // identical start on every rank
  const bool logs = dp.root() && !o.quiet;
  if (logs && dp.size > 1)
    std::fprintf(stderr, "data parallel over %d MPI ranks: %lld micro-batches of each step per rank\n", dp.size,
                 (long long)(k_hi - k_lo));
  if (logs)
    std::fprintf(stderr, "%s: %s, %zu train / %zu validation %s in %zu rows, %lld steps, %lld trainable parameters%s\n",
                 dpo ? "dpo" : "finetune", o.method.c_str(), dpo ? train_pairs.size() : train.size(),
                 dpo ? val_pairs.size() : val.size(), dpo ? "pairs" : "conversations", packs.size(),
                 (long long)total, (long long)(adapters ? ad.data.size() : arena.data.size()),
                 ckpt ? ", activation checkpointing" : "");
  FinetuneResult r;
  r.total_steps = total;
  if (step == 0 && logs && (dpo ? !val_pairs.empty() : !val.empty()))
    std::fprintf(stderr, "step 0 | val %.4f\n", eval_val());  // the starting point, for comparison
  const double t0 = now_s();
  const int64_t step0 = step;
  int64_t session_tokens = 0;
  double comm = 0;  // seconds in the gradient all-reduce (incl. waiting for slower ranks)
  while (step < total) {
    std::fill(gradbuf, gradbuf + n_params, 0.0f);
    // The step's loss is the mean over all its assistant tokens: each micro-batch is weighted
    // by its share of them.
    int64_t step_count = 0, step_tokens = 0;
    double loss = 0;
    DpoStats ds;
    // Dropout masks: one seed per micro-batch of the run (a resumed run draws the same ones).
    auto dropout_for = [&](int k) {
      if (o.dropout > 0) model.set_adapter_dropout(float(o.dropout), fnv1a64(&step, sizeof step, o.seed * 31 + uint64_t(k)));
    };
    for (int k = int(k_lo); dpo && k < k_hi; ++k) {
      dropout_for(k);
      const PreferencePair& p = train_pairs[size_t(pack_of(step * o.grad_accum + k)[0])];
      const DpoPair q = pair_of(p);
      ds.add(dpo_loss_and_grads(model, grads, std::span<const DpoPair>(&q, 1), o.dpo_beta,
                                1.0f / float(o.grad_accum)));
      step_tokens += q.chosen.n + q.rejected.n;
    }
    if (dpo) loss = ds.loss;
    for (int k = 0; !dpo && k < o.grad_accum; ++k)
      for (int64_t i : pack_of(step * o.grad_accum + k)) step_count += train[size_t(i)].counted();
    for (int k = int(k_lo); !dpo && k < k_hi; ++k) {
      const auto s = refs(train, pack_of(step * o.grad_accum + k));
      int64_t cnt = 0;
      for (const auto& q : s) cnt += std::count_if(q.targets, q.targets + q.n, [](int32_t t) { return t >= 0; }), step_tokens += q.n;
      const float w = step_count ? float(double(cnt) / double(step_count)) : 0.0f;
      dropout_for(k);
      loss += w * loss_and_grads(model, grads, s, w);
    }
    model.set_adapter_dropout(0.0f, 0);  // validation and DPO references see the adapters whole
    if (dp.size > 1) {  // sums over ranks; DPO's pair-weighted means go as sums
      const double np = double(ds.pairs);
      double sc[9] = {loss, ds.reward_chosen * np, ds.reward_rejected * np, ds.accuracy * np, ds.margin * np,
                      ds.logp_chosen * np, ds.logp_rejected * np, np, double(step_tokens)};
      if (dpo) sc[0] *= np;
      comm += dist_reduce_step(gradbuf, n_params, sc, g_train_stop);
      const double inv = dpo && sc[7] > 0 ? 1.0 / sc[7] : 1.0;
      loss = sc[0] * inv, step_tokens = int64_t(sc[8]);
      ds = {sc[0] * inv, sc[1] * inv, sc[2] * inv, sc[3] * inv, sc[4] * inv, sc[5] * inv, sc[6] * inv, int64_t(sc[7])};
    }
    HYMBA_CHECK(std::isfinite(loss), "loss became " + std::to_string(loss) + " at step " +
                                         std::to_string(step) + " (try a lower --lr)");
    const float lr = ts.schedule.lr(step);
    const double gnorm = opt.step(params, gradbuf, lr);
    ++step;
    ts.tokens_seen += step_tokens, session_tokens += step_tokens;
    if (step == step0 + 1) r.first_loss = loss;
    r.last_loss = loss;
    double v = -1;
    if (dp.root() && ((o.eval_every > 0 && step % o.eval_every == 0) || step == total)) v = eval_val(), r.val_loss = v;
    const double el = std::max(now_s() - t0, 1e-9);
    const double tps = double(session_tokens) / el;
    char row[320];
    std::snprintf(row, sizeof row, "%lld,%.6f,%.6g,%.4f,%.1f,%.6f", (long long)step, loss, lr, gnorm, tps, v);
    csv += row;
    if (dpo) {
      std::snprintf(row, sizeof row, ",%.6f,%.6f,%.4f,%.6f,%.4f,%.4f", ds.reward_chosen, ds.reward_rejected,
                    ds.accuracy, ds.margin, ds.logp_chosen, ds.logp_rejected);
      csv += row;
    }
    csv += "\n";
    if (logs && (step % o.log_every == 0 || step == total || v >= 0)) {
      const double rate = double(step - step0) / el;
      std::fprintf(stderr, "step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | ETA %.0fs",
                   (long long)step, (long long)total, loss, lr, gnorm, tps, double(total - step) / std::max(rate, 1e-9));
      if (dpo)
        std::fprintf(stderr, " | rewards/chosen %.3f | rewards/rejected %.3f | rewards/accuracies %.2f | rewards/margins %.3f",
                     ds.reward_chosen, ds.reward_rejected, ds.accuracy, ds.margin);
      if (v >= 0) std::fprintf(stderr, " | val %.4f", v);
      if (dp.size > 1) std::fprintf(stderr, " | allreduce %.0f%%", 100 * comm / el);
      std::fprintf(stderr, "\n");
    }
    if (g_train_stop.load() || (o.stop_after > 0 && step >= o.stop_after && step < total)) {
      r.interrupted = true;
      break;
    }
    if (o.save_every > 0 && step % o.save_every == 0 && step < total) save();
  }
  save();
  dist_barrier();  // the other ranks end once rank 0's checkpoint is complete
  r.steps_done = step;
  if (logs)
    std::fprintf(stderr, "%s at step %lld; %s in %s\n", r.interrupted ? "interrupted, saved" : "done",
                 (long long)step, adapters ? "adapter" : "model", o.out.c_str());
  return r;
}

}  // namespace hymba
