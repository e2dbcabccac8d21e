// hymba train: train or fine-tune a Hymba model (or one of the paper's baselines) on a token file.
#include <csignal>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "train/dist.h"
#include "train/trainer.h"

namespace hymba::cli {
namespace {

struct Opts {
  TrainOptions t;
  std::string schedule = "wsd";
  int threads = 0;
};

void run(Opts& o) {
  apply_threads(o.threads);
  o.t.schedule.kind = parse_lr_schedule(o.schedule);
  std::signal(SIGINT, [](int) { g_train_stop.store(true); });
  dist_run([&] { train(o.t); });
}

Register reg("train", "Train or fine-tune a model on tokenized data", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  auto& t = o->t;
  sub.add_option("--config", t.config, "config.json of the model to train (new model, or checked on --resume)");
  sub.add_option("--init-from", t.init_from, "start from this Hugging Face checkpoint (full fine-tuning)");
  sub.add_option("--data", t.data,
                 "folder written by `hymba tokenize` (train.tok [+ val.tok]: random windows, loss on every token), or "
                 "pre-tokenized rows for a completion-only loss: a folder with train.jsonl [+ val.jsonl] or one .jsonl "
                 "file, each line {\"input_ids\": [...], \"completion_mask\": [0/1...]} or {\"input_ids\", \"labels\" "
                 "(-100 = no loss)}; one row per sequence of its own length, never padded or packed (--seq-len: the longest "
                 "row allowed)")
      ->required();
  sub.add_option("--out", t.out, "output folder: checkpoint-STEP/ folders (weights, trainer state, metrics), latest -> the newest, and links so the folder loads as a model")->required();
  sub.add_option("--tokenizer", t.tokenizer, "tokenizer folder to copy next to the checkpoint");
  sub.add_flag("--resume", t.resume, "continue the run saved in --out");
  sub.add_option("--steps", t.steps, "optimizer steps (default 1000)");
  sub.add_option("--batch", t.batch, "sequences per micro-batch (default 8)");
  sub.add_option("--seq-len", t.seq_len, "tokens per sequence (default 256)");
  sub.add_option("--grad-accum", t.grad_accum, "micro-batches per step (default 1); the loss is the mean over all counted targets of the step");
  sub.add_option("--lr", t.schedule.max_lr, "peak learning rate (default 1e-3)");
  sub.add_option("--min-lr", t.schedule.min_lr, "final learning rate (default 0)");
  sub.add_option("--schedule", o->schedule, "wsd (default), cosine or constant");
  sub.add_option("--warmup-frac", t.schedule.warmup_frac, "warmup fraction (default 0.01)");
  sub.add_option("--decay-frac", t.schedule.decay_frac, "WSD decay fraction (default 0.2)");
  sub.add_option("--weight-decay", t.adamw.weight_decay, "AdamW weight decay (default 0.1)");
  sub.add_option("--clip", t.adamw.clip_norm, "gradient-norm clip, 0 = off (default 1)");
  sub.add_option("--eval-every", t.eval_every, "validate every N steps (default 100)");
  sub.add_option("--eval-batches", t.eval_batches, "validation batches (default 20)");
  sub.add_option("--save-every", t.save_every, "checkpoint every N steps (default 500)");
  sub.add_option("--save-total-limit", t.keep_checkpoints,
                 "complete checkpoints kept in --out, newest first (default 1; the previous one is deleted "
                 "only once the new one is complete)")
      ->check(CLI::PositiveNumber);
  sub.add_option("--log-every", t.log_every, "progress line every N steps (default 10)");
  sub.add_option("--stop-after", t.stop_after, "save and stop after this step (resume later with --resume)");
  sub.add_option("--seed", t.seed, "seed for init and data order (default 1)");
  sub.add_option("-t,--threads", o->threads, "threads (default: all cores; keep it fixed across a resume)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
