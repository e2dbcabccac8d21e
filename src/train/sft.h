// Supervised fine-tuning data: JSONL rows of OpenAI-style conversations
//   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
// rendered with the model's chat template (src/runtime/chat_tokens.h), the loss on the
// assistant's tokens only, and packing of several conversations into one training row.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace hymba {

struct SeqRef;  // train/step.h

struct SftExample {
  std::vector<int32_t> inputs, targets;  // next-token pairs; targets -1 outside assistant replies
  int64_t row = 0;                       // 1-based line of the JSONL file
  int64_t counted() const;
  SeqRef seq() const;  // the example as one sequence for loss_and_grads / sequence_logp
};

// Every row checked before any training: a row that is not JSON, has no "messages" list, a
// message without string role/content, an unknown role, an empty assistant reply, no assistant
// reply at all, or more than max_tokens tokens is refused with "FILE:ROW: why".
std::vector<SftExample> load_sft_jsonl(const std::string& path, const Tokenizer& tok,
                                       int64_t max_tokens);

// Pre-tokenized rows with a completion-only loss, as Hugging Face tokenized datasets hold them:
//   {"input_ids": [ids], "completion_mask": [1 or 0 per id]}  (TRL: loss where the mask is 1)
//   {"input_ids": [ids], "labels": [id or -100 per id]}       (transformers: -100 is ignored)
// Same masked targets as the chat rows above (target i predicts id i+1; it counts when id i+1 is
// in the completion / has a label). Each row is refused with "FILE:ROW: why" when it is not an
// object of integer lists, has an id outside [0, vocab_size), a mask of another length, values
// other than 0/1 (or a label other than an id or -100), nothing to learn, or more than max_tokens
// next-token pairs.
std::vector<SftExample> load_token_jsonl(const std::string& path, int64_t vocab_size, int64_t max_tokens);

// Preference pairs for DPO: JSONL rows {"prompt": "text" | [messages], "chosen": "text" |
// [assistant message], "rejected": same} ("messages" is accepted for "prompt"). Both completions
// follow the rendered prompt; targets only on the completion (+ EOS). Errors name FILE:ROW.
struct PreferencePair {
  SftExample chosen, rejected;
  int64_t row = 0;
  double ref_chosen = 0, ref_rejected = 0;  // Σ log p under the reference model (the trainer's)
};
std::vector<PreferencePair> load_preference_jsonl(const std::string& path, const Tokenizer& tok,
                                                  int64_t max_tokens);

// Greedy in-order packing: each pack is a list of example indices whose lengths sum to at most
// `capacity` tokens (the meta tokens of each conversation come on top).
std::vector<std::vector<int64_t>> pack_examples(const std::vector<SftExample>& ex, int64_t capacity);

}  // namespace hymba
