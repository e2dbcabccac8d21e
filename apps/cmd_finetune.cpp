// hymba finetune: supervised fine-tuning on chat data (OpenAI-style "messages" JSONL) with full
// parameters, LoRA or DoRA; adapters are saved in Hugging Face PEFT's format.
#include <csignal>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "train/dist.h"
#include "train/finetune.h"
#include "train/trainer.h"

namespace hymba::cli {
namespace {

struct Opts {
  FinetuneOptions f;
  std::string schedule = "cosine", quantize = "none", grad_ckpt = "auto";
  double warmup_ratio = 0.03;
  int64_t warmup_steps = -1;
  bool no_packing = false, train_meta = false, freeze_meta = false;
  int threads = 0;
};

void run(Opts& o) {
  apply_threads(o.threads);
  o.f.schedule.kind = parse_lr_schedule(o.schedule);
  o.f.schedule.warmup_frac = o.warmup_ratio;
  o.f.schedule.warmup_steps = o.warmup_steps;
  const DType qt = parse_quantize(o.quantize);
  HYMBA_CHECK(qt != DType::Q4_0 && qt != DType::Q4_K, "finetune: --quantize supports none or q8_0 (4-bit bases are not trained on)");
  o.f.q8 = qt == DType::Q8;
  o.f.packing = !o.no_packing;
  HYMBA_CHECK(o.grad_ckpt == "auto" || o.grad_ckpt == "on" || o.grad_ckpt == "off",
              "--grad-checkpointing must be auto, on or off (got '" + o.grad_ckpt + "')");
  o.f.grad_checkpointing = o.grad_ckpt == "auto" ? -1 : o.grad_ckpt == "on";
  HYMBA_CHECK(!(o.train_meta && o.freeze_meta), "give at most one of --train-meta-tokens and --freeze-meta-tokens");
  if (o.train_meta || o.freeze_meta) o.f.train_meta_tokens = o.train_meta ? 1 : 0;
  if (o.f.model.empty()) o.f.model = default_model_dir();
  std::signal(SIGINT, [](int) { g_train_stop.store(true); });
  dist_run([&] { finetune(o.f); });
}

void add_options(CLI::App& sub, const std::shared_ptr<Opts>& o, bool dpo) {
  auto& f = o->f;
  f.schedule.max_lr = dpo ? 5e-5f : 2e-4f;
  f.adamw.weight_decay = 0.0f;
  if (dpo) f.dpo_beta = 0.1;
  sub.add_option("-m,--model", f.model, "base model folder (default: the bundled model)");
  if (dpo) {
    sub.add_option("--data", f.data, "JSONL, one {\"prompt\": text or messages, \"chosen\": text, \"rejected\": text} per line")->required();
    sub.add_option("--beta", f.dpo_beta, "DPO beta (default 0.1)")->check(CLI::PositiveNumber);
  } else {
    sub.add_option("--data", f.data, "JSONL, one {\"messages\": [{\"role\", \"content\"}, ...]} per line")->required();
  }
  sub.add_option("--out", f.out, "run folder: checkpoint-STEP/ (adapter_config.json + adapter_model.safetensors, or the full model), latest, links")->required();
  sub.add_option("--method", f.method, "full, lora (default) or dora")->capture_default_str();
  sub.add_option("--rank,-r", f.rank, "adapter rank r (default 8)");
  sub.add_option("--alpha", f.alpha, "lora_alpha; the adapter is scaled by alpha/r (default 16)");
  sub.add_option("--dropout", f.dropout,
                 "lora_dropout: dropout on the adapters' input while training, off at inference; saved in "
                 "adapter_config.json (default 0; lora and dora: DoRA's part is then computed on the dropped-out input, as PEFT)");
  sub.add_option("--target", f.targets, "modules to adapt: in_proj,out_proj,x_proj,dt_proj,gate_proj,up_proj,down_proj, mlp, all")
      ->capture_default_str();
  sub.add_flag("--train-meta-tokens", o->train_meta,
               "train the meta tokens too (default with --method full); with adapters they are saved in the adapter "
               "(PEFT modules_to_save: memory_tokens)");
  sub.add_flag("--freeze-meta-tokens", o->freeze_meta, "keep the meta tokens as they are (default with lora/dora)");
  sub.add_option("--quantize", o->quantize, "frozen base in memory: none or q8 (QLoRA-style; lora/dora only)");
  sub.add_option("--grad-checkpointing", o->grad_ckpt,
                 "auto (default), on or off: keep only each layer's input and recompute the layer in the "
                 "backward (~1/3 more compute, far less memory); auto = on when one row's activations would "
                 "pass 2 GiB (e.g. the 1.5B shape at --seq-len 1024)");
  sub.add_option("--seq-len", f.seq_len, "tokens per row; longer conversations are refused (default 1024)");
  if (!dpo) sub.add_flag("--no-packing", o->no_packing, "one conversation per row");
  sub.add_option("--epochs", f.epochs, "passes over the data (default 1)");
  sub.add_option("--max-steps", f.max_steps, "stop after this many optimizer steps");
  sub.add_option("--grad-accum", f.grad_accum, dpo ? "pairs per optimizer step (default 1)" : "packed rows per optimizer step (default 1)");
  sub.add_option("--lr", f.schedule.max_lr, dpo ? "peak learning rate (default 5e-5)" : "peak learning rate (default 2e-4)");
  sub.add_option("--min-lr", f.schedule.min_lr, "final learning rate (default 0)");
  sub.add_option("--schedule", o->schedule, "cosine (default), constant or wsd");
  sub.add_option("--warmup-ratio", o->warmup_ratio, "warm-up fraction of the steps (default 0.03)");
  sub.add_option("--warmup-steps", o->warmup_steps, "warm-up steps (overrides --warmup-ratio)");
  sub.add_option("--weight-decay", f.adamw.weight_decay, "AdamW weight decay (default 0)");
  sub.add_option("--clip", f.adamw.clip_norm, "gradient-norm clip, 0 = off (default 1)");
  sub.add_option("--val-fraction", f.val_fraction, "held-out share of the data for validation (default 0)");
  sub.add_option("--eval-every", f.eval_every, "validate every N steps (default: at the end)");
  sub.add_option("--save-every", f.save_every, "checkpoint every N steps (default: at the end)");
  sub.add_option("--log-every", f.log_every, "progress line every N steps (default 1)");
  sub.add_option("--stop-after", f.stop_after, "save and stop after this step (continue with --resume)");
  sub.add_flag("--resume", f.resume, "continue the run saved in --out");
  sub.add_option("--seed", f.seed, "seed for adapter init, split and order (default 1)");
  sub.add_option("-t,--threads", o->threads, "threads (default: all cores; keep it fixed across a resume)");
  sub.callback([o] { run(*o); });
}

Register reg("finetune", "Supervised fine-tuning on chat JSONL: full, LoRA or DoRA (PEFT files)", [](CLI::App& sub) {
  add_options(sub, std::make_shared<Opts>(), false);
});
Register reg_dpo("dpo", "DPO on preference pairs (TRL's loss and metrics): full, LoRA or DoRA", [](CLI::App& sub) {
  add_options(sub, std::make_shared<Opts>(), true);
});

}  // namespace
}  // namespace hymba::cli
