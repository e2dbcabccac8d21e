// hymba: run, train and serve Hymba models on the CPU. Subcommands live in apps/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <exception>

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>

#include "base/error.h"
#include "command.h"

namespace hymba::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace hymba::cli

int main(int argc, char** argv) {
  // OpenMP threads that spin while waiting (libgomp's default) stall a 2-core machine that also
  // runs anything else: every one of the ~200 parallel regions of a decode step waits for a
  // thread the kernel has descheduled (measured: 0.8-3 vs 6-12 tok/s for the 1.5B q4_0 decode
  // while two compilers ran). libgomp reads the policy only at start-up, so set it and start
  // again; an OMP_WAIT_POLICY the user set is kept (OMP_WAIT_POLICY=active restores spinning).
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // on failure: carry on with the default policy
  }
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
