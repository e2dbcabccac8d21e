#include "runtime/chat_tokens.h"

namespace hymba {

std::vector<int32_t> encode_after_newline(const Tokenizer& tok, const std::string& text) {
  auto ids = tok.encode("\n" + text, false);
  size_t k = 0;
  while (k < ids.size()) {
    std::string head = tok.decode(std::vector<int32_t>(ids.begin(), ids.begin() + long(k + 1)));
    if (head.find('\n') != std::string::npos) { ++k; break; }
    ++k;
  }
  return std::vector<int32_t>(ids.begin() + long(k), ids.end());
}

ChatTokens tokenize_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                         bool eos_at_end) {
  ChatTokens out;
  auto put = [&](const std::vector<int32_t>& ids, bool asst) {
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.assistant.insert(out.assistant.end(), ids.size(), uint8_t(asst));
  };
  put(tok.encode(render_header(messages), false), false);
  bool last_assistant = false;
  for (const auto& m : messages) {
    if (m.role == "system") continue;
    if (m.role == "assistant") {
      put(encode_after_newline(tok, generation_prompt()), false);
      put(encode_after_newline(tok, strip_ws(m.content) + assistant_turn_end()), true);
    } else {
      put(encode_after_newline(tok, render_turn(m)), false);
    }
    last_assistant = m.role == "assistant";
  }
  if (eos_at_end && last_assistant && tok.eos() >= 0) put({tok.eos()}, true);
  return out;
}

}  // namespace hymba
