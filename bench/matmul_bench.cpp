// Micro-benchmarks of matmul_forward against the machine's measured limits.
//   hymba_microbench [--threads=N] [google-benchmark flags]
// GEMV cases rotate over enough weight copies (>= 256 MiB) that every call reads from DRAM, as
// a decode step over all layers does; the *_L3 variants reuse one copy (cache-resident if small).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "io/safetensors.h"
#include "ops/matmul.h"
#include "ops/peak.h"
#include "ops/quant.h"
#include "ops/threads.h"

namespace {
using namespace hymba;

struct Mats {
  std::vector<std::vector<uint8_t>> copies;
  int64_t N, K;
};

// Copies of an [N, K] matrix in dtype dt, enough of them to exceed the last-level cache.
Mats make_mats(int64_t N, int64_t K, bool rotate, DType dt = DType::BF16) {
  Mats m{{}, N, K};
  const size_t bytes = size_t(N * K) * dtype_size(dt);
  const size_t count = rotate ? std::max<size_t>(2, (size_t(256) << 20) / bytes + 1) : 1;
  std::vector<float> f(size_t(N * K));
  for (size_t c = 0; c < count; ++c) {
    for (size_t i = 0; i < f.size(); ++i) f[i] = float((i * 7 + c) % 17) * 0.01f - 0.08f;
    std::vector<uint8_t> w(bytes);
    from_f32(w.data(), dt, f.data(), f.size());
    m.copies.push_back(std::move(w));
  }
  return m;
}

void run_forward(benchmark::State& st, int64_t N, int64_t K, int64_t M, MatmulPath path,
                 bool rotate, DType dt = DType::BF16) {
  static std::string key;
  static Mats mats;
  const std::string k = std::to_string(N) + "x" + std::to_string(K) + (rotate ? "r" : "") +
                        dtype_name(dt);
  if (key != k) mats = make_mats(N, K, rotate, dt), key = k;
  std::vector<float> in(size_t(M * K), 0.01f), out(size_t(M * N));
  size_t c = 0;
  for (auto _ : st) {
    const MatView W{mats.copies[c].data(), dt, N, K};
    matmul_forward_path(path, out.data(), in.data(), W, nullptr, M);
    benchmark::DoNotOptimize(out.data());
    c = (c + 1) % mats.copies.size();
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * N * K * int64_t(dtype_size(dt)));
  st.counters["GFLOPs"] = benchmark::Counter(double(st.iterations()) * 2.0 * double(M * N * K) * 1e-9,
                                             benchmark::Counter::kIsRate);
}

// Weight shapes of Hymba-1.5B: MLP up/gate fused, down, mamba in/out projections, lm_head.
void BM_GemvM1(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 1, MatmulPath::Auto, true);
}
BENCHMARK(BM_GemvM1)
    ->Args({8960, 1600})->Args({1600, 3200})->Args({5504, 1600})->Args({1600, 5504})
    ->Args({32001, 1600})->UseRealTime()->Unit(benchmark::kMicrosecond);

