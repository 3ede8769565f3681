// depthwise.cpp — depthwise convolution (groups == C == K, one filter per channel), fp32, all
// three passes, vectorised over channels in NHWC and over the width in NCHW; and the bfloat16
// and float16 passes of MobileNet's shapes (depthwise_forward_h16, _backward_input_h16,
// _backward_weight_h16; H = uint16_t for bfloat16, at::Half for float16: float16 since the
// forty-sixth round, the same code, its values converted by F16C / AVX-512's VCVTPH2PS and
// VCVTPS2PH; it ran on float32 copies at 0.28-0.50x torch before, see docs/results-history.md):
// channels_last, float32 runs reading bfloat16 rows, converted as they are loaded (AVX-512
// bfloat16: a block of 32 channels split into its even and odd ones, split_run) and rounded as they are
// stored, stride-1 backward-input as the forward with the taps turned round, the other shapes
// (strided backward-input, dilated rows) through nhwc_gather on bfloat16 rows; NCHW, flat planes
// widened a plane a task, or NHWC tiles widened and rounded in their transposes, backward-weight
// included). Backward-input, batch 4 (benchmarks/ab.py --dtype bfloat16 --pass backward_input), vs
// float32 copies of the whole tensors: channels_last 144@56 2.77x, 960@7 1.41x, 96@16 (batch 8)
// 1.54x faster; NCHW 96@112/2 1.40x, 144@56 1.56x. And the channels_last backward-weight, dy and x
// rows widened as the task reads them (nhwc_backward_weight<.., uint16_t>): 96@112/2 2.08x,
// 144@56 1.45x, 96@16 1.41x, 576@14/2 1.20x, 960@7 1.00x.
//
//   forward          y[n,c,p,q]  = bias[c] + sum_{r,s} x[n,c,p*sh-ph+r*dh,q*sw-pw+s*dw] * w[c,r,s]
//   backward-input   dx[n,c,h,w] = sum_{r,s: h+ph-r*dh = p*sh, w+pw-s*dw = q*sw} dy[n,c,p,q] * w[c,r,s]
//   backward-weight  dw[c,r,s]   = sum_{n,p,q} dy[n,c,p,q] * x[n,c,p*sh-ph+r*dh,q*sw-pw+s*dw]
//
// NHWC: weights are packed [tap][C]. Forward with 3/5/7 taps a row at stride 1 or 2 (no
//   dilation) runs each output row in runs of 8 pixels (AVX2: 4) per channel vector: 8 sums, the
//   row's S weights and its (8-1)*stride + S input vectors in registers, each input loaded once.
//   float32 with R == S and no dilation: by blocks of channels whose input rows stay in L1, each
//   run reading its pixels through a table (padding at a zero vector; block_forward, below), or
//   inside a row of up to 4 vectors of channels its input rows at a pixel's step;
//   bfloat16 and the other shapes in place over all channels (forward_runs; the runs at the
//   row's ends load zeros for the padding and store only the pixels that exist). Everything else
//   gathers per output pixel: its valid taps (a short list of offsets) run over the channels 4
//   vectors at a time (gather_pixel).
//   Backward-input at stride 1 is the forward gather of dy with the taps flipped; strided, the
//   dx columns split by phase (column % stride): one tap list per phase, interior columns in
//   runs like the forward (phase_runs), the edges per pixel.
//   Backward-weight: the N*P output rows in a fixed number of chunks; per row, block of 64
//   output pixels and channel vector the 9..49 tap sums in registers, added to the chunk's
//   partial sums; the chunks are added in chunk order (same bits for any thread count). 3x3 at
//   stride 1 or 2 goes through the block in runs of 8 outputs like the forward (bw_runs_3x3):
//   8 dy vectors in registers, each input vector loaded once for its up to 3 taps, read through
//   tables like the forward's, by blocks of channels.
//   Whole rows in runs (2026-12-02; python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc
//   --pass P, best mins of 6 alternating processes, old/new): forward 960@7 batch 4 1.35x,
//   96@16 batch 8 1.38x, 576@14/2 1.25x (7 and 14 wide rows had no whole interior run of 8),
//   stride-1 backward-input (the same kernel) 1.28x / 1.18x; backward-weight in runs 960@7
//   1.38x, 96@16 1.27x, 144@56 batch 8 1.44x, 576@14/2 1.15x, 96@112/2 1.00x (memory-bound).
//   MobileNet's 96@112/2, batch 4, channels_last, 2 threads (python -m conv_ext.bench --suite
//   default --layout nhwc --passes forward,backward_input,backward_weight --cases
//   mobilenet_v2.features.2), ratio vs torch before -> after this scheme: forward 0.59 -> 0.92-0.99,
//   backward-input 0.87 -> 1.0, backward-weight 0.71 -> 0.91 (it was one task per channel
//   vector over the whole batch). Once x no longer fits in the cache (batch 4: 19 MB), the
//   strided per-vector loads of a block went out to memory in a strided order (software
//   prefetch did not help): inputs over 4M elements now copy each input row into a per-thread
//   band first, one sequential read. 1 thread, the same command with --threads 1 --passes
//   backward_weight: 0.45x torch -> ~0.65x.
// NCHW flat planes (since 2026-12-02), for "same" padding in width (Q = ceil(W / stride): all of
//   MobileNet's layers): a plane is one run of P*Q outputs in vectors of VL, whatever its width,
//   and each tap is one masked load per vector at a fixed shift (strided: in the plane's phase
//   planes, split once per plane; strided backward-input computes dx's phase planes and merges
//   them); masks say which lanes a tap reaches. No zero padding, no per-row setup, whole vectors
//   on 7x7 planes (4, not 7 of one lane in 16). See "NCHW flat planes" below for the speeds.
//   The kernels below (rows, and NHWC tiles for small strided planes) run the other shapes.
// NCHW: a task is one (image, channel) plane. Forward copies the plane into a zero-padded buffer
//   with the columns split by phase (column j*sw + phase), so every tap reads a contiguous run:
//   y[p, q..q+4*VL) += w[r,s] * buf[row][phase][q + off]. Backward-input splits the dx columns
//   into stride phases (as implicit_gemm does) and reads padded dy rows (bands of ~32 KiB) with
//   step 1.
//   Backward-weight: a task owns a channel and packs bands of each image's rows in L1, as the
//   forward does; per filter row, each dy vector feeds the row's 3 or 5 taps (bw_filter_row;
//   other widths one tap at a time), the bands' sums added in float64 in order.
//   Eighth round (batch 4, 2 threads; python benchmarks/ab.py OLD.so NEW.so SHAPE --layout
//   nchw --pass P: mins of 100-300 calls, old and new build in 6 alternating processes):
//   forward packs bands of rows that stay in L1 (was the whole plane: 60 KiB at 112x112/2)
//   with 8 FMA chains, and pack_phase_plane lost its per-row divisions and memset calls:
//   96@112/2 forward 1.6-1.9 -> 1.0-1.5 ms;
//   backward-input's tap lists without divisions: 2.3-2.9 -> 1.4-1.8 ms; backward-weight by
//   filter rows: 96@112/2 1.7-2.2 -> 1.4-1.6, 144@56/2 0.7-0.9 -> 0.42-0.66, 32@112 1.5-2.0
//   -> 0.9-1.1 ms.
// NCHW planes <= 28x28 with C % 16 == 0 (MobileNet's 14x14/7x7 layers) instead run the NHWC
//   kernels on NHWC copies (transpose_rows of simd.h, 16x16 vector blocks, both ways), strided
//   backward-input included: it ran the NCHW phase kernel before, 0.81 ms against torch's 0.16
//   at 576@14/2 batch 4; now 1.31x torch at batch 8 (--cases "576@14/2" --layouts nchw). 1 thread,
//   PYTHONPATH=. python benchmarks/cpu_kernels.py --cases mbv2 --layouts nchw --threads 1
//   --cpu-time, ratio vs torch before -> after (fwd / bwd-input / bwd-weight):
//   192@28 0.49/0.38/0.30 -> 0.66/0.67/0.78, 576@14 0.39/0.28/0.20 -> 0.61/0.75/0.75,
//   960@7 0.23/0.20/0.11 -> 0.78/0.99/0.69.
//   Since 2026-12-01 the copies are per (image, block of 16-64 channels) tiles in per-thread
//   scratch, transposed in cache, instead of whole NHWC tensors (fresh 5-20 MB buffers each call,
//   two memory round trips). Zen 5, 2 threads, forward+backward ratio vs torch before -> after
//   (python -m conv_ext.bench --suite mobilenet_v2 --layout nchw --passes forward,all): 192@28
//   0.68 -> 0.95, 576@14 0.72 -> 0.95, 960@7 0.82 -> 0.93 (and 144@56/2, a larger plane on the
//   NCHW kernel, 0.63 -> 0.98 with the vector plane packing of pack_phase_plane).
//
// Speed (2 cores Zen 4, batch 8, PYTHONPATH=. python benchmarks/cpu_kernels.py --cases mbv2;
// torch in brackets, GFLOP/s): NCHW 96@112/2 fwd 9.2 [2.4], bwd-input 7.6 [1.4], 144@56 fwd 9.4
// [3.5]; NHWC 144@56 bwd-input 37.5 [33.0], 960@7 bwd-weight 50 [48]. Behind torch: NCHW
// planes <= 14x14 (per-plane overhead: 0.24-0.6x) and NHWC forward at 28x28 and below
// (0.56-0.7x: one pixel at a time, the tap list is rebuilt per row).
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "depthwise.cpp"
#include <array>
#include <optional>
#include <type_traits>
#include "per_isa.h"


namespace conv_ext {
namespace cpu {
namespace {

#define CONV_EXT_PICK(fn) (use_avx512() ? avx512::fn : avx2::fn)

bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) &&
         p.groups == p.C && p.K == p.C && p.R <= 7 && p.S <= 7;
}
// The 16-bit float types (bfloat16: H = uint16_t, float16: H = at::Half) run the kernels'
// own 16-bit passes where they take the shape (depthwise_forward_h16, _backward_input_h16,
// _backward_weight_h16: values converted to float32 as they are loaded, sums rounded as they are
// stored); the other problems of these types run on float32 copies (conv2d_cpu.cpp).
template <typename H>
void forward_h16(const Conv2dParams& p, Operands& o) {
  const at::Tensor w = o.b.to(at::kFloat), bias = o.bias.defined() ? o.bias.to(at::kFloat) : at::Tensor();
  CONV_EXT_PICK(depthwise_forward_h16<H>)(p, static_cast<const H*>(o.a.const_data_ptr()), w.const_data_ptr<float>(),
                                          bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                                          static_cast<H*>(o.out.mutable_data_ptr()));
}
template <typename H>
void backward_input_h16(const Conv2dParams& p, Operands& o) {
  const at::Tensor w = o.b.to(at::kFloat);
  CONV_EXT_PICK(depthwise_backward_input_h16<H>)(p, static_cast<const H*>(o.a.const_data_ptr()),
                                                 w.const_data_ptr<float>(), static_cast<H*>(o.out.mutable_data_ptr()));
}
template <typename H>
void backward_weight_h16(const Conv2dParams& p, Operands& o) {
  const at::Tensor dw = at::empty(o.out.sizes(), o.out.options().dtype(at::kFloat));
  CONV_EXT_PICK(depthwise_backward_weight_h16<H>)(p, static_cast<const H*>(o.a.const_data_ptr()),
                                                  static_cast<const H*>(o.b.const_data_ptr()),
                                                  dw.mutable_data_ptr<float>());
  o.out.copy_(dw);
}

bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  if (is_half(dtype)) return supports(p, at::kFloat) && CONV_EXT_PICK(h16_forward_ok)(p);
  return supports(p, dtype);
}

void run_forward(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) return forward_h16<uint16_t>(p, o);
  if (o.a.scalar_type() == at::kHalf) return forward_h16<at::Half>(p, o);
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  CONV_EXT_PICK(depthwise_forward)(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias,
                                   o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  if (is_half(dtype)) return supports(p, at::kFloat) && CONV_EXT_PICK(h16_backward_input_ok)(p);
  return supports(p, dtype);
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) return backward_input_h16<uint16_t>(p, o);
  if (o.a.scalar_type() == at::kHalf) return backward_input_h16<at::Half>(p, o);
  CONV_EXT_PICK(depthwise_backward_input)(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(),
                                          o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  if (is_half(dtype)) return supports(p, at::kFloat) && CONV_EXT_PICK(h16_backward_weight_ok)(p);
  return supports(p, dtype);
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) return backward_weight_h16<uint16_t>(p, o);
  if (o.a.scalar_type() == at::kHalf) return backward_weight_h16<at::Half>(p, o);
  CONV_EXT_PICK(depthwise_backward_weight)(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(),
                                           o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

const bool registered = register_algorithm({"depthwise", Pass::Forward, 30, supports_forward, run_forward}) &&
                        register_algorithm({"depthwise", Pass::BackwardInput, 30, supports_backward_input, run_backward_input}) &&
                        register_algorithm({"depthwise", Pass::BackwardWeight, 30, supports_backward_weight, run_backward_weight});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

constexpr int kMaxTaps = 49;

// One output pixel: o[c] = bias[c] + sum_t base[offs[t] + c] * wt[widx[t] + c], NVC vectors of
// channels at a time (NVC independent FMA chains), masked at the channel tail. (X, O: float, or
// uint16_t / at::Half for bfloat16 / float16 read widened, stored rounded.)
template <int NVC, typename X = float, typename O = float>
inline void gather_pixel(const X* base, const int64_t* offs, const int64_t* widx, int nt, const float* wt,
                         const float* bias, O* o, int64_t C) {
  for (int64_t c0 = 0; c0 < C; c0 += NVC * VL) {
    V acc[NVC];
    if (C - c0 >= NVC * VL) {
#pragma GCC unroll 4
      for (int v = 0; v < NVC; ++v) acc[v] = bias ? Isa::load(bias + c0 + v * VL) : Isa::zero();
      for (int t = 0; t < nt; ++t) {
        const X* sp = base + offs[t] + c0;
        const float* wp = wt + widx[t] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < NVC; ++v) acc[v] = Isa::fma(Isa::load(sp + v * VL), Isa::load(wp + v * VL), acc[v]);
      }
#pragma GCC unroll 4
      for (int v = 0; v < NVC; ++v) Isa::store(o + c0 + v * VL, acc[v]);
    } else {
      M m[NVC];
      make_masks(NVC, C - c0, m);
      for (int v = 0; v < NVC; ++v) acc[v] = bias ? Isa::loadm(bias + c0 + v * VL, m[v]) : Isa::zero();
      for (int t = 0; t < nt; ++t) {
        const X* sp = base + offs[t] + c0;
        const float* wp = wt + widx[t] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < NVC; ++v)
          acc[v] = Isa::fma(Isa::loadm(sp + v * VL, m[v]), Isa::loadm(wp + v * VL, m[v]), acc[v]);
      }
      for (int v = 0; v < NVC; ++v) Isa::storem(o + c0 + v * VL, acc[v], m[v]);
    }
  }
}

