// JSONL training rows (hymba finetune / dpo): the first byte picks SFT conversations (even) or DPO
// preference pairs (odd), the rest is the file, loaded with the bundled model's tokenizer. Rows
// that load must give aligned ids inside the vocab, targets only where the loss is counted, and
// packs that keep every example once, in order.
#include <cstdint>

#include "fuzz_util.h"
#include "train/sft.h"

using namespace hymba;

namespace {
void check(const SftExample& e, int64_t V) {
  fuzz::require(e.inputs.size() == e.targets.size() && !e.inputs.empty(), "inputs and targets aligned");
  for (int32_t id : e.inputs) fuzz::require(id >= 0 && id < V, "input ids in the vocab");
  for (int32_t id : e.targets) fuzz::require(id >= -1 && id < V, "targets in the vocab or -1");
  fuzz::require(e.counted() > 0, "something to learn in every example");
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = Tokenizer::load(fuzz::source_dir() + "/models/hymba-kjv");
  if (size < 1) return 0;
  const std::string path = fuzz::put_file("rows.jsonl", data + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      const auto ex = load_sft_jsonl(path, *tok, 256);
      for (const auto& e : ex) check(e, tok->vocab_size());
      int64_t next = 0;
      for (const auto& pack : pack_examples(ex, 64))
        for (int64_t i : pack) fuzz::require(i == next++, "packs keep every example once, in order");
      fuzz::require(next == int64_t(ex.size()), "packs cover every example");
    } else {
      for (const auto& p : load_preference_jsonl(path, *tok, 256)) {
        check(p.chosen, tok->vocab_size());
        check(p.rejected, tok->vocab_size());
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
