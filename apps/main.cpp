// hymba: run, train and serve Hymba models on the CPU. Subcommands live in apps/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <exception>

#include <malloc.h>

#include "base/error.h"
#include "command.h"

namespace hymba::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace hymba::cli

int main(int argc, char** argv) {
  // Every forward/backward allocates its activations afresh; by default glibc hands large blocks
  // back to the kernel on free, and the next step page-faults them in again (1.6x slower
  // training, `hymba bench --train`). Keep freed memory in the process instead.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  CLI::App app{"hymba: Hymba hybrid-head language models on the CPU (inference, training, serving)"};
  app.require_subcommand(1);
  auto& cmds = hymba::cli::registry();
  std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (auto& c : cmds) c.setup(*app.add_subcommand(c.name, c.help));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const hymba::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "hymba: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "hymba: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