// Stores the first nt (default T) sums of a run at o, o + step, ... (masked only at the channel
// tail: masked stores are slow on Zen 4). O: float, or uint16_t / at::Half for sums rounded to
// bfloat16 / float16.
template <int T, typename O>
inline void store_run(O* o, int64_t step, const V* acc, bool full, M m, bool stream, int nt = T) {
  if constexpr (std::is_same_v<O, float>) {
    if (full && stream && (reinterpret_cast<uintptr_t>(o) | uintptr_t(step * sizeof(float))) % sizeof(V) == 0) {
      for (int t = 0; t < nt; ++t) Isa::stream(o + t * step, acc[t]);
      return;
    }
  }
  if (full)
    for (int t = 0; t < nt; ++t) Isa::store(o + t * step, acc[t]);
  else
    for (int t = 0; t < nt; ++t) Isa::storem(o + t * step, acc[t], m);
}

// Forward runs of one output row (NHWC, no dilation): for b in [0, Wo) o[b][c] = bias[c] +
// sum_{i < nr, s < S} xrow[i][(b*SW - pw + s)*C + c] * wrow[i][s*Cp + c], where xrow[i] is the
// row's column 0 (columns outside [0, Ws) are the zero padding: never read).
// Per channel vector and run of kRun outputs: kRun sums, S weights and the run's
// (kRun-1)*SW + S input vectors of a filter row in registers, each input loaded once. A run
// that touches the padding (the row's first and last) puts zeros in place of those vectors; the
// last run stores only the outputs that exist, so any width runs in runs (7x7: one run of 8).
constexpr int kRun = VL == 16 ? 8 : 4;
// Whether a run of kRun outputs from input column col0, reading nx columns, is whole and reads
// no padding (the forward's and backward-weight's interior runs; the others are EDGE runs).
inline bool interior_run(int nt, int64_t col0, int64_t nx, int64_t W) { return nt == kRun && col0 >= 0 && col0 + nx <= W; }

// (X: float, or uint16_t / at::Half for bfloat16 / float16 rows, converted as they are loaded;
// O: float, or a 16-bit type for an output row rounded as it is stored)
template <int S, int SW, bool EDGE, typename X, typename O>
inline void forward_run(const X* const* xrow, const float* const* wrow, int nr, const float* bias, O* o,
                        int64_t col0, int nt, int64_t Ws, int64_t C, int64_t Cp, bool stream) {
  constexpr int T = kRun, NX = (T - 1) * SW + S;
  for (int64_t c0 = 0; c0 < C; c0 += VL) {
    const M m = Isa::mask(C - c0);
    const bool full = C - c0 >= VL;
    const V bv = bias ? Isa::load(bias + c0) : Isa::zero();  // bias and weights are padded to Cp
    V acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = bv;
    for (int i = 0; i < nr; ++i) {
      const X* xr = xrow[i] + col0 * C + c0;
      V wv[S], xv[NX];
#pragma GCC unroll 7
      for (int s = 0; s < S; ++s) wv[s] = Isa::load(wrow[i] + s * Cp + c0);
#pragma GCC unroll 24
      for (int j = 0; j < NX; ++j)
        xv[j] = EDGE && (col0 + j < 0 || col0 + j >= Ws) ? Isa::zero()
                : full                                   ? Isa::load(xr + j * C)
                                                         : Isa::loadm(xr + j * C, m);
#pragma GCC unroll 7
      for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[t] = Isa::fma(xv[t * SW + s], wv[s], acc[t]);
    }
    store_run<T>(o + c0, C, acc, full, m, stream && !EDGE, EDGE ? nt : T);
  }
}

template <int S, int SW, typename X = float, typename O = float>
void forward_runs(const X* const* xrow, const float* const* wrow, int nr, const float* bias, O* orow,
                  int64_t Wo, int64_t Ws, int64_t pw, int64_t C, int64_t Cp, bool stream) {
  for (int64_t b0 = 0; b0 < Wo; b0 += kRun) {  // the run's inputs (nr x NX pixels) stay in L1
    const int64_t col0 = b0 * SW - pw;       // the run's first input column
    const int nt = int(std::min<int64_t>(kRun, Wo - b0));
    if (interior_run(nt, col0, (kRun - 1) * SW + S, Ws))
      forward_run<S, SW, false, X, O>(xrow, wrow, nr, bias, orow + b0 * C, col0, nt, Ws, C, Cp, stream);
    else
      forward_run<S, SW, true, X, O>(xrow, wrow, nr, bias, orow + b0 * C, col0, nt, Ws, C, Cp, stream);
  }
}

// The float32 forward of the forward_runs shapes by blocks of channels. A task is (image, block
// of Cb channels, band of output rows), with Cb chosen so that the S input rows an output row
// reads (S x W x Cb floats, kBlockFloats) stay in L1 for the S output rows that read each of
// them. Each run reads its S x NX input pixels through a table of pointers, the padding's
// pointing at a vector of zeros: no per-column test for zero or load in the runs at a row's
// ends (all the runs of a row up to 16 wide). In place over all channels (forward_runs), the
// S rows of a task did not fit in L1 at 960@7 (3 x 7 x 960 floats) and each input vector came
// from L2 for each of its S output rows. Images of over kBlockImageFloats come from L3 or memory:
// there a block is all the channels (whole pixels read in order) and only the tables and the
// unrolled rows remain. Channels_last forward, batch 4 (8 for 96@16), 2 threads, old/new
// (min of 4 alternating processes, median of 1000 calls each): 960@7 1.28-1.33x, 576@14/2 1.25x,
// 576@14 1.38-1.40x, 384@14 1.46x, 96@16 1.38-1.44x, 192@28 1.09-1.12x, 192@28/2 1.10x, 32@112
// 1.09x, 144@56 1.01x, 96@112/2 1.02x (memory-bound); stride-1 backward-input (this forward, the
// taps turned round) 960@7 1.24x, 96@16 1.31x, 576@14 1.22x, 32@112 1.15x. A copy of the rows into a
// zero-padded ring in L1 instead of the tables was slower than before (the copy waited on x).
constexpr int64_t kBlockFloats = 6144;  // 24 KiB of the 48 KiB L1
constexpr int64_t kBlockImageFloats = 1 << 17;  // 512 KiB, a quarter of an L2

// At least n zeros, 64-byte aligned, per thread and never written (the runs' padding pixels):
// filled as the buffer grows, not per task.
const float* zero_floats(int64_t n) {
  thread_local std::vector<float> z;
  if (static_cast<int64_t>(z.size()) < n + 16) z.assign(static_cast<size_t>(n) + 64, 0.f);
  const auto a = reinterpret_cast<std::uintptr_t>(z.data());
  return reinterpret_cast<const float*>((a + 63) & ~std::uintptr_t(63));
}

// One run of kRun outputs: the S x NX input pixels at xp[i*NX + j] (already at the block's first
// channel) -- or, ROWS, at xp[i] + j*os (the run's input rows, os floats a pixel) --, filter rows
// at wrow[i]; stores the first nt outputs of channels [0, cn). S and the rows unrolled at compile
// time: with a row count known only at run time the compiler re-loaded each input vector for each
// of its taps (a load per FMA).
template <int S, int SW, bool TAIL, bool ROWS = false>
__attribute__((noinline)) void block_run(const float* const* xp, const float* const* wrow, const float* bias, float* o,
                                         int nt, int64_t c_begin, int64_t c_end, int64_t os, int64_t Cp, bool stream) {
  constexpr int T = kRun, NX = (T - 1) * SW + S, NB = (NX + 2) / 3;
  // ROWS: column j at base[j / 3] + (j % 3) * os, a base pointer every 3 columns, which the
  // loads reach by addressing (base + os*4*{0,1,2} bytes). With xp[i] + j*os GCC kept the 17
  // column offsets of a stride-2 row in vector registers, a VMOVQ back per load on the FMA
  // ports (32 for 72 FMAs at <3, 2>, now 6; <3, 1> 10 -> 4; objdump). Channels_last, batch 4, 2
  // threads, Xeon (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P, 8-12
  // rounds; best mins / median of the pairs): 32@112 forward 1.07-1.14x / 1.07-1.25x, its
  // backward-input 1.01x / 1.09x, 192@28/2 forward 1.05-1.07x / 1.03x; 96@112/2, 144@56(/2),
  // 192@28 level.
  const float* base[ROWS ? NB : 1];
  const auto at = [&](int i, int j) { return ROWS ? base[j / 3] + (j % 3) * os : xp[i * NX + j]; };
  for (int64_t c0 = c_begin; c0 < c_end; c0 += VL) {
    const M m = Isa::mask(c_end - c0);  // TAIL: the one, partial vector
    const V bv = bias ? Isa::load(bias + c0) : Isa::zero();  // bias and weights are padded to Cp
    V acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = bv;
#pragma GCC unroll 7
    for (int i = 0; i < S; ++i) {
      V wv[S], xv[NX];
#pragma GCC unroll 7
      for (int s = 0; s < S; ++s) wv[s] = Isa::load(wrow[i] + s * Cp + c0);
      if constexpr (ROWS) {
#pragma GCC unroll 8
        for (int k = 0; k < NB; ++k) base[k] = xp[i] + 3 * k * os;
      }
#pragma GCC unroll 24
      for (int j = 0; j < NX; ++j) xv[j] = TAIL ? Isa::loadm(at(i, j) + c0, m) : Isa::load(at(i, j) + c0);
#pragma GCC unroll 7
      for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[t] = Isa::fma(xv[t * SW + s], wv[s], acc[t]);
    }
    if (nt == T)
      store_run<T>(o + c0, os, acc, !TAIL, m, stream);
    else
      store_run<T>(o + c0, os, acc, !TAIL, m, false, nt);
  }
}

template <int S, int SW>
void block_forward(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y, int64_t wld) {
  constexpr int NX = (kRun - 1) * SW + S;
  const int64_t C = p.C, H = p.H, W = p.W, P = p.P, Q = p.Q, N = p.N;
  const int64_t sh = p.stride_h, ph = p.pad_h, pw = p.pad_w, Cp = round_up(C, VL), Wd = wld ? wld : Cp;
  // (an image of over kBlockImageFloats comes from L3 or memory, where reading part of each
  // pixel's channels at a time cost more than L2 costs the rows of whole pixels)
  int64_t Cb = H * W * C > kBlockImageFloats ? Cp : std::min(Cp, std::max<int64_t>(VL, kBlockFloats / (S * W) / VL * VL));
  int64_t nblk = ceil_div(Cp, Cb);
  Cb = round_up(ceil_div(Cp, nblk), VL), nblk = ceil_div(Cp, Cb);  // blocks of equal size
  // bands of output rows: 16 tasks a thread or more, for balance (the two cores of this VM do
  // not run at the same speed; see for_each_task)
  const int64_t nband = std::min(P, std::max<int64_t>(1, ceil_div(16 * pool_threads(), N * nblk)));
  const bool stream = N * P * Q * C >= kStreamFloats;
  for_each_task(N * nblk * nband, p.macs(), [&](int64_t task) {
    const int64_t band = task % nband, blk = task / nband % nblk, n = task / (nband * nblk);
    const int64_t a0 = P * band / nband, a1 = P * (band + 1) / nband, c0 = blk * Cb, cn = std::min(Cb, C - c0);
    // Runs inside a row read its S rows at a pixel's step, not through a table of pixels, where the
    // table's S*NX pointers cost more than its loads save (a third of the 32@112 forward's samples,
    // perf record): blocks of up to 4 vectors. 32@112 channels_last forward and stride-1
    // backward-input 1.15x, 64@56 1.05x, batch 4, 2 threads (python benchmarks/ab.py OLD.so NEW.so
    // 4,32,112,112,32,3,1,1,32 --layout nhwc --pass P); with 9-15 vectors (144@56, 960@7) 0.94x and
    // 0.91x, so they keep the tables.
    const bool rows = cn <= 4 * VL;
    // zeros: a padding pixel of the tables, or a padding row of NX pixels C floats apart
    const float* zeros = zero_floats(rows ? (NX - 1) * C + Cb : Cb);
    const float* wrow[S];
    for (int r = 0; r < S; ++r) wrow[r] = wt + r * S * Wd + c0;
    const float* xp[S * NX];
    const float* bp = bias ? bias + c0 : nullptr;
    for (int64_t a = a0; a < a1; ++a) {
      float* orow = y + (n * P + a) * Q * C + c0;
      for (int64_t b0 = 0; b0 < Q; b0 += kRun) {
        const int64_t col0 = b0 * SW - pw;
        const int nt = int(std::min<int64_t>(kRun, Q - b0));
        if (rows && col0 >= 0 && col0 + NX <= W) {  // a run inside the row: its rows' pointers
          for (int r = 0; r < S; ++r) {
            const int64_t h = a * sh - ph + r;
            xp[r] = h < 0 || h >= H ? zeros : x + ((n * H + h) * W + col0) * C + c0;
          }
          block_run<S, SW, false, true>(xp, wrow, bp, orow + b0 * C, nt, 0, cn / VL * VL, C, Wd, stream);
          if (cn % VL) block_run<S, SW, true, true>(xp, wrow, bp, orow + b0 * C, nt, cn / VL * VL, cn, C, Wd, stream);
          continue;
        }
        for (int r = 0; r < S; ++r) {
          const int64_t h = a * sh - ph + r;
          for (int j = 0; j < NX; ++j) {
            const int64_t col = col0 + j;
            xp[r * NX + j] = h < 0 || h >= H || col < 0 || col >= W ? zeros : x + ((n * H + h) * W + col) * C + c0;
          }
        }
        block_run<S, SW, false>(xp, wrow, bp, orow + b0 * C, nt, 0, cn / VL * VL, C, Wd, stream);
        if (cn % VL) block_run<S, SW, true>(xp, wrow, bp, orow + b0 * C, nt, cn / VL * VL, cn, C, Wd, stream);
      }
    }
    if (stream) _mm_sfence();
  });
}

