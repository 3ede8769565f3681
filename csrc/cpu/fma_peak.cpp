// fma_peak.cpp — the benchmark's yardstick: the multiply-add rate this CPU reaches right now, on
// torch's threads, with the vectors our kernels use (AVX-512 or AVX2), measured by a loop that
// does nothing else. Each thread runs kChains independent chains acc = acc * a + b on registers:
// an FMA has a latency of 4 cycles and two pipes issue one each per cycle (Intel and Zen 4
// alike), so 8 chains in flight keep both pipes busy; 16 (AVX-512) or 12 (AVX2) leave slack. No loads, no stores:
// the rate is the FMA units' alone — what "% of peak" in conv_ext.bench divides by (with a large
// torch.mm's rate when that is higher, e.g. bfloat16 on AMX tiles).
//
// Why not torch.mm alone: its rate depends on the BLAS torch was built with and the CPU it was
// tuned for; on the 2-core AMD EPYC (Zen 4) machine here torch.mm 2048² runs at ~138 GFLOP/s
// while this loop (and our implicit GEMM) reach ~235 and ~190, so conv layers read as 130% of
// a "peak" that was not one.
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "fma_peak.cpp"
#include "per_isa.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

namespace conv_ext {
namespace cpu {

double fma_peak_gflops(bool float64, double seconds) {
  if (!simd_available()) return 0.0;
  const bool wide = use_avx512();
  double (*loop)(int64_t) = float64 ? (wide ? avx512::fma_loop_f64 : avx2::fma_loop_f64)
                                    : (wide ? avx512::fma_loop_f32 : avx2::fma_loop_f32);
  const int64_t flops_per_iter = float64 ? (wide ? avx512::kFmaFlopsPerIterF64 : avx2::kFmaFlopsPerIterF64)
                                         : (wide ? avx512::kFmaFlopsPerIterF32 : avx2::kFmaFlopsPerIterF32);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  std::vector<double> sink(threads, 0.0);  // the loops' results, so the compiler keeps them
  using clock = std::chrono::steady_clock;
  auto trial = [&](int64_t iters) {
    const auto t0 = clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) sink[t] += loop(iters);
    });
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  // grow the trial to >= 20 ms (thread start-up and timer noise then cost < 1%), then keep the
  // best rate of the trials that fit in `seconds`
  int64_t iters = 1 << 14;
  double t = trial(iters);
  while (t < 0.02 && iters < (int64_t(1) << 40)) {
    iters *= 2;
    t = trial(iters);
  }
  double best = t, spent = t;
  for (int rep = 0; rep < 3 || spent < seconds; ++rep) {
    t = trial(iters);
    best = std::min(best, t);
    spent += t;
    if (rep > 1000) break;
  }
  volatile double keep = 0.0;
  for (double s : sink) keep = keep + s;
  (void)keep;
  return double(threads) * double(iters) * double(flops_per_iter) / best / 1e9;
}

// The round trip of a cache line between torch's first two threads: thread 0 writes a counter,
// thread 1 answers, kRounds times; nanoseconds per round trip, the median of 5 runs. It tells
// whether the two cores share an L3: on the 2-core Zen 4 VM here ~60 ns when they do and ~350 ns
// when the host has put them on different CCDs (it moves them every few seconds to minutes), where
// a kernel whose threads read what the other wrote (a buffer transformed by both, then read by
// both) runs up to 2.4x slower and torch's kernels barely change. -1 with fewer than two threads,
// or when the second thread did not answer within a second.
double thread_round_trip_ns() {
  if (at::get_num_threads() < 2 || at::in_parallel_region()) return -1.0;
  constexpr int64_t kRounds = 20000;
  using clock = std::chrono::steady_clock;
  struct alignas(64) Line {
    std::atomic<int64_t> v{0};
  };
  std::vector<double> runs;
  for (int run = 0; run < 5; ++run) {
    Line line;
    std::atomic<bool> failed{false};
    double ns = 0.0;
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t side = begin; side < end; ++side) {
        const auto deadline = clock::now() + std::chrono::milliseconds(1000);
        const auto t0 = clock::now();
        for (int64_t i = 0; i < kRounds && !failed.load(std::memory_order_relaxed); ++i) {
          const int64_t want = 2 * i + side;  // side 0 sees 2i, writes 2i+1; side 1 sees 2i+1, writes 2i+2
          bool gave_up = false;  // (the other side gave up, or the deadline passed)
          for (int64_t spins = 0; !gave_up && line.v.load(std::memory_order_acquire) != want; ++spins)
            gave_up = (spins & 1023) == 1023 && (failed.load(std::memory_order_relaxed) || clock::now() > deadline);
          if (gave_up) {
            failed.store(true);
            break;
          }
          line.v.store(want + 1, std::memory_order_release);
        }
        if (side == 0) ns = std::chrono::duration<double, std::nano>(clock::now() - t0).count() / kRounds;
      }
    });
    if (failed.load()) return -1.0;
    runs.push_back(ns);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace cpu
}  // namespace conv_ext

#else  // per-ISA part

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {

// 16 zmm chains of AVX-512's 32 registers; 12 ymm chains of AVX2's 16 (a and b take two more)
constexpr int kChains = CONV_EXT_ISA_BITS == 512 ? 16 : 12;
constexpr int64_t kFmaFlopsPerIterF32 = 2 * kChains * (CONV_EXT_ISA_BITS / 32);
constexpr int64_t kFmaFlopsPerIterF64 = 2 * kChains * (CONV_EXT_ISA_BITS / 64);

// float64 vectors of the same width (simd.h's Isa is float32 only)
struct Dbl {
#if CONV_EXT_ISA_BITS == 512
  using V = __m512d;
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static double first(V v) { return _mm512_cvtsd_f64(v); }
#else
  using V = __m256d;
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static double first(V v) { return _mm256_cvtsd_f64(v); }
#endif
};
struct Flt : Isa {
#if CONV_EXT_ISA_BITS == 512
  static double first(V v) { return _mm512_cvtss_f32(v); }
#else
  static double first(V v) { return _mm256_cvtss_f32(v); }
#endif
};

// acc = acc * a + b with a just below 1: the chains converge to b / (1 - a) and never overflow
template <class T>
double fma_loop(int64_t iters) {
  typename T::V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = T::set1(1.0 + 0.001 * i);
  const typename T::V a = T::set1(0.999), b = T::set1(0.001);
  for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = T::fma(acc[i], a, b);
  typename T::V s = acc[0];
  for (int i = 1; i < kChains; ++i) s = T::add(s, acc[i]);
  return T::first(s);
}
double fma_loop_f32(int64_t iters) { return fma_loop<Flt>(iters); }
double fma_loop_f64(int64_t iters) { return fma_loop<Dbl>(iters); }

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
