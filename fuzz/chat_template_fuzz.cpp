// Chat template rendering of arbitrary messages: the input is split into messages at "\n\x01"
// (the byte after it picks the role, unknown roles included). The whole conversation must equal
// its pieces (header + turns + generation prompt), which multi-turn chat relies on.
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "runtime/chat_template.h"

using namespace hymba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* kRoles[] = {"system", "user", "assistant", "tool", "User", ""};
  const std::string in(reinterpret_cast<const char*>(data), size);
  std::vector<ChatMessage> msgs;
  size_t pos = 0;
  while (pos <= in.size()) {
    size_t next = in.find("\n\x01", pos);
    if (next == std::string::npos) next = in.size();
    const std::string part = in.substr(pos, next - pos);
    const unsigned r = part.empty() ? 1 : static_cast<unsigned char>(part[0]) % 6;
    msgs.push_back({kRoles[r], part.empty() ? part : part.substr(1)});
    pos = next + 2;
  }
  for (bool gen : {false, true}) {
    std::string whole;
    try {
      whole = render_chat(msgs, gen);
    } catch (const Error&) {
      continue;
    }
    std::string parts = render_header(msgs);
    for (const auto& m : msgs)
      if (m.role != "system") parts += render_turn(m);
    if (gen) parts += generation_prompt();
    fuzz::require(whole == parts, "render_chat == header + turns + generation prompt");
  }
  (void)strip_ws(in);
  return 0;
}