// Strided backward-input runs of one dx row and phase (NHWC): for j in [j_lo, j_hi) (a multiple
// of kRun long, every tap inside dy) o[(phase + j*sw)*C + c] = sum_{e < nt} src[rel[e] + j*C + c] *
// wt[widx[e] + c]. Per channel vector and run: kRun sums in registers, one load per FMA and
// one weight load per kRun FMAs (the pixel gather loads two vectors per FMA).
template <typename X, typename O>
void phase_runs(const X* src, const int64_t* rel, const int64_t* widx, int nt, const float* wt, O* o,
                int64_t sw, int64_t j_lo, int64_t j_hi, int64_t C, bool stream) {
  constexpr int T = kRun;
  for (int64_t j0 = j_lo; j0 < j_hi; j0 += T) {
    for (int64_t c0 = 0; c0 < C; c0 += VL) {
      const M m = Isa::mask(C - c0);
      const bool full = C - c0 >= VL;
      V acc[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[t] = Isa::zero();
      for (int e = 0; e < nt; ++e) {
        const X* sp = src + rel[e] + j0 * C + c0;
        const V wv = Isa::load(wt + widx[e] + c0);  // weights are padded to Cp
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[t] = Isa::fma(full ? Isa::load(sp + t * C) : Isa::loadm(sp + t * C, m), wv, acc[t]);
      }
      store_run<T>(o + j0 * sw * C + c0, sw * C, acc, full, m, stream);
    }
  }
}

// NHWC gather: out[n, a, b, c] = bias[c] + sum_{valid taps t} src[n, pixel(t), c] * wt[t][c]
// forward: out = y (P x Q), src = x; backward-input (bwd): out = dx (H x W), src = dy.
// Forward interior pixels reuse one tap list per row (offsets relative to the pixel).
// X, O: float, or uint16_t / at::Half for bfloat16 / float16 (the strided backward-input of
// depthwise_backward_input_h16).
template <int NVC, typename X = float, typename O = float>
void nhwc_gather_t(const Conv2dParams& p, const X* src, const float* wt, const float* bias, O* out, bool bwd,
                   int64_t wld) {
  const int64_t C = p.C, R = p.R, S = p.S, N = p.N;
  const int64_t Ho = bwd ? p.H : p.P, Wo = bwd ? p.W : p.Q, Hs = bwd ? p.P : p.H, Ws = bwd ? p.Q : p.W;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t Cp = wld ? wld : round_up(C, VL);  // the weights' row stride
  // outputs of >= kStreamFloats: the runs' whole, aligned vectors by non-temporal stores (no
  // read-for-ownership of lines written whole). 96@112/2 batch 4 backward-input (19 MB dx), 2
  // threads, min of 300 calls in 6 alternating processes each: 0.77-0.88 -> 0.66-0.75 ms.
  const bool stream = N * Ho * Wo * C >= kStreamFloats;
  for_each_task(N * Ho, p.macs(), [&](int64_t task) {
    const int64_t n = task / Ho, a = task % Ho;
    int64_t rows[kMaxTaps], rtap[kMaxTaps];
    int nr = 0;
    for (int64_t r = 0; r < R; ++r) {
      int64_t h;
      if (!bwd) {
        h = a * sh - ph + r * dh;
        if (h < 0 || h >= Hs) continue;
      } else {
        const int64_t t = a + ph - r * dh;
        if (t < 0 || t % sh != 0 || t / sh >= Hs) continue;
        h = t / sh;
      }
      rows[nr] = h, rtap[nr] = r, ++nr;
    }
    // Forward, 3/5/7 taps per row at stride 1 or 2, no dilation (MobileNet's layers): the whole
    // row in runs of kRun per channel vector, each input vector loaded once for up to S FMAs
    // (the pixel gather below loads 2 vectors per FMA).
    if (!bwd && dw == 1 && (sw == 1 || sw == 2) && (S == 3 || S == 5 || S == 7)) {
      const X* xrow[kMaxTaps];
      const float* wrow[kMaxTaps];
      for (int i = 0; i < nr; ++i) xrow[i] = src + (n * Hs + rows[i]) * Ws * C, wrow[i] = wt + rtap[i] * S * Cp;
      const auto runs = S == 3 ? (sw == 1 ? forward_runs<3, 1, X, O> : forward_runs<3, 2, X, O>)
                      : S == 5 ? (sw == 1 ? forward_runs<5, 1, X, O> : forward_runs<5, 2, X, O>)
                               : (sw == 1 ? forward_runs<7, 1, X, O> : forward_runs<7, 2, X, O>);
      runs(xrow, wrow, nr, bias, out + (n * Ho + a) * Wo * C, Wo, Ws, pw, C, Cp, stream);
      if (stream) _mm_sfence();
      return;
    }
    int64_t off[kMaxTaps], widx[kMaxTaps], rel[kMaxTaps], relw[kMaxTaps];
    int nrel = 0;
    if (!bwd)
      for (int i = 0; i < nr; ++i)
        for (int64_t s = 0; s < S; ++s)
          rel[nrel] = ((n * Hs + rows[i]) * Ws + s * dw) * C, relw[nrel] = (rtap[i] * S + s) * Cp, ++nrel;
    // Strided backward-input: the taps of dx column b depend only on its phase b % sw, and for
    // b = phase + j*sw they read dy columns j + k (k fixed per tap): one tap list per phase,
    // relative to column j, serves every column whose taps all lie inside dy.
    constexpr int kPhases = 4;
    int64_t prel[kPhases][kMaxTaps], prelw[kPhases][kMaxTaps], kmin[kPhases], kmax[kPhases], jlo[kPhases], jhi[kPhases];
    int np[kPhases];
    const bool phased = bwd && sw <= kPhases;
    for (int64_t phase = 0; phased && phase < std::min(sw, Wo); ++phase) {
      np[phase] = 0, kmin[phase] = Ws, kmax[phase] = -1;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t t = phase + pw - s * dw;
        if (floor_mod(t, sw) != 0) continue;
        const int64_t k = floor_div(t, sw);
        kmin[phase] = std::min(kmin[phase], k), kmax[phase] = std::max(kmax[phase], k);
        for (int i = 0; i < nr; ++i)
          prel[phase][np[phase]] = ((n * Hs + rows[i]) * Ws + k) * C, prelw[phase][np[phase]] = (rtap[i] * S + s) * Cp,
          ++np[phase];
      }
      // the columns j whose taps all lie inside dy, in whole runs
      const int64_t ncol = ceil_div(Wo - phase, sw);
      jlo[phase] = std::min(ncol, std::max<int64_t>(0, -kmin[phase]));
      jhi[phase] = std::max(jlo[phase], std::min(ncol, Ws - kmax[phase]));
      jhi[phase] = np[phase] == 0 ? jlo[phase] : jlo[phase] + (jhi[phase] - jlo[phase]) / kRun * kRun;
      phase_runs(src, prel[phase], prelw[phase], np[phase], wt, out + ((n * Ho + a) * Wo + phase) * C, sw, jlo[phase],
                 jhi[phase], C, stream);
    }
    for (int64_t b = 0; b < Wo; ++b) {
      O* o = out + ((n * Ho + a) * Wo + b) * C;
      if (!bwd && b * sw - pw >= 0 && b * sw - pw + (S - 1) * dw < Ws) {
        gather_pixel<NVC>(src + (b * sw - pw) * C, rel, relw, nrel, wt, bias, o, C);
        continue;
      }
      if (phased) {
        const int64_t phase = b % sw, j = b / sw;
        if (j >= jlo[phase] && j < jhi[phase]) continue;  // done in runs
        if (np[phase] == 0 || (j + kmin[phase] >= 0 && j + kmax[phase] < Ws)) {
          gather_pixel<NVC>(src + j * C, prel[phase], prelw[phase], np[phase], wt, bias, o, C);
          continue;
        }
      }
      int nt = 0;
      for (int64_t s = 0; s < S; ++s) {
        int64_t wcol;
        if (!bwd) {
          wcol = b * sw - pw + s * dw;
          if (wcol < 0 || wcol >= Ws) continue;
        } else {
          const int64_t t = b + pw - s * dw;
          if (t < 0 || t % sw != 0 || t / sw >= Ws) continue;
          wcol = t / sw;
        }
        for (int i = 0; i < nr; ++i)
          off[nt] = ((n * Hs + rows[i]) * Ws + wcol) * C, widx[nt] = (rtap[i] * S + s) * Cp, ++nt;
      }
      gather_pixel<NVC>(src, off, widx, nt, wt, bias, o, C);
    }
    if (stream) _mm_sfence();
  });
}

// (X, O: float, or uint16_t / at::Half for bfloat16 / float16; the float32 forward's square filters
// run block_forward).
// wt: [tap][wld] (wld 0: round_up(C, VL), pack_taps' rows), bias padded to whole vectors.
template <typename X = float, typename O = float>
void nhwc_gather(const Conv2dParams& p, const X* src, const float* wt, const float* bias, O* out, bool bwd,
                 int64_t wld = 0) {
  if constexpr (std::is_same_v<X, float> && std::is_same_v<O, float>) {
    if (!bwd && p.dil_h == 1 && p.dil_w == 1 && (p.stride_w == 1 || p.stride_w == 2) && p.R == p.S &&
        (p.S == 3 || p.S == 5 || p.S == 7)) {
      const auto block = p.S == 3 ? (p.stride_w == 1 ? block_forward<3, 1> : block_forward<3, 2>)
                       : p.S == 5 ? (p.stride_w == 1 ? block_forward<5, 1> : block_forward<5, 2>)
                                  : (p.stride_w == 1 ? block_forward<7, 1> : block_forward<7, 2>);
      return block(p, src, wt, bias, out, wld);
    }
  }
  const int64_t nvc = ceil_div(p.C, VL);
  if (nvc <= 1) return nhwc_gather_t<1>(p, src, wt, bias, out, bwd, wld);
  if (nvc == 2) return nhwc_gather_t<2>(p, src, wt, bias, out, bwd, wld);
  if (nvc == 3) return nhwc_gather_t<3>(p, src, wt, bias, out, bwd, wld);
  nhwc_gather_t<4>(p, src, wt, bias, out, bwd, wld);
}

inline float hsum(V v) {
  alignas(64) float t[VL];
  Isa::store(t, v);
  float s = 0.f;
  for (int i = 0; i < VL; ++i) s += t[i];
  return s;
}

// Vectors per output row for a row of `q` outputs: 1, 2 or 4; a step covers 8/NQ rows (forward)
// or 4/NQ (backward-weight), so every step runs 8 or 4 independent FMA chains and a 7-wide plane
// wastes 9 lanes, not 57. (Forward with 4 chains: each waits out the FMA latency once per tap;
// 8 measured a tie at 96@112/2 and up to 10% faster at 144@56/2, NCHW batch 4, A/B of builds.)
inline int nq_for(int64_t q) { return q <= VL ? 1 : q <= 2 * VL ? 2 : 4; }

// Bands of BR output rows (a multiple of rb) of an NCHW plane for pack_phase_plane (row width wq,
// sw phases): the phase rows they read ((BR-1)*sh + (R-1)*dh + 1 of them) are packed into <= 24
// KiB, which stays in L1 between the pack and the taps (nchw_forward_t, nchw_backward_weight_t).
// The whole plane at once (60 KiB at 112x112 stride 2) went out to L2 and back: the pack alone ran
// at half the speed of a plain read of x (a standalone loop over 96@112 planes, 2 threads: 0.98 ms
// against 0.47; bands of 8 output rows 0.69).
struct PhaseBands {
  int64_t sh, reach, BR;
  PhaseBands(const Conv2dParams& p, int64_t rb, int64_t wq) : sh(p.stride_h), reach((p.R - 1) * p.dil_h + 1), BR(rb) {
    while (BR < p.P && rows(BR + rb) * p.stride_w * wq <= 6 * 1024) BR += rb;
  }
  int64_t rows(int64_t br) const { return (br - 1) * sh + reach; }  // input rows br output rows read
};

template <int NQ>
void nchw_forward_t(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y) {
  constexpr int RB = 8 / NQ;
  const int64_t C = p.C, R = p.R, S = p.S, N = p.N, H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t wq = round_up(Q, NQ * VL) + (S - 1) * dw / sw + 1;
  const PhaseBands bands(p, RB, wq);  // bands of BR output rows in L1
  const int64_t BR = bands.BR;
  // the taps' offsets in the phase rows, once (no divisions in the loop)
  const int64_t RS = R * S;
  int64_t toff[kMaxTaps];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s) toff[r * S + s] = phase_tap_offset(r, s, dh, dw, sw, wq);
  for_each_task(N * C, p.macs(), [&](int64_t task) {
    const int64_t c = task % C;
    float* buf = scratch(1, bands.rows(BR) * sw * wq);
    const float* wc = w + c * R * S;
    float* yp = y + task * P * Q;
    const V b = Isa::set1(bias ? bias[c] : 0.f);
    for (int64_t p0 = 0; p0 < P; p0 += RB) {
      const int64_t pb = p0 - p0 % BR, pe = std::min(P, pb + BR);  // this band's output rows
      if (p0 == pb) pack_phase_plane(x + task * H * W, H, W, ph - pb * sh, pw, sw, bands.rows(pe - pb), wq, buf);
      const float* rowp[RB];
      for (int rb = 0; rb < RB; ++rb) rowp[rb] = buf + (std::min(p0 + rb, pe - 1) - pb) * sh * sw * wq;
      for (int64_t q0 = 0; q0 < Q; q0 += NQ * VL) {
        V acc[RB][NQ];
        for (int rb = 0; rb < RB; ++rb)
          for (int v = 0; v < NQ; ++v) acc[rb][v] = b;
        for (int64_t t = 0; t < RS; ++t) {
          const V wv = Isa::set1(wc[t]);
#pragma GCC unroll 4
          for (int rb = 0; rb < RB; ++rb)
#pragma GCC unroll 4
            for (int v = 0; v < NQ; ++v) acc[rb][v] = Isa::fma(wv, Isa::load(rowp[rb] + toff[t] + q0 + v * VL), acc[rb][v]);
        }
        for (int rb = 0; rb < RB && p0 + rb < P; ++rb)
          for (int v = 0; v < NQ; ++v)
            Isa::storem(yp + (p0 + rb) * Q + q0 + v * VL, acc[rb][v], Isa::mask(Q - q0 - v * VL));
      }
    }
  });
}

void nchw_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y) {
  switch (nq_for(p.Q)) {
    case 1: return nchw_forward_t<1>(p, x, w, bias, y);
    case 2: return nchw_forward_t<2>(p, x, w, bias, y);
    default: return nchw_forward_t<4>(p, x, w, bias, y);
  }
}

