#include "train/sft.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "runtime/chat_tokens.h"
#include "train/step.h"

namespace hymba {

int64_t SftExample::counted() const {
  int64_t k = 0;
  for (int32_t t : targets) k += t >= 0;
  return k;
}

SeqRef SftExample::seq() const { return {inputs.data(), targets.data(), int64_t(inputs.size())}; }

namespace {

std::vector<ChatMessage> parse_messages(const nlohmann::json& list, const std::string& where) {
  std::vector<ChatMessage> msgs;
  int k = 0;
  for (const auto& m : list) {
    const std::string mw = where + "message " + std::to_string(k++) + ": ";
    HYMBA_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() &&
                    m.contains("content") && m["content"].is_string(),
                mw + "needs string \"role\" and \"content\"");
    const std::string role = m["role"].get<std::string>();
    HYMBA_CHECK(role == "system" || role == "user" || role == "assistant" || role == "tool",
                mw + "unknown role \"" + role + "\" (system, user, assistant, tool)");
    const std::string content = m["content"].get<std::string>();
    if (role == "assistant") HYMBA_CHECK(!strip_ws(content).empty(), mw + "empty assistant reply");
    msgs.push_back({role, content});
  }
  return msgs;
}

// Next-token pairs of `ct`, counted where marked and at or after token `from`.
SftExample to_example(const ChatTokens& ct, int64_t from, int64_t row, int64_t max_tokens,
                      const std::string& where) {
  const int64_t n = int64_t(ct.ids.size());
  HYMBA_CHECK(n >= 2, where + "too short");
  HYMBA_CHECK(n - 1 <= max_tokens, where + std::to_string(n - 1) + " tokens, longer than --seq-len " +
                                       std::to_string(max_tokens));
  SftExample e;
  e.row = row;
  e.inputs.assign(ct.ids.begin(), ct.ids.end() - 1);
  e.targets.resize(size_t(n - 1));
  for (int64_t i = 0; i + 1 < n; ++i)
    e.targets[size_t(i)] = ct.assistant[size_t(i + 1)] && i + 1 >= from ? ct.ids[size_t(i + 1)] : -1;
  return e;
}

template <class F>
void each_row(const std::string& path, F f) {
  std::ifstream in(path);
  HYMBA_CHECK(in.good(), "cannot read " + path);
  std::string line;
  int64_t row = 0;
  while (std::getline(in, line)) {
    ++row;
    const std::string where = path + ":" + std::to_string(row) + ": ";
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(where + "not valid JSON (" + e.what() + ")");
    }
    f(j, row, where);
  }
}

}  // namespace

std::vector<PreferencePair> load_preference_jsonl(const std::string& path, const Tokenizer& tok,
                                                  int64_t max_tokens) {
  std::vector<PreferencePair> out;
  each_row(path, [&](const nlohmann::json& j, int64_t row, const std::string& where) {
    HYMBA_CHECK(j.is_object(), where + "not a JSON object");
    const char* pk = j.contains("prompt") ? "prompt" : "messages";
    HYMBA_CHECK(j.contains(pk), where + "no \"prompt\" (or \"messages\")");
    std::vector<ChatMessage> prompt;
    if (j[pk].is_string()) prompt.push_back({"user", j[pk].get<std::string>()});
    else if (j[pk].is_array()) prompt = parse_messages(j[pk], where + pk + ": ");
    HYMBA_CHECK(!prompt.empty(), where + "\"" + pk + "\" must be a string or a non-empty message list");
    const size_t prefix = tokenize_chat(tok, prompt, false).ids.size();
    auto completion = [&](const char* key) {
      HYMBA_CHECK(j.contains(key), where + "no \"" + std::string(key) + "\"");
      std::string text;
      if (j[key].is_string()) {
        text = j[key].get<std::string>();
      } else {
        HYMBA_CHECK(j[key].is_array(), where + "\"" + key + "\" must be a string or [assistant message]");
        const auto m = parse_messages(j[key], where + key + ": ");
        HYMBA_CHECK(m.size() == 1 && m[0].role == "assistant",
                    where + "\"" + key + "\" must hold one assistant message");
        text = m[0].content;
      }
      HYMBA_CHECK(!strip_ws(text).empty(), where + "empty \"" + key + "\" completion");
      auto msgs = prompt;
      msgs.push_back({"assistant", text});
      return to_example(tokenize_chat(tok, msgs, true), int64_t(prefix), row, max_tokens,
                        where + key + ": ");
    };
    PreferencePair p;
    p.row = row;
    p.chosen = completion("chosen");
    p.rejected = completion("rejected");
    out.push_back(std::move(p));
  });
  HYMBA_CHECK(!out.empty(), path + ": no preference pairs");
  return out;
}

