// Recall tasks the paper uses beyond lm-eval: needle in a haystack (Fig. 5; passkey retrieval as
// Mohtashami & Jaggi 2023) and multi-query associative recall (MQAR, Arora et al. 2023, Zoology).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/tokenizer.h"

namespace hymba::recall {

// ---- needle in a haystack ----
// Prompt (token ids): BOS, intro, haystack[0:p], needle, haystack[p:m], question, with the
// haystack (a text file's tokens, repeated if short) cut so the prompt is exactly `length`
// tokens and p = round(depth/100 · m). The needle hides a random 5-digit passkey; the model
// continues greedily (≤ 8 tokens, up to a newline) and a trial counts when the first number it
// writes is the passkey.
struct NeedleTrial {
  int64_t length = 0;
  double depth = 0;
  std::string passkey;
  std::vector<int32_t> prompt;
  int64_t needle_pos = 0, needle_len = 0, haystack_len = 0;  // haystack_len = m
  std::vector<int32_t> generated;
  std::string text;
  bool retrieved = false;
};
// Throws hymba::Error when a length is too short for the fixed parts or the haystack is empty.
std::vector<NeedleTrial> needle_trials(const Tokenizer& tok, const std::string& haystack,
                                       const std::vector<int64_t>& lengths, const std::vector<double>& depths,
                                       int trials, uint64_t seed);
void needle_run(Engine& eng, const Tokenizer& tok, NeedleTrial& t);
// "The first number in `text` is `passkey`."
bool passkey_retrieved(const std::string& text, const std::string& passkey);
// "1k,2k,4096" -> {1024, 2048, 4096}; "0,25,50" -> {0, 25, 50}. Throws on anything else.
std::vector<int64_t> parse_lengths(const std::string& s);
std::vector<double> parse_depths(const std::string& s);

// ---- MQAR ----
// A sample: BOS, k1 v1 … kn vn (n distinct keys, random values), then the keys again in a random
// order each followed by its value, EOS. Keys come from ids [first, first+vocab/2), values from
// [first+vocab/2, first+vocab). Scored at each query key: the argmax of the next-token logits
// must be its value. (Zoology spaces its queries with power-law gaps over a longer context; here
// they follow each other, so sequence length = 4n + 2.)
struct MqarOptions {
  int64_t pairs = 8;
  int64_t vocab = 256;  // keys + values
  int32_t first = 3;    // first id used (after <unk> <s> </s>)
  int32_t bos = 1, eos = 2;
  uint64_t seed = 0;
};
struct MqarSample {
  std::vector<int32_t> ids;
  std::vector<int64_t> query_pos;  // rows whose logits must give answers[i]
  std::vector<int32_t> answers;
};
MqarSample mqar_sample(const MqarOptions& o, uint64_t& rng);
// Per query: correct or not, for `n` samples drawn from o.seed; samples are batched.
std::vector<int> mqar_eval(Engine& eng, const MqarOptions& o, int64_t n, std::vector<MqarSample>* samples = nullptr,
                           const std::function<void(int64_t)>& progress = {});
// Training data for `hymba train` (validation drawn from another seed), and dir/meta.json:
//  - format "tok": dir/train.tok and dir/val.tok, samples back to back (the loss on every token);
//  - format "jsonl": dir/train.jsonl and dir/val.jsonl, one sample per row
//    {"input_ids": [...], "completion_mask": [...]} with the mask 1 on the answers only (the value
//    after each query key), for Zoology's loss on the answers (src/train/sft.h).
void mqar_write_data(const std::string& dir, const MqarOptions& o, int64_t n_train, int64_t n_val, int64_t model_vocab,
                     const std::string& format = "tok");

}  // namespace hymba::recall