void nchw_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  const int64_t C = p.C, R = p.R, S = p.S, N = p.N, H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  // Stride 1 with the padding within the filter's reach: dx is the forward convolution of dy
  // with the filter turned round (padding (R-1)*dh - ph), run by the forward kernel (bands in
  // L1, 8 FMA chains; the loop below keeps 4).
  if (sh == 1 && sw == 1 && ph <= (R - 1) * dh && pw <= (S - 1) * dw) {
    Conv2dParams f = p;
    f.H = P, f.W = Q, f.P = H, f.Q = W, f.pad_h = (R - 1) * dh - ph, f.pad_w = (S - 1) * dw - pw;
    std::vector<float> turned(C * R * S);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) turned[(c * R + r) * S + s] = w[(c * R + R - 1 - r) * S + S - 1 - s];
    return nchw_forward(f, dy, turned.data(), nullptr, dx);
  }
  // dy plane padded: columns ow + padL for every ow a dx column can reach, plus a zero tail
  const int64_t padL = std::max<int64_t>(0, -floor_div(pw - (S - 1) * dw, sw));
  const int64_t ow_max = floor_div(W - 1 + pw, sw);
  const int64_t Wpp = std::max(Q, ow_max + 1) + padL + 4 * VL;
  // The filter columns that reach dx column phase + j*sw, and the dy column they read there
  // (j + scol), once per call: building the tap lists with divisions per row and phase was a
  // quarter of the time at 96@112/2 (perf: idiv).
  const int64_t nph = std::min(sw, W);
  std::vector<int64_t> s_n(nph, 0), s_tap(nph * S), s_col(nph * S);
  for (int64_t phase = 0; phase < nph; ++phase)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = phase + pw - s * dw;
      if (floor_mod(t, sw) != 0) continue;
      s_tap[phase * S + s_n[phase]] = s, s_col[phase * S + s_n[phase]] = floor_div(t, sw) + padL, ++s_n[phase];
    }
  // Likewise the filter rows that reach dx row ih, by its residue u = (ih + ph) % sh: r with
  // (u - r*dh) % sh == 0, reading dy row (ih + ph) / sh + r_d (when inside dy).
  std::vector<int64_t> r_n(sh, 0), r_tap(sh * R), r_d(sh * R);
  for (int64_t u = 0; u < sh; ++u)
    for (int64_t r = 0; r < R; ++r) {
      if (floor_mod(u - r * dh, sh) != 0) continue;
      r_tap[u * R + r_n[u]] = r, r_d[u * R + r_n[u]] = floor_div(u - r * dh, sh), ++r_n[u];
    }
  // dx rows in bands of HB (a multiple of sh), each reading its dy rows from a padded copy of
  // about 32 KiB (at most brows rows; a copy of the whole plane per thread was 1 GB for a
  // 32769 x 32769 plane at stride 2)
  const int64_t reach = ceil_div((R - 1) * dh, sh) + 2;  // dy rows a band reads beyond HB / sh
  const int64_t HB = std::max<int64_t>(1, 8192 / Wpp - reach) * sh, brows = HB / sh + reach;
  for_each_task(N * C, p.macs(), [&](int64_t task) {
    const int64_t c = task % C;
    const int64_t Wt = round_up(ceil_div(W, sw), 4 * VL);  // one phase's row in tmp
    float* tmp = scratch(1, sw * Wt + brows * Wpp);  // the sw phase rows of a dx row (strided only)
    float* buf = tmp + sw * Wt;  // the band's dy rows (after tmp: before it, 0.93x at 96@112/2 pad 0)
    const float* src = dy + task * P * Q;
    const float* wc = w + c * R * S;
    float* out = dx + task * H * W;
    const float* tp[kMaxTaps];
    float tw[kMaxTaps];
    int64_t first = 0, band_end = 0;  // the dy row at buf's row 0; the band's end in dx
    for (int64_t ih = 0, u = ph % sh, base = ph / sh; ih < H; ++ih) {  // u, base: (ih + ph) % sh, / sh
      if (ih == band_end) {  // the band's dy rows, those inside dy
        band_end = std::min(H, ih + HB);
        first = std::max<int64_t>(0, floor_div(ih + ph - (R - 1) * dh, sh));
        const int64_t last = std::min(P - 1, floor_div(band_end - 1 + ph, sh));
        for (int64_t oh = first; oh <= last; ++oh) {
          float* d = buf + (oh - first) * Wpp;
          std::memset(d, 0, sizeof(float) * Wpp);
          std::memcpy(d + padL, src + oh * Q, sizeof(float) * Q);
        }
      }
      const int64_t* rt = &r_tap[u * R];
      const int64_t* rd = &r_d[u * R];
      for (int64_t phase = 0; phase < nph; ++phase) {
        int nt = 0;
        for (int64_t i = 0; i < r_n[u]; ++i) {
          const int64_t row = base + rd[i];
          if (row < 0 || row >= P) continue;
          for (int64_t k = 0; k < s_n[phase]; ++k) {
            tp[nt] = buf + (row - first) * Wpp + s_col[phase * S + k];
            tw[nt] = wc[rt[i] * S + s_tap[phase * S + k]], ++nt;
          }
        }
        const int64_t ncol = ceil_div(W - phase, sw);
        const int nq = nq_for(ncol);
        float* o = sw == 1 ? out + ih * W : tmp + phase * Wt;
        for (int64_t j0 = 0; j0 < ncol; j0 += nq * VL) {
          V acc[4] = {Isa::zero(), Isa::zero(), Isa::zero(), Isa::zero()};
          for (int t = 0; t < nt; ++t) {
            const V wv = Isa::set1(tw[t]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v)
              if (v < nq) acc[v] = Isa::fma(wv, Isa::load(tp[t] + j0 + v * VL), acc[v]);
          }
          for (int v = 0; v < nq; ++v) Isa::storem(o + j0 + v * VL, acc[v], Isa::mask(ncol - j0 - v * VL));
        }
      }
      if (sw != 1) interleave_phases(tmp, Wt, sw, W, out + ih * W);
      if (++u == sh) u = 0, ++base;
    }
  });
}


// The ST taps of one filter row over P x Q outputs (a band of an image's rows; backward-weight):
// each dy vector, loaded once, feeds the ST taps' FMAs, and the RB x ST x NQ sums are independent
// chains (one tap at a time ran RB x NQ = 4 chains and reloaded dy per tap; 144@56 stride 1,
// batch 4, 2 threads: see nchw_backward_weight_t). buf: the band's phase rows, rstep floats per
// output row; offs[s]: where tap s of output column 0 reads; lastm: the lanes of a row's last
// step. The sums of a tap are added in the same order as the one-tap loop adds them (the same bits).
template <int NQ, int ST>
void bw_filter_row(const float* buf, const float* g, int64_t P, int64_t Q, int64_t rstep, const int64_t* offs,
                   const M* lastm, double* total) {
  constexpr int RB = 4 / NQ;
  V acc[RB][ST][NQ];
  for (int rb = 0; rb < RB; ++rb)
    for (int s = 0; s < ST; ++s)
      for (int v = 0; v < NQ; ++v) acc[rb][s][v] = Isa::zero();
  const int64_t nqs = ceil_div(Q, NQ * VL);
  for (int64_t p0 = 0; p0 < P; p0 += RB)
    for (int64_t qs = 0; qs < nqs; ++qs) {
      const int64_t q0 = qs * NQ * VL;
      const bool last = qs + 1 == nqs;
#pragma GCC unroll 4
      for (int rb = 0; rb < RB; ++rb) {
        const bool row_ok = p0 + rb < P;
        const int64_t pr = row_ok ? p0 + rb : P - 1;
        const float* gr = g + pr * Q + q0;
        V gv[NQ];
#pragma GCC unroll 4
        for (int v = 0; v < NQ; ++v)
          gv[v] = !row_ok ? Isa::zero() : last ? Isa::loadm(gr + v * VL, lastm[v]) : Isa::load(gr + v * VL);
        const float* xr = buf + pr * rstep + q0;
#pragma GCC unroll 8
        for (int s = 0; s < ST; ++s)
#pragma GCC unroll 4
          for (int v = 0; v < NQ; ++v) acc[rb][s][v] = Isa::fma(gv[v], Isa::load(xr + offs[s] + v * VL), acc[rb][s][v]);
      }
    }
  for (int s = 0; s < ST; ++s) {
    V sum = Isa::zero();
    for (int rb = 0; rb < RB; ++rb)
      for (int v = 0; v < NQ; ++v) sum = Isa::add(sum, acc[rb][s][v]);
    total[s] += hsum(sum);
  }
}

// A task owns a channel and runs each image's plane in bands of BR output rows (PhaseBands, a
// multiple of bw_filter_row's RB), as the forward does: all R filter rows read a band in L1. The
// whole plane packed at once kept a padded copy per thread (4.3 GB for a 32769 x 32769 plane) and
// summed each of its RB x NQ chains over the whole plane (16M float32 steps there); per band, the
// chains are a band long and each band's sums are added in float64. (see the header and the
// forty-first round in docs/results-history.md for the speed)
template <int NQ>
void nchw_backward_weight_t(const Conv2dParams& p, const float* dy, const float* x, float* dwt) {
  constexpr int RB = 4 / NQ;
  const int64_t C = p.C, R = p.R, S = p.S, N = p.N, H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t wq = round_up(Q, NQ * VL) + (S - 1) * dw / sw + 1;
  const PhaseBands bands(p, RB, wq);
  const int64_t BR = bands.BR;
  const int64_t nqs = ceil_div(Q, NQ * VL);
  M lastm[NQ];  // the valid lanes of a row's last step
  for (int v = 0; v < NQ; ++v) lastm[v] = Isa::mask(Q - (nqs - 1) * NQ * VL - v * VL);
  int64_t offs[kMaxTaps];  // tap (r, s) of output column 0 reads buf + offs[r*S + s]
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s) offs[r * S + s] = phase_tap_offset(r, s, dh, dw, sw, wq);
  const int64_t rstep = sh * sw * wq;
  for_each_task(C, p.macs(), [&](int64_t c) {
    float* buf = scratch(1, bands.rows(BR) * sw * wq);
    double total[kMaxTaps] = {};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t pb = 0; pb < P; pb += BR) {
        const int64_t rows = std::min(BR, P - pb);
        pack_phase_plane(x + (n * C + c) * H * W, H, W, ph - pb * sh, pw, sw, bands.rows(rows), wq, buf);
        const float* g = dy + ((n * C + c) * P + pb) * Q;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t* o = offs + r * S;
          double* t = total + r * S;
          switch (S) {  // the filter widths of MobileNet / EfficientNet; others one tap at a time
            case 3: bw_filter_row<NQ, 3>(buf, g, rows, Q, rstep, o, lastm, t); break;
            case 5: bw_filter_row<NQ, 5>(buf, g, rows, Q, rstep, o, lastm, t); break;
            default:
              for (int64_t s = 0; s < S; ++s) bw_filter_row<NQ, 1>(buf, g, rows, Q, rstep, o + s, lastm, t + s);
          }
        }
      }
    for (int64_t t = 0; t < R * S; ++t) dwt[c * R * S + t] = float(total[t]);
  });
}

void nchw_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dwt) {
  switch (nq_for(p.Q)) {
    case 1: return nchw_backward_weight_t<1>(p, dy, x, dwt);
    case 2: return nchw_backward_weight_t<2>(p, dy, x, dwt);
    default: return nchw_backward_weight_t<4>(p, dy, x, dwt);
  }
}

// NHWC backward-weight: per block of output pixels and channel vector, the block's sums in
// registers, then added to its chunk's partial sums; the chunks are added in chunk order at the end (the same
// bits for any thread count). RT x ST > 0 fixes the filter size
// at compile time so the RT*ST accumulators live in registers and interior pixels skip the
// bounds tests; RT = ST = 0 is the generic version.
// Backward-weight runs (NHWC, 3x3, column stride SW, no column dilation): acc[r*3 + s] +=
// sum_{q in [q0, q0 + nq)} dy_row[q][c] * xrow[r][(q*SW - pw + s)*C + c] for one channel
// vector, a run of kRun outputs at a time: the run's dy vectors stay in registers and each
// input vector of a filter row is loaded once for the up to 3 taps that read it (the pixel
// loop loads one input vector per FMA). The run reads its kRun dy pixels through gp and its
// 3 x NX input pixels through xp (tables built once per row, at channel 0: the kernel adds c0);
// missing ones (padding, rows outside the image, outputs past the row's end) point at a vector
// of zeros, so the runs at a row's ends need no tests. TAIL: the one, partial channel vector.
// With the tables, by blocks of channels (as block_forward) and chunks of an even count,
// channels_last batch 4 (96@16: 8), 2 threads, old/new (benchmarks as block_forward's): 960@7
// 1.19-1.22x, 576@14/2 1.21x, 96@16 1.22x, 576@14 1.20x, 192@28 1.15x, 144@56 1.01-1.04x,
// 32@112 0.99x, 96@112/2 0.97-0.98x (memory-bound).
template <int SW, bool TAIL>
__attribute__((noinline)) void bw_runs_3x3(const float* const* xp, const float* const* gp, int nrun, float* pt,
                                           int64_t c_begin, int64_t c_end) {
  constexpr int T = kRun, NX = (T - 1) * SW + 3;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += VL) {
    const M m = Isa::mask(c_end - c0);
    V acc[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = Isa::zero();
    for (int run = 0; run < nrun; ++run) {
      const float* const* x = xp + run * 3 * NX;
      V g[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) g[t] = TAIL ? Isa::loadm(gp[run * T + t] + c0, m) : Isa::load(gp[run * T + t] + c0);
#pragma GCC unroll 3
      for (int r = 0; r < 3; ++r)
#pragma GCC unroll 24
        for (int j = 0; j < NX; ++j) {
          const V xv = TAIL ? Isa::loadm(x[r * NX + j] + c0, m) : Isa::load(x[r * NX + j] + c0);
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s)
            if ((j - s) % SW == 0 && j >= s && (j - s) / SW < T) acc[r * 3 + s] = Isa::fma(g[(j - s) / SW], xv, acc[r * 3 + s]);
        }
    }
    float* p = pt + (c0 / VL) * 9 * VL;
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) Isa::store(p + t * VL, Isa::add(Isa::load(p + t * VL), acc[t]));
  }
}

// One dy row's contribution to the chunk's sums pt[cb][tap][VL], outputs [q_begin, q_end) (at
// most kQB), channels [c_begin, c_end) (c_begin a multiple of VL), in runs (see bw_runs_3x3).
// xrow[r]: input row r of the filter at column 0, or null outside the image; zeros: round_up(C,
// VL) zero floats (the kernels add the channel to every table entry).
constexpr int64_t kQB = 64;
template <int SW>
void bw_row_3x3(const float* const* xrow, const float* grow, float* pt, int64_t q_begin, int64_t q_end, int64_t W,
                int64_t pw, int64_t C, int64_t c_begin, int64_t c_end, const float* zeros) {
  constexpr int T = kRun, NX = (T - 1) * SW + 3, kMaxRuns = kQB / kRun;
  const float* xp[kMaxRuns * 3 * NX];
  const float* gp[kMaxRuns * T];
  const int nrun = int(ceil_div(q_end - q_begin, T));
  const bool rows_in = xrow[0] && xrow[1] && xrow[2];
  for (int run = 0; run < nrun; ++run) {
    const int64_t q0 = q_begin + run * T, col0 = q0 * SW - pw;
    const float** x = xp + run * 3 * NX;
    const float** g = gp + run * T;
    if (rows_in && interior_run(int(std::min<int64_t>(T, q_end - q0)), col0, NX, W)) {  // no tests (cheaper
      for (int t = 0; t < T; ++t) g[t] = grow + (q0 + t) * C;                       // tables for few channels)
      for (int r = 0; r < 3; ++r)
        for (int j = 0; j < NX; ++j) x[r * NX + j] = xrow[r] + (col0 + j) * C;
      continue;
    }
    for (int t = 0; t < T; ++t) g[t] = q0 + t < q_end ? grow + (q0 + t) * C : zeros;
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < NX; ++j) x[r * NX + j] = xrow[r] && col0 + j >= 0 && col0 + j < W ? xrow[r] + (col0 + j) * C : zeros;
  }
  const int64_t c_full = c_begin + (c_end - c_begin) / VL * VL;
  bw_runs_3x3<SW, false>(xp, gp, nrun, pt, c_begin, c_full);
  if (c_full < c_end) bw_runs_3x3<SW, true>(xp, gp, nrun, pt, c_full, c_end);
}

// n values as float32 at d: a copy, or bfloat16 / float16 (H: uint16_t / at::Half) widened
inline void widen(const float* s, int64_t n, float* d) { std::memcpy(d, s, sizeof(float) * n); }
template <typename H>
inline void widen(const H* s, int64_t n, float* d) { widen_row(s, n, d); }

