// A conversation as token ids the way the model sees it in `hymba chat` (spec §5 template, each
// piece encoded as it appears after the "\n" that precedes it), with the tokens of the
// assistant's replies marked: what supervised fine-tuning puts its loss on.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/tokenizer.h"

namespace hymba {

// Tokens of `text` as they appear inside a longer conversation that ends with "\n" before it:
// encode "\n" + text and drop the leading tokens that spell the newline (SentencePiece would
// otherwise add its dummy-prefix space, which the whole-conversation encoding does not have).
std::vector<int32_t> encode_after_newline(const Tokenizer& tok, const std::string& text);

struct ChatTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant;  // 1: part of an assistant reply (its content and turn end)
};
// render_chat(messages, false) as tokens (decode(ids) == that text), plus the tokenizer's EOS
// after a final assistant reply when eos_at_end (marked: the model learns to stop).
ChatTokens tokenize_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                         bool eos_at_end);

}  // namespace hymba
