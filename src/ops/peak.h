// The machine's limits, measured in the same run (with the current num_threads()), so that
// `hymba bench` can print achieved / peak ratios instead of absolute numbers alone.
#pragma once
#include <cstdint>

namespace hymba {

// OpenBLAS sgemm GFLOP/s on square n x n x n matrices (best of the repetitions that fit in
// budget_ms; one warm-up call is not counted).
double measure_sgemm_gflops(int budget_ms = 500, int n = 1024);

// Streaming read bandwidth in GB/s (1e9 bytes/s) over a buffer of buffer_mib MiB, far larger than
// the last-level cache (best pass within budget_ms, first touch not counted).
double measure_read_bandwidth_gbs(int budget_ms = 500, int buffer_mib = 512);

}  // namespace hymba
