// hymba export: a checkpoint rewritten in another dtype (e.g. a bf16 copy of an F32 training
// checkpoint for shipping), with its tokenizer files, without the training state.
#include <cstdio>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "train/params.h"

namespace hymba::cli {
namespace {

struct Opts {
  std::string model, out, dtype = "bf16";
};

void run(const Opts& o) {
  HYMBA_CHECK(o.dtype == "bf16" || o.dtype == "f32", "--dtype must be bf16 or f32");
  HYMBA_CHECK(o.model != o.out, "--out must differ from -m");
  ParamArena a = arena_from_checkpoint(o.model);
  save_arena_checkpoint(a, o.out, o.dtype == "bf16" ? DType::BF16 : DType::F32);
  copy_tokenizer_files(o.model, o.out);
  std::printf("exported %s -> %s (%s, %lld parameters)\n", o.model.c_str(), o.out.c_str(),
              o.dtype.c_str(), (long long)a.numel());
}

Register reg("export", "Rewrite a checkpoint in another dtype, with its tokenizer", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("-m,--model", o->model, "checkpoint folder")->required();
  sub.add_option("-o,--out", o->out, "output folder")->required();
  sub.add_option("--dtype", o->dtype, "bf16 (default) or f32");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
