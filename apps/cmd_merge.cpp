// hymba merge -m BASE --lora DIR[:scale] -o OUT: folds a PEFT LoRA/DoRA adapter into the base
// weights and writes a checkpoint in the official layout (what PEFT's merge_and_unload() gives).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "io/safetensors.h"
#include "model/adapter.h"
#include "train/adapter.h"
#include "train/params.h"

namespace hymba::cli {
namespace {

struct Opts {
  std::string model, lora, out, dtype = "auto";
};

void run(const Opts& o) {
  namespace fs = std::filesystem;
  HYMBA_CHECK(fs::exists(fs::path(o.model) / "config.json"), "-m " + o.model + ": no config.json there");
  std::error_code ec;
  HYMBA_CHECK(!fs::exists(o.out) || (fs::is_directory(o.out) && fs::is_empty(o.out)),
              "-o " + o.out + " exists and is not an empty folder (nothing is overwritten)");
  std::string dir;
  float scale = 1.0f;
  parse_lora(o.lora, &dir, &scale);
  ParamArena p = arena_from_checkpoint(o.model);
  AdapterSet a = load_peft_adapter(dir, p.config, p.w);
  a.set_user_scale(scale);
  merge_adapters(p, a);
  DType t = DType::BF16;
  if (o.dtype == "f32") t = DType::F32;
  else if (o.dtype == "auto") {
    auto f = SafetensorsFile::open(o.model);
    const TensorInfo* e = f->find("model.embed_tokens.weight");
    if (e && e->dtype == DType::F32) t = DType::F32;
  }
  save_arena_checkpoint(p, o.out, t);
  copy_tokenizer_files(o.model, o.out);
  std::printf("merged %zu adapter tensors (%s, r=%lld) into %s (%s)\n", a.tensors.size(),
              a.cfg.dora ? "DoRA" : "LoRA", (long long)a.cfg.rank, o.out.c_str(),
              t == DType::F32 ? "f32" : "bf16");
}

Register reg("merge", "Fold a PEFT LoRA/DoRA adapter into the base weights (official layout)", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "base model folder")->required();
  sub.add_option("--lora", o->lora, "PEFT adapter folder, DIR or DIR:scale")->required();
  sub.add_option("-o,--out", o->out, "output folder (new or empty)")->required();
  sub.add_option("--dtype", o->dtype, "output dtype: auto (the base's), bf16 or f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bf16", "f32"}));
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
