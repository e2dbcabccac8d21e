// The loop behind `hymba finetune`: supervised fine-tuning on chat data (src/train/sft.h) with
// full parameters, LoRA or DoRA adapters (src/model/adapter.h) over a frozen base that stays in
// its stored dtype (or --quantize q8), packed rows, gradient accumulation, warm-up + cosine,
// a held-out validation split, and checkpoints + exact resume through src/train/checkpoint.h.
#pragma once
#include <cstdint>
#include <string>

#include "train/optimizer.h"
#include "train/schedule.h"

namespace hymba {

struct FinetuneOptions {
  std::string model;  // base model folder (config, weights, tokenizer)
  std::string data;   // JSONL conversations
  std::string out;    // run folder: checkpoint-STEP/ with adapter (or model) files, state, metrics
  std::string method = "lora";  // full | lora | dora
  int64_t rank = 8;
  double alpha = 16.0;
  std::string targets = "in_proj,out_proj,x_proj,dt_proj,mlp";
  bool q8 = false;
  int64_t seq_len = 1024;  // tokens per packed row (a conversation longer than this is refused)
  bool packing = true;
  int grad_accum = 1;
  int epochs = 1;
  int64_t max_steps = 0;  // > 0: stop after this many steps
  LrSchedule schedule;    // kind/max_lr/min_lr/warmup as given; total_steps filled in
  AdamWConfig adamw;
  double val_fraction = 0.0;
  int64_t eval_every = 0;  // 0: validate at the end only
  int64_t save_every = 0;  // 0: save at the end only
  int64_t log_every = 1;
  int64_t stop_after = 0;
  bool resume = false;
  uint64_t seed = 1;
  bool quiet = false;
  double dpo_beta = 0.0;  // > 0: DPO on preference pairs (src/train/dpo.h) instead of SFT
  // Train the meta tokens: 1 yes, 0 no, -1 the default (trained with full, frozen with adapters,
  // as PEFT trains only what it is told to). With adapters they are saved in the adapter files
  // (modules_to_save, src/model/adapter.h).
  int train_meta_tokens = -1;
  double dropout = 0.0;  // PEFT's lora_dropout: on the LoRA adapters' input while training
  // Activation checkpointing (HymbaModel::set_grad_checkpointing): 1 on, 0 off, -1 auto = on
  // when the kept activations of one row of seq_len (+ meta) tokens would pass kAutoCheckpointBytes.
  int grad_checkpointing = -1;
};

inline constexpr int64_t kAutoCheckpointBytes = int64_t(2) << 30;
// The auto rule of grad_checkpointing for a model and a row length.
class HymbaModel;
bool auto_grad_checkpointing(const HymbaModel& m, int64_t seq_len);

struct FinetuneResult {
  int64_t steps_done = 0, total_steps = 0;
  double first_loss = 0, last_loss = 0, val_loss = -1;
  bool interrupted = false;
};

FinetuneResult finetune(const FinetuneOptions& o);

}  // namespace hymba
