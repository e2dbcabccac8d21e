// hymba chat: interactive multi-turn chat in the Instruct format (spec §5). Earlier turns are
// never reprocessed: each turn feeds only its own tokens to the sequence.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <memory>

#include "base/error.h"
#include "command.h"
#include "common.h"
#include "runtime/chat_template.h"
#include "runtime/chat_tokens.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"

namespace hymba::cli {

void add_sampling_options(CLI::App& sub, GenerateParams& g, int64_t& seed);
void finish_sampling_options(GenerateParams& g, int64_t seed);
std::string speed_line(const GenerateResult& r);  // in cmd_generate.cpp

namespace {

struct Opts : ModelFlags {
  std::string system = "You are a helpful assistant.";
  GenerateParams gen;
  int64_t seed = -1;
};

// Ctrl-C as in llama.cpp's interactive mode: while a reply is being generated it stops the reply
// (the conversation goes on); at the prompt, or pressed twice, it exits.
std::atomic<bool> g_generating{false}, g_stop_reply{false};

void on_sigint(int) {
  if (g_generating.load() && !g_stop_reply.load()) {
    g_stop_reply.store(true);
    return;
  }
  const char nl = '\n';
  (void)!::write(STDOUT_FILENO, &nl, 1);
  ::_exit(130);
}

void run(Opts& o) {
  apply_threads(o.threads);
  finish_sampling_options(o.gen, o.seed);
  const std::string dir = o.dir();
  auto tok = Tokenizer::load(dir);
  const EngineOptions eo = o.engine_options();
  auto eng = Engine::load(dir, eo);
  auto stops = chat_stop_strings();
  o.gen.stop.insert(o.gen.stop.end(), stops.begin(), stops.end());

  auto seq = eng->new_sequence();
  std::vector<ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  std::string rendered;  // the conversation fed so far
  std::vector<int32_t> tok_hist;
  std::fprintf(stderr, "hymba chat: type a message, /reset to start over, /exit or Ctrl-D to quit; "
                       "Ctrl-C stops a reply\n");
  std::signal(SIGINT, on_sigint);
  std::string line;
  while (true) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit") break;
    if (line == "/reset") {
      seq = eng->new_sequence(), rendered.clear(), tok_hist.clear();
      history.resize(o.system.empty() ? 0 : 1);
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line});
    const std::string full = render_chat(history, /*add_generation_prompt=*/true);
    HYMBA_CHECK(full.compare(0, rendered.size(), rendered) == 0, "chat template is not incremental");
    const std::string delta = full.substr(rendered.size());
    auto ids = rendered.empty() ? tok->encode(delta, false) : encode_after_newline(*tok, delta);
    // The reply is re-fed from this snapshot as the template renders it (stripped + "\n"), so
    // the sequence matches what a full re-render of the conversation would contain.
    SequenceState snapshot = seq;
    g_stop_reply.store(false);
    g_generating.store(true);
    auto r = generate(*eng, seq, *tok, ids, o.gen, [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
    }, &tok_hist, &g_stop_reply);
    g_generating.store(false);
    std::fputs("\n", stdout);
    std::fprintf(stderr, "[%s]\n", speed_line(r).c_str());
    seq = std::move(snapshot);
    std::vector<int32_t> turn = ids;
    history.push_back({"assistant", r.text});
    const std::string after = render_chat(history, false);
    const std::string reply = after.substr(full.size());
    auto reply_ids = encode_after_newline(*tok, reply);  // the reply follows "Assistant\n"
    turn.insert(turn.end(), reply_ids.begin(), reply_ids.end());
    eng->eval_one(seq, turn);
    rendered = after;
  }
}

Register reg("chat", "Interactive chat in the Hymba Instruct format", [](CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  add_model_flags(sub, *o);
  sub.add_option("--system", o->system, "system prompt (default: 'You are a helpful assistant.')");
  add_sampling_options(sub, o->gen, o->seed);
  sub.callback([o] { run(*o); });
});

}  // namespace
}  // namespace hymba::cli