// (T: float, or uint16_t / at::Half for bfloat16 / float16 dy and x, whose rows are widened into
// float32 scratch as a row of dy reads them; dw float32)
template <int RT, int ST, typename T = float>
void nhwc_backward_weight(const Conv2dParams& p, const T* dy, const T* x, float* dwt) {
  constexpr bool kHalf = !std::is_same<T, float>::value;
  const int64_t C = p.C, N = p.N, H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t R = RT ? RT : p.R, S = ST ? ST : p.S, RS = R * S;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  constexpr int kT = RT ? RT * ST : kMaxTaps;
  // output columns whose taps are all inside the image
  const int64_t q_lo = std::min(Q, std::max<int64_t>(0, ceil_div(pw, sw)));
  const int64_t q_hi = std::max(q_lo, std::min(Q, floor_div(W - 1 + pw - (S - 1) * dw, sw) + 1));
  // The N*P output rows are cut into a fixed number of chunks (a function of the shape only: an
  // even number from 2 to 16, of >= 512K multiply-adds and >= 64 output pixels each, so that
  // zeroing and summing a chunk's C x RS partial sums stays small); a task is a chunk and runs its rows in
  // blocks of kQB output pixels, every channel vector of a block before the next block, so the
  // input pixels a block reads are in L1/L2 for all channels. (One task per channel vector over
  // the whole batch read each cache line of x from memory in a separate strided pass per vector:
  // 96@112/2 NHWC ran at 0.4-0.7x torch.) 64-pixel blocks: 8 added the block's tap sums to the
  // chunk's every 8 pixels (9 loads and stores per 72 FMAs); 64 measured 5-20% faster on
  // MobileNet's 56x56 and 28x28 layers at batch 8 (noisy machine: within the spread of torch's
  // own times).
  const int64_t rows = N * P, ncb = ceil_div(C, VL);
  // Even: on 2 threads, 3 chunks left one idle a third of the time (576@14 batch 4: 1.2x faster
  // in 4); more than the sizes allow cost more than the balance gained (960@7 in 4: 0.83x).
  const int64_t nchunk = std::min<int64_t>(rows, std::clamp<int64_t>(std::min(N * P * Q / 64, p.macs() >> 19) / 2 * 2, 2, 16));
  float* partial = scratch(6, nchunk * ncb * RS * VL);  // [chunk][cb][tap][VL]
  // Large inputs: the rows a row of dy reads are first copied into a per-thread band (one
  // sequential pass per row, which the hardware prefetchers stream well), and the strided
  // per-vector loads then hit L1/L2. Read in place, each block's loads went out to memory in a
  // strided order: 96@112/2 NHWC batch 4, 1 thread, 2.35 ms [torch 1.06] -> see the header.
  const bool copy_rows = kHalf || N * H * W * C > (int64_t(4) << 20);
  const bool runs = RT == 3 && ST == 3 && dw == 1 && (sw == 1 || sw == 2);
  // The runs by blocks of Cb channels, all the chunk's rows for a block before the next, where
  // the 3 input rows and the dy row a dy row reads (4 x W x Cb floats) fit in L1 (as the forward
  // does: block_forward); rows copied into the band stay whole (one block).
  const int64_t Cb = runs && !copy_rows && H * W * C <= kBlockImageFloats
                         ? std::min(round_up(C, VL), std::max<int64_t>(VL, kBlockFloats / (4 * W) / VL * VL))
                         : C;
  for_each_task(nchunk, p.macs(), [&](int64_t chunk) {
    float* band = copy_rows ? scratch(7, R * W * C) : nullptr;
    float* gbuf = kHalf ? scratch(8, Q * C) : nullptr;  // a widened dy row
    const float* zeros = runs ? zero_floats(round_up(C, VL)) : nullptr;
    float* part = partial + chunk * ncb * RS * VL;
    std::fill(part, part + ncb * RS * VL, 0.f);
    int64_t held[7];  // the input row (n * H + ih) each band row holds, -1: none (R <= 7: supports)
    std::fill(held, held + 7, int64_t(-1));
    V acc[kT];
    for (int64_t cb0 = 0; cb0 < C; cb0 += Cb)
    for (int64_t row = rows * chunk / nchunk; row < rows * (chunk + 1) / nchunk; ++row) {
      const int64_t n = row / P, pp = row % P;
      const float* xrow[kT > 7 ? 7 : kT] = {};
      bool rvalid[kT > 7 ? 7 : kT] = {};
      for (int64_t r = 0; r < R && r < 7; ++r) {
        const int64_t ih = pp * sh - ph + r * dh;
        rvalid[r] = ih >= 0 && ih < H;
        const T* src = x + ((n * H + (rvalid[r] ? ih : 0)) * W) * C;
        if (copy_rows) {  // one sequential read of the row (see above); rows outside: never read
          // A row the task's previous dy row widened is not widened again: undilated, a dy row
          // reads R consecutive rows, kept at band row ih mod R (stride 2 reads each row 1.5 times,
          // stride 1 R times). Channels_last, old/new builds alternated, best mins (python
          // benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_weight --layout nhwc --dtype D):
          // bfloat16 96@112/2 batch 4 1.17x, 144@56 1.31x, 96@16 batch 8 1.25x; float32 96@112/2
          // (rows copied: a large x) 1.19x.
          const int64_t slot = dh == 1 ? floor_mod(ih, R) : r, key = n * H + ih;
          if (rvalid[r] && held[slot] != key) {
            widen(src, W * C, band + slot * W * C);
            held[slot] = key;
          }
          xrow[r] = band + slot * W * C;
        } else {
          xrow[r] = reinterpret_cast<const float*>(src);  // (T = float here)
        }
      }
      const T* gsrc = dy + ((n * P + pp) * Q) * C;
      if (kHalf) widen(gsrc, Q * C, gbuf);
      const float* grow = kHalf ? gbuf : reinterpret_cast<const float*>(gsrc);
      if (runs) {  // 3x3 at stride 1 or 2 in width, no dilation in width: see bw_run_3x3
        const float* xr[3];
        for (int r = 0; r < 3; ++r) xr[r] = rvalid[r] ? xrow[r] : nullptr;
        for (int64_t qb = 0; qb < Q; qb += kQB)
          (sw == 1 ? bw_row_3x3<1> : bw_row_3x3<2>)(xr, grow, part, qb, std::min(Q, qb + kQB), W, pw, C, cb0,
                                                    std::min(C, cb0 + Cb), zeros);
        continue;
      }
      const M none = Isa::mask(0);
      for (int64_t qb = 0; qb < Q; qb += kQB)
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const int64_t c0 = cb * VL;
        const M m = Isa::mask(C - c0);
        const bool full = C - c0 >= VL;  // (plain loads where the channel vector is whole)
#pragma GCC unroll 49
        for (int t = 0; t < kT; ++t) acc[t] = Isa::zero();
        for (int64_t q = qb; q < std::min(Q, qb + kQB); ++q) {
          const V g = full ? Isa::load(grow + q * C + c0) : Isa::loadm(grow + q * C + c0, m);
          const int64_t iw0 = q * sw - pw;
          if (RT && q >= q_lo && q < q_hi && rvalid[0] && rvalid[R - 1]) {  // interior: no tests
#pragma GCC unroll 7
            for (int r = 0; r < (RT ? RT : 1); ++r)
#pragma GCC unroll 7
              for (int s = 0; s < (ST ? ST : 1); ++s)
              {
                const float* xp = xrow[r] + (iw0 + s * dw) * C + c0;
                acc[r * ST + s] = Isa::fma(g, full ? Isa::load(xp) : Isa::loadm(xp, m), acc[r * ST + s]);
              }
          } else {  // edge: taps outside the image load zeros (masked loads do not fault)
#pragma GCC unroll 7
            for (int r = 0; r < (RT ? RT : 7); ++r) {
              if (!RT && r >= R) break;
#pragma GCC unroll 7
              for (int s = 0; s < (ST ? ST : 7); ++s) {
                if (!ST && s >= S) break;
                const int64_t iw = iw0 + s * dw;
                const bool ok = rvalid[r] && iw >= 0 && iw < W;
                acc[r * S + s] =
                    Isa::fma(g, Isa::loadm(xrow[r] + (ok ? iw : 0) * C + c0, ok ? m : none), acc[r * S + s]);
              }
            }
          }
        }
        float* pt = part + cb * RS * VL;  // the block's sums added to the chunk's
        for (int64_t t = 0; t < RS; ++t) Isa::store(pt + t * VL, Isa::add(Isa::load(pt + t * VL), acc[t]));
      }
    }
  });
  // dw[c, tap] = sum over chunks, in chunk order
  sum_chunks(partial, nchunk, ncb * RS * VL);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t) dwt[c * RS + t] = partial[((c / VL) * RS + t) * VL + c % VL];
}

// Where channel c sits in a row of channels: c itself, or (split: the bfloat16 runs of AVX-512,
// split_run) in its block of 32 the even channels first, then the odd ones.
inline int64_t channel_slot(int64_t c, bool split) { return split ? c / 32 * 32 + c % 2 * 16 + c % 32 / 2 : c; }
// the channels a row holds: C rounded up to whole vectors (split: whole blocks of 32)
inline int64_t row_channels(int64_t C, bool split) { return round_up(C, split ? 32 : VL); }

// weights [R*S][Cp] (Cp = row_channels(C, split); zeros past C, channels at channel_slot)
float* pack_taps(const Conv2dParams& p, const float* w, bool split = false) {
  const int64_t C = p.C, RS = p.R * p.S, Cp = row_channels(C, split);
  float* wt = scratch(0, RS * Cp);
  std::fill(wt, wt + RS * Cp, 0.f);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t) wt[t * Cp + channel_slot(c, split)] = w[c * RS + t];
  return wt;
}

// NCHW flat planes: "same" padding in width (output width Q = ceil(W / stride)), or the
// stride-1 backward-input of it. At stride 1, output pixel i = a*W + b of a plane reads input
// pixel i + off[t] for tap t, off[t] = dr[t]*W + dc[t], the same shift for every pixel: a plane
// is one run of P*Q floats, cut into vectors of VL whatever its width (a 7x7 plane is 4 vectors,
// not 7 rows of one), and each tap is one load per vector. The lanes whose input lies in the
// padding or wraps into the next or previous row are masked off in that load (a masked-off lane
// reads nothing, so it may lie outside the plane). masks[t*nb + j] (vector j, tap t) is built
// once per call for all planes. Forward: dr = r*dh - ph, dc = s*dw - pw; backward-input reads
// dy with dr = ph - r*dh, dc = pw - s*dw (the same taps turned round: no flipped copy of the
// weights). Strided (forward, backward-weight), each input plane is first split into its
// sh*sw phase planes, ceil(H/sh) x ceil(W/sw) each (phase (u, v) holds x[u + i*sh][v + k*sw]):
// tap t then reads phase plane (dr mod sh, dc mod sw) shifted by (dr div sh)*Q + dc div sw, a
// flat shift again because the phase planes are Q wide.
// A lane mask in plain memory, one word each: AVX-512's 16 bits (loaded straight into a mask
// register), or AVX2's 8 bits, expanded to 8 lanes of 0 / -1 through a table.
#if CONV_EXT_ISA_BITS == 512
using MaskWord = uint16_t;
inline M mask_at(const MaskWord* m) { return M(*m); }
#else
using MaskWord = uint8_t;
inline M mask_at(const MaskWord* m) {
  struct Table {
    alignas(32) int32_t lanes[256][8];
    Table() {
      for (int b = 0; b < 256; ++b)
        for (int l = 0; l < 8; ++l) lanes[b][l] = (b >> l) & 1 ? -1 : 0;
    }
  };
  static const Table table;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(table.lanes[*m]));
}
#endif

// A part of a plan: one output plane (the whole output, or one phase plane of dx) and its taps.
struct FlatPart {
  int64_t out = 0;          // where its output starts in a plane's output (buffer)
  int64_t n_out = 0, nb = 0;  // its outputs and vectors of outputs
  int nt = 0;               // its taps: weight widx[e], input shift off[e]
  int64_t widx[kMaxTaps], off[kMaxTaps];
  int64_t mask0 = 0;        // its masks start at masks[mask0]
};

struct FlatPlan {
  int64_t RS = 0;
  int64_t plane_in = 0, n_in = 0;    // floats per input plane in the tensor / as the taps read it
  int64_t plane_out = 0, n_out = 0;  // floats per output plane in the tensor / in the parts' buffer
  bool split = false;  // strided forward / backward-weight: the taps read split_plane's phase planes
  bool merge = false;  // strided backward-input: the parts are dx's phase planes, merged after
  int64_t H = 0, W = 0, sh = 1, sw = 1, Hp = 0, Wp = 0;  // the plane that is split or merged
  int64_t PP = 0;  // floats from one phase plane to the next: Hp*Wp and a vector of slack
  int64_t out_w = 0, row_reach = 0;  // split forward: output row a reads input rows < a*sh + row_reach
  // the input rows that outputs [0, j*VL) of the (single) part read: split before they run
  int64_t rows_for(int64_t j) const {
    const int64_t a = std::min(parts[0].n_out, j * VL) - 1;
    return std::max<int64_t>(0, std::min(H, a / out_w * sh + row_reach));
  }
  bool by_vector = false;  // masks [j][t] (backward-weight), else [t][j]
  std::vector<FlatPart> parts;
  std::vector<MaskWord> masks;
  const MaskWord* mask(const FlatPart& q, int64_t t, int64_t j) const {
    return masks.data() + q.mask0 + (by_vector ? j * q.nt + t : t * q.nb + j);
  }
};

// Adds a part of Ho x Wo outputs at `out`; taps[e] = {weight, shift, a0, a1, b0, b1}: the tap
// reaches the outputs of rows [a0, a1) and columns [b0, b1).
void add_part(FlatPlan& f, int64_t out, int64_t Ho, int64_t Wo, const std::vector<std::array<int64_t, 6>>& taps) {
  FlatPart q;
  q.out = out, q.n_out = Ho * Wo, q.nb = ceil_div(q.n_out, VL), q.nt = static_cast<int>(taps.size());
  q.mask0 = static_cast<int64_t>(f.masks.size());
  f.masks.resize(f.masks.size() + static_cast<size_t>(q.nt * q.nb));
  for (int e = 0; e < q.nt; ++e) {
    const auto& tp = taps[e];
    q.widx[e] = tp[0], q.off[e] = tp[1];
    const int64_t a0 = std::max<int64_t>(0, tp[2]), a1 = std::min(Ho, tp[3]);
    const int64_t b0 = std::max<int64_t>(0, tp[4]), b1 = std::min(Wo, tp[5]);
    for (int64_t j = 0; j < q.nb; ++j) {  // the lanes of vector j, a row's run at a time
      uint32_t bits = 0;
      for (int64_t lane = 0, len; lane < VL && j * VL + lane < q.n_out; lane += len) {
        const int64_t i = j * VL + lane, a = i / Wo, b = i % Wo;
        len = std::min(VL - lane, Wo - b);
        const int64_t lo = std::max(b, b0), hi = std::min(b + len, b1);
        if (a >= a0 && a < a1 && lo < hi) bits |= ((1u << (hi - lo)) - 1u) << (lane + lo - b);
      }
      *const_cast<MaskWord*>(f.mask(q, e, j)) = MaskWord(bits);
    }
  }
  f.parts.push_back(q);
}

