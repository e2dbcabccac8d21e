#include "runtime/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "base/error.h"

using hymba::ChatMessage;

TEST(ChatTemplate, SpecExample) {
  const std::vector<ChatMessage> m = {{"system", "You are a helpful assistant."}, {"user", "Hi"}};
  EXPECT_EQ(hymba::render_chat(m, true),
            "<extra_id_0>System\nYou are a helpful assistant.\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n");
  EXPECT_EQ(hymba::render_chat(m, false), "<extra_id_0>System\nYou are a helpful assistant.\n\n<extra_id_1>User\nHi\n");
}

TEST(ChatTemplate, NoSystemStripAndRoles) {
  EXPECT_EQ(hymba::render_chat({{"user", "  Hi there \n"}}, true),
            "<extra_id_0>System\n\n<extra_id_1>User\nHi there\n<extra_id_1>Assistant\n");
  EXPECT_EQ(hymba::render_chat({{"system", "\n A \t"}, {"user", "q"}, {"assistant", " a "}, {"tool", "t"}}, false),
            "<extra_id_0>System\nA\n\n<extra_id_1>User\nq\n<extra_id_1>Assistant\na\n<extra_id_1>Tool\nt\n");
  // Every system message goes into the header, wherever it appears.
  EXPECT_EQ(hymba::render_chat({{"system", "S1"}, {"user", "u"}, {"system", "S2"}}, false),
            "<extra_id_0>System\nS1\nS2\n\n<extra_id_1>User\nu\n");
  EXPECT_EQ(hymba::render_chat({}, false), "<extra_id_0>System\n\n");
  EXPECT_THROW(hymba::render_chat({{"robot", "x"}}, false), hymba::Error);
  EXPECT_THROW(hymba::render_turn({"system", "x"}), hymba::Error);
}

// Multi-turn without reprocessing: header, then each new turn appended, equals the full render.
TEST(ChatTemplate, IncrementsEqualFullRender) {
  std::vector<ChatMessage> conv = {{"system", "Be brief."}};
  std::string state = hymba::render_header(conv);
  const std::vector<std::pair<std::string, std::string>> turns = {
      {"Hi", "Hello!"}, {" What is 2+2? ", "4"}, {"Thanks\n", "You're welcome."}};
  for (const auto& [q, a] : turns) {
    conv.push_back({"user", q});
    state += hymba::render_turn(conv.back());
    state += hymba::generation_prompt();
    EXPECT_EQ(state, hymba::render_chat(conv, true));
    // The reply is generated into the state, then the turn is closed.
    state += a;
    state += hymba::assistant_turn_end();
    conv.push_back({"assistant", a});
    EXPECT_EQ(state, hymba::render_chat(conv, false));
  }
}

TEST(ChatTemplate, StopStrings) {
  const auto s = hymba::chat_stop_strings();
  EXPECT_NE(std::find(s.begin(), s.end(), "</s>"), s.end());
  EXPECT_NE(std::find(s.begin(), s.end(), "<extra_id_1>"), s.end());
  // The generation prompt must not itself contain a stop string after the turn marker.
  EXPECT_EQ(hymba::generation_prompt().rfind("<extra_id_1>"), 0u);
}
