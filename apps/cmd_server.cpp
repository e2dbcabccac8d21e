// hymba server: an OpenAI-compatible HTTP server (llama-server style) over the continuous-batching
// scheduler (src/runtime/scheduler.h). Endpoints: GET /health, GET /metrics (Prometheus text),
// GET /v1/models, POST /v1/completions (a prompt or a list of prompts, as text or token ids;
// stream, echo, logprobs, n, logit_bias), POST /v1/chat/completions (the Hymba chat template;
// stream, n, logit_bias), POST /tokenize, POST /detokenize.
// Adapters: `--lora NAME=DIR[:scale]` (repeatable) loads PEFT adapters over the one base; a
// request's "model" naming one runs with it, the base name (or no "model") with none (or with
// the plain `--lora DIR` default). Kept states never cross adapters (see scheduler.h).
// Every error is an OpenAI-style {"error": {...}} body: 400 bad request, 401 bad API key, 404,
// 413 body too large, 503 queue full or shutting down (Retry-After), 504 request timeout.
#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include <pthread.h>
#include <sys/socket.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "runtime/state_store.h"
#include "runtime/tokenizer.h"
#include "server_net.h"
#include "server_request.h"

namespace hymba::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Opts : ModelFlags {
  std::string host = "127.0.0.1", alias, api_key;
  int port = 8080, parallel = 4, cache_prompts = 32, cache_block = 256, ctx_size = 0;
  int64_t cache_ram_mib = 1024, max_body = 16 << 20;
  int threads_http = 256, backlog = 512, timeout = 30, keep_alive = 5, keep_alive_max = 100;
  int max_queue = 256, request_timeout = 600, shutdown_timeout = 10;
  std::string state_store, state_store_key;
  int state_store_ttl = 3600, state_store_max_mib = 256;
  std::vector<std::string> loras;  // --lora: DIR[:scale] (the default) or NAME=DIR[:scale]
};

// Splits --lora values into the default adapter (plain DIR[:scale], at most one) and named ones.
void parse_server_loras(const std::vector<std::string>& in, std::string* plain,
                        std::vector<EngineOptions::NamedAdapter>* named) {
  namespace fs = std::filesystem;
  for (const auto& v : in) {
    const size_t eq = v.find('=');
    const std::string name = eq == std::string::npos ? "" : v.substr(0, eq);
    const bool is_name = !name.empty() && !fs::exists(v) &&
                         std::all_of(name.begin(), name.end(), [](char c) {
                           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
                         });
    if (!is_name) {
      HYMBA_CHECK(plain->empty(), "--lora: at most one adapter without a name (" + *plain + ", " + v +
                                      "); name the others: --lora NAME=DIR[:scale]");
      *plain = v;
      continue;
    }
    EngineOptions::NamedAdapter a;
    a.name = name;
    parse_lora(v.substr(eq + 1), &a.dir, &a.scale);
    for (const auto& b : *named) HYMBA_CHECK(b.name != a.name, "--lora: the adapter name " + a.name + " is given twice");
    named->push_back(a);
  }
}

// A reply other than 400 (BadRequest, server_request.h) and 200.
struct HttpError : Error {
  HttpError(int status, const std::string& msg) : Error(msg), status(status) {}
  int status;
};

const char* error_type(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 408: case 504: return "timeout_error";
    case 413: case 400: return "invalid_request_error";
    case 503: return "unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

json error_json(int status, const std::string& msg) {
  return {{"error", {{"message", msg}, {"type", error_type(status)}, {"param", nullptr}, {"code", status}}}};
}

void reply(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

// Piece text of one token for logprobs ("▁the" -> " the").
std::string token_text(const Tokenizer& tok, int32_t id) {
  std::string p = tok.piece(id), out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p.compare(i, 3, "\xE2\x96\x81") == 0) out += ' ', i += 2;
    else out += p[i];
  }
  return out;
}

// Unicode characters in UTF-8 text: text_offset counts these, as Python indexes strings.
size_t n_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string finish_reason(const std::string& stop) { return stop == "length" ? "length" : "stop"; }

const std::map<std::string, std::string> kEndpoints = {
    {"/health", "health"}, {"/metrics", "metrics"}, {"/v1/models", "models"}, {"/v1/completions", "completions"},
    {"/v1/chat/completions", "chat_completions"}, {"/tokenize", "tokenize"}, {"/detokenize", "detokenize"},
    {"/lora-adapters", "lora_adapters"}};