// The plan of a pass. Forward / backward-weight (bwd = false): one part, the P x Q output; tap
// (r, s) reads input pixel (a*sh + dr, b*sw + dc), dr = r*dh - ph, dc = s*dw - pw, which is
// phase plane (dr mod sh, dc mod sw) shifted by (dr div sh)*Q + dc div sw (Q = Wp).
// Backward-input (bwd): dx pixel (i*sh + u, k*sw + v) gets tap (r, s) when dr = u (mod sh) and
// dc = v (mod sw), from dy pixel (i - dr div sh, k - dc div sw): one part per phase plane (u, v)
// of dx (a single part at stride 1), each reading dy with its own taps, merged into dx after.
FlatPlan flat_plan(const Conv2dParams& p, bool bwd, bool by_vector = false) {
  const int64_t sh = p.stride_h, sw = p.stride_w, H = p.H, W = p.W, P = p.P, Q = p.Q;
  FlatPlan f;
  f.RS = p.R * p.S, f.by_vector = by_vector;
  f.H = H, f.W = W, f.sh = sh, f.sw = sw, f.Hp = ceil_div(H, sh), f.Wp = ceil_div(W, sw);
  f.PP = sh * sw > 1 ? f.Hp * f.Wp + VL : H * W;
  const int64_t phase_floats = sh * sw * f.PP;
  std::vector<std::array<int64_t, 6>> taps;
  if (!bwd) {
    f.plane_in = H * W, f.split = sh * sw > 1, f.n_in = f.split ? phase_floats : H * W;
    f.plane_out = f.n_out = P * Q;
    for (int64_t r = 0; r < p.R; ++r)
      for (int64_t s = 0; s < p.S; ++s) {
        const int64_t dr = r * p.dil_h - p.pad_h, dc = s * p.dil_w - p.pad_w;
        const int64_t u = floor_mod(dr, sh), v = floor_mod(dc, sw);
        taps.push_back({r * p.S + s, (u * sw + v) * f.PP + floor_div(dr, sh) * f.Wp + floor_div(dc, sw),
                        ceil_div(-dr, sh), ceil_div(H - dr, sh), ceil_div(-dc, sw), ceil_div(W - dc, sw)});
      }
    add_part(f, 0, P, Q, taps);
    f.out_w = Q, f.row_reach = (p.R - 1) * p.dil_h - p.pad_h + 1;
    return f;
  }
  f.plane_in = f.n_in = P * Q, f.plane_out = H * W, f.merge = sh * sw > 1;
  f.n_out = f.merge ? phase_floats + 2 * VL : H * W;  // (interleave_phases reads whole vectors)
  for (int64_t u = 0; u < sh; ++u)
    for (int64_t v = 0; v < sw; ++v) {
      taps.clear();
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t dr = r * p.dil_h - p.pad_h, dc = s * p.dil_w - p.pad_w;
          if (floor_mod(dr, sh) != u || floor_mod(dc, sw) != v) continue;
          const int64_t er = floor_div(dr, sh), ec = floor_div(dc, sw);
          taps.push_back({r * p.S + s, -er * Q - ec, er, P + er, ec, Q + ec});
        }
      // the phase plane's rows and columns that exist in dx (the others are computed, not kept)
      add_part(f, (u * sw + v) * f.PP, f.merge ? f.Hp : H, f.merge ? f.Wp : W, taps);
    }
  return f;
}

// The phase planes of one H x W plane: buf[(u*sw + v)*PP + i*Wp + k] = x[(u + i*sh)*W + v + k*sw].
// Entries past a phase's last row or column are left as they were: no tap's mask reads them.
// Stride 2 (AVX-512) splits a row's 32 values into 16 + 16 with two permutes and whole-vector
// stores: what they write past a row's end is overwritten by the next row of its phase plane,
// or lands in the slack after the plane (masked stores, read back at once, do not forward to
// the loads: 576@14/2 batch 4 forward ran 0.68x as fast as the NHWC tiles with them).
// Rows [ih0, ih1) of the plane (all by default); rows split in increasing order.
void split_plane(const FlatPlan& f, const float* x, float* buf, int64_t ih0 = 0, int64_t ih1 = -1) {
  const int64_t W = f.W, sh = f.sh, sw = f.sw, PP = f.PP, Wp = f.Wp;
  const int64_t H = ih1 < 0 ? f.H : ih1;
  for (int64_t ih = ih0, u = ih0 % sh, i = ih0 / sh; ih < H; ++ih) {
    const float* s = x + ih * W;
    float* d = buf + u * sw * PP + i * Wp;  // phase (u, 0); phase v is v*PP further
#if CONV_EXT_ISA_BITS == 512
    if (sw == 2) {
      for (int64_t k = 0; k < (W + 1) / 2; k += 16) {  // the columns of phase 0 (phase 1: W / 2)
        __m512 e, o;
        split_even_odd(s + 2 * k, W - 2 * k, e, o);
        Isa::store(d + k, e), Isa::store(d + PP + k, o);
      }
    } else
#endif
    {
      for (int64_t v = 0; v < std::min(sw, W); ++v) {
        float* dv = d + v * PP;
        for (int64_t k = 0; v + k * sw < W; ++k) dv[k] = s[v + k * sw];
      }
    }
    if (++u == sh) u = 0, ++i;
  }
}

// dx's rows from its phase planes (the inverse of split_plane).
void merge_plane(const FlatPlan& f, const float* buf, float* dx) {
#if CONV_EXT_ISA_BITS == 512
  if (f.sw == 2 && f.W <= 2 * VL) {
    // Rows of up to 32 (MobileNet's 14x14/2 and 28x28/2 planes): interleave_phases' two permutes
    // with the masks, indices and plan fields held for the whole plane; its per-row setup (the
    // masks rebuilt, the plan's fields reloaded after every store) was most of this function,
    // and this function ~40% of the 576@14/2 backward-input (perf record). NCHW, batch 4, 2
    // threads (python benchmarks/ab.py OLD.so NEW.so 4,576,14,14,576,3,2,1,576 --pass
    // backward_input, 10 rounds, Xeon): 1.36x best mins, 1.67x median of the pairs; 192@28/2 level.
    // (The same two permutes as interleave_phases, kept apart: one hoisted form shared by both,
    // general in W, ran this backward-input 0.90x as fast.)
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const int64_t H = f.H, W = f.W, sh = f.sh, Wp = f.Wp, PP = f.PP;
    const M m0 = Isa::mask(std::min<int64_t>(W, VL)), m1 = Isa::mask(W - VL);
    for (int64_t ih = 0, u = 0, i = 0; ih < H; ++ih) {
      const float* ph = buf + u * 2 * PP + i * Wp;
      const __m512 a = _mm512_loadu_ps(ph), b = _mm512_loadu_ps(ph + PP);  // n_out has the slack
      Isa::storem(dx + ih * W, _mm512_permutex2var_ps(a, lo, b), m0);
      if (W > VL) Isa::storem(dx + ih * W + VL, _mm512_permutex2var_ps(a, hi, b), m1);
      if (++u == sh) u = 0, ++i;
    }
    return;
  }
#endif
  for (int64_t ih = 0, u = 0, i = 0; ih < f.H; ++ih) {
    interleave_phases(buf + u * f.sw * f.PP + i * f.Wp, f.PP, f.sw, f.W, dx + ih * f.W);
    if (++u == f.sh) u = 0, ++i;
  }
}

// Split forward and backward-weight: the rows of NP consecutive planes (x, the tensor's) go into
// their phase planes (buf) as the outputs come to need them. Planes of >= 8K floats are split a
// few rows ahead of each group of 8 output vectors, so the plane's read from memory overlaps the
// FMAs (split whole first, the read waited on memory with nothing else to do); smaller planes
// are split whole. A/B of builds, 2 threads, best mins (python benchmarks/ab.py OLD.so NEW.so
// SHAPE --layout nchw --pass P): 96@112/2 batch 4 forward 1.16-1.31x; in pieces, 144@56/2
// batch 8 forward ran 0.81-0.87x, and the backward-weight of 96@112/2 0.89-0.92x (it splits
// whole: `whole`).
struct PlaneSplit {
  const FlatPlan& f;
  const float* x;
  float* buf;
  int np;
  bool gradual;
  int64_t rows = 0;  // rows [0, rows) split
  PlaneSplit(const FlatPlan& plan, const float* planes, float* b, int n, bool whole = false)
      : f(plan), x(planes), buf(b), np(n), gradual(!whole && plan.H * plan.W >= 8192) {
    if (!gradual) upto(f.H);
  }
  void upto(int64_t r) {
    if (r <= rows) return;
    for (int k = 0; k < np; ++k) split_plane(f, x + k * f.plane_in, buf + k * f.n_in, rows, r);
    rows = r;
  }
  void before(int64_t j) {  // output vector j is next
    if (gradual && j % 8 == 0) upto(f.rows_for(j + 8));
  }
};

// Output vectors j0 .. j0+G of part q of NP consecutive planes (inputs in_step floats apart,
// outputs out_step, taps RS): G*NP independent FMA chains, each tap's G masks loaded once for
// the NP planes. out[k][i] = b[k] + sum_e in[k][i + off[e]] * w[k][widx[e]].
template <int G, int NP>
inline void flat_vectors(const FlatPlan& f, const FlatPart& q, const float* in, const float* w, const V* b, int64_t j0,
                         float* out) {
  const int64_t RS = f.RS, nb = q.nb, in_step = f.n_in, out_step = f.n_out, n_out = q.n_out;
  const MaskWord* mrow = f.mask(q, 0, j0);
  V acc[NP][G];
#pragma GCC unroll 4
  for (int k = 0; k < NP; ++k)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) acc[k][g] = b[k];
  for (int e = 0; e < q.nt; ++e, mrow += nb) {
    M m[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) m[g] = mask_at(mrow + g);
    const float* src = in + j0 * VL + q.off[e];
#pragma GCC unroll 4
    for (int k = 0; k < NP; ++k) {
      const V wv = Isa::set1(w[k * RS + q.widx[e]]);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) acc[k][g] = Isa::fma(Isa::loadm(src + k * in_step + g * VL, m[g]), wv, acc[k][g]);
    }
  }
  float* o = out + q.out;
#pragma GCC unroll 4
  for (int k = 0; k < NP; ++k)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const int64_t i = (j0 + g) * VL;
      if (i + VL <= n_out)
        Isa::store(o + k * out_step + i, acc[k][g]);
      else
        Isa::storem(o + k * out_step + i, acc[k][g], Isa::mask(n_out - i));
    }
}

// NP planes from plane `first` (image-major, so consecutive planes are consecutive channels of
// an image), read from ip and written to out (plane_in and plane_out floats apart): per part,
// vectors 8 at a time, then the rest.
template <int NP>
void flat_group(const FlatPlan& f, int64_t C, const float* ip, const float* w, const float* bias, int64_t first,
                float* out) {
  V b[NP];
  for (int k = 0; k < NP; ++k) b[k] = Isa::set1(bias ? bias[(first + k) % C] : 0.f);
  std::optional<PlaneSplit> split;
  if (f.split) split.emplace(f, ip, scratch(1, NP * f.n_in), NP), ip = split->buf;
  float* op = f.merge ? scratch(2, NP * f.n_out) : out;
  const float* wc = w + (first % C) * f.RS;
  for (const FlatPart& q : f.parts) {
    int64_t j = 0;
    for (; j + 8 <= q.nb; j += 8) {
      if (split) split->before(j);
      flat_vectors<8, NP>(f, q, ip, wc, b, j, op);
    }
    if (split) split->upto(f.H);
    switch (q.nb - j) {
      case 7: flat_vectors<7, NP>(f, q, ip, wc, b, j, op); break;
      case 6: flat_vectors<6, NP>(f, q, ip, wc, b, j, op); break;
      case 5: flat_vectors<5, NP>(f, q, ip, wc, b, j, op); break;
      case 4: flat_vectors<4, NP>(f, q, ip, wc, b, j, op); break;
      case 3: flat_vectors<3, NP>(f, q, ip, wc, b, j, op); break;
      case 2: flat_vectors<2, NP>(f, q, ip, wc, b, j, op); break;
      case 1: flat_vectors<1, NP>(f, q, ip, wc, b, j, op); break;
      default: break;
    }
  }
  if (f.merge)
    for (int k = 0; k < NP; ++k) merge_plane(f, op + k * f.n_out, out + k * f.plane_out);
}

// Whether flat_group takes pairs of planes (flat_planes, h16_planes): both of one image (C even),
// every part of a plane at most 4 vectors (8 FMA chains in a task)
bool flat_pairs(const Conv2dParams& p, const FlatPlan& f) {
  const bool small = std::all_of(f.parts.begin(), f.parts.end(), [](const FlatPart& q) { return q.nb <= 4; });
  return small && p.C % 2 == 0;
}

// out[n, c] = bias[c] + sum_t in[n, c] shifted by off[t] (masked) * w[c, t]; a task is a pair of
// planes when both are of the same image (C even) and every part of a plane is at most 4 vectors
// (MobileNet's 7x7; and the 7x7 phase planes of a strided backward-input of 14x14, which ran one
// plane a task, 4 FMA chains: 576@14/2 batch 4 1.15-1.18x, the 5x5/2 160@7 1.31-1.33x in pairs;
// python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nchw --pass backward_input, Xeon), else
// one plane (flat_pairs).
void flat_planes(const Conv2dParams& p, const FlatPlan& f, const float* in, const float* w, const float* bias,
                 float* out) {
  const int64_t C = p.C, planes = p.N * C;
  if (!flat_pairs(p, f)) {
    for_each_task(planes, p.macs(), [&](int64_t t) {
      flat_group<1>(f, C, in + t * f.plane_in, w, bias, t, out + t * f.plane_out);
    });
    return;
  }
  for_each_task(planes / 2, p.macs(), [&](int64_t t) {
    flat_group<2>(f, C, in + 2 * t * f.plane_in, w, bias, 2 * t, out + 2 * t * f.plane_out);
  });
}

// The sum of a vector's lanes by a tree of shuffles (hsum adds them one by one).
// (The order of _mm512_reduce_add_ps; it, the unmasked shuffle and the 512 -> 256 cast warn of an
// undefined operand in GCC 12's headers, the zero-masked forms do not.)
inline float reduce_add(V v) {
#if CONV_EXT_ISA_BITS == 512
  const __m512 s8 = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x4E));  // lanes i + i+8
  const __m256 h = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(s8), 0));
#else
  const __m256 h = v;
#endif
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// Backward-weight on flat planes: dw[c, t] = sum_n sum_i dy[n, c, i] * x[n, c, i + off[t]]
// (masked), taps t0 .. t0+T of NC consecutive channels from c at a time: T*NC vector sums, each
// dy vector loaded once for its T taps, each tap's mask once for the NC channels.
// E: float, or uint16_t / at::Half for bfloat16 / float16 dy and x, an image's NC planes of each
// widened into scratch (slots 6, 7; in L2) before they are read.
template <int T, int NC, typename E>
inline void flat_weight_taps(const Conv2dParams& p, const FlatPlan& f, const E* dy, const E* x, int64_t c,
                             int64_t t0, float* dwt) {
  V acc[NC][T];
#pragma GCC unroll 2
  for (int k = 0; k < NC; ++k)
#pragma GCC unroll 16
    for (int i = 0; i < T; ++i) acc[k][i] = Isa::zero();
  const FlatPart& q = f.parts[0];  // (the forward's plan: taps t = r*S + s in order)
  const M last = Isa::mask(q.n_out - (q.nb - 1) * VL);
  int64_t off[T];  // (a vector j's masks are adjacent: one pointer, constant offsets)
  for (int i = 0; i < T; ++i) off[i] = q.off[t0 + i];
  for (int64_t n = 0; n < p.N; ++n) {
    const float* g;
    const float* xp;
    if constexpr (std::is_same_v<E, float>) {
      g = dy + (n * p.C + c) * f.n_out, xp = x + (n * p.C + c) * f.plane_in;
    } else {
      float* gw = scratch(6, NC * f.n_out);
      float* xw = scratch(7, NC * f.plane_in);
      widen(dy + (n * p.C + c) * f.n_out, NC * f.n_out, gw);
      widen(x + (n * p.C + c) * f.plane_in, NC * f.plane_in, xw);
      g = gw, xp = xw;
    }
    std::optional<PlaneSplit> split;
    if (f.split) split.emplace(f, xp, scratch(1, NC * f.n_in), NC, true), xp = split->buf;
    for (int64_t j = 0; j < q.nb; ++j) {
      V gv[NC];
#pragma GCC unroll 2
      for (int k = 0; k < NC; ++k)
        gv[k] = j + 1 < q.nb ? Isa::load(g + k * f.n_out + j * VL) : Isa::loadm(g + k * f.n_out + j * VL, last);
      const MaskWord* mj = f.mask(q, t0, j);
      const float* xj = xp + j * VL;
#pragma GCC unroll 16
      for (int i = 0; i < T; ++i) {
        const M m = mask_at(mj + i);
#pragma GCC unroll 2
        for (int k = 0; k < NC; ++k) acc[k][i] = Isa::fma(Isa::loadm(xj + k * f.n_in + off[i], m), gv[k], acc[k][i]);
      }
    }
  }
#pragma GCC unroll 2
  for (int k = 0; k < NC; ++k)
#pragma GCC unroll 16
    for (int i = 0; i < T; ++i) dwt[(c + k) * f.RS + t0 + i] = reduce_add(acc[k][i]);
}

