// hymba server: an OpenAI-compatible HTTP server (llama-server style) over the continuous-batching
// scheduler (src/runtime/scheduler.h). Endpoints: GET /health, GET /v1/models,
// POST /v1/completions (prompt text or token ids; stream, echo, logprobs), POST
// /v1/chat/completions (the Hymba chat template; stream), POST /tokenize, POST /detokenize.
// A bad request gets HTTP 400 with {"error": {...}}; the server keeps serving.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"
#include "server_request.h"

namespace hymba::cli {
namespace {

using nlohmann::json;

struct Opts : ModelFlags {
  std::string host = "127.0.0.1", alias;
  int port = 8080, parallel = 4, cache_prompts = 8;
};

httplib::Server* g_server = nullptr;

json error_json(const std::string& msg, const std::string& type) {
  return {{"error", {{"message", msg}, {"type", type}}}};
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

std::string finish_reason(const std::string& stop) { return stop == "length" ? "length" : "stop"; }

class Server {
 public:
  Server(const Opts& o, Engine& eng, const Tokenizer& tok)
      : o_(o), eng_(eng), tok_(tok), sched_(eng, tok, o.parallel, o.cache_prompts) {
    name_ = o.alias.empty() ? std::filesystem::path(eng.dir()).filename().string() : o.alias;
    if (name_.empty()) name_ = "hymba";
  }

  void routes(httplib::Server& s) {
    s.Get("/health", [](const httplib::Request&, httplib::Response& res) { reply(res, 200, {{"status", "ok"}}); });
    s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      reply(res, 200, {{"object", "list"},
                       {"data", json::array({{{"id", name_}, {"object", "model"}, {"owned_by", "hymba.cpp"}}})}});
    });
    s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, false); });
    s.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { guarded(q, r, true); });
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

 private:
  template <class F>
  void safe(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const BadRequest& e) {
      reply(res, 400, error_json(e.what(), "invalid_request_error"));
    } catch (const Error& e) {  // validation by the library (sampling parameters, ids, ...)
      reply(res, 400, error_json(e.what(), "invalid_request_error"));
    } catch (const std::exception& e) {
      reply(res, 500, error_json(e.what(), "server_error"));
    }
  }

  void guarded(const httplib::Request& q, httplib::Response& res, bool chat) {
    safe(res, [&] { complete(q, res, chat); });
  }

  json logprobs_json(const std::vector<TokenEvent>& evs, size_t offset0) const {
    json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
    size_t off = offset0;
    for (const auto& e : evs) {
      const std::string t = token_text(tok_, e.token);
      tokens.push_back(t);
      lps.push_back(std::isnan(e.logprob) ? json() : json(e.logprob));
      json top = json::object();
      for (auto& [id, lp] : e.top) top[token_text(tok_, id)] = lp;
      tops.push_back(e.top.empty() && std::isnan(e.logprob) ? json() : top);
      offs.push_back(off);
      off += t.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
  }

  json chunk_json(const std::string& id, bool chat, const json& choice) const {
    return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
            {"created", std::time(nullptr)}, {"model", name_}, {"choices", json::array({choice})}};
  }

  void complete(const httplib::Request& q, httplib::Response& res, bool chat) {
    const ParsedCompletion p = parse_completion(parse_body(q.body), chat, tok_);
    auto job = sched_.submit(p.req);
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++counter_);
    if (p.stream) {
      auto sent_echo = std::make_shared<bool>(false);
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, job, id, chat, p, sent_echo](size_t, httplib::DataSink& sink) {
            auto send = [&](const json& j) {
              const std::string s = "data: " + j.dump() + "\n\n";
              return sink.write(s.data(), s.size());
            };
            if (!*sent_echo) {
              *sent_echo = true;
              if (chat && !send(chunk_json(id, chat, {{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}}))) return job->cancel(), false;
              if (!chat && p.echo && !send(chunk_json(id, chat, {{"index", 0}, {"text", p.prompt_text}, {"logprobs", nullptr}, {"finish_reason", nullptr}}))) return job->cancel(), false;
            }
            std::vector<TokenEvent> evs;
            const bool more = job->wait(&evs);
            for (const auto& e : evs) {
              if (e.piece.empty() && p.req.top_logprobs < 0) continue;
              json c = chat ? json{{"index", 0}, {"delta", {{"content", e.piece}}}, {"finish_reason", nullptr}}
                            : json{{"index", 0}, {"text", e.piece}, {"finish_reason", nullptr},
                                   {"logprobs", p.req.top_logprobs >= 0 ? logprobs_json({e}, 0) : json()}};
              if (!send(chunk_json(id, chat, c))) return job->cancel(), false;
            }
            if (more) return true;
            if (job->stop_reason == "error") {
              send(error_json(job->error, "server_error"));
            } else {
              json c = chat ? json{{"index", 0}, {"delta", json::object()}, {"finish_reason", finish_reason(job->stop_reason)}}
                            : json{{"index", 0}, {"text", ""}, {"finish_reason", finish_reason(job->stop_reason)}};
              send(chunk_json(id, chat, c));
            }
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
            return true;
          },
          [job](bool success) {
            if (!success) job->cancel();
          });
      return;
    }
    std::vector<TokenEvent> evs;
    while (job->wait(&evs)) {
    }
    if (job->stop_reason == "error") return reply(res, 500, error_json(job->error, "server_error"));
    std::string text;
    for (auto& e : evs) text += e.piece;
    const json usage = {{"prompt_tokens", job->n_prompt}, {"completion_tokens", job->n_generated},
                        {"total_tokens", job->n_prompt + job->n_generated},
                        {"prompt_tokens_details", {{"cached_tokens", job->n_cached}}}};
    json choice;
    if (chat) {
      choice = {{"index", 0}, {"message", {{"role", "assistant"}, {"content", text}}},
                {"finish_reason", finish_reason(job->stop_reason)}};
      if (p.req.top_logprobs >= 0) {
        json content = json::array();
        for (auto& e : evs) {
          json top = json::array();
          for (auto& [tid, lp] : e.top) top.push_back({{"token", token_text(tok_, tid)}, {"logprob", lp}});
          content.push_back({{"token", token_text(tok_, e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}});
        }
        choice["logprobs"] = {{"content", content}};
      }
    } else {
      json lp;
      if (p.req.top_logprobs >= 0) {
        std::vector<TokenEvent> all = p.echo ? job->prompt_events : std::vector<TokenEvent>{};
        all.insert(all.end(), evs.begin(), evs.end());
        lp = logprobs_json(all, 0);
      }
      choice = {{"index", 0}, {"text", p.echo ? p.prompt_text + text : text}, {"logprobs", lp},
                {"finish_reason", finish_reason(job->stop_reason)}};
    }
    json out = chunk_json(id, chat, choice);
    out["object"] = chat ? "chat.completion" : "text_completion";
    out["usage"] = usage;
    reply(res, 200, out);
  }

  const Opts& o_;
  Engine& eng_;
  const Tokenizer& tok_;
  Scheduler sched_;
  std::string name_;
  std::atomic<int64_t> counter_{0};
};

