#include "runtime/chat_template.h"

#include "base/error.h"

namespace hymba {
namespace {

const char* role_title(const std::string& role) {
  if (role == "user") return "User";
  if (role == "assistant") return "Assistant";
  if (role == "tool") return "Tool";
  return nullptr;
}

}  // namespace

std::string strip_ws(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string render_header(const std::vector<ChatMessage>& messages) {
  std::string out = "<extra_id_0>System";
  for (const auto& m : messages)
    if (m.role == "system") {
      out += '\n';
      out += strip_ws(m.content);
    }
  out += "\n\n";
  return out;
}

std::string render_turn(const ChatMessage& m) {
  const char* title = role_title(m.role);
  HYMBA_CHECK(m.role != "system", "chat template: a system message can only be part of the header");
  HYMBA_CHECK(title != nullptr, "chat template: unknown role '" + m.role + "' (expected system, user, assistant or tool)");
  return std::string("<extra_id_1>") + title + "\n" + strip_ws(m.content) + "\n";
}

std::string generation_prompt() { return "<extra_id_1>Assistant\n"; }

std::string assistant_turn_end() { return "\n"; }

std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out = render_header(messages);
  for (const auto& m : messages)
    if (m.role != "system") out += render_turn(m);
  if (add_generation_prompt) out += generation_prompt();
  return out;
}

std::vector<std::string> chat_stop_strings() { return {"</s>", "<extra_id_1>"}; }

}  // namespace hymba
