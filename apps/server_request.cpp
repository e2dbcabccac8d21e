#include "server_request.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <random>

#include "runtime/chat_template.h"

namespace hymba::cli {

using nlohmann::json;

namespace {

// One token id, checked against the vocabulary before narrowing.
int32_t token_id(const json& x, int64_t V, const char* where) {
  const bool ok = x.is_number_integer() && (x.is_number_unsigned() ? x.get<uint64_t>() < uint64_t(V)
                                                                   : x.get<int64_t>() >= 0 && x.get<int64_t>() < V);
  if (!ok)
    throw BadRequest(std::string(where) + ": token id " + x.dump() + " is not an integer in [0, " + std::to_string(V) + ")");
  return int32_t(x.get<int64_t>());
}

std::string message_text(const json& c) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) throw BadRequest("message 'content' must be a string or an array of {\"type\": \"text\"} parts");
  std::string out;
  for (const auto& part : c) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") || !part["text"].is_string())
      throw BadRequest("message 'content' parts must be {\"type\": \"text\", \"text\": \"...\"} (only text is supported)");
    out += part["text"].get<std::string>();
  }
  return out;
}

// The chat's ids, and where in them a kept state is worth having: the end of the header (the
// system prompt) and of each turn, when the text up to there encodes to a prefix of the ids.
std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& msgs, const Tokenizer& tok,
                                 std::vector<size_t>* boundaries) {
  try {
    const auto ids = tok.encode(render_chat(msgs, true), false);  // the template has no BOS
    std::string text = render_header(msgs);
    auto mark = [&] {
      const auto pre = tok.encode(text, false);
      if (pre.size() < ids.size() && std::equal(pre.begin(), pre.end(), ids.begin())) boundaries->push_back(pre.size());
    };
    mark();
    for (const auto& m : msgs) {
      if (m.role == "system") continue;
      if (m.role == "assistant") {
        // Where the request that produced this reply stopped keeping (all but the last token of
        // its prompt): found there, e.g. on another replica's --state-store.
        const auto pre = tok.encode(text + generation_prompt(), false);
        if (pre.size() > 1 && pre.size() <= ids.size() && std::equal(pre.begin(), pre.end(), ids.begin()))
          boundaries->push_back(pre.size() - 1);
      }
      text += render_turn(m);
      mark();
    }
    return ids;
  } catch (const BadRequest&) {
    throw;
  } catch (const Error& e) {
    throw BadRequest(e.what());
  }
}

// The prompts of a completions request: a string, a list of token ids, or a list of either.
std::vector<std::vector<int32_t>> parse_prompts(const json& pr, const Tokenizer& tok) {
  const int64_t V = tok.vocab_size();
  auto ids = [&](const json& a) {
    std::vector<int32_t> out;
    for (const auto& x : a) out.push_back(token_id(x, V, "'prompt'"));
    if (out.empty()) throw BadRequest("'prompt': an empty list of token ids");
    return out;
  };
  auto text = [&](const json& s) {
    if (s.get<std::string>().empty()) throw BadRequest("the prompt is empty");
    return tok.encode(s.get<std::string>(), tok.add_bos_default());
  };
  const char* shape = "'prompt' must be a string, a list of token ids, or a list of strings or of token-id lists";
  if (pr.is_string()) return {text(pr)};
  if (!pr.is_array() || pr.empty()) throw BadRequest(shape);
  if (pr[0].is_number()) return {ids(pr)};
  std::vector<std::vector<int32_t>> out;
  for (const auto& x : pr) {
    if (x.is_string()) out.push_back(text(x));
    else if (x.is_array()) out.push_back(ids(x));
    else throw BadRequest(shape);
  }
  return out;
}

}  // namespace

std::vector<std::pair<int, double>> parse_lora_list(const json& list, const char* what) {
  const std::string w = what;
  if (!list.is_array()) throw BadRequest(w + " must be an array of objects with 'id' and 'scale' fields");
  std::vector<std::pair<int, double>> out;
  for (const auto& e : list) {
    if (!e.is_object() || !e.contains("id")) throw BadRequest(w + ": each entry must be an object with 'id' and 'scale'");
    const double sc = get_or<double>(e, "scale", 0.0);
    if (!(std::abs(sc) <= 1e30)) throw BadRequest(w + ": 'scale' must be a finite number of magnitude <= 1e30");
    out.push_back({get_or<int>(e, "id", -1), sc});
  }
  return out;
}

json parse_body(const std::string& body) {
  json b = json::parse(body, nullptr, false);
  if (b.is_discarded() || !b.is_object()) throw BadRequest("the request body is not a JSON object");
  return b;
}

