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

// OpenBLAS's kernel set at run time (openblas_get_corename(): "Haswell", "SkylakeX", ...).
const char* blas_core();

// The OPENBLAS_CORETYPE this process should run with, or nullptr to keep what OpenBLAS chose.
// OpenBLAS (DYNAMIC_ARCH) falls back to its SSE3 "Prescott" kernels on a CPU model its table
// does not list, even one with AVX-512 (0.3.21 on Emerald Rapids, model 207: sgemm 22-32 instead
// of ~150 GFLOP/s on one core). Then: "SkylakeX" where Highway finds AVX-512 (F/VL/DQ/BW),
// "Haswell" where it finds AVX2 + FMA. A user's OPENBLAS_CORETYPE always wins. OpenBLAS picks
// its kernels before main, so applying this needs a fresh start (apps/main.cpp re-executes).
const char* blas_core_override();

// How idle OpenMP threads wait, as libgomp was told at start-up: "OMP_WAIT_POLICY=..." and/or
// "GOMP_SPINCOUNT=...", or "libgomp default" (apps/main.cpp sets the CLI's).
std::string openmp_waiting();

// Applies the default once if set_num_threads was never called (cheap after the first call).
void ensure_threads_initialized();

}  // namespace hymba