class Server {
 public:
  Server(const Opts& o, Engine& eng, const Tokenizer& tok, ConnectionPool& pool, StateStore* store)
      : o_(o), eng_(eng), tok_(tok), pool_(pool), sched_(eng, tok, sched_opts(o, store)) {
    name_ = o.alias.empty() ? std::filesystem::path(eng.dir()).filename().string() : o.alias;
    if (name_.empty()) name_ = "hymba";
    for (const auto& a : eng.options().adapters) {
      HYMBA_CHECK(a.name != name_, "--lora " + a.name + "=...: the name is the base model's (--alias)");
      adapters_.push_back(a.name);
    }
    for (const auto& a : eng.adapters())  // a float as its shortest decimal
      global_scales_.push_back(a.name.empty() ? std::strtod(std::to_string(a.scale).c_str(), nullptr) : 0.0);
    const int64_t trained = eng.config().max_position_embeddings;
    ctx_ = o.ctx_size > 0 ? o.ctx_size : trained;
    std::stringstream keys(o.api_key);
    for (std::string k; std::getline(keys, k, ',');)
      if (!k.empty()) keys_.push_back(k);
  }
  int64_t ctx() const { return ctx_; }

  static SchedulerOptions sched_opts(const Opts& o, StateStore* store) {
    SchedulerOptions s;
    s.store = store;
    s.max_parallel = o.parallel;
    s.max_queue = o.max_queue;
    s.max_snapshots = o.cache_prompts;
    s.max_snapshot_bytes = size_t(o.cache_ram_mib) << 20;
    s.cache_block = size_t(o.cache_block);
    return s;
  }