ParsedCompletion parse_completion(const json& b, bool chat, const Tokenizer& tok, const RequestLimits& lim) {
  ParsedCompletion p;
  CompletionRequest base;
  auto& g = base.params;
  const bool explicit_max = b.contains("max_tokens") || b.contains("max_completion_tokens");
  g.max_new_tokens = get_or<int64_t>(b, "max_tokens", chat ? 256 : 16);
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
  // Parameters we cannot honour are refused, never ignored.
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (get_or<double>(b, k, 0.0) != 0.0) throw BadRequest(std::string("'") + k + "' is not supported (use repeat_penalty)");
  for (const char* k : {"suffix", "tools", "functions", "tool_choice", "function_call", "response_format"})
    if (b.contains(k) && !b[k].is_null()) throw BadRequest(std::string("'") + k + "' is not supported");
  const int n = get_or<int>(b, "n", 1);
  if (n < 1 || n > 16) throw BadRequest("'n' must be in [1, 16]");
  if (get_or<int>(b, "best_of", n) != n) throw BadRequest("'best_of' other than n is not supported");
  p.n = size_t(n);
  if (b.contains("logit_bias") && !b["logit_bias"].is_null()) {
    if (!b["logit_bias"].is_object()) throw BadRequest("'logit_bias' must be an object {\"token id\": bias}");
    for (auto& [k, v] : b["logit_bias"].items()) {
      const bool digits = !k.empty() && k.size() <= 10 && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
      const int64_t id = digits ? std::stoll(k) : -1;
      if (id < 0 || id >= tok.vocab_size() || !v.is_number() || v.get<double>() < -100 || v.get<double>() > 100)
        throw BadRequest("'logit_bias': '" + k + "' must be a token id in [0, " + std::to_string(tok.vocab_size()) +
                         ") with a bias in [-100, 100]");
      base.logit_bias.push_back({int32_t(id), v.get<float>()});
    }
  }
  p.stream = get_or<bool>(b, "stream", false);
  if (b.contains("stream_options") && !b["stream_options"].is_null()) {
    if (!b["stream_options"].is_object()) throw BadRequest("'stream_options' must be an object");
    p.include_usage = get_or<bool>(b["stream_options"], "include_usage", false);
  }
  if (lim.request_timeout_s > 0)
    base.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(lim.request_timeout_s);

  std::vector<std::vector<int32_t>> prompts;
  std::vector<size_t> keep_at;
  if (chat) {
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
      throw BadRequest("'messages' must be a non-empty array");
    std::vector<ChatMessage> msgs;
    for (const auto& m : b["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content"))
        throw BadRequest("each message needs a string 'role' and a 'content'");
      msgs.push_back({m["role"].get<std::string>(), message_text(m["content"])});
    }
    prompts.push_back(encode_chat(msgs, tok, &keep_at));
    for (auto& x : chat_stop_strings()) g.stop.push_back(x);
    if (get_or<bool>(b, "logprobs", false)) base.top_logprobs = get_or<int>(b, "top_logprobs", 0);
  } else {
    if (!b.contains("prompt")) throw BadRequest("'prompt' is required");
    prompts = parse_prompts(b["prompt"], tok);
    p.echo = get_or<bool>(b, "echo", false);
    if (b.contains("logprobs") && !b["logprobs"].is_null()) {
      base.top_logprobs = get_or<int>(b, "logprobs", 0);
      if (base.top_logprobs < 0) throw BadRequest("'logprobs' must be >= 0");
      base.prompt_logprobs = p.echo;
    }
  }
  if (prompts.size() * p.n > lim.max_choices)
    throw BadRequest("too many choices in one request: " + std::to_string(prompts.size()) + " prompts x n " +
                     std::to_string(n) + " > " + std::to_string(lim.max_choices) + " (--max-queue)");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t np = int64_t(prompts[i].size());
    const std::string where = prompts.size() > 1 ? "prompt " + std::to_string(i) + ": " : "";
    if (np == 0) throw BadRequest(where + "the prompt is empty");
    if (np > lim.ctx)
      throw BadRequest(where + "the prompt has " + std::to_string(np) + " tokens; the context is " +
                       std::to_string(lim.ctx) + " tokens (--ctx-size)");
    CompletionRequest r = base;
    if (r.params.max_new_tokens > lim.ctx - np) {
      if (explicit_max)
        throw BadRequest(where + "the context is " + std::to_string(lim.ctx) + " tokens (--ctx-size); the request asks for " +
                         std::to_string(np) + " in the prompt + " + std::to_string(r.params.max_new_tokens) + " max_tokens");
      r.params.max_new_tokens = lim.ctx - np;  // the default shrinks to what fits
    }
    r.prompt = std::move(prompts[i]);
    r.keep_at = keep_at;
    const std::string echo = p.echo ? tok.decode(r.prompt) : std::string();
    for (int j = 0; j < n; ++j) {
      p.choices.push_back(r);
      p.choices.back().params.sampling.seed = s.seed + uint64_t(j);  // n samples differ, reproducibly
      p.echo_text.push_back(echo);
    }
  }
  return p;
}

std::vector<int32_t> parse_tokenize(const json& b, const Tokenizer& tok) {
  return tok.encode(get_or<std::string>(b, "content", ""), get_or<bool>(b, "add_special", false));
}

std::string parse_detokenize(const json& b, const Tokenizer& tok) {
  if (b.contains("tokens") && !b["tokens"].is_null() && !b["tokens"].is_array())
    throw BadRequest("'tokens' must be an array of token ids");
  std::vector<int32_t> ids;
  for (const auto& x : b.value("tokens", json::array())) ids.push_back(token_id(x, tok.vocab_size(), "'tokens'"));
  return tok.decode(ids);
}

}  // namespace hymba::cli
