// `hymba eval --task T --data FILE.jsonl` rows up to the model's requests (eval/lm_tasks.h):
// the first byte picks the task, the second --num-fewshot (mmlu only; its dev rows follow the
// test rows after a "\n@@\n" line), the rest is the file. Every document that builds must have
// one request per choice (or exactly one), a gold answer among its choices, and requests that
// tokenize (the harness's context/continuation split) to ids inside the vocab.
#include <cstdint>
#include <string>

#include "eval/lm_tasks.h"
#include "fuzz_util.h"

using namespace hymba;
using namespace hymba::lmeval;

namespace {
void check_ids(const std::vector<int32_t>& ids, int64_t V) {
  for (int32_t id : ids) fuzz::require(id >= 0 && id < V, "token ids in the vocab");
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = Tokenizer::load(fuzz::source_dir() + "/models/hymba-kjv");
  static const auto names = task_names();
  if (size < 2) return 0;
  const TaskInfo& task = task_info(names[data[0] % names.size()]);
  const int k = task.name == "mmlu" ? data[1] % 4 : 0;
  std::string text(reinterpret_cast<const char*>(data + 2), size - 2), dev;
  if (const size_t at = text.find("\n@@\n"); at != std::string::npos) dev = text.substr(at + 4), text.resize(at);
  const int64_t V = tok->vocab_size();
  try {
    const auto rows = parse_jsonl(text, "rows.jsonl");
    const auto shots = k > 0 ? parse_jsonl(dev, "dev.jsonl") : std::vector<Row>{};
    const auto docs = build_docs(task, rows, shots, k);
    fuzz::require(docs.size() == rows.size(), "one document per row");
    for (const Doc& d : docs) {
      if (task.kind == Kind::MultipleChoice) {
        fuzz::require(!d.choices.empty() && d.args.size() == d.choices.size(), "one request per choice");
        fuzz::require(d.gold >= 0 && d.gold < int64_t(d.choices.size()), "the gold answer is a choice");
        for (const auto& c : d.choices) (void)n_codepoints(c);
      } else {
        fuzz::require(d.args.size() == 1, "one request per document");
      }
      if (task.kind == Kind::Rolling) {
        fuzz::require(d.words >= 1 && d.bytes >= 0, "wikitext word and byte counts");
        check_ids(tok->encode(d.target, false), V);
      } else if (task.kind == Kind::Generate) {
        fuzz::require(!d.args[0].first.empty(), "a generation context");
        check_ids(tok->encode(d.args[0].first, false), V);
        (void)lower_ascii(d.target);
      } else {
        for (const auto& [ctx, cont] : d.args) {
          try {
            const auto [c, n] = encode_pair(*tok, tok->bos(), ctx, cont);
            fuzz::require(!c.empty(), "a context of at least BOS");
            check_ids(c, V), check_ids(n, V);
          } catch (const Error&) {  // a context of only whitespace: refused with a message
          }
        }
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
