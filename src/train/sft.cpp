#include "train/sft.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "runtime/chat_tokens.h"

namespace hymba {

int64_t SftExample::counted() const {
  int64_t k = 0;
  for (int32_t t : targets) k += t >= 0;
  return k;
}

std::vector<SftExample> load_sft_jsonl(const std::string& path, const Tokenizer& tok,
                                       int64_t max_tokens) {
  std::ifstream f(path);
  HYMBA_CHECK(f.good(), "cannot read " + path);
  std::vector<SftExample> out;
  std::string line;
  int64_t row = 0;
  while (std::getline(f, line)) {
    ++row;
    const std::string where = path + ":" + std::to_string(row) + ": ";
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + "not valid JSON (" + e.what() + ")");
    }
    HYMBA_CHECK(j.is_object() && j.contains("messages") && j["messages"].is_array() &&
                    !j["messages"].empty(),
                where + "no \"messages\" list");
    std::vector<ChatMessage> msgs;
    bool any_assistant = false;
    int k = 0;
    for (const auto& m : j["messages"]) {
      const std::string mw = where + "message " + std::to_string(k++) + ": ";
      HYMBA_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() &&
                      m.contains("content") && m["content"].is_string(),
                  mw + "needs string \"role\" and \"content\"");
      const std::string role = m["role"].get<std::string>();
      HYMBA_CHECK(role == "system" || role == "user" || role == "assistant" || role == "tool",
                  mw + "unknown role \"" + role + "\" (system, user, assistant, tool)");
      const std::string content = m["content"].get<std::string>();
      if (role == "assistant") {
        HYMBA_CHECK(!strip_ws(content).empty(), mw + "empty assistant reply");
        any_assistant = true;
      }
      msgs.push_back({role, content});
    }
    HYMBA_CHECK(any_assistant, where + "no assistant reply to learn from");
    const ChatTokens ct = tokenize_chat(tok, msgs, /*eos_at_end=*/true);
    const int64_t n = int64_t(ct.ids.size());
    HYMBA_CHECK(n >= 2, where + "too short");
    HYMBA_CHECK(n - 1 <= max_tokens, where + std::to_string(n - 1) + " tokens, longer than --seq-len " +
                                         std::to_string(max_tokens));
    SftExample e;
    e.row = row;
    e.inputs.assign(ct.ids.begin(), ct.ids.end() - 1);
    e.targets.resize(size_t(n - 1));
    for (int64_t i = 0; i + 1 < n; ++i)
      e.targets[size_t(i)] = ct.assistant[size_t(i + 1)] ? ct.ids[size_t(i + 1)] : -1;
    out.push_back(std::move(e));
  }
  HYMBA_CHECK(!out.empty(), path + ": no conversations");
  return out;
}

std::vector<std::vector<int64_t>> pack_examples(const std::vector<SftExample>& ex, int64_t capacity) {
  std::vector<std::vector<int64_t>> packs;
  int64_t used = 0;
  for (int64_t i = 0; i < int64_t(ex.size()); ++i) {
    const int64_t n = int64_t(ex[size_t(i)].inputs.size());
    if (packs.empty() || used + n > capacity) packs.emplace_back(), used = 0;
    packs.back().push_back(i);
    used += n;
  }
  return packs;
}

}  // namespace hymba
