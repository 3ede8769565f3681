// algorithms.h — the registry of CPU algorithms, one entry per (algorithm, pass).
//
// Every algorithm file registers itself with a static initialiser:
//     static const bool registered = register_algorithm({"name", Pass::Forward, priority,
//                                                        supports_fn, run_fn});
// conv2d_cpu.cpp puts the operands in the layout the pass runs in, then calls choose(),
// which returns the forced algorithm (tests, benchmarks) or the supporting (and preferred)
// algorithm of highest priority. The reference kernel supports everything at priority 0: the
// fallback and the oracle of every other algorithm.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "../conv_params.h"

namespace conv_ext {
namespace cpu {

enum class Pass : int { Forward = 0, BackwardInput = 1, BackwardWeight = 2 };
constexpr int kNumPasses = 3;
const char* pass_name(Pass pass);  // "forward", "backward_input", "backward_weight"
Pass pass_from_name(const std::string& name);

// Operands of one call, in the layout the pass runs in: x and dy (and y, dx) are all
// contiguous NCHW or all contiguous NHWC (see is_nchw / is_nhwc on the params), dw is contiguous
// K x Cg x R x S and so is w, except for algorithms with reads_krsc_weights (see below).
//   Forward:        a = x,  b = w, bias (undefined if none) -> out = y   (N,K,P,Q)
//   BackwardInput:  a = dy, b = w                           -> out = dx  (N,C,H,W)
//   BackwardWeight: a = dy, b = x                           -> out = dw  (K,Cg,R,S)
// `out` is allocated but not initialised: an algorithm writes every element of it.
struct Operands {
  const at::Tensor& a;
  const at::Tensor& b;
  const at::Tensor& bias;
  at::Tensor& out;
  // The user's filter tensor when b is that tensor itself (not a copy): packed forms of it may
  // then be kept across calls (filter_cache.h). Null for backward-weight and for copies.
  const at::Tensor* filter = nullptr;
};

struct Algorithm {
  std::string name;
  Pass pass;
  int priority;  // higher is tried first when choosing automatically
  // True when the algorithm computes this problem correctly (and, for most algorithms, is worth
  // choosing for it: see `preferred`).
  std::function<bool(const Conv2dParams&, at::ScalarType)> supports;
  std::function<void(const Conv2dParams&, Operands&)> run;
  // True when run() also takes a channels_last filter (K x R x S x Cg in memory, weight_is_krsc)
  // as it lies: reads it in place (forward, backward-input) or writes dw in that layout
  // (backward-weight); supports() is always asked with KCRS strides. Others get (or write) a
  // KCRS copy.
  bool krsc_weights = false;
  // Optional: the rules of speed alone that the automatic choice applies on top of supports(),
  // where an algorithm computes more than it is worth choosing for and tests and benchmarks force
  // it there (its small shapes test its blocking; a kernel made for CPUs without AMX tiles is
  // tested on one with them). Unset: every problem it supports.
  std::function<bool(const Conv2dParams&, at::ScalarType)> preferred = nullptr;
};

bool register_algorithm(Algorithm algorithm);

// The algorithm to run: the forced one if any (error if it does not support the problem),
// else the supporting and preferred one of highest priority.
const Algorithm& choose(Pass pass, const Conv2dParams& p, at::ScalarType dtype);

// The supporting and preferred one of highest priority, whatever is forced (and not recorded as
// the last run).
const Algorithm& choose_automatic(Pass pass, const Conv2dParams& p, at::ScalarType dtype);

// float16 or bfloat16: the half types (run on float32 copies unless an algorithm takes them itself)
inline bool is_half(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Runs a float16/bfloat16 pass on float32 copies of its operands with the float32 algorithm of
// highest priority, the result rounded into o.out: for a half-type kernel that finds in the data
// (infinities, NaNs) a problem it cannot take (conv2d_cpu.cpp).
void run_as_float32(Pass pass, const Conv2dParams& p, Operands& o);

std::vector<std::string> algorithm_names(Pass pass);
void force_algorithm(Pass pass, const std::string& name);  // "auto" restores automatic choice
std::string forced_algorithm(Pass pass);
std::string last_algorithm(Pass pass);  // the last one run by this thread, "" if none

// SIMD level this CPU offers our kernels: "avx512", "avx2" or "portable". The environment
// variable CONV_EXT_CPU_CAPABILITY can lower it (to test the fallbacks on an AVX-512 machine).
const std::string& cpu_capability();

// The multiply-add rate (GFLOP/s, fp32 or fp64) of a register-only FMA loop on torch's threads,
// best of the trials that fit in `seconds`; 0 when no SIMD level is available (fma_peak.cpp).
double fma_peak_gflops(bool float64, double seconds);
double thread_round_trip_ns();  // fma_peak.cpp: do torch's first two threads share an L3?

// True when amx_bf16 can run here: on the AMX tile units (the CPU and the OS allow them), or with
// the tiles emulated by AVX512-BF16 (amx_tiles.h).
bool amx_bf16_available();
// True when amx_bf16 runs its tiles as AVX512-BF16 dot products (no AMX here, or
// CONV_EXT_AMX_EMULATE=1).
bool amx_bf16_emulated();
// Algorithm::preferred of the algorithms whose own bfloat16 kernels (VDPBF16PS) are made for
// AVX512-BF16 CPUs without AMX tiles (gemm_1x1, direct_nchw, grouped_interleaved): true unless the
// problem is bfloat16 and the tiles are here, where amx_bf16 runs it.
inline bool not_bf16_on_amx_tiles(const Conv2dParams&, at::ScalarType dtype) {
  return dtype != at::kBFloat16 || amx_bf16_emulated();
}
// True for the strided channels_last 1x1 forward problems amx_bf16 reads in place (amx_bf16.cpp);
// conv2d_cpu.cpp copies the pixels of the others' strides out first (strided_1x1).
bool amx_bf16_strided_1x1_in_place(const Conv2dParams& p, bool channels_last);
// True for the bfloat16 backward-weight problems gemm_1x1 runs on words of pixel pairs on such a
// CPU (NCHW 1x1 stride-1 unpadded, planes of an even pixel count): bf16_pairs and amx_bf16 leave
// them to it (gemm_1x1.cpp).
bool gemm_1x1_pixel_pairs(const Conv2dParams& p);
// t itself when its data can be read as 32-bit words (4-byte aligned), else an aligned copy: the
// bfloat16 kernels that read pairs of values as words (bf16_pairs.cpp)
at::Tensor word_aligned(const at::Tensor& t);

}  // namespace cpu
}  // namespace conv_ext
