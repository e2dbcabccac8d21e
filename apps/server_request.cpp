#include "server_request.h"

#include <algorithm>
#include <random>

#include "runtime/chat_template.h"

namespace hymba::cli {

using nlohmann::json;

json parse_body(const std::string& body) {
  json b = json::parse(body, nullptr, false);
  if (b.is_discarded() || !b.is_object()) throw BadRequest("the request body is not a JSON object");
  return b;
}

ParsedCompletion parse_completion(const json& b, bool chat, const Tokenizer& tok) {
  ParsedCompletion p;
  auto& g = p.req.params;
  g.max_new_tokens = get_or<int64_t>(b, chat ? "max_tokens" : "max_tokens", chat ? 256 : 16);
  if (b.contains("max_completion_tokens")) g.max_new_tokens = get_or<int64_t>(b, "max_completion_tokens", 256);
  if (g.max_new_tokens < 0) throw BadRequest("'max_tokens' must be >= 0");
  auto& s = g.sampling;
  s.temperature = get_or<float>(b, "temperature", s.temperature);
  s.top_p = get_or<float>(b, "top_p", s.top_p);
  s.top_k = get_or<int32_t>(b, "top_k", s.top_k);
  s.min_p = get_or<float>(b, "min_p", s.min_p);
  s.repeat_penalty = get_or<float>(b, "repeat_penalty", s.repeat_penalty);
  s.repeat_last_n = get_or<int32_t>(b, "repeat_last_n", s.repeat_last_n);
  s.seed = b.contains("seed") && !b["seed"].is_null() ? get_or<uint64_t>(b, "seed", 0) : std::random_device{}();
  g.ignore_eos = get_or<bool>(b, "ignore_eos", false);
  if (b.contains("stop") && !b["stop"].is_null()) {
    if (b["stop"].is_string()) g.stop.push_back(b["stop"].get<std::string>());
    else g.stop = get_or<std::vector<std::string>>(b, "stop", {});
    for (auto& x : g.stop)
      if (x.empty()) throw BadRequest("'stop' strings must not be empty");
  }
  p.stream = get_or<bool>(b, "stream", false);
  if (chat) {
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
      throw BadRequest("'messages' must be a non-empty array");
    std::vector<ChatMessage> msgs;
    for (const auto& m : b["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        throw BadRequest("each message needs a string 'role' and a string 'content'");
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    try {
      p.req.prompt = tok.encode(render_chat(msgs, true), false);  // the template has no BOS
    } catch (const Error& e) {
      throw BadRequest(e.what());
    }
    for (auto& x : chat_stop_strings()) g.stop.push_back(x);
    if (get_or<bool>(b, "logprobs", false)) p.req.top_logprobs = get_or<int>(b, "top_logprobs", 0);
  } else {
    if (!b.contains("prompt")) throw BadRequest("'prompt' is required");
    const json& pr = b["prompt"];
    if (pr.is_array() && pr.size() == 1 && pr[0].is_string()) {
      p.prompt_text = pr[0].get<std::string>();
    } else if (pr.is_string()) {
      p.prompt_text = pr.get<std::string>();
    } else if (pr.is_array() && !pr.empty() && std::all_of(pr.begin(), pr.end(), [](const json& x) { return x.is_number_integer(); })) {
      p.req.prompt = pr.get<std::vector<int32_t>>();
      p.prompt_text = tok.decode(p.req.prompt.empty() ? std::vector<int32_t>{} : p.req.prompt);
    } else {
      throw BadRequest("'prompt' must be a string or an array of token ids");
    }
    if (p.req.prompt.empty()) {
      if (p.prompt_text.empty()) throw BadRequest("the prompt is empty");
      p.req.prompt = tok.encode(p.prompt_text, tok.add_bos_default());
    }
    p.echo = get_or<bool>(b, "echo", false);
    if (b.contains("logprobs") && !b["logprobs"].is_null()) {
      p.req.top_logprobs = get_or<int>(b, "logprobs", 0);
      if (p.req.top_logprobs < 0) throw BadRequest("'logprobs' must be >= 0");
      p.req.prompt_logprobs = p.echo;
    }
  }
  if (p.req.prompt.empty()) throw BadRequest("the prompt is empty");
  return p;
}

std::vector<int32_t> parse_tokenize(const json& b, const Tokenizer& tok) {
  return tok.encode(get_or<std::string>(b, "content", ""), get_or<bool>(b, "add_special", false));
}

std::string parse_detokenize(const json& b, const Tokenizer& tok) {
  const auto ids = get_or<std::vector<int32_t>>(b, "tokens", {});
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) throw BadRequest("token id " + std::to_string(id) + " out of range");
  return tok.decode(ids);
}

}  // namespace hymba::cli
