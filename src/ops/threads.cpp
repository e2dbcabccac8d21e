#include "ops/threads.h"

#include <omp.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include <hwy/targets.h>

// Declared here rather than through cblas.h so that the code does not depend on which
// OpenBLAS variant's header directory is on the include path.
extern "C" {
void openblas_set_num_threads(int num_threads);
int openblas_get_parallel(void);
char* openblas_get_corename(void);
}

namespace hymba {
namespace {

std::atomic<int> g_threads{0};  // 0 = not yet initialized

int physical_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return omp_get_num_procs();
  std::set<std::string> cores;
  int cpus = 0;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    ++cpus;
    // Sibling list identifies the physical core; SMT siblings share it.
    std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(c) +
                    "/topology/thread_siblings_list");
    std::string s;
    if (f >> s) cores.insert(s);
    else cores.insert("cpu" + std::to_string(c));
  }
  const int n = cores.empty() ? cpus : int(cores.size());
  return n > 0 ? n : 1;
}

}  // namespace

int default_num_threads() {
  if (const char* e = std::getenv("OMP_NUM_THREADS"); e && std::atoi(e) > 0) return std::atoi(e);
  return physical_cores();
}

void set_num_threads(int n) {
  if (n <= 0) n = default_num_threads();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  g_threads.store(n, std::memory_order_release);
}

void ensure_threads_initialized() {
  if (g_threads.load(std::memory_order_acquire) == 0) set_num_threads(0);
}

int num_threads() {
  ensure_threads_initialized();
  return g_threads.load(std::memory_order_acquire);
}

std::string openmp_waiting() {
  std::string w;
  for (const char* v : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"})
    if (const char* e = std::getenv(v)) {
      if (!w.empty()) w += ' ';
      w.append(v).append("=").append(e);
    }
  return w.empty() ? "libgomp default" : w;
}

const char* blas_threading() {
  switch (openblas_get_parallel()) {
    case 0: return "sequential";
    case 1: return "pthread";
    case 2: return "openmp";
  }
  return "unknown";
}

const char* blas_core() { return openblas_get_corename(); }

const char* blas_core_override() {
  if (std::getenv("OPENBLAS_CORETYPE")) return nullptr;
  const char* core = openblas_get_corename();
  if (!core || std::string(core) != "Prescott") return nullptr;
  const int64_t t = hwy::SupportedTargets();
  if (t & HWY_AVX3) return "SkylakeX";
  if (t & HWY_AVX2) return "Haswell";
  return nullptr;
}

}  // namespace hymba