std::vector<SftExample> load_sft_jsonl(const std::string& path, const Tokenizer& tok,
                                       int64_t max_tokens) {
  std::vector<SftExample> out;
  each_row(path, [&](const nlohmann::json& j, int64_t row, const std::string& where) {
    HYMBA_CHECK(j.is_object() && j.contains("messages") && j["messages"].is_array() &&
                    !j["messages"].empty(),
                where + "no \"messages\" list");
    const auto msgs = parse_messages(j["messages"], where);
    bool any_assistant = false;
    for (const auto& m : msgs) any_assistant |= m.role == "assistant";
    HYMBA_CHECK(any_assistant, where + "no assistant reply to learn from");
    out.push_back(to_example(tokenize_chat(tok, msgs, /*eos_at_end=*/true), 0, row, max_tokens, where));
  });
  HYMBA_CHECK(!out.empty(), path + ": no conversations");
  return out;
}

std::vector<SftExample> load_token_jsonl(const std::string& path, int64_t vocab_size, int64_t max_tokens) {
  std::vector<SftExample> out;
  each_row(path, [&](const nlohmann::json& j, int64_t row, const std::string& where) {
    auto ints = [&](const char* key) {
      HYMBA_CHECK(j[key].is_array(), where + "\"" + key + "\" must be a list of integers");
      std::vector<int64_t> v;
      for (const auto& x : j[key]) {
        HYMBA_CHECK(x.is_number_integer(), where + "\"" + key + "\" must be a list of integers");
        v.push_back(x.get<int64_t>());
      }
      return v;
    };
    HYMBA_CHECK(j.is_object() && j.contains("input_ids"), where + "no \"input_ids\" list");
    const bool has_mask = j.contains("completion_mask"), has_labels = j.contains("labels");
    HYMBA_CHECK(has_mask != has_labels, where + "needs exactly one of \"completion_mask\" and \"labels\"");
    const auto ids = ints("input_ids"), m = ints(has_mask ? "completion_mask" : "labels");
    const int64_t n = int64_t(ids.size());
    for (int64_t i = 0; i < n; ++i)
      HYMBA_CHECK(ids[size_t(i)] >= 0 && ids[size_t(i)] < vocab_size,
                  where + "input_ids[" + std::to_string(i) + "] = " + std::to_string(ids[size_t(i)]) +
                      " is outside the model's vocabulary [0, " + std::to_string(vocab_size) + ")");
    HYMBA_CHECK(int64_t(m.size()) == n, where + "\"" + (has_mask ? "completion_mask" : "labels") + "\" has " +
                                            std::to_string(m.size()) + " entries for " + std::to_string(n) + " input_ids");
    HYMBA_CHECK(n >= 2, where + "too short (fewer than 2 input_ids)");
    HYMBA_CHECK(n - 1 <= max_tokens, where + std::to_string(n - 1) + " tokens, longer than --seq-len " +
                                         std::to_string(max_tokens));
    SftExample e;
    e.row = row;
    e.inputs.assign(ids.begin(), ids.end() - 1);
    e.targets.assign(size_t(n - 1), -1);
    for (int64_t i = 1; i < n; ++i) {
      const int64_t v = m[size_t(i)];
      if (has_mask) {
        HYMBA_CHECK(v == 0 || v == 1, where + "completion_mask[" + std::to_string(i) + "] is " + std::to_string(v) + ", not 0 or 1");
        if (v) e.targets[size_t(i - 1)] = int32_t(ids[size_t(i)]);
      } else {
        HYMBA_CHECK(v == -100 || (v >= 0 && v < vocab_size),
                    where + "labels[" + std::to_string(i) + "] = " + std::to_string(v) + " is neither -100 nor an id in [0, " +
                        std::to_string(vocab_size) + ")");
        if (v >= 0) e.targets[size_t(i - 1)] = int32_t(v);
      }
    }
    // The first position predicts nothing (no token before it): a mask there has no target.
    HYMBA_CHECK(e.counted() > 0, where + "nothing to learn from (no completion token after the first)");
    out.push_back(std::move(e));
  });
  HYMBA_CHECK(!out.empty(), path + ": no rows");
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
