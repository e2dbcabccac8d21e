// The training loop behind `hymba train`: batches from a token file, loss + backward, AdamW with
// a schedule, periodic validation, checkpoints in the Hugging Face layout the engine loads, and
// exact resume.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

#include "train/optimizer.h"
#include "train/schedule.h"

namespace hymba {

struct TrainOptions {
  std::string config;     // config.json of a new model (or checked against the resumed one)
  std::string init_from;  // start from this HF checkpoint (fine-tuning) instead of random init
  std::string data;       // folder from `hymba tokenize` (train.tok, val.tok), or token rows with a
                          // completion mask (train.jsonl, val.jsonl; or one .jsonl file): src/train/sft.h
  std::string out;        // output folder: checkpoint + trainer state + metrics.csv + loss.png
  std::string tokenizer;  // optional: tokenizer folder copied next to the checkpoint
  bool resume = false;
  int64_t steps = 1000;
  int batch = 8, seq_len = 256, grad_accum = 1;
  LrSchedule schedule;
  AdamWConfig adamw;
  int64_t eval_every = 100, eval_batches = 20, save_every = 500, log_every = 10;
  uint64_t seed = 1;
  int keep_checkpoints = 1;  // complete checkpoints kept in OUT (the newest ones), >= 1
  int64_t stop_after = 0;  // > 0: save and stop once this step is done (as Ctrl-C would)
  bool quiet = false;
};

struct TrainResult {
  int64_t steps_done = 0;
  double last_loss = 0, last_val_loss = -1;
  bool interrupted = false;
};

// Set by a SIGINT handler: the loop saves a checkpoint and returns.
extern std::atomic<bool> g_train_stop;

TrainResult train(const TrainOptions& opt);

}  // namespace hymba