// A task is a pair of channels with 3x3 filters on AVX-512 (18 sums in registers), else one.
template <typename E>
void flat_backward_weight(const Conv2dParams& p, const FlatPlan& f, const E* dy, const E* x, float* dwt) {
  const int64_t RS = f.RS;
  if (RS == 9 && VL == 16 && p.C % 2 == 0) {
    for_each_task(p.C / 2, p.macs(), [&](int64_t task) { flat_weight_taps<9, 2>(p, f, dy, x, 2 * task, 0, dwt); });
    return;
  }
  for_each_task(p.C, p.macs(), [&](int64_t c) {
    int64_t t = 0;
    if (RS == 9) return flat_weight_taps<9, 1>(p, f, dy, x, c, 0, dwt);
    for (; t + 8 <= RS; t += 8) flat_weight_taps<8, 1>(p, f, dy, x, c, t, dwt);
    for (; t < RS; ++t) flat_weight_taps<1, 1>(p, f, dy, x, c, t, dwt);
  });
}

// Small NCHW planes run the NHWC kernels (channel-vectorised, no per-plane setup) on NHWC
// tiles of 16 channels: the vector transposes cost far less than the per-plane overhead.
bool via_nhwc(const Conv2dParams& p) { return p.H * p.W <= 28 * 28 && p.C % 16 == 0; }

// Where the flat planes run: output width Q = ceil(W / stride) (stride 1: as wide as the
// input), while the masks (R*S per output vector, built per call) stay under 1 MiB: planes up
// to ~600x600 with 3x3 filters. A/B of builds, 2 threads (python benchmarks/ab.py OLD.so NEW.so
// N,C,H,H,C,3,S,1,C --layout nchw --pass P, best mins), old/new forward / backward-input /
// backward-weight. Stride 1, batch 8 (against the row kernels, or the NHWC tiles at 14 and 28):
// 384@14 2.01 / 1.97 / 2.14x, 192@28 1.68 / 1.60 / 1.82x, 144@56 1.51 / 1.37 / 2.12x, 32@112
// 1.44 / 1.11 / 1.97x; batch 4 960@7 forward 0.104 -> 0.088 ms with pairs of planes a task (8
// FMA chains) and tasks taken in chunks, backward-weight 0.123 -> 0.074 with pairs of channels
// (each mask loaded once for both) and tree sums. Stride 2: 96@112/2 batch 4 1.05 / 1.62 /
// 1.49x, 144@56/2 batch 8 1.39 / 2.75 / 1.31x.
// Strided forward and backward-weight of small planes with C % 16 == 0 stay with the NHWC tiles
// (via_nhwc): flat, 576@14/2 batch 4 ran 0.74 / 0.81x as fast (0.68 / 0.64x when split_plane
// still ended its rows with masked stores), 192@28/2 batch 8 1.04 / 1.00x; their backward-input
// runs flat: 1.15x, 1.73x.
bool flat_ok(const Conv2dParams& p, bool backward_input) {
  const int64_t nb = ceil_div(std::max(p.H, p.P) * std::max(p.W, p.Q), VL);
  const bool unit = p.stride_h == 1 && p.stride_w == 1;
  return (unit || backward_input || !via_nhwc(p)) && p.Q == ceil_div(p.W, p.stride_w) &&
         p.R * p.S * nb * int64_t(sizeof(MaskWord)) <= (int64_t(1) << 20);
}


// NCHW via NHWC, one block at a time: a task is (image, block of 16 channels); it transposes the
// block's planes into an NHWC tile in its own scratch (in cache), runs the NHWC kernel on the
// 16-channel sub-problem (serially: tasks do not nest), and transposes the result back. Whole-
// tensor NHWC copies cost more than the kernels (two memory round trips, and fresh buffers
// fault in page by page): MobileNet 192@28 batch 8 forward 0.42 ms with them, NHWC kernel alone
// 0.13 -> see the header.
// Forward and backward-input take blocks of 64 channels where C allows (32, else 16): fewer,
// larger sub-problems (16-channel blocks ran 960@7 batch 8 forward at 0.24 ms, 64: 0.15).
// Backward-weight sums the images inside a task, so it keeps 16 for enough tasks (192@28: 0.33
// ms with 16, 0.47 with 64).
// Blocks of 32 on 14x14 planes (a 25 KiB input tile, not 50: inside a 48 KiB L1) ran 576@14/2
// forward 0.90x as fast (Xeon, batch 4, ab.py best mins): 64 stays.
int64_t block_channels(int64_t C) { return C % 64 == 0 ? 64 : C % 32 == 0 ? 32 : 16; }

Conv2dParams channel_block(const Conv2dParams& p, int64_t B) {
  Conv2dParams q = p;
  q.N = 1, q.C = q.K = q.groups = B;
  return q;
}

// tile[pix][B] = planes[c][pix] (plane stride HW, B channels), and back
void block_to_nhwc(const float* planes, int64_t HW, int64_t B, float* tile) { transpose_rows(planes, HW, B, HW, B, tile); }
void block_to_nchw(const float* tile, int64_t HW, int64_t B, float* planes) { transpose_rows(tile, B, HW, B, HW, planes); }
// 16-bit planes (H: bfloat16's uint16_t, at::Half): widened as the transpose loads them, and the
// tile rounded as it stores them
// (AVX-512; AVX2 through a float32 copy of the block in scratch slot 11)
template <typename H>
void block_to_nhwc(const H* planes, int64_t HW, int64_t B, float* tile) {
#if CONV_EXT_ISA_BITS == 512
  transpose_block_rows([&](int64_t i, int64_t l0, M m) { return Isa::loadm(planes + i * HW + l0, m); }, B, HW, B,
                       float_rows(tile, B, B, false));
#else
  float* f = scratch(11, B * HW);
  widen(planes, B * HW, f);
  block_to_nhwc(f, HW, B, tile);
#endif
}
template <typename H>
void block_to_nchw(const float* tile, int64_t HW, int64_t B, H* planes) {
#if CONV_EXT_ISA_BITS == 512
  transpose_block_rows([&](int64_t i, int64_t l0, M m) { return Isa::loadm(tile + i * B + l0, m); }, HW, B, HW,
                       [&](int64_t l, int64_t j0, V v, M sm) { Isa::storem(planes + l * HW + j0, v, sm); });
#else
  float* f = scratch(11, B * HW);
  block_to_nchw(tile, HW, B, f);
  narrow_row(f, B * HW, planes);
#endif
}

// Forward and backward-input on NHWC tiles: per (image, block of B channels), the block of
// `in` (N x C x in_hw; T float, or bfloat16 widened as it is transposed) is transposed into a
// float32 tile, kernel(q, tile_in, c0, tile_out) runs the 16..64-channel NHWC sub-problem q, and
// its tile is transposed into `out` (N x C x out_hw, rounded to T).
template <typename T, typename F>
void on_nhwc_tiles(const Conv2dParams& p, const T* in, int64_t in_hw, T* out, int64_t out_hw, const F& kernel) {
  const Conv2dParams q = channel_block(p, block_channels(p.C));
  const int64_t B = q.C, nb = p.C / B;
  for_each_task(p.N * nb, p.macs(), [&](int64_t task) {
    const int64_t n = task / nb, c0 = (task % nb) * B;
    float* ti = scratch(8, in_hw * B);
    float* to = scratch(9, out_hw * B);
    block_to_nhwc(in + (n * p.C + c0) * in_hw, in_hw, B, ti);
    kernel(q, ti, c0, to);
    block_to_nchw(to, out_hw, B, out + (n * p.C + c0) * out_hw);
  });
}

}  // namespace

// The bias padded with zeros to whole vectors (the runs read it a vector at a time), or null.
const float* padded_bias(const float* bias, int64_t C, bool split = false) {
  if (!bias) return nullptr;
  const int64_t Cp = row_channels(C, split);
  float* bp = scratch(5, Cp);
  std::fill(bp, bp + Cp, 0.f);
  for (int64_t c = 0; c < C; ++c) bp[channel_slot(c, split)] = bias[c];
  return bp;
}

void depthwise_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y,
                       bool nhwc);
void depthwise_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc);

// NCHW forward and backward-input on NHWC tiles (via_nhwc; T float, or bfloat16 for
// depthwise_forward_h16 and _backward_input_h16): each block's float32 NHWC sub-problem.
// Forward: the taps and bias of all the channels are packed once, on the calling thread (its scratch 0
// and 5, which the tasks' NHWC kernels leave alone), each block reading its channels at a row
// stride of C. Packing them per block took ~7% of 576@14/2's forward and its runs' zero
// padding, filled per band, ~3% (perf record). With both once a call (zero_floats) and
// transpose_block_rows' stores unrolled (simd.h), batch 4, 2 threads, NCHW (python
// benchmarks/ab.py OLD.so NEW.so 4,576,14,14,576,3,2,1,576 --pass forward, 12 rounds, Xeon):
// 1.14x best mins, 1.16x median of the pairs (0.091 -> 0.080 ms).
template <typename T>
void tiles_forward(const Conv2dParams& p, const T* x, const float* w, const float* bias, T* y) {
  const float* wt = pack_taps(p, w);
  const float* bp = padded_bias(bias, p.C);
  on_nhwc_tiles(p, x, p.H * p.W, y, p.P * p.Q, [&](const Conv2dParams& q, const float* xt, int64_t c0, float* yt) {
    nhwc_gather(q, xt, wt + c0, bp ? bp + c0 : nullptr, yt, false, p.C);
  });
}
template <typename T>
void tiles_backward_input(const Conv2dParams& p, const T* dy, const float* w, T* dx) {
  on_nhwc_tiles(p, dy, p.P * p.Q, dx, p.H * p.W, [&](const Conv2dParams& q, const float* dyt, int64_t c0, float* dxt) {
    depthwise_backward_input(q, dyt, w + c0 * p.R * p.S, dxt, true);
  });
}

void depthwise_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y,
                       bool nhwc) {
  if (!nhwc && flat_ok(p, false)) return flat_planes(p, flat_plan(p, false), x, w, bias, y);
  if (!nhwc && via_nhwc(p)) return tiles_forward(p, x, w, bias, y);
  if (!nhwc) return nchw_forward(p, x, w, bias, y);
  nhwc_gather(p, x, pack_taps(p, w), padded_bias(bias, p.C), y, false);
}

void depthwise_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  if (!nhwc && flat_ok(p, true)) return flat_planes(p, flat_plan(p, true), dy, w, nullptr, dx);
  if (!nhwc && via_nhwc(p)) return tiles_backward_input(p, dy, w, dx);
  if (!nhwc) return nchw_backward_input(p, dy, w, dx);
  if (turns_round(p)) {  // stride 1: the forward gather of dy with the taps flipped, padding dil*(R-1) - pad
    const Conv2dParams f = turned_problem(p);
    const int64_t RS = p.R * p.S, Cp = round_up(p.C, VL);
    float* wt = pack_taps(p, w);
    float* flipped = scratch(4, RS * Cp);
    for (int64_t t = 0; t < RS; ++t) std::memcpy(flipped + t * Cp, wt + (RS - 1 - t) * Cp, sizeof(float) * Cp);
    return nhwc_gather(f, dy, flipped, nullptr, dx, false);
  }
  nhwc_gather(p, dy, pack_taps(p, w), nullptr, dx, true);
}

void depthwise_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dwt, bool nhwc);

// NCHW backward-weight on NHWC tiles (via_nhwc): a task per block of 16 channels, each image's
// dy and x blocks transposed (T: float, or bfloat16 widened) and the images' dw summed in order
template <typename T>
void tiles_backward_weight(const Conv2dParams& p, const T* dy, const T* x, float* dwt) {
  Conv2dParams q = channel_block(p, 16);
  const int64_t B = q.C, nb = p.C / B, HW = p.H * p.W, PQ = p.P * p.Q, RS = p.R * p.S;
  // images a sub-problem: up to 32K floats of x tile (128 KiB). One image a call (before) set up
  // the NHWC kernel's chunks and tables per image: 13% of 576@14/2's samples (perf record).
  // NCHW, 2 threads, Xeon (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nchw --pass
  // backward_weight, 8 rounds, best mins / median of the pairs): 576@14/2 batch 4 1.07x / 1.12x,
  // batch 8 1.07x / 1.07x, 192@28/2 (2 images a tile) 1.05x / 1.03x.
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(p.N, (int64_t(1) << 15) / (std::max(HW, PQ) * B)));
  for_each_task(nb, p.macs(), [&](int64_t b) {
    const int64_t c0 = b * B;
    float* dyt = scratch(8, per * PQ * B);
    float* xt = scratch(9, per * HW * B);
    float* part = scratch(3, 2 * B * RS);  // [0]: one group of images' dw, [1]: the running sum
    float* sum = part + B * RS;
    for (int64_t n0 = 0; n0 < p.N; n0 += per) {
      Conv2dParams qn = q;
      qn.N = std::min(per, p.N - n0);
      for (int64_t i = 0; i < qn.N; ++i) {
        block_to_nhwc(dy + ((n0 + i) * p.K + c0) * PQ, PQ, B, dyt + i * PQ * B);
        block_to_nhwc(x + ((n0 + i) * p.C + c0) * HW, HW, B, xt + i * HW * B);
      }
      depthwise_backward_weight(qn, dyt, xt, n0 == 0 ? sum : part, true);
      if (n0 > 0)
        for (int64_t i = 0; i < B * RS; ++i) sum[i] += part[i];
    }
    std::memcpy(dwt + c0 * RS, sum, sizeof(float) * B * RS);
  });
}

void depthwise_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dwt, bool nhwc) {
  if (!nhwc && flat_ok(p, false)) return flat_backward_weight(p, flat_plan(p, false, true), dy, x, dwt);
  if (!nhwc && via_nhwc(p)) return tiles_backward_weight(p, dy, x, dwt);
  if (!nhwc) return nchw_backward_weight(p, dy, x, dwt);
  if (p.R == 3 && p.S == 3) return nhwc_backward_weight<3, 3>(p, dy, x, dwt);
  if (p.R == 5 && p.S == 5) return nhwc_backward_weight<5, 5>(p, dy, x, dwt);
  nhwc_backward_weight<0, 0>(p, dy, x, dwt);
}

