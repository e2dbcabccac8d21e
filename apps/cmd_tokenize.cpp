// hymba tokenize: text corpus -> train.tok / val.tok / meta.json for `hymba train`.
#include <cstdio>
#include <memory>

#include "command.h"
#include "train/data.h"

namespace {

hymba::cli::Register reg("tokenize", "Tokenize a text corpus into train/val token files", [](CLI::App& sub) {
  auto o = std::make_shared<hymba::TokenizeOptions>();
  sub.add_option("--tokenizer", o->tokenizer, "Folder with tokenizer.model, or the .model file")->required();
  sub.add_option("--input", o->inputs, "UTF-8 text files or folders (walked recursively)")->required()->expected(1, -1);
  sub.add_option("--out", o->out_dir, "Output folder (train.tok, val.tok, meta.json)")->required();
  sub.add_option("--val-fraction", o->val_fraction, "Fraction of documents held out for validation")
      ->default_val(0.01);
  sub.add_option("--seed", o->seed, "Seed of the train/val split")->default_val(0);
  sub.add_flag("--split-lines", o->split_lines,
               "Each non-empty line is a document (default: each file is one document)");
  sub.add_option("--threads", o->threads, "Encoding threads (0: all)")->default_val(0);
  sub.callback([o] {
    const auto s = hymba::tokenize_corpus(*o);
    std::printf("tokenize: %lld files, %lld bytes -> %s\n", (long long)s.files, (long long)s.bytes,
                o->out_dir.c_str());
    std::printf("  train: %lld documents, %lld tokens\n", (long long)s.docs_train, (long long)s.tokens_train);
    std::printf("  val:   %lld documents, %lld tokens\n", (long long)s.docs_val, (long long)s.tokens_val);
    std::printf("  vocab %lld, %.4f tokens/byte\n", (long long)s.vocab_size,
                s.bytes > 0 ? double(s.tokens_train + s.tokens_val) / double(s.bytes) : 0.0);
  });
});

}  // namespace
