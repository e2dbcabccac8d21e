// Data-parallel training over MPI (`mpirun -np K hymba train ...`): the ranks of one run, and the
// few collectives the trainer needs. Built with Open MPI when CMake finds it (HYMBA_MPI); without
// it, or when the process was not started by mpirun, there is one rank and every call is a no-op.
// Only the main thread calls these (MPI_THREAD_FUNNELED; OpenMP runs inside the ops).
#pragma once
#include <cstddef>

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

}  // namespace hymba
