#include "train/dist.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "base/error.h"

#ifdef HYMBA_HAVE_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only (no deprecated C++ bindings to link)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace hymba {

#ifdef HYMBA_HAVE_MPI
namespace {

// Started by mpirun (Open MPI, or a PMI/PMIx launcher)? A plain run must not start MPI's
// singleton machinery.
bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

constexpr size_t kChunk = size_t(1) << 30;  // MPI counts are int

template <class T>
void sum(T* data, size_t n, MPI_Datatype type) {
  if (dist().size == 1) return;
  for (size_t off = 0; off < n; off += kChunk) {
    const int c = int(std::min(kChunk, n - off));
    HYMBA_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, c, type, MPI_SUM, MPI_COMM_WORLD) == MPI_SUCCESS,
                "MPI_Allreduce failed");
  }
}

}  // namespace

bool dist_available() { return true; }

const DistInfo& dist() {
  static const DistInfo d = [] {
    DistInfo r;
    if (!launched_by_mpirun()) return r;
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      HYMBA_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS, "MPI_Init failed");
      std::atexit([] {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
      });
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &r.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &r.size);
    return r;
  }();
  return d;
}

void dist_sum(float* data, size_t n) { sum(data, n, MPI_FLOAT); }
void dist_sum(double* data, size_t n) { sum(data, n, MPI_DOUBLE); }

void dist_broadcast(float* data, size_t n) {
  if (dist().size == 1) return;
  for (size_t off = 0; off < n; off += kChunk)
    HYMBA_CHECK(MPI_Bcast(data + off, int(std::min(kChunk, n - off)), MPI_FLOAT, 0, MPI_COMM_WORLD) == MPI_SUCCESS,
                "MPI_Bcast failed");
}

void dist_barrier() {
  if (dist().size > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void dist_abort(int code) {
  if (dist().size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

#else

bool dist_available() { return false; }
const DistInfo& dist() {
  static const DistInfo d;
  // K copies of a single-process run would write the same folder: refuse.
  const char* k = std::getenv("OMPI_COMM_WORLD_SIZE");
  HYMBA_CHECK(!k || std::atoi(k) <= 1, "started by mpirun, but this hymba was built without MPI "
                                        "(install libopenmpi-dev and rebuild)");
  return d;
}
void dist_sum(float*, size_t) {}
void dist_sum(double*, size_t) {}
void dist_broadcast(float*, size_t) {}
void dist_barrier() {}
void dist_abort(int) {}

#endif

std::pair<int64_t, int64_t> dist_share(int64_t n) {
  const DistInfo& d = dist();
  return {n * d.rank / d.size, n * (d.rank + 1) / d.size};
}

double dist_reduce_step(float* grad, size_t n, std::span<double> scalars, std::atomic<bool>& stop) {
  if (dist().size == 1) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  dist_sum(grad, n);
  std::vector<double> s(scalars.begin(), scalars.end());
  s.push_back(stop.load() ? 1.0 : 0.0);  // the flag travels with the scalars: one more collective saved
  dist_sum(s.data(), s.size());
  std::copy(s.begin(), s.end() - 1, scalars.begin());
  if (s.back() > 0) stop = true;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void dist_run(const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    if (dist().size > 1) {  // under mpirun: stop the other ranks too, not only this one
      std::fprintf(stderr, "hymba: error (MPI rank %d): %s\n", dist().rank, e.what());
      std::fflush(stderr);
      dist_abort(1);
    }
    throw;
  }
}

}  // namespace hymba