// The same shapes with quantized weights from DRAM, as a decode reads them: Q8 (int8 + an F32
// scale per 32, `--quantize q8`) and Q4_0 (18-byte blocks of 32).
void run_gemv_m1_quant(benchmark::State& st, DType dt) {
  const int64_t N = st.range(0), K = st.range(1);
  const bool q8 = dt == DType::Q8;
  const size_t code_bytes = q8 ? size_t(N * K) : size_t(N * K / kQ4Block) * sizeof(BlockQ4_0);
  const size_t bytes = code_bytes + (q8 ? size_t(N * K / kQ8Block) * sizeof(float) : 0);
  const size_t count = std::max<size_t>(2, (size_t(256) << 20) / bytes + 1);
  std::vector<std::vector<uint8_t>> q(count, std::vector<uint8_t>(code_bytes));
  std::vector<std::vector<float>> sc(count, std::vector<float>(q8 ? size_t(N * K / kQ8Block) : 0));
  std::vector<float> f(size_t(N * K));
  for (size_t c = 0; c < count; ++c) {
    for (size_t i = 0; i < f.size(); ++i) f[i] = float((i * 7 + c) % 17) * 0.01f - 0.08f;
    if (q8) quantize_q8(reinterpret_cast<int8_t*>(q[c].data()), sc[c].data(), f.data(), N * K);
    else quantize_q4_0(reinterpret_cast<BlockQ4_0*>(q[c].data()), f.data(), N * K);
  }
  std::vector<float> in(static_cast<size_t>(K), 0.01f), out(static_cast<size_t>(N));
  size_t c = 0;
  for (auto _ : st) {
    const MatView W{q[c].data(), dt, N, K, q8 ? sc[c].data() : nullptr};
    matmul_forward(out.data(), in.data(), W, nullptr, 1);
    benchmark::DoNotOptimize(out.data());
    c = (c + 1) % count;
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
}
void BM_GemvM1Q8(benchmark::State& st) { run_gemv_m1_quant(st, DType::Q8); }
void BM_GemvM1Q4(benchmark::State& st) { run_gemv_m1_quant(st, DType::Q4_0); }
BENCHMARK(BM_GemvM1Q8)
    ->Args({8960, 1600})->Args({1600, 3200})->Args({5504, 1600})->Args({1600, 5504})
    ->Args({32001, 1600})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvM1Q4)
    ->Args({8960, 1600})->Args({1600, 3200})->Args({5504, 1600})->Args({1600, 5504})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// Q4_0 GEMV of the decode shapes in the plain layout and the x8 one the loader gives it on AVX2
// (rows interleaved by 8, src/ops/quant.h), both from 2 MiB huge pages as loaded weights are.
// Args: N, K, x8 (0 or 1).
void BM_GemvQ4Layout(benchmark::State& st) {
  const int64_t N = st.range(0), K = st.range(1);
  const bool x8 = st.range(2) != 0;
  const size_t bytes = quant_matrix_bytes(DType::Q4_0, N, K);
  const size_t count = std::max<size_t>(2, (size_t(256) << 20) / bytes + 1);
  HugeBuffer all(count * bytes);
  std::vector<float> f(size_t(N * K));
  for (size_t i = 0; i < f.size(); ++i) f[i] = float((i * 7) % 17) * 0.01f - 0.08f;
  std::vector<BlockQ4_0> plain(size_t(N * K / kQ4Block));
  quantize_q4_0(plain.data(), f.data(), N * K);  // every copy the same bytes (only the reads matter)
  for (size_t c = 0; c < count; ++c) {
    if (x8) repack_q4_0x8(all.data() + c * bytes, plain.data(), N, K);
    else std::memcpy(all.data() + c * bytes, plain.data(), bytes);
  }
  std::vector<float> in(static_cast<size_t>(K)), out(static_cast<size_t>(N));
  for (int64_t k = 0; k < K; ++k) in[size_t(k)] = float((k * 5) % 11) * 0.01f - 0.05f;
  size_t c = 0;
  for (auto _ : st) {
    MatView W{all.data() + c * bytes, DType::Q4_0, N, K};
    W.x8 = x8;
    matmul_forward(out.data(), in.data(), W, nullptr, 1);
    benchmark::DoNotOptimize(out.data());
    c = (c + 1) % count;
  }
  st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(bytes));
}
BENCHMARK(BM_GemvQ4Layout)
    ->ArgsProduct({{8960}, {1600}, {0, 1}})->ArgsProduct({{1600}, {5504}, {0, 1}})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_GemvM1_L3(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 1, MatmulPath::Auto, false);
}
BENCHMARK(BM_GemvM1_L3)->Args({8960, 1600})->UseRealTime()->Unit(benchmark::kMicrosecond);