// bfloat16, channels_last, the forward_runs shapes (3/5/7 taps a row, stride 1 or 2, no
// dilation in width): the runs read x's bfloat16 rows as they lie (each vector converted as it
// is loaded) and store their sums rounded to bfloat16 (Isa::store to uint16_t; through a float32
// row in L1 and a second pass before: 96@112/2 1.11-1.20x faster now, 576@14/2 1.12x, 32@112
// 1.03x, 144@56 level, same A/B as below). Converting the whole
// tensor first (the float32 path of every other kernel) moved 3x the bytes of torch's bfloat16
// kernel (96@112/2 forward 0.29x torch); converting a task's input rows into float32 scratch
// first wrote and read 2x x's bytes again. Batch 4, 2 threads (benchmarks/ab.py --dtype bfloat16
// --layout nhwc): 96@112/2 forward 1.46x faster (0.71 -> 0.45 ms; torch 0.50), 576@14/2 1.43x,
// 144@56 1.24x, 32@112 1.28x, 960@7 1.03x.
bool h16_rows_ok(const Conv2dParams& p) {  // the runs' shapes
  return p.dil_w == 1 && (p.stride_w == 1 || p.stride_w == 2) && (p.S == 3 || p.S == 5 || p.S == 7);
}
bool h16_forward_ok(const Conv2dParams& p) { return is_nhwc(p) || flat_ok(p, false) || via_nhwc(p); }
// 16-bit backward-input: NHWC at stride 1 (turned_problem) in the runs, else (strided) the
// gather; NCHW on the flat planes or the NHWC tiles.
bool h16_rows_turned(const Conv2dParams& p) { return turns_round(p) && h16_rows_ok(turned_problem(p)); }
bool h16_backward_input_ok(const Conv2dParams& p) { return is_nhwc(p) || flat_ok(p, true) || via_nhwc(p); }
// 16-bit backward-weight: NHWC; NCHW on NHWC tiles where the float32 kernel runs there, and on
// the flat planes only where they are split by phase (strided): at stride 1 widening each task's
// planes cost more than float32 copies of the whole tensors (batch 4: 144@56 0.80x, 32@112
// 0.74x, 960@7 0.89x as fast; strided 96@112/2 1.7-1.8x faster, 144@56/2 level: python
// benchmarks/ab.py OLD.so NEW.so 4,96,112,112,96,3,2,1,96 --layout nchw --pass backward_weight
// --dtype bfloat16, best mins).
bool h16_flat_weight(const Conv2dParams& p) { return flat_ok(p, false) && (p.stride_h > 1 || p.stride_w > 1); }
bool h16_backward_weight_ok(const Conv2dParams& p) {
  return is_nhwc(p) || h16_flat_weight(p) || (!flat_ok(p, false) && via_nhwc(p));
}

// NCHW (flat planes, MobileNet's shapes): a task widens its plane into float32 scratch (in L2),
// runs flat_group on it and rounds the output plane back. On float32 copies of the whole tensors
// (every other NCHW bfloat16 problem's path) 96@112/2 took as long as torch (1.6 ms, batch 4).
// Batch 4, 2 threads (benchmarks/ab.py --dtype bfloat16 --layout nchw): forward 96@112/2 1.58x
// faster, 144@56 1.50x, 32@112 1.39x.
template <typename H>
void h16_planes(const Conv2dParams& p, const FlatPlan& f, const H* in, const float* w, const float* bias, H* out) {
  const int64_t n_in = f.plane_in, n_out = f.plane_out;
  auto planes = [&](auto np) {  // np planes a task (flat_group<np>)
    constexpr int NP = decltype(np)::value;
    for_each_task(p.N * p.C / NP, p.macs(), [&](int64_t t) {
      float* xf = scratch(8, NP * n_in);
      float* yf = scratch(9, NP * n_out);
      widen(in + NP * t * n_in, NP * n_in, xf);
      flat_group<NP>(f, p.C, xf, w, bias, NP * t, yf);
      narrow_row(yf, NP * n_out, out + NP * t * n_out);
    });
  };
  // small planes in pairs, as flat_planes takes them (8 FMA chains)
  if (flat_pairs(p, f)) planes(std::integral_constant<int, 2>());
  else planes(std::integral_constant<int, 1>());
}
// the bfloat16 NHWC runs are split_run's on AVX-512 (filter and bias packed to match); float16's
// forward_runs (its values converted by VCVTPH2PS, 16 at a time)
template <typename H>
constexpr bool kSplit = CONV_EXT_ISA_BITS == 512 && std::is_same_v<H, uint16_t>;

#if CONV_EXT_ISA_BITS == 512
// AVX-512 bfloat16 runs on blocks of 32 channels: one 64-byte load of a pixel's 32 values gives its
// even channels (the words' low halves shifted up) and its odd ones (the high halves, masked) as two
// float32 vectors — one integer step a vector where widening 16 values took two (VPMOVZXWD,
// VPSLLD) — and the sums, rounded as c10 rounds (Isa::round_high), go back together by one word
// blend a 32-channel store where narrowing took a shift and a VPMOVDW for each 16. The filter and
// bias are split the same way (pack_taps, padded_bias); the sums' order is forward_run's (taps (i, s) in
// turn, the padding's zeros included), so the results are its bits. Batch 4, 2 threads, old/new
// (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --dtype bfloat16, best mins): forward
// 144@56 1.14-1.16x, 96@112/2 1.14-1.22x, 32@112 1.21x, 960@7 1.12-1.18x, 192@28 5x5 (batch 8)
// 1.16x, 576@14/2 1.01x; the stride-1 backward-input (these runs, taps turned round) 144@56 1.15x.
alignas(64) constexpr uint16_t kZeroWords[32] = {};

template <int S, int SW, bool EDGE>
inline void split_run(const uint16_t* const* xrow, const float* const* wrow, int nr, const float* bias, uint16_t* o,
                      int64_t col0, int nt, int64_t Ws, int64_t C, int64_t Cq) {
  constexpr int T = kRun, NX = (T - 1) * SW + S;
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int64_t c0 = 0; c0 < C; c0 += 32) {
    const bool full = C - c0 >= 32;  // (masked loads and stores are slow on Zen 4: only for a tail)
    const __mmask32 m = full ? ~__mmask32(0) : (__mmask32(1) << (C - c0)) - 1;
    const V be = bias ? Isa::load(bias + c0) : Isa::zero(), bo = bias ? Isa::load(bias + c0 + VL) : Isa::zero();
    V ae[T], ao[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) ae[t] = be, ao[t] = bo;
    for (int i = 0; i < nr; ++i) {
      const uint16_t* xr = xrow[i] + col0 * C + c0;
      V we[S], wo[S];
#pragma GCC unroll 7
      for (int s = 0; s < S; ++s) {
        const float* ws = wrow[i] + s * Cq + c0;
        we[s] = Isa::load(ws), wo[s] = Isa::load(ws + VL);
      }
#pragma GCC unroll 24
      for (int j = 0; j < NX; ++j) {
        // (EDGE: the padding's columns read a block of zeros; a select of vectors here made GCC
        // keep every loaded vector on the stack, 0.8x the runs of forward_run at 576@14/2)
        const uint16_t* src = !EDGE || (col0 + j >= 0 && col0 + j < Ws) ? xr + j * C : kZeroWords;
        const __m512i v = full ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi16(m, src);
        // (the maskz forms: no undefined lanes for GCC's warnings)
        const V xe = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, v, 16));
        const V xo = _mm512_castsi512_ps(_mm512_and_si512(v, high));
#pragma GCC unroll 7
        for (int s = 0; s < S; ++s) {
          const int u = j - s;  // output t = u / SW reads column j with tap s
          if (u < 0 || u % SW != 0 || u / SW >= T) continue;
          ae[u / SW] = Isa::fma(xe, we[s], ae[u / SW]);
          ao[u / SW] = Isa::fma(xo, wo[s], ao[u / SW]);
        }
      }
    }
    for (int t = 0; t < (EDGE ? nt : T); ++t) {
      const __m512i w = _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_maskz_srli_epi32(0xFFFF, Isa::round_high(ae[t]), 16),
                                                Isa::round_high(ao[t]));
      if (full) _mm512_storeu_si512(o + t * C + c0, w);
      else _mm512_mask_storeu_epi16(o + t * C + c0, m, w);
    }
  }
}

template <int S, int SW>
void split_runs(const uint16_t* const* xrow, const float* const* wrow, int nr, const float* bias, uint16_t* orow,
                int64_t Wo, int64_t Ws, int64_t pw, int64_t C, int64_t Cq, bool) {
  for (int64_t b0 = 0; b0 < Wo; b0 += kRun) {
    const int64_t col0 = b0 * SW - pw;
    const int nt = int(std::min<int64_t>(kRun, Wo - b0));
    if (interior_run(nt, col0, (kRun - 1) * SW + S, Ws))
      split_run<S, SW, false>(xrow, wrow, nr, bias, orow + b0 * C, col0, nt, Ws, C, Cq);
    else
      split_run<S, SW, true>(xrow, wrow, nr, bias, orow + b0 * C, col0, nt, Ws, C, Cq);
  }
}

#endif

// The runs of an output row for S taps a row at stride 1 (s1) or 2
template <typename H>
auto h16_runs(int64_t S, bool s1) {
#if CONV_EXT_ISA_BITS == 512
  if constexpr (kSplit<H>)
    return S == 3 ? (s1 ? split_runs<3, 1> : split_runs<3, 2>)
         : S == 5 ? (s1 ? split_runs<5, 1> : split_runs<5, 2>)
                  : (s1 ? split_runs<7, 1> : split_runs<7, 2>);
  else
#endif
    return S == 3 ? (s1 ? forward_runs<3, 1, H, H> : forward_runs<3, 2, H, H>)
         : S == 5 ? (s1 ? forward_runs<5, 1, H, H> : forward_runs<5, 2, H, H>)
                  : (s1 ? forward_runs<7, 1, H, H> : forward_runs<7, 2, H, H>);
}

// NHWC: the runs of each output row on x's 16-bit rows (taps wt packed [tap][Cp], bias padded)
template <typename X>
void h16_rows(const Conv2dParams& p, const X* x, const float* wt, const float* bp, X* y) {
  const int64_t C = p.C, R = p.R, S = p.S, N = p.N, H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, ph = p.pad_h, dh = p.dil_h;
  const bool s1 = p.stride_w == 1;
  const int64_t Cw = row_channels(C, kSplit<X>);  // wt's and bp's rows (AVX-512 bfloat16: split, pack_taps)
  const auto runs = h16_runs<X>(S, s1);
  constexpr int64_t kRows = 8;
  const int64_t nblk = ceil_div(P, kRows);
  for_each_task(N * nblk, p.macs(), [&](int64_t task) {
    const int64_t n = task / nblk, a0 = task % nblk * kRows, a1 = std::min(P, a0 + kRows);
    for (int64_t a = a0; a < a1; ++a) {
      const X* xrow[kMaxTaps];
      const float* wrow[kMaxTaps];
      int nr = 0;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = a * sh - ph + r * dh;
        if (h < 0 || h >= H) continue;
        xrow[nr] = x + (n * H + h) * W * C, wrow[nr] = wt + r * S * Cw, ++nr;
      }
      runs(xrow, wrow, nr, bp, y + (n * P + a) * Q * C, Q, W, p.pad_w, C, Cw, false);
    }
  });
}
// NCHW planes the flat kernels do not take (strided small planes, other paddings) run the float32
// NHWC kernels on tiles as the float32 problems do (on_nhwc_tiles), the planes widened and the
// results rounded in the tiles' transposes. On float32 copies of the whole tensors, MobileNetV2's
// strided 192@28/2 and 576@14/2 ran at 0.5-0.76x torch inside the network (fresh 1-2 MB copies);
// batch 4, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so 4,192,28,28,192,3,2,1,192
// --layout nchw --dtype bfloat16 --pass P, best mins): forward 2.01x / 1.36x (576@14/2),
// backward-weight (tiles_backward_weight) 1.22x / 1.50x.
template <typename H>
void depthwise_forward_h16(const Conv2dParams& p, const H* x, const float* w, const float* bias, H* y) {
  if (!is_nhwc(p) && flat_ok(p, false)) return h16_planes(p, flat_plan(p, false), x, w, bias, y);
  if (!is_nhwc(p)) return tiles_forward(p, x, w, bias, y);
  // (other channels_last shapes: dilated rows, strides past 2, even filters: the gather's pixels)
  if (!h16_rows_ok(p)) return nhwc_gather(p, x, pack_taps(p, w), padded_bias(bias, p.C), y, false);
  h16_rows(p, x, pack_taps(p, w, kSplit<H>), padded_bias(bias, p.C, kSplit<H>), y);
}
template <typename H>
void depthwise_backward_input_h16(const Conv2dParams& p, const H* dy, const float* w, H* dx) {
  if (!is_nhwc(p) && flat_ok(p, true)) return h16_planes(p, flat_plan(p, true), dy, w, nullptr, dx);
  if (!is_nhwc(p)) return tiles_backward_input(p, dy, w, dx);
  // Strided (and other shapes the turned runs do not take): nhwc_gather's phase runs and pixels on
  // bfloat16 dy and dx, widened as loaded and rounded as stored; on float32 copies of the whole
  // tensors it ran at 2.2x the float32 kernel's time (96@112/2 batch 4: 1.9 ms, float32 0.85).
  // Batch 4, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so 4,96,112,112,96,3,2,1,96
  // --layout nhwc --pass backward_input --dtype bfloat16, best mins): 96@112/2 1.89x, 144@56/2
  // 1.83x, 576@14/2 1.50x.
  if (!h16_rows_turned(p)) return nhwc_gather(p, dy, pack_taps(p, w), nullptr, dx, true);
  const int64_t RS = p.R * p.S, Cp = row_channels(p.C, kSplit<H>);
  const float* wt = pack_taps(p, w, kSplit<H>);
  float* flipped = scratch(4, RS * Cp);
  for (int64_t t = 0; t < RS; ++t) std::memcpy(flipped + t * Cp, wt + (RS - 1 - t) * Cp, sizeof(float) * Cp);
  h16_rows(turned_problem(p), dy, flipped, nullptr, dx);
}
// Backward-weight, channels_last: dw (float32, [c][tap]) from bfloat16 dy and x widened a row at a
// time in the task (see nhwc_backward_weight); NCHW: on the flat planes, an image's planes of the
// task's channels widened at a time (flat_weight_taps), or on NHWC tiles (tiles_backward_weight).
template <typename H>
void depthwise_backward_weight_h16(const Conv2dParams& p, const H* dy, const H* x, float* dwt) {
  if (!is_nhwc(p) && flat_ok(p, false)) return flat_backward_weight(p, flat_plan(p, false, true), dy, x, dwt);
  if (!is_nhwc(p)) return tiles_backward_weight(p, dy, x, dwt);
  if (p.R == 3 && p.S == 3) return nhwc_backward_weight<3, 3, H>(p, dy, x, dwt);
  if (p.R == 5 && p.S == 5) return nhwc_backward_weight<5, 5, H>(p, dy, x, dwt);
  nhwc_backward_weight<0, 0, H>(p, dy, x, dwt);
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
