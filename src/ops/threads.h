// One thread-count setting for our OpenMP regions and OpenBLAS together, so that the two never
// oversubscribe the cores and BLAS results (training) are reproducible for a given setting.
#pragma once

#include <string>

namespace hymba {

// Threads for OpenMP regions and OpenBLAS calls; n <= 0 restores the default.
// Call from outside any parallel region (the CLI does it once at start-up).
void set_num_threads(int n);

// The current setting (applies the default on first use).
int num_threads();

// Default: physical cores available to this process (SMT siblings counted once), or
// OMP_NUM_THREADS when the user set it.
int default_num_threads();

// "pthread", "openmp" or "sequential": the OpenBLAS build loaded at run time.
const char* blas_threading();

// How idle OpenMP threads wait, as libgomp was told at start-up: "OMP_WAIT_POLICY=..." and/or
// "GOMP_SPINCOUNT=...", or "libgomp default" (apps/main.cpp sets the CLI's).
std::string openmp_waiting();

// Applies the default once if set_num_threads was never called (cheap after the first call).
void ensure_threads_initialized();

}  // namespace hymba