// Crossover GEMV vs widen+sgemm: [8960, 1600] bf16, M = arg.
void BM_Gemv(benchmark::State& st) {
  run_forward(st, 8960, 1600, st.range(0), MatmulPath::Gemv, true);
}
void BM_Blas(benchmark::State& st) {
  run_forward(st, 8960, 1600, st.range(0), MatmulPath::Blas, true);
}
BENCHMARK(BM_Gemv)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(128)->Arg(512)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Blas)->Arg(1)->Arg(4)->Arg(16)->Arg(32)->Arg(48)->Arg(64)->Arg(96)->Arg(128)->Arg(512)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
void BM_GemvF32(benchmark::State& st) {
  run_forward(st, 8960, 1600, st.range(0), MatmulPath::Gemv, true, DType::F32);
}
void BM_BlasF32(benchmark::State& st) {
  run_forward(st, 8960, 1600, st.range(0), MatmulPath::Blas, true, DType::F32);
}
BENCHMARK(BM_GemvF32)->Arg(1)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BlasF32)->Arg(1)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// Q4_0 / Q4_K / Q8 weights [8960, 1600], M = arg: GEMV (int8 dot products per block) against the int8
// GEMM (the Blas path for quantized weights), for the crossover in matmul_gemv_max_m.
void run_quant(benchmark::State& st, DType dt, MatmulPath path) {
  const int64_t N = 8960, K = 1600, M = st.range(0);
  static std::vector<uint8_t> q4(size_t(N * K / kQ4Block) * sizeof(BlockQ4_0));
  static std::vector<int8_t> q8(size_t(N * K));
  static std::vector<float> sc(size_t(N * K / kQ8Block));
  static std::vector<uint8_t> q4k(size_t(N) * q4_k_row_bytes(K));
  static bool init = false;
  if (!init) {
    std::vector<float> f(size_t(N * K));
    for (size_t i = 0; i < f.size(); ++i) f[i] = float((i * 7) % 17) * 0.01f - 0.08f;
    quantize_q4_0(reinterpret_cast<BlockQ4_0*>(q4.data()), f.data(), N * K);
    quantize_q8(q8.data(), sc.data(), f.data(), N * K);
    for (int64_t r = 0; r < N; ++r) quantize_q4_k(q4k.data() + size_t(r) * q4_k_row_bytes(K), f.data() + r * K, K);
    init = true;
  }
  std::vector<float> in(size_t(M * K)), out(size_t(M * N));
  for (size_t i = 0; i < in.size(); ++i) in[i] = float((i * 13) % 29) * 0.01f - 0.14f;
  const MatView W = dt == DType::Q4_0   ? MatView{q4.data(), dt, N, K}
                    : dt == DType::Q4_K ? MatView{q4k.data(), dt, N, K}
                                        : MatView{q8.data(), dt, N, K, sc.data()};
  for (auto _ : st) {
    matmul_forward_path(path, out.data(), in.data(), W, nullptr, M);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["GFLOPs"] = benchmark::Counter(double(st.iterations()) * 2.0 * double(M * N * K) * 1e-9,
                                             benchmark::Counter::kIsRate);
}
void BM_GemvQ4(benchmark::State& st) { run_quant(st, DType::Q4_0, MatmulPath::Gemv); }
void BM_GemmQ4(benchmark::State& st) { run_quant(st, DType::Q4_0, MatmulPath::Blas); }
void BM_GemvQ8(benchmark::State& st) { run_quant(st, DType::Q8, MatmulPath::Gemv); }
void BM_GemmQ8(benchmark::State& st) { run_quant(st, DType::Q8, MatmulPath::Blas); }
void BM_GemvQ4K(benchmark::State& st) { run_quant(st, DType::Q4_K, MatmulPath::Gemv); }
void BM_GemmQ4K(benchmark::State& st) { run_quant(st, DType::Q4_K, MatmulPath::Blas); }
BENCHMARK(BM_GemvQ4)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(128)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmQ4)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(128)->Arg(512)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvQ4K)->Arg(1)->Arg(2)->Arg(8)->Arg(16)->Arg(32)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmQ4K)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(512)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemvQ8)->Arg(1)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmQ8)->Arg(1)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(64)->Arg(512)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Prefill M = 512 with bf16 weights at the Hymba-1.5B shapes [N, K]: the default bf16 GEMM, its
// two packed kernels forced (vdpbf16ps where the CPU has AVX512-BF16; F32 FMAs on AVX-512), and
// widen + OpenBLAS sgemm (the AVX2 path).
void BM_Prefill512BF16(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 512, MatmulPath::Blas, false);
}
void BM_Prefill512BF16Dot(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 512, MatmulPath::Bf16Dot, false);
}
void BM_Prefill512BF16F32(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 512, MatmulPath::Bf16F32, false);
}
void BM_Prefill512Sgemm(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 512, MatmulPath::Sgemm, false);
}
#define HYMBA_PREFILL_SHAPES \
  ->Args({8960, 1600})->Args({1600, 3200})->Args({5504, 1600})->Args({1600, 5504})->Args({32001, 1600}) \
  ->UseRealTime()->Unit(benchmark::kMillisecond)
