// Data-parallel training over MPI (`mpirun -np K hymba train|finetune|dpo ...`): the ranks of one
// run, and the few collectives the training loops need (src/train/trainer.cpp, finetune.cpp). Built with Open MPI when CMake finds it (HYMBA_MPI); without
// it, or when the process was not started by mpirun, there is one rank and every call is a no-op.
// Only the main thread calls these (MPI_THREAD_FUNNELED; OpenMP runs inside the ops).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>

namespace hymba {

struct DistInfo {
  int rank = 0, size = 1;
  bool root() const { return rank == 0; }
};

// Initialises MPI on first use when launched by mpirun (finalised at exit); else one rank.
const DistInfo& dist();
bool dist_available();  // built with MPI

// In place, element-wise sum over all ranks (any count: sent in chunks of < 2^31).
void dist_sum(float* data, size_t n);
void dist_sum(double* data, size_t n);
// Rank 0's values to every rank.
void dist_broadcast(float* data, size_t n);
void dist_barrier();
// Ends every rank (MPI_Abort): a rank that fails alone must not leave the others waiting in a
// collective. Returns (does nothing) with one rank.
void dist_abort(int code);

// The share [lo, hi) of n items (the rows of a batch, the micro-batches of a step) this rank
// computes: contiguous, sizes differing by at most one, ranks in order.
std::pair<int64_t, int64_t> dist_share(int64_t n);

// The end of a data-parallel step, once each rank has accumulated the gradient of its share
// (weighted so that the sum over ranks is the whole batch's): sums `grad` and `scalars` (loss,
// token counts, ...) over ranks, and ORs `stop` (a Ctrl-C on any rank stops all). Returns the
// seconds spent, waiting for slower ranks included. One rank: nothing, 0.
double dist_reduce_step(float* grad, size_t n, std::span<double> scalars, std::atomic<bool>& stop);

// Runs a training command's body; under mpirun an error on one rank is printed with its rank and
// ends every rank (MPI_Abort) instead of leaving the others waiting in a collective.
void dist_run(const std::function<void()>& body);

}  // namespace hymba
