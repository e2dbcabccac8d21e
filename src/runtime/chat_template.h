// Hymba chat template (spec §5), rendered in C++ instead of Jinja. Layout:
//   "<extra_id_0>System" + ("\n" + strip(system content)) per system message + "\n\n"
//   + per turn "<extra_id_1>User\n" / "<extra_id_1>Assistant\n" / "<extra_id_1>Tool\n" + strip(content) + "\n"
//   + (generation prompt) "<extra_id_1>Assistant\n".
// No BOS, no EOS between turns. Tools/contexts of the official template are not supported.
#pragma once
#include <string>
#include <vector>

namespace hymba {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

// The whole conversation. System messages go into the header wherever they appear (as in the
// official template); throws hymba::Error on an unknown role.
std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// Pieces for multi-turn chat without reprocessing: render_chat(m, g) ==
//   render_header(m) + render_turn(each non-system message) + (g ? generation_prompt() : "").
std::string render_header(const std::vector<ChatMessage>& messages);  // uses only the system ones
std::string render_turn(const ChatMessage& message);                  // user/assistant/tool; throws on system
std::string generation_prompt();                                      // "<extra_id_1>Assistant\n"
// After a generated reply (prompt ended with generation_prompt(), reply tokens already in the
// state, stop string not included), appending this closes the turn as render_turn would have.
std::string assistant_turn_end();                                     // "\n"

// Text that ends an assistant reply in chat: "</s>" (NVIDIA's chat.py) and "<extra_id_1>" (the
// model starting the next turn itself). The eos token id stops generation as well.
std::vector<std::string> chat_stop_strings();

// Strip ASCII whitespace at both ends (the template's Jinja `strip`).
std::string strip_ws(const std::string& s);

}  // namespace hymba