BENCHMARK(BM_Prefill512BF16) HYMBA_PREFILL_SHAPES;
BENCHMARK(BM_Prefill512BF16Dot) HYMBA_PREFILL_SHAPES;
BENCHMARK(BM_Prefill512BF16F32) HYMBA_PREFILL_SHAPES;
BENCHMARK(BM_Prefill512Sgemm) HYMBA_PREFILL_SHAPES;
// The GEMV/GEMM crossover for bf16: [8960, 1600], M = arg (GEMV: BM_Gemv above).
void BM_GemmBF16(benchmark::State& st) {
  run_forward(st, 8960, 1600, st.range(0), MatmulPath::Blas, true);
}
BENCHMARK(BM_GemmBF16)->Arg(4)->Arg(8)->Arg(16)->Arg(32)->Arg(48)->Arg(64)->Arg(128)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// Prefill M = 512 with bf16 weights (Auto), F32 weights for comparison.
void BM_Prefill512(benchmark::State& st) {
  run_forward(st, st.range(0), st.range(1), 512, MatmulPath::Auto, false);
}
BENCHMARK(BM_Prefill512)->Args({8960, 1600})->Args({1600, 5504})->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Prefill512F32(benchmark::State& st) {
  const int64_t N = 8960, K = 1600, M = 512;
  std::vector<float> w(size_t(N * K), 0.01f), in(size_t(M * K), 0.01f), out(size_t(M * N));
  const MatView W{w.data(), DType::F32, N, K};
  for (auto _ : st) {
    matmul_forward(out.data(), in.data(), W, nullptr, M);
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["GFLOPs"] = benchmark::Counter(double(st.iterations()) * 2.0 * double(M * N * K) * 1e-9,
                                             benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prefill512F32)->UseRealTime()->Unit(benchmark::kMillisecond);

// OpenMP regions (GEMV) right after BLAS calls and vice versa, as a layer does: this is where a
// pthread OpenBLAS pool and the OpenMP pool can spin against each other.
void BM_MixedOmpBlas(benchmark::State& st) {
  const int64_t K = 1600, N = 5504, M = 64;
  static Mats mats = make_mats(N, K, false);  // bf16
  std::vector<float> wf(size_t(K * K), 0.01f), in(size_t(M * K), 0.01f), out(size_t(M * K));
  std::vector<float> o1(static_cast<size_t>(N));
  const MatView Wb{mats.copies[0].data(), DType::BF16, N, K}, Wf{wf.data(), DType::F32, K, K};
  for (auto _ : st) {
    for (int i = 0; i < 4; ++i) matmul_forward(o1.data(), in.data(), Wb, nullptr, 1);
    matmul_forward(out.data(), in.data(), Wf, nullptr, M);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_MixedOmpBlas)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      set_num_threads(std::atoi(argv[i] + 10));
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      break;
    }
  benchmark::Initialize(&argc, argv);
  std::printf("threads %d, OpenBLAS %s, %s kernels\n", num_threads(), blas_threading(), blas_core());
  if (const char* core = blas_core_override())  // the CLI re-executes itself with it; this does not
    std::printf("OpenBLAS fell back to its SSE3 kernels: run with OPENBLAS_CORETYPE=%s\n", core);
  std::printf("peak: sgemm 1024^3 %.1f GFLOP/s, DRAM read %.1f GB/s\n", measure_sgemm_gflops(500),
              measure_read_bandwidth_gbs(500));
  std::fflush(stdout);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
