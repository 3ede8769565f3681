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

#if CONV_EXT_ISA_BITS == 512
using VF = __m512;
using VD = __m512d;
inline VF fma_f(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VD fma_d(VD a, VD b, VD c) { return _mm512_fmadd_pd(a, b, c); }
inline VF set_f(float x) { return _mm512_set1_ps(x); }
inline VD set_d(double x) { return _mm512_set1_pd(x); }
inline double first_f(VF v) { return _mm512_cvtss_f32(v); }
inline double first_d(VD v) { return _mm512_cvtsd_f64(v); }
inline VF add_f(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VD add_d(VD a, VD b) { return _mm512_add_pd(a, b); }
#else
using VF = __m256;
using VD = __m256d;
inline VF fma_f(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VD fma_d(VD a, VD b, VD c) { return _mm256_fmadd_pd(a, b, c); }
inline VF set_f(float x) { return _mm256_set1_ps(x); }
inline VD set_d(double x) { return _mm256_set1_pd(x); }
inline double first_f(VF v) { return _mm256_cvtss_f32(v); }
inline double first_d(VD v) { return _mm256_cvtsd_f64(v); }
inline VF add_f(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VD add_d(VD a, VD b) { return _mm256_add_pd(a, b); }
#endif

// acc = acc * a + b with a just below 1: the chains converge to b / (1 - a) and never overflow
double fma_loop_f32(int64_t iters) {
  VF acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = set_f(1.0f + 0.001f * float(i));
  const VF a = set_f(0.999f), b = set_f(0.001f);
  for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = fma_f(acc[i], a, b);
  VF s = acc[0];
  for (int i = 1; i < kChains; ++i) s = add_f(s, acc[i]);
  return first_f(s);
}

double fma_loop_f64(int64_t iters) {
  VD acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = set_d(1.0 + 0.001 * double(i));
  const VD a = set_d(0.999), b = set_d(0.001);
  for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = fma_d(acc[i], a, b);
  VD s = acc[0];
  for (int i = 1; i < kChains; ++i) s = add_d(s, acc[i]);
  return first_d(s);
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