  void routes(httplib::Server& s) {
    s.set_pre_routing_handler([this](const httplib::Request& q, httplib::Response& r) { return admit(q, r); });
    s.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
      if (!r.body.empty()) return;
      const std::string msg = r.status == 404   ? "no such endpoint: " + q.method + " " + q.path
                              : r.status == 413 ? "the request body is too large (--max-body)"
                                                : "HTTP error " + std::to_string(r.status);
      reply(r, r.status, error_json(r.status, msg));
    });
    s.set_logger([this](const httplib::Request& q, const httplib::Response& r) { count(q, r); });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (draining_) return reply(res, 503, error_json(503, "shutting down"));
      reply(res, 200, {{"status", "ok"}});
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4");
    });
    s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      json data = json::array({{{"id", name_}, {"object", "model"}, {"owned_by", "hymba.cpp"}, {"max_model_len", ctx_}}});
      for (const auto& a : eng_.options().adapters)  // as vLLM lists LoRA modules
        data.push_back({{"id", a.name}, {"object", "model"}, {"owned_by", "hymba.cpp"}, {"root", a.dir},
                        {"parent", name_}, {"max_model_len", ctx_}});
      reply(res, 200, {{"object", "list"}, {"data", data}});
    });
    s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, false); });
    s.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, true); });
    // llama-server's adapter endpoints: ids in load order, path, the global scale.
    s.Get("/lora-adapters", [this](const httplib::Request&, httplib::Response& res) {
      json out = json::array();
      std::lock_guard<std::mutex> l(lora_mu_);
      const auto& info = eng_.adapters();
      for (size_t i = 0; i < info.size(); ++i)
        out.push_back({{"id", int(i)}, {"path", info[i].dir}, {"scale", global_scales_[i]},
                       {"name", info[i].name.empty() ? json() : json(info[i].name)}, {"dora", info[i].dora}});
      reply(res, 200, out);
    });
    s.Post("/lora-adapters", [this](const httplib::Request& q, httplib::Response& res) {
      safe(res, [&] {
        const json body = json::parse(q.body, nullptr, false);
        if (body.is_discarded()) throw BadRequest("the request body is not JSON");
        const auto list = parse_lora_list(body, "the body");
        eng_.check_mix(as_mix(list));
        std::lock_guard<std::mutex> l(lora_mu_);
        std::fill(global_scales_.begin(), global_scales_.end(), 0.0f);  // unlisted: off (llama-server)
        for (const auto& [id, sc] : list) global_scales_[size_t(id)] = sc;
        global_set_ = true;
        reply(res, 200, {{"success", true}});
      });
    });
    s.Post("/tokenize", [this](const httplib::Request& q, httplib::Response& r) {
      safe(r, [&] {
        reply(r, 200, {{"tokens", parse_tokenize(parse_body(q.body), tok_)}});
      });
    });
    s.Post("/detokenize", [this](const httplib::Request& q, httplib::Response& r) {
      safe(r, [&] {
        reply(r, 200, {{"content", parse_detokenize(parse_body(q.body), tok_)}});
      });
    });
  }

  // SIGTERM: new requests get 503 while the running ones finish (at most `grace`), then the
  // rest are ended. Returns whether everything finished in time.
  bool drain(std::chrono::milliseconds grace, const std::function<bool()>& hurry) {
    draining_ = true;
    const auto until = Clock::now() + grace;
    bool idle = false;
    while (!(idle = in_flight_ == 0) && Clock::now() < until && !hurry())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    sched_.cancel_all("the server is shutting down");
    // The ended streams still write their error event and [DONE]: give them a moment before the
    // sockets are closed (seen lost under load otherwise).
    const auto flush = Clock::now() + std::chrono::seconds(2);
    while (!idle && in_flight_ > 0 && Clock::now() < flush)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return idle;
  }

 private:
  // API key, shutdown: before any route.
  httplib::Server::HandlerResponse admit(const httplib::Request& q, httplib::Response& r) {
    if (q.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (!keys_.empty()) {
      const std::string h = q.get_header_value("Authorization");
      bool ok = false;
      for (const auto& k : keys_) {
        const std::string want = "Bearer " + k;
        unsigned diff = h.size() != want.size();
        for (size_t i = 0; i < want.size(); ++i) diff |= unsigned(i < h.size() ? h[i] : 0) ^ unsigned(want[i]);
        ok |= diff == 0;
      }
      if (!ok) {
        r.set_header("WWW-Authenticate", "Bearer");
        reply(r, 401, error_json(401, "invalid or missing API key (Authorization: Bearer KEY)"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (draining_ && q.method == "POST") {
      r.set_header("Retry-After", "5");
      reply(r, 503, error_json(503, "the server is shutting down"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  void count(const httplib::Request& q, const httplib::Response& r) {
    auto it = kEndpoints.find(q.path);
    std::lock_guard<std::mutex> l(metrics_mu_);
    ++requests_[{it == kEndpoints.end() ? "other" : it->second, r.status}];
  }

  std::string metrics() {
    const auto s = sched_.stats();
    std::ostringstream o;
    auto metric = [&](const char* name, const char* type, const char* help, auto value) {
      o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n' << name << ' ' << value << '\n';
    };
    o << "# HELP hymba_requests_total HTTP requests answered, by endpoint and status.\n"
         "# TYPE hymba_requests_total counter\n";
    {
      std::lock_guard<std::mutex> l(metrics_mu_);
      for (auto& [k, n] : requests_)
        o << "hymba_requests_total{endpoint=\"" << k.first << "\",status=\"" << k.second << "\"} " << n << '\n';
      if (!adapters_.empty()) {
        o << "# HELP hymba_model_requests_total Completion requests by the model they named (the base or an adapter).\n"
             "# TYPE hymba_model_requests_total counter\n";
        for (auto& [m, n] : model_requests_) {
          std::string label;  // Prometheus label value: \ and " escaped (an --alias may hold them)
          for (char c : m) label += c == '\\' || c == '"' ? std::string("\\") + c : c == '\n' ? "\\n" : std::string(1, c);
          o << "hymba_model_requests_total{model=\"" << label << "\"} " << n << '\n';
        }
      }
    }
    metric("hymba_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", s.prompt_tokens);
    metric("hymba_prompt_tokens_cached_total", "counter", "Prompt tokens restored from kept states instead of processed.",
           s.cached_tokens);
    metric("hymba_generated_tokens_total", "counter", "Tokens sampled.", s.generated_tokens);
    metric("hymba_busy_seconds_total", "counter", "Seconds the scheduler spent computing.", s.busy_seconds);
    metric("hymba_generated_tokens_per_second", "gauge", "Tokens sampled per busy second, since start.",
           s.busy_seconds > 0 ? double(s.generated_tokens) / s.busy_seconds : 0.0);
    metric("hymba_requests_running", "gauge", "Sequences being decoded.", s.running);
    metric("hymba_requests_waiting", "gauge", "Requests queued for a slot (queue depth).", s.waiting);
    metric("hymba_prefix_cache_lookups_total", "counter", "Prompts looked up among the kept states.", s.prefix_lookups);
    metric("hymba_prefix_cache_hits_total", "counter", "Prompts that continued from a kept state.", s.prefix_hits);
    metric("hymba_prefix_cache_states", "gauge", "Kept states.", s.snapshots);
    metric("hymba_prefix_cache_bytes", "gauge", "Bytes of kept states.", s.snapshot_bytes);
    metric("hymba_state_store_hits_total", "counter", "Prompts that continued from a state in --state-store.", s.store_hits);
    metric("hymba_state_store_errors_total", "counter", "Failed --state-store reads and writes.", s.store_errors);
    metric("hymba_state_store_rejected_total", "counter",
           "Entries of --state-store whose --state-store-key MAC did not verify (processed instead).", s.store_rejected);
    metric("hymba_http_busy_threads", "gauge", "Connection threads serving a client.", pool_.busy());
    return o.str();
  }

  template <class F>
  void safe(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const QueueFull& e) {
      res.set_header("Retry-After", "1");
      reply(res, 503, error_json(503, e.what()));
    } catch (const HttpError& e) {
      reply(res, e.status, error_json(e.status, e.what()));
    } catch (const Error& e) {  // validation by the library (sampling parameters, ids, ...)
      reply(res, 400, error_json(400, e.what()));
    } catch (const std::exception& e) {
      reply(res, 500, error_json(500, e.what()));
    }
  }

  void guarded(const httplib::Request& q, httplib::Response& res, bool chat) {
    ++in_flight_;
    bool streaming = false;
    safe(res, [&] { streaming = complete(q, res, chat); });
    if (!streaming) --in_flight_;  // a stream ends in its content provider's release callback
  }

  // OpenAI legacy logprobs; text_offset[i] is where token i starts in the choice's text, in
  // characters (what each token added to the text: nothing for <s>), from `offset0` on.
  json logprobs_json(const std::vector<TokenEvent>& prompt_evs, const std::vector<TokenEvent>& evs, size_t offset0) const {
    json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
    size_t off = offset0;
    auto add = [&](const TokenEvent& e, size_t chars) {
      tokens.push_back(token_text(tok_, e.token));
      lps.push_back(std::isnan(e.logprob) ? json() : json(e.logprob));
      json top = json::object();
      for (auto& [id, lp] : e.top) top[token_text(tok_, id)] = lp;
      tops.push_back(e.top.empty() && std::isnan(e.logprob) ? json() : top);
      offs.push_back(off);
      off += chars;
    };
    auto stream = tok_.stream();  // the echoed prompt is exactly the concatenation of these pushes
    for (size_t i = 0; i < prompt_evs.size(); ++i) {
      std::string piece = stream.push(prompt_evs[i].token);
      if (i + 1 == prompt_evs.size()) piece += stream.flush();
      add(prompt_evs[i], n_chars(piece));
    }
    for (const auto& e : evs) add(e, n_chars(e.piece));
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
  }

  json chat_logprobs(const std::vector<TokenEvent>& evs) const {
    json content = json::array();
    for (auto& e : evs) {
      json top = json::array();
      for (auto& [tid, lp] : e.top) top.push_back({{"token", token_text(tok_, tid)}, {"logprob", lp}});
      content.push_back({{"token", token_text(tok_, e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }

  json chunk_json(const std::string& id, bool chat, const json& choices, int adapter) const {
    return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
            {"created", std::time(nullptr)}, {"model", model_name(adapter)}, {"choices", choices}};
  }

  const std::string& model_name(int adapter) const { return adapter == 0 ? name_ : adapters_[size_t(adapter - 1)]; }

  // The Engine variant a request's "model" names: the base name or none -> 0 (the default), an
  // adapter's name -> it. With adapters loaded, any other name is an error (a misspelt adapter
  // must not silently get the base); without, the name is not checked (as before, llama-server
  // style: clients such as lm-eval send their own).
  int pick_adapter(const json& body) const {
    if (!body.contains("model") || body["model"].is_null()) return 0;
    if (!body["model"].is_string()) throw BadRequest("'model' must be a string");
    const std::string m = body["model"].get<std::string>();
    for (size_t i = 0; i < adapters_.size(); ++i)
      if (adapters_[i] == m) return int(i) + 1;
    if (m == name_ || adapters_.empty()) return 0;
    std::string known = name_;
    for (const auto& a : adapters_) known += ", " + a;
    throw HttpError(404, "the model '" + m + "' does not exist (this server has: " + known + "; GET /v1/models)");
  }

  // Each prompt counts once, however many samples (n) were drawn from it.
  static json usage_json(const std::vector<std::shared_ptr<Job>>& jobs, size_t n) {
    int64_t np = 0, ng = 0, nc = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (i % n == 0) np += jobs[i]->n_prompt, nc += jobs[i]->n_cached;
      ng += jobs[i]->n_generated;
    }
    return {{"prompt_tokens", np}, {"completion_tokens", ng}, {"total_tokens", np + ng},
            {"prompt_tokens_details", {{"cached_tokens", nc}}}};
  }

  // An ended job that did not complete: the HTTP status and message, or 0.
  std::pair<int, std::string> failure(const Job& j) const {
    if (j.stop_reason == "timeout")
      return {504, "the request ran longer than --request-timeout (" + std::to_string(o_.request_timeout) + " s)"};
    if (j.stop_reason == "cancelled") return {499, "the client closed the connection"};
    if (j.stop_reason == "error") return {draining_ ? 503 : 500, j.error};
    return {0, {}};
  }

  struct Submitted {
    std::vector<std::shared_ptr<Job>> jobs;
    void cancel() const {
      for (auto& j : jobs) j->cancel();
    }
  };

  // Returns true when the response is a stream (it then ends in the content provider).
  bool complete(const httplib::Request& q, httplib::Response& res, bool chat) {
    RequestLimits lim;
    lim.ctx = ctx_;
    lim.max_choices = size_t(std::max(1, o_.max_queue));
    lim.request_timeout_s = o_.request_timeout;
    const json body = parse_body(q.body);
    const int adapter = pick_adapter(body);
    // llama-server's per-request adapter mix; without one, the global mix (POST /lora-adapters)
    // if it was ever set.
    std::optional<Engine::LoraMix> mix;
    if (body.contains("lora") && !body["lora"].is_null()) {
      if (adapter != 0) throw BadRequest("give either \"lora\" or an adapter's name as \"model\", not both");
      mix = as_mix(parse_lora_list(body["lora"], "'lora'"));
      eng_.check_mix(*mix);
    } else if (adapter == 0) {
      std::lock_guard<std::mutex> l(lora_mu_);
      if (global_set_) mix = global_mix();
    }
    {
      std::lock_guard<std::mutex> l(metrics_mu_);
      ++model_requests_[model_name(adapter)];
    }
    auto p = std::make_shared<ParsedCompletion>(parse_completion(body, chat, tok_, lim));
    for (auto& r : p->choices) r.adapter = adapter, r.lora = mix;
    auto sub = std::make_shared<Submitted>();
    try {
      for (auto& r : p->choices) sub->jobs.push_back(sched_.submit(r));
    } catch (...) {
      sub->cancel();  // all or nothing
      throw;
    }
    const int fd = request_socket(q);  // to notice a client that hangs up while it waits
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++counter_);
    if (p->stream) {
      res.set_header("Cache-Control", "no-cache");
      struct Progress {
        size_t choice = 0;
        bool started = false;
        size_t chars = 0;  // text sent for the current choice (text_offset)
      };
      auto st = std::make_shared<Progress>();
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, sub, p, id, chat, fd, st, adapter](size_t, httplib::DataSink& sink) {
            auto send = [&](const json& j) {
              const std::string s = "data: " + j.dump() + "\n\n";
              return sink.write(s.data(), s.size());
            };
            auto chunk = [&](json choice) {
              json c = chunk_json(id, chat, json::array({std::move(choice)}), adapter);
              if (p->include_usage) c["usage"] = nullptr;
              return send(c);
            };
            auto finish = [&] {
              const std::string done = "data: [DONE]\n\n";
              sink.write(done.data(), done.size());
              sink.done();
              return true;
            };
            if (st->choice == sub->jobs.size()) {  // every choice sent
              if (p->include_usage) {
                json c = chunk_json(id, chat, json::array(), adapter);
                c["usage"] = usage_json(sub->jobs, p->n);
                send(c);
              }
              return finish();
            }
            const size_t ci = st->choice;
            Job& job = *sub->jobs[ci];
            const CompletionRequest& req = p->choices[ci];
            const std::string& echo_text = p->echo_text[ci];
            if (!st->started) {
              st->started = true;
              if (chat && !chunk({{"index", ci}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}}))
                return sub->cancel(), false;
              if (!chat && p->echo) {
                if (!chunk({{"index", ci}, {"text", echo_text}, {"logprobs", nullptr}, {"finish_reason", nullptr}}))
                  return sub->cancel(), false;
                st->chars = n_chars(echo_text);
              }
            }
            std::vector<TokenEvent> evs;
            const bool more = job.wait(&evs, std::chrono::milliseconds(250));
            if (peer_closed(fd)) return sub->cancel(), false;
            for (const auto& e : evs) {
              if (e.piece.empty() && req.top_logprobs < 0) continue;
              json c;
              if (chat) {
                c = {{"index", ci}, {"delta", {{"content", e.piece}}}, {"finish_reason", nullptr}};
                if (req.top_logprobs >= 0) c["logprobs"] = chat_logprobs({e});
              } else {
                c = {{"index", ci}, {"text", e.piece}, {"finish_reason", nullptr},
                     {"logprobs", req.top_logprobs >= 0 ? logprobs_json({}, {e}, st->chars) : json()}};
              }
              st->chars += n_chars(e.piece);
              if (!chunk(c)) return sub->cancel(), false;
            }
            if (more) return true;
            if (auto [code, msg] = failure(job); code) {
              send(error_json(code, msg));
              sub->cancel();
              return finish();
            }
            json c = chat ? json{{"index", ci}, {"delta", json::object()}, {"finish_reason", finish_reason(job.stop_reason)}}
                          : json{{"index", ci}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", finish_reason(job.stop_reason)}};
            chunk(c);
            ++st->choice;
            st->started = false;
            st->chars = 0;
            return true;
          },
          [this, sub](bool) {
            sub->cancel();  // no-op for ended jobs; drops the rest if the client left
            --in_flight_;
          });
      return true;
    }
    std::vector<std::vector<TokenEvent>> evs(sub->jobs.size());
    for (size_t i = 0; i < sub->jobs.size(); ++i)
      while (sub->jobs[i]->wait(&evs[i], std::chrono::milliseconds(250)))
        if (peer_closed(fd)) sub->cancel();
    json choices = json::array();
    for (size_t i = 0; i < sub->jobs.size(); ++i) {
      const Job& job = *sub->jobs[i];
      if (auto [code, msg] = failure(job); code) throw HttpError(code, msg);
      const CompletionRequest& req = p->choices[i];
      std::string text;
      for (auto& e : evs[i]) text += e.piece;
      json choice;
      if (chat) {
        choice = {{"index", i}, {"message", {{"role", "assistant"}, {"content", text}}},
                  {"finish_reason", finish_reason(job.stop_reason)}};
        if (req.top_logprobs >= 0) choice["logprobs"] = chat_logprobs(evs[i]);
      } else {
        json lp;
        if (req.top_logprobs >= 0) lp = logprobs_json(p->echo ? job.prompt_events : std::vector<TokenEvent>{}, evs[i], 0);
        choice = {{"index", i}, {"text", p->echo ? p->echo_text[i] + text : text}, {"logprobs", lp},
                  {"finish_reason", finish_reason(job.stop_reason)}};
      }
      choices.push_back(std::move(choice));
    }
    json out = chunk_json(id, chat, choices, adapter);
    out["object"] = chat ? "chat.completion" : "text_completion";
    out["usage"] = usage_json(sub->jobs, p->n);
    reply(res, 200, out);
    return false;
  }

  const Opts& o_;
  Engine& eng_;
  const Tokenizer& tok_;
  ConnectionPool& pool_;
  Scheduler sched_;
  std::string name_;
  std::vector<std::string> adapters_;  // names of Engine variants 1.. (--lora NAME=DIR)
  int64_t ctx_ = 0;
  std::vector<std::string> keys_;
  std::atomic<int64_t> counter_{0}, in_flight_{0};
  std::atomic<bool> draining_{false};
  std::mutex metrics_mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  std::map<std::string, int64_t> model_requests_;  // completions by the model (adapter) they picked
  // The global adapter scales (GET/POST /lora-adapters), by adapter id. At start the unnamed
  // --lora at its scale and the named ones at 0 (they apply when a request names them).
  std::mutex lora_mu_;
  std::vector<double> global_scales_;  // as given (JSON shows 0.7, not float's 0.699999988)
  bool global_set_ = false;  // POST /lora-adapters was used: requests without a choice get this mix
  static Engine::LoraMix as_mix(const std::vector<std::pair<int, double>>& l) {
    Engine::LoraMix m;
    for (const auto& [id, sc] : l) m.push_back({id, float(sc)});
    return m;
  }
  Engine::LoraMix global_mix() const {
    Engine::LoraMix m;
    for (size_t i = 0; i < global_scales_.size(); ++i) m.push_back({int(i), float(global_scales_[i])});
    return m;
  }
};

void run(const Opts& o) {
  // SIGINT/SIGTERM are taken by one thread (sigwait): blocked here, before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  apply_threads(o.threads);
  HYMBA_CHECK(o.parallel >= 1 && o.parallel <= 256, "--parallel must be in [1, 256]");
  HYMBA_CHECK(o.cache_prompts >= 0, "--cache-prompts must be >= 0");
  HYMBA_CHECK(o.cache_ram_mib >= 0, "--cache-ram must be >= 0");
  HYMBA_CHECK(o.cache_block >= 0, "--cache-block must be >= 0");
  HYMBA_CHECK(o.port >= 0 && o.port <= 65535, "--port must be in [0, 65535]");
  HYMBA_CHECK(o.threads_http >= 1, "--threads-http must be >= 1");
  HYMBA_CHECK(o.backlog >= 1, "--backlog must be >= 1");
  HYMBA_CHECK(o.timeout >= 1 && o.keep_alive >= 0 && o.keep_alive_max >= 1,
              "--timeout must be >= 1, --keep-alive >= 0, --keep-alive-max >= 1");
  HYMBA_CHECK(o.max_body >= 1024, "--max-body must be >= 1024 bytes");
  HYMBA_CHECK(o.max_queue >= 0 && o.request_timeout >= 0 && o.shutdown_timeout >= 0,
              "--max-queue, --request-timeout and --shutdown-timeout must be >= 0");
  HYMBA_CHECK(o.ctx_size >= 0, "--ctx-size must be >= 0");
  const std::string dir = o.dir();
  auto tok = Tokenizer::load(dir);
  Opts eo_flags = o;
  std::vector<EngineOptions::NamedAdapter> named;
  parse_server_loras(o.loras, &eo_flags.lora, &named);
  EngineOptions eo = eo_flags.engine_options();
  eo.adapters = named;
  auto eng = Engine::load(dir, eo);
  const int64_t trained = eng->config().max_position_embeddings;
  if (o.ctx_size > trained)
    std::fprintf(stderr,
                 "hymba server: warning: --ctx-size %d is beyond the trained context (%lld): global-attention layers "
                 "will see positions they were not trained on, and their K/V grows with every token\n",
                 o.ctx_size, static_cast<long long>(trained));

  auto pool = new ConnectionPool(size_t(o.threads_http));  // outlives stragglers (see shutdown)
  httplib::Server http;
  http.new_task_queue = [pool] { return pool->queue(); };
  http.set_payload_max_length(size_t(o.max_body));
  http.set_read_timeout(o.timeout);
  http.set_write_timeout(o.timeout);
  http.set_keep_alive_timeout(o.keep_alive);
  http.set_keep_alive_max_count(size_t(o.keep_alive_max));
  int listen_fd = -1;
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which lets a second server
  // silently share a port that is in use.
  http.set_socket_options([&listen_fd](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  std::unique_ptr<StateStore> store;
  HYMBA_CHECK(o.state_store_key.empty() || !o.state_store.empty(), "--state-store-key needs --state-store");
  if (!o.state_store.empty())
    store = connect_state_store(o.state_store, o.state_store_ttl, size_t(o.state_store_max_mib) << 20,
                                o.state_store_key.empty() ? std::string() : read_state_store_key(o.state_store_key));
  Server srv(o, *eng, *tok, *pool, store.get());
  srv.routes(http);
  int port = o.port;
  errno = 0;
  if (port == 0) port = http.bind_to_any_port(o.host);
  else if (!http.bind_to_port(o.host, port)) port = -1;
  if (port <= 0) {
    const std::string why = errno == EADDRINUSE ? "the address is already in use (another server?)" : std::strerror(errno);
    throw Error("cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " + why);
  }
  // httplib listens with a backlog of 5; a larger one keeps bursts of clients from being refused.
  if (listen_fd >= 0) ::listen(listen_fd, o.backlog);

  std::atomic<bool> stopped{false};
  bool clean = true;
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (stopped) return;  // woken by run() itself
    std::fprintf(stderr, "hymba server: %s: finishing running requests (at most %d s)\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM", o.shutdown_timeout);
    // A second signal ends the wait at once.
    auto hurry = [&] {
      timespec zero{0, 0};
      return sigtimedwait(&sigs, nullptr, &zero) > 0;
    };
    clean = srv.drain(std::chrono::seconds(o.shutdown_timeout), hurry);
    while (!stopped) {  // stop() does nothing until listening has begun
      http.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::fprintf(stderr, "hymba server: listening on http://%s:%d (model %s, %d parallel sequences, context %lld)\n",
               o.host.c_str(), port, dir.c_str(), o.parallel, static_cast<long long>(srv.ctx()));
  std::fflush(stderr);
  http.listen_after_bind();
  stopped = true;
  pthread_kill(signals.native_handle(), SIGTERM);  // if listening ended by itself
  signals.join();
  // Connections still open (a slow reader, an idle keep-alive) get a few seconds, then are left.
  const size_t left = pool->shutdown(std::chrono::seconds(std::min(o.timeout, 5)));
  std::fprintf(stderr, "hymba server: stopped%s%s\n", clean ? "" : " (running requests were ended)",
               left ? " with connections still open" : "");
  std::fflush(stderr);
  if (left) std::_Exit(0);  // their threads still use the server: do not destroy it under them
  delete pool;
}

Register reg("server", "OpenAI-compatible HTTP server with continuous batching", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.remove_option(sub.get_option("--lora"));  // the server's takes several
  sub.add_option("--lora", o->loras,
                 "PEFT LoRA/DoRA adapter, repeatable. NAME=DIR[:scale]: requests whose \"model\" is NAME use it "
                 "(listed in /v1/models; the base weights are shared); DIR[:scale] without a name: used by the "
                 "other requests (at most one)");
  sub.add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
  sub.add_option("--port", o->port, "port (default 8080; 0 = any free port, printed on stderr); a port in use is an error");
  sub.add_option("--parallel,--np", o->parallel, "sequences decoded together (default 4)");
  sub.add_option("-c,--ctx-size", o->ctx_size,
                 "tokens per sequence, prompt + completion (default: the model's trained context, "
                 "max_position_embeddings); longer requests get HTTP 400");
  sub.add_option("--cache-prompts", o->cache_prompts,
                 "sequence states kept for reuse by prompts that start with the same tokens (default 32, 0 = off)");
  sub.add_option("--cache-ram", o->cache_ram_mib, "bytes of kept states at most, in MiB (default 1024)");
  sub.add_option("--cache-block", o->cache_block,
                 "also keep a state every this many prompt tokens, so prompts sharing only a prefix reuse it "
                 "(default 256, 0 = only at chat-message boundaries and prompt ends)");
  sub.add_option("-a,--alias", o->alias, "model name in responses (default: the folder name)");
  sub.add_option("--api-key", o->api_key,
                 "require 'Authorization: Bearer KEY' on every endpoint but /health (comma-separated keys)");
  sub.add_option("--threads-http", o->threads_http,
                 "connection threads at most, started on demand (default 256; each open connection holds one)");
  sub.add_option("--backlog", o->backlog, "listen queue of not yet accepted connections (default 512)");
  sub.add_option("--timeout", o->timeout, "seconds a read or write on a connection may stall (default 30)");
  sub.add_option("--keep-alive", o->keep_alive, "seconds an idle keep-alive connection stays open (default 5)");
  sub.add_option("--keep-alive-max", o->keep_alive_max, "requests per keep-alive connection (default 100)");
  sub.add_option("--max-body", o->max_body, "request body bytes at most; larger gets HTTP 413 (default 16 MiB)");
  sub.add_option("--max-queue", o->max_queue,
                 "requests waiting for a slot at most; more get HTTP 503 with Retry-After (default 256)");
  sub.add_option("--request-timeout", o->request_timeout,
                 "seconds a completion may take, queueing included; then HTTP 504 (default 600, 0 = none)");
  sub.add_option("--shutdown-timeout", o->shutdown_timeout,
                 "on SIGTERM/SIGINT, seconds running requests get to finish before they are ended (default 10)");
  sub.add_option("--state-store", o->state_store,
                 "redis://HOST:PORT: kept states are also written there (with a TTL) and looked up there, so "
                 "replicas behind a load balancer continue each other's prompts");
  sub.add_option("--state-store-ttl", o->state_store_ttl, "seconds a state stays in --state-store (default 3600)");
  sub.add_option("--state-store-max-mb", o->state_store_max_mib, "larger states are not stored, MiB (default 256)");
  sub.add_option("--state-store-key", o->state_store_key,
                 "file holding a secret shared by the replicas (>= 16 bytes, e.g. `openssl rand -hex 32`): entries carry "
                 "an HMAC-SHA256 with it and one that does not verify is not restored; without it the server trusts "
                 "its Redis (docs/SERVING.md)")
      ->envname("HYMBA_STATE_STORE_KEY_FILE");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