void run(const Opts& o) {
  apply_threads(o.threads);
  HYMBA_CHECK(o.parallel >= 1 && o.parallel <= 256, "--parallel must be in [1, 256]");
  HYMBA_CHECK(o.cache_prompts >= 0, "--cache-prompts must be >= 0");
  HYMBA_CHECK(o.port >= 0 && o.port <= 65535, "--port must be in [0, 65535]");
  const std::string dir = o.dir();
  auto tok = Tokenizer::load(dir);
  auto eng = Engine::load(dir, o.engine_options());
  httplib::Server http;
  http.set_payload_max_length(16 << 20);
  Server srv(o, *eng, *tok);
  srv.routes(http);
  int port = o.port;
  if (port == 0) port = http.bind_to_any_port(o.host);
  else if (!http.bind_to_port(o.host, port)) port = -1;
  HYMBA_CHECK(port > 0, "cannot listen on " + o.host + ":" + std::to_string(o.port));
  g_server = &http;
  std::signal(SIGINT, [](int) { if (g_server) g_server->stop(); });
  std::signal(SIGTERM, [](int) { if (g_server) g_server->stop(); });
  std::fprintf(stderr, "hymba server: listening on http://%s:%d (model %s, %d parallel sequences)\n",
               o.host.c_str(), port, dir.c_str(), o.parallel);
  std::fflush(stderr);
  http.listen_after_bind();
  g_server = nullptr;
  std::fprintf(stderr, "hymba server: stopped\n");
}

Register reg("server", "OpenAI-compatible HTTP server with continuous batching", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
  sub.add_option("--port", o->port, "port (default 8080; 0 = any free port, printed on stderr)");
  sub.add_option("--parallel,--np", o->parallel, "sequences decoded together (default 4)");
  sub.add_option("--cache-prompts", o->cache_prompts,
                 "states of recent prompts kept for reuse by prompts that start with them (default 8, 0 = off)");
  sub.add_option("-a,--alias", o->alias, "model name in responses (default: the folder name)");
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
