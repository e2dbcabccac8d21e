// hymba: run, train and serve Hymba models on the CPU. Subcommands live in apps/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <exception>

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>

#include "base/error.h"
#include "command.h"
#include "ops/threads.h"

namespace hymba::cli {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace hymba::cli

namespace {
// libgomp's threads spin ~300,000 times at every barrier before they sleep, and a decode step
// has ~200 barriers. When anything else runs on the cores, a waiting thread burns the time slice
// its descheduled partner needs: q4_0 decode of the 1.5B shape fell to 1.1-1.7 tok/s at load 10,
// against 7-8 with GOMP_SPINCOUNT=1000..4000 (docs/RESULTS.md, "OpenMP waiting"). libgomp reads
// its settings once, before main, so the only way to change its default is to run again with
// them set. A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins.
constexpr const char* kSpinCount = "3000";

// OpenBLAS, too, picks its kernels before main: on a CPU model it does not know it takes its SSE3
// ones (blas_core_override, src/ops/threads.h). Both settings go into one re-execution.
void set_openmp_waiting_and_blas_core(char** argv) {
  const bool wait = !std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT");
  const char* core = hymba::blas_core_override();
  if (!wait && !core) return;
  if (wait && setenv("GOMP_SPINCOUNT", kSpinCount, 1) != 0) return;
  if (core && setenv("OPENBLAS_CORETYPE", core, 1) != 0) {
    if (wait) unsetenv("GOMP_SPINCOUNT");
    return;
  }
  execv("/proc/self/exe", argv);  // returns only on failure: then run on with the defaults,
  if (wait) unsetenv("GOMP_SPINCOUNT");  // and say so (bench prints the settings; child processes
  if (core) unsetenv("OPENBLAS_CORETYPE");  // inherit them)
}
}  // namespace

int main(int argc, char** argv) {
  set_openmp_waiting_and_blas_core(argv);
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
