// direct_nchw.cpp — convolutions whose x / dx side has few channels per group (<= 4: the RGB
// stem 3->64 7x7/2, CIFAR's 3->16 stem; <= 8 with >= 8 groups: ResNeXt's 256 g32), fp32, vectorised along the rows of a plane ("NCHW
// style"): forward on NCHW tensors (and grouped channels_last ones, through transposes), backward-input
// on NCHW and NHWC ones.
//
//   forward          y[n,k,p,q..q+VL) = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n,c, p*sh-ph+r*dh, (q..q+VL)*sw-pw+s*dw]
//   backward-input   dx[n,c,h,w..w+VL*sw by sw) = sum_{k,r,s} w[k,c,r,s] * dy[n,k,p,q..q+VL) over the taps
//                    (r, s) of the stride class of (h, w): see direct_backward_input
//
// Why: implicit_gemm vectorises over output channels, so an NCHW call transposes its input
// rows into an NHWC band and its output back into planes; with 3 input channels the reduction
// is short (147 taps for the 7x7 stem) and the 12.8 MB output transpose of the stem was what
// kept NCHW behind channels_last. Here a vector is VL consecutive output pixels of one row:
// the input rows a task needs are copied once with their columns split by stride phase
// (pack_phase_plane, simd.h: buf[c][row][phase][j] = x[c][row][j*sw + phase]), so the VL
// inputs of every tap are one contiguous load, and the output vectors are stored in place.
//
// The micro-kernel (direct_tile): NK output channels x NQ pixel vectors in registers (AVX-512
// 4 x 6 = 24 accumulators, AVX2 3 x 4); each tap t = (c, r, s) broadcasts NK packed weights and
// loads NQ input vectors (one offset off[t] from each vector's own base), NK*NQ FMAs. The pixel
// vectors of a task are the (row, 16-column block) pairs of its rows, one flat list, so a row
// of 112 = 7 vectors does not leave a tile half empty. A task is (image, group, block of output
// rows, its phase rows <= 256 KiB); inside it each tile runs through all the NK-channel blocks,
// so the inputs it reads stay in L1 while the packed filter streams from L2. The other order
// (blocks outermost, bands of <= 32 KiB so they stay in L1 across the blocks: 2 stem rows a task,
// each input row copied 2.25x) was 25% slower: stem, 1 thread, 8.92 -> 6.72 ms.
//
// Speed (Xeon, AVX-512, batch as given, ms; the bench's own tensors after its check, torch and
// the variants in random order per repetition, median of 60): 7x7/2 stem 3->64 @224 batch 4,
// 2 threads: torch 4.87 / 5.67, direct_nchw 4.11 / 5.17 (two runs; implicit_gemm ~5.2 / 6.1);
// 1 thread: torch 8.95, direct 6.72 (140 GFLOP/s). CIFAR stem 3->16 @32 batch 8: torch 0.12-0.17,
// direct 0.06-0.08, implicit_gemm 0.109. Only up to 4 channels a group: with 8 it ties
// implicit_gemm (8->32 @32: 0.278 vs 0.285 ms), with 16 and more it loses, at stride 2 most
// (16->32 @32/2: 0.209 vs 0.111 ms; 24->40 5x5/2 @27: 0.433 vs 0.191). Those A/Bs, 2 threads:
// PYTHONPATH=. python benchmarks/algos.py 8,16,32,32,32,3,2,1 (shape N,C,H,W,K,R,stride,pad).
// Backward-input, 2 threads, ms median of 20 (python benchmarks/algos.py 4,3,224,224,64,7,2,3
// --pass backward_input --layout nchw|nhwc; runs on a fast and a slow phase of the machine):
// stem NCHW torch 30.3 / 41.5, direct_nchw 8.4 / 12.4, implicit_gemm (its col2im) 20.0 / 24.7;
// NHWC torch 23.3 / 36.0, direct 9.4 / 13.5, implicit_gemm 17.3 / 21.6. CIFAR stem (8,3,32,32
// -> 16, --reps 100): NCHW 0.318 / 0.117 / 0.165, NHWC 0.374 / 0.220 / 0.236. Grouped layers
// with <= 4 channels a group run here too (depthwise keeps its own, higher-priority kernel):
// 128->128 3x3 g32 @56 batch 4 (algos.py 4,128,56,56,128,3,1,1,32): NCHW forward 1.86 ms vs
// implicit_gemm 4.43, backward-input 1.95 vs 3.09; channels_last backward-input a tie (7.4 / 7.3).
// Channels_last forward (grouped layers): a task takes as many groups as fill a vector of
// channels (16 // Cg), transposes the input rows it reads into planes (transpose_rows: 16x16
// vector blocks) and its output planes back into pixel rows. 128->128 3x3 g32 @56 batch 4
// (ResNeXt's first stage; python benchmarks/algos.py 4,128,56,56,128,3,1,1,32 --layout nhwc):
// 2.97 ms against implicit_gemm's 8.4 (its vectors of output channels hold the 4 of one group,
// a quarter of the lanes) and torch's 4.2. Since 2026-12-01 the input pixels of each stride
// phase go straight into the phase rows (nhwc_phase_rows), not whole planes first and a second
// copy: batch 4, 2 threads, ms min / median of 6 processes timing 100 forwards each, before ->
// after: 256 g32 @56/2 2.28 / 2.55 -> 1.91 / 2.13, 128 g32 @56 1.85 / 2.02 -> 1.62 / 1.83,
// 256 g32 @28 a tie.
// Channels_last grouped layers with 4 or 8 output channels a group (and no more input channels)
// now run grouped_interleaved.cpp (forward and backward-input at strides 1-2: no transposes); NCHW
// stays here.
// bfloat16 forward (direct_nchw_forward_bf16, AVX512-BF16, an even number of channels a group, or
// any in NCHW: an odd count's last word holds its channel and a zero):
// the tiles' taps are words of two channels (a VDPBF16PS a step, NK x NQ as for float32), the
// phase rows words of channels 2c and 2c + 1 (NCHW: pack_phase_pairs joins the two planes;
// channels_last pixels hold such words, transposed as floats), the sums rounded as they are
// stored (NCHW) or by the output transposes. Batch 4, 2 threads, NCHW, ms min of 30 (python
// benchmarks/algos.py 4,128,56,56,128,3,1,1,32 --layout nchw --dtype bfloat16), this kernel /
// torch: 128 g32 @56 1.03 / 1.88, 256 g32 @56/2 0.75 / 0.78, 256 g32 @28 0.50 / 0.49 (on float32
// copies before: 1.3-1.9 ms). The NCHW RGB stems (3 channels: words (0, 1) and (2, zero)), on
// float32 copies or bf16_pairs' zero-channel copies before: MobileNetV2's 3->32 3x3/2 @224
// 0.84 -> 0.49 ms (torch 0.74; 1.77x old/new in python benchmarks/ab.py OLD.so NEW.so
// 4,3,224,224,32,3,2,1 --layout nchw --dtype bfloat16), the 7x7/2 stem 1.13x, CIFAR's 3->16 @32
// batch 8 1.85x.
// Tiny planes (NCHW forward, output rows shorter than a vector, a problem run serially: the
// (1,3,8,8)->16 layer): the pixel vectors run over the flattened output plane of an im2col
// buffer (tiny_im2col) instead of one half-empty vector a row, and a tile takes the whole plane
// (direct_tile<NQT>: 4 vectors for 8x8, not 6 of which 2 repeat). The layer's forward through
// conv_ext.conv2d, 2 threads, best of 7 x 20000 calls: 4.4 -> 3.6 us (torch 6.3).
// Backward-weight stays with implicit_gemm. A tiny-plane one on the same im2col (dy transposed
// to [pixel][k], 8 taps x 2 vectors of k a tile) saved 0.45 us of that layer's ~6.4 us op call:
// not kept. A dot-product kernel along the rows (NK filters x 6
// taps of dy-row . x-phase-row products, summed across lanes per chunk of rows) ran the stem at
// 10.6-13.9 ms against implicit_gemm's 5.4-7.1: each step's ten vectors came from L2 (no tile
// reuses another's inputs), and short chunks paid a horizontal sum per accumulator.
#ifndef CONV_EXT_ISA_NS
#include <climits>
#include <type_traits>
#include <utility>
#include <vector>

#define CONV_EXT_PER_ISA_FILE "direct_nchw.cpp"
#define CONV_EXT_PER_ISA_BF16  // the forward also runs on bfloat16 pairs (direct_nchw_forward_bf16)
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// <= 4 channels a group on the x side, or <= 8 with 8 groups or more: ResNeXt's 256->256 g32
// layers, batch 4, 2 threads, ms direct_nchw / implicit_gemm (torch), median of 15-20 (python
// benchmarks/algos.py 4,256,28,28,256,3,1,1,32 --layout L --pass P): @28 forward NCHW 1.21 / 1.79
// (3.8), NHWC 1.74 / 2.14 (1.70); backward-input NCHW 1.44 / 2.07 (1.9), NHWC 1.89 / 2.09 (1.6);
// stride 2 @56 forward NCHW 1.95 / 2.33 (2.2), NHWC a tie; backward-input NCHW 1.72 / 3.58 (2.1),
// NHWC 3.29 / 4.96 (2.7). With 16 channels a group it wins only sometimes (512 g32 @14 NCHW
// forward 1.34 / 1.75, @28 5.1 / 4.3; NHWC 1.79 / 1.66) and with 8 groups of 16 it loses.
bool few_channels(const Conv2dParams& p) { return p.Cg() <= 4 || (p.Cg() <= 8 && p.groups >= 8); }

// forward: NCHW; channels_last for grouped layers only (rows transposed in and out per task): the
// 7x7/2 stem and CIFAR's stem (one group) run faster on implicit_gemm, which reads NHWC rows as
// they lie (ms, 2 threads, median of 20, python benchmarks/algos.py SHAPE --layout nhwc: stem
// 4.8 vs direct_nchw 6.1, torch 5.2; 8,3,32,32,16,3,1,1 0.099 vs 0.148, torch 0.206), while
// grouped ones gain most (128->128 3x3 g32 @56 batch 4: 2.97 vs implicit_gemm 8.4, torch 4.2;
// 64->64 3x3/2 g32 @56: 1.12 vs 3.86, torch 0.94).
//
// bfloat16 forward (direct_nchw_forward_bf16): the same tiles on words of two channels, each step
// a VDPBF16PS (two taps' products summed in float32), for an even number of channels a group on
// an AVX512-BF16 CPU without AMX tiles (where they exist amx_bf16 runs these:
// not_bf16_on_amx_tiles; forced, any such CPU). The groups of fewer than 16 channels had no
// bfloat16 kernel of their own and ran on float32 copies: ResNeXt's 128 g32 @56 and 256 g32 @28
// forward 0.5-0.8x torch.
bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  const bool shape_ok = (is_nchw(p) || (is_nhwc(p) && p.groups > 1)) && weight_is_kcrs(p) && few_channels(p);
  if (dtype == at::kBFloat16)  // (odd channel counts a group in NCHW only: channels_last pixels are read as words)
    return shape_ok && (p.Cg() % 2 == 0 || is_nchw(p)) && amx_bf16_available();
  return dtype == at::kFloat && simd_available() && shape_ok;
}

// backward-input: dx has <= 4 channels a group; dy NCHW or NHWC. Problems too small to be
// threaded stay with implicit_gemm's pixel-row kernel, which sets up less: the (1,3,8,8)->16
// layer, ms median of 400 (python benchmarks/algos.py 1,3,8,8,16,3,1,1 --pass backward_input
// --layout nhwc): direct_nchw 0.018, implicit_gemm 0.014 (NCHW 0.023 / 0.021).
// bfloat16 (direct_backward_input_bf16): dy's channels in words of two, an even number of them a
// group, on the CPUs of the bfloat16 forward. NCHW ResNeXt g32 batch 4, ms median (python
// benchmarks/algos.py SHAPE --layout nchw --pass backward_input --dtype bfloat16), which ran on
// float32 copies before (1.81, 2.52, 1.22): 128@56 1.02 vs torch 1.63; 256@56/2 1.55 vs 1.43;
// 256@28 0.70 vs 0.78. Strided dx rows rounded as the phases' permutes store them (not through a
// float32 row): 256@56/2 1.23x faster (ab.py, best mins 1.16 -> 0.95 ms).
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  const bool shape_ok = (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) && few_channels(p) && p.macs() >= kSerialMacs;
  if (dtype == at::kBFloat16)
    return shape_ok && p.Kg() % 2 == 0 && amx_bf16_available();
  return dtype == at::kFloat && simd_available() && shape_ok;
}

void run_forward(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {
    using bf16 = uint16_t;
    auto halves = [](const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.const_data_ptr()); };
    avx512::direct_nchw_forward_bf16(p, halves(o.a), halves(o.b), o.bias.defined() ? halves(o.bias) : nullptr,
                                     reinterpret_cast<bf16*>(o.out.mutable_data_ptr()), is_nhwc(p));
    return;
  }
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  auto f = use_avx512() ? avx512::direct_nchw_forward : avx2::direct_nchw_forward;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias, o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {
    using bf16 = uint16_t;
    avx512::direct_backward_input_bf16(p, reinterpret_cast<const bf16*>(o.a.const_data_ptr()),
                                       reinterpret_cast<const bf16*>(o.b.const_data_ptr()),
                                       reinterpret_cast<bf16*>(o.out.mutable_data_ptr()), is_nhwc(p));
    return;
  }
  auto f = use_avx512() ? avx512::direct_backward_input : avx2::direct_backward_input;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

const bool registered =
    register_algorithm({"direct_nchw", Pass::Forward, 15, supports, run_forward, false, not_bf16_on_amx_tiles}) &&
    register_algorithm({"direct_nchw", Pass::BackwardInput, 15, supports_backward_input, run_backward_input, false,
                        not_bf16_on_amx_tiles});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

constexpr int NK = VL == 16 ? 4 : 3;  // output channels of a tile (weights broadcast)
constexpr int NQ = VL == 16 ? 6 : 4;  // pixel vectors of a tile (inputs loaded)

// taps [t0, t1) of a tile: acc[k][v] += wk[t*NK + k] * xp[v][off[t] .. + VL)
template <int NQ, bool PAIRS>
inline __attribute__((always_inline)) void direct_steps(V (&acc)[NK][NQ], const float* const (&xp)[NQ],
                                                        const int64_t* off, const float* wk, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t o = off[t];
    V wv[NK];
#pragma GCC unroll 4
    for (int k = 0; k < NK; ++k) wv[k] = Isa::set1(wk[t * NK + k]);
#pragma GCC unroll 8
    for (int v = 0; v < NQ; ++v) {
      const V xv = Isa::load(xp[v] + o);
#pragma GCC unroll 4
      for (int k = 0; k < NK; ++k) acc[k][v] = mac<PAIRS>(wv[k], xv, acc[k][v]);
    }
  }
}

// One tile: for k < NK, v < NQ:
//   acc[k][v] = bias[k] + sum_{t < T} wk[t*NK + k] * xb[v][off[t] .. + VL)
// stored to yo[v] + k*kstride for k < kvalid and v < nq (masked by qm[v]; stream: whole vectors
// by non-temporal stores where aligned); vectors v >= nq re-read vector nq-1 and are dropped.
// NQT: the tile's vectors (NQ; fewer for the short planes of tiny_forward). PAIRS: xb and wk are
// words of bfloat16 pairs of channels and each step a VDPBF16PS (mac); O = uint16_t: the sums are
// stored rounded to bfloat16.
template <int NQT = NQ, bool PAIRS = false, typename O = float>
void direct_tile(const float* const* xb, int nq, const int64_t* off, int64_t T, const float* wk, const float* bias,
                 O* const* yo, int64_t kstride, int kvalid, const M* qm, bool stream) {
  constexpr int NQ = NQT;
  const float* xp[NQ];
#pragma GCC unroll 8
  for (int v = 0; v < NQ; ++v) xp[v] = xb[v < nq ? v : std::max(nq - 1, 0)];  // (nq >= 1; GCC cannot tell)
  V acc[NK][NQ];
#pragma GCC unroll 4
  for (int k = 0; k < NK; ++k) {
    const V b = Isa::set1(bias[k]);
#pragma GCC unroll 8
    for (int v = 0; v < NQ; ++v) acc[k][v] = b;
  }
  // chains of at most kChain taps (simd.h): backward-input's Kg x R x S taps (64 x 7 x 7) in one
  // chain came to 5-10x torch's float32 error
  direct_steps<NQ, PAIRS>(acc, xp, off, wk, 0, std::min(T, kChain));
  if (T > kChain) {
    V sum[NK][NQ];
#pragma GCC unroll 4
    for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
      for (int v = 0; v < NQ; ++v) sum[k][v] = acc[k][v], acc[k][v] = Isa::zero();
    for (int64_t t0 = kChain; t0 < T; t0 += kChain) {
      direct_steps<NQ, PAIRS>(acc, xp, off, wk, t0, std::min(T, t0 + kChain));
#pragma GCC unroll 4
      for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
        for (int v = 0; v < NQ; ++v) sum[k][v] = Isa::add(sum[k][v], acc[k][v]), acc[k][v] = Isa::zero();
    }
#pragma GCC unroll 4
    for (int k = 0; k < NK; ++k)
#pragma GCC unroll 8
      for (int v = 0; v < NQ; ++v) acc[k][v] = sum[k][v];
  }
  for (int k = 0; k < kvalid; ++k)
    for (int v = 0; v < nq; ++v) {
      O* d = yo[v] + k * kstride;
      if constexpr (std::is_same_v<O, float>) {
        if (stream && (reinterpret_cast<uintptr_t>(d) & (sizeof(V) - 1)) == 0) {
          Isa::stream(d, acc[k][v]);
          continue;
        }
      }
      Isa::storem(d, acc[k][v], qm[v]);
    }
}

// Output rows (forward) or dx row-phase indices (backward-input) per task, of `total` in each of
// `planes` (image, group) pairs: all of them when the problem runs serially, else about 8 tasks a
// thread, and fewer while a task's band (band_floats(rows)) is over `cap` floats.
template <class BandFloats>
int64_t rows_per_task(const Conv2dParams& p, int64_t total, int64_t planes, const BandFloats& band_floats,
                      int64_t cap) {
  const bool serial = p.macs() < kSerialMacs || pool_threads() == 1;
  int64_t rows = serial ? total : std::max<int64_t>(1, total / ceil_div(8 * pool_threads(), planes));
  while (rows > 1 && band_floats(rows) > cap) --rows;
  return rows;
}

// Groups a task takes: NHWC, as many as fill a vector of channels (whole cache lines move in and
// out of the task's planes), a group being cu values of a pixel (Cg floats, or Cg / 2 words of
// bfloat16 pairs); NCHW, one.
int64_t groups_per_task(const Conv2dParams& p, bool nhwc, int64_t cu) {
  return nhwc ? std::min(p.groups, std::max<int64_t>(1, VL / cu)) : 1;
}

// The phase rows pack_phase_plane makes, from NHWC rows: buf[c][row][phase][j] = x[h0 + row][j*sw
// + phase - pw][c] for the nc channels at x (pixel stride C), zero outside the image; channel c
// at buf + c * nrows*sw*wq. The pixels of one phase are every sw-th of a row: one transpose_rows
// each (the planes were transposed whole, then phase-split by a second copy: 256->256 g32 @56/2
// channels_last forward spent more time in the two copies than in the FMAs).
void nhwc_phase_rows(const float* x, int64_t C, int64_t H, int64_t W, int64_t nc, int64_t h0, int64_t pw, int64_t sw,
                     int64_t nrows, int64_t wq, float* buf) {
  const int64_t cstride = nrows * sw * wq;
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t ih = h0 + i;
    const bool in = ih >= 0 && ih < H;
    for (int64_t phase = 0; phase < sw; ++phase) {
      const int64_t iw0 = floor_mod(phase - pw, sw), j0 = std::min(wq, (iw0 + pw) / sw);  // first column, its j
      const int64_t cnt = in && W > iw0 ? std::min(ceil_div(W - iw0, sw), wq - j0) : 0;
      float* d = buf + (i * sw + phase) * wq;
      for (int64_t c = 0; c < nc; ++c) {
        std::fill(d + c * cstride, d + c * cstride + j0, 0.f);
        std::fill(d + c * cstride + j0 + cnt, d + c * cstride + wq, 0.f);
      }
      if (cnt > 0) transpose_rows(x + (ih * W + iw0) * C, sw * C, cnt, nc, cstride, d + j0, cnt);
    }
  }
}

// Tiny planes, NCHW forward: output rows shorter than a vector in a problem that runs serially
// (the (1,3,8,8)->16 layer: 8 of a row's 16 lanes, and a last tile of 2 vectors computed as 6).
// Each (image, group) is unfolded into col[t][m] = x at tap t = (c, r, s) for output pixel
// m = p*Q + q (zeros where the tap falls in the padding; m padded to whole vectors), so the
// vectors run over the flattened plane: 64 outputs are 4 full vectors, and a tile holds them all.
// The tiles write y's plane directly (channel stride P*Q).
bool tiny_plane(const Conv2dParams& p, bool nhwc) {
  const int64_t pq = round_up(p.P * p.Q, VL);
  return !nhwc && p.Q < VL && pq <= NQ * VL && p.macs() < kSerialMacs && p.Cg() * p.R * p.S * pq <= 16384;
}

template <int NQT>
void tiny_tiles(const Conv2dParams& p, const float* col, const int64_t* off, const float* wp, const float* bp,
                float* y, int64_t n, int64_t g, const M* qm) {
  const int64_t Kg = p.Kg(), T = p.Cg() * p.R * p.S, nkb = ceil_div(Kg, NK), PQ = p.P * p.Q;
  const int nq = static_cast<int>(ceil_div(PQ, VL));
  const float* xb[NQ];
  float* yo[NQ];
  for (int v = 0; v < nq; ++v) xb[v] = col + v * VL;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    float* yk = y + (n * p.K + g * Kg + kb * NK) * PQ;
    for (int v = 0; v < nq; ++v) yo[v] = yk + v * VL;
    direct_tile<NQT>(xb, nq, off, T, wp + (g * nkb + kb) * T * NK, bp + (g * nkb + kb) * NK, yo, PQ,
                     static_cast<int>(std::min<int64_t>(NK, Kg - kb * NK)), qm, false);
  }
}

// col[t][m] (rows PQp apart) for image n, group g: x at tap t = (c, r, s) of output pixel m.
void tiny_im2col(const Conv2dParams& p, const float* x, int64_t n, int64_t g, float* col) {
  const int64_t C = p.C, H = p.H, W = p.W, P = p.P, Q = p.Q, R = p.R, S = p.S, Cg = p.Cg();
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t PQ = P * Q, PQp = round_up(PQ, VL);
  const M row = Isa::mask(Q);
  for (int64_t c = 0, t = 0; c < Cg; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s, ++t) {
        float* d = col + t * PQp;
        std::fill(d + PQ, d + PQp, 0.f);
        // columns q with 0 <= q*sw + s*dw - pw < W
        const int64_t ow = s * dw - pw;
        const int64_t q_lo = std::min(Q, ceil_div(std::max<int64_t>(0, -ow), sw));
        const int64_t q_hi = std::max(q_lo, std::min(Q, ow < W ? floor_div(W - 1 - ow, sw) + 1 : 0));
        for (int64_t pp = 0; pp < P; ++pp, d += Q) {
          const int64_t h = pp * sh - ph + r * dh;
          Isa::storem(d, Isa::zero(), row);
          if (h < 0 || h >= H || q_hi == q_lo) continue;
          const float* src = x + ((n * C + g * Cg + c) * H + h) * W + ow;
          if (sw == 1) {
            const M m = Isa::mask(q_hi - q_lo);
            Isa::storem(d + q_lo, Isa::loadm(src + q_lo, m), m);
          } else {
            for (int64_t q = q_lo; q < q_hi; ++q) d[q] = src[q * sw];
          }
        }
      }
}

void tiny_forward(const Conv2dParams& p, const float* x, const float* wp, const float* bp, float* y) {
  const int64_t T = p.Cg() * p.R * p.S, PQ = p.P * p.Q, PQp = round_up(PQ, VL), nq = PQp / VL;
  float* col = scratch(1, T * PQp);
  int64_t* off = scratch_i64(0, T);
  for (int64_t t = 0; t < T; ++t) off[t] = t * PQp;
  M qm[NQ];
  for (int64_t v = 0; v < nq; ++v) qm[v] = Isa::mask(std::min<int64_t>(VL, PQ - v * VL));
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t g = 0; g < p.groups; ++g) {
      tiny_im2col(p, x, n, g, col);
      switch (nq) {  // the tile's vectors: the plane's, rounded up to an even count
        case 1: case 2: tiny_tiles<2>(p, col, off, wp, bp, y, n, g, qm); break;
        case 3: case 4: tiny_tiles<4>(p, col, off, wp, bp, y, n, g, qm); break;
        default: tiny_tiles<NQ>(p, col, off, wp, bp, y, n, g, qm); break;
      }
    }
}

// transpose_rows of float32 sums into the channels_last pixels of an output of type O: float, or
// uint16_t for bfloat16 (transpose_rows_bf16, rounded as stored)
template <typename O>
inline void transpose_out(const float* src, int64_t lds, int64_t jn, int64_t len, int64_t NVL, O* dst, int64_t jw) {
#if CONV_EXT_ISA_PAIRS
  if constexpr (std::is_same_v<O, uint16_t>) {
    transpose_rows_bf16(src, lds, jn, len, NVL, dst, jw);
    return;
  }
#endif
  if constexpr (std::is_same_v<O, float>) transpose_rows(src, lds, jn, len, NVL, dst, jw);
}

#if CONV_EXT_ISA_PAIRS
// d[j] = the word (low half a[j], high half b[j]; b null: zero) for j < n: rows of two bfloat16
// channels joined into words of pairs, 16 a step
inline void join_rows(const uint16_t* a, const uint16_t* b, int64_t n, float* d) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = Isa::mask(n - j);
    const __m512i va = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(m, a + j));
    const __m512i vb =
        b ? _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(m, b + j)) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(d + j, m, _mm512_or_si512(va, _mm512_maskz_slli_epi32(0xFFFF, vb, 16)));
  }
}

// pack_phase_plane for bfloat16 pairs: the phase rows of NCHW planes a (channel 2c) and b (2c + 1;
// null: zeros, the last channel of an odd count), buf[row][phase][j] = the word (low half a, high
// half b) of column j*sw + phase - pw of row row - ph, zeros outside. Stride 1: the rows joined
// (join_rows); stride 2: the words at those columns hold them in their low halves; other strides
// (and stride 2's last column) one word at a time.
void pack_phase_pairs(const uint16_t* a, const uint16_t* b, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sw,
                      int64_t nrows, int64_t wq, float* buf) {
  const __m512i low = _mm512_set1_epi32(0xFFFF);
  for (int64_t row = 0; row < nrows; ++row) {
    const int64_t ih = row - ph;
    float* d = buf + row * sw * wq;
    if (ih < 0 || ih >= H) {
      std::memset(d, 0, sizeof(float) * sw * wq);
      continue;
    }
    const uint16_t* sa = a + ih * W;
    const uint16_t* sb = b ? b + ih * W : nullptr;
    for (int64_t phase = 0; phase < sw; ++phase) {
      float* dp = d + phase * wq;
      const int64_t off = phase - pw;  // dp[j] <- column j*sw + off, for j in [lo, hi)
      const int64_t lo = std::min(wq, std::max<int64_t>(0, ceil_div(-off, sw)));
      const int64_t hi = std::max(lo, std::min(wq, floor_div(W - 1 - off, sw) + 1));
      zero_floats(dp, lo);
      zero_floats(dp + hi, wq - hi);
      int64_t j = lo;
      if (sw == 1) {
        join_rows(sa + lo + off, sb ? sb + lo + off : nullptr, hi - lo, dp + lo);
        j = hi;
      } else if (sw == 2) {
        const int64_t hv = std::max(lo, std::min(hi, floor_div(W - 2 - off, 2) + 1));  // words inside the row
        for (; j < hv; j += 16) {
          const __mmask16 m = Isa::mask(hv - j);
          const __m512i va = _mm512_maskz_loadu_epi32(m, sa + 2 * j + off);
          const __m512i vb = sb ? _mm512_maskz_loadu_epi32(m, sb + 2 * j + off) : _mm512_setzero_si512();
          _mm512_mask_storeu_epi32(dp + j, m, _mm512_or_si512(_mm512_and_si512(va, low), _mm512_maskz_slli_epi32(0xFFFF, vb, 16)));
        }
        j = hv;
      }
      for (; j < hi; ++j) {
        const uint32_t word = uint32_t(sa[j * sw + off]) | (sb ? uint32_t(sb[j * sw + off]) << 16 : 0u);
        std::memcpy(dp + j, &word, sizeof(word));
      }
    }
  }
}
#endif

// The forward's tasks (see direct_nchw_forward) on the packed filter wp [g][kb][t][NK] and bias bp
// [g][kb][NK]. PAIRS: x and y are bfloat16, and a tap t = (c, r, s) steps over the word of
// channels 2c and 2c + 1 (Cu = Cg / 2 of them; NHWC pixels are C / 2 such words as they lie; an
// odd Cg, NCHW only, pairs its last channel with zeros).
template <bool PAIRS>
void forward_tasks(const Conv2dParams& p, const void* xv, const float* wp, const float* bp, void* yv, bool nhwc) {
  using O = std::conditional_t<PAIRS, uint16_t, float>;
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, P = p.P, Q = p.Q, R = p.R, S = p.S, G = p.groups;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), Cu = PAIRS ? (Cg + 1) / 2 : Cg, Cw = PAIRS ? C / 2 : C, T = Cu * R * S;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t nkb = ceil_div(Kg, NK), qv = ceil_div(Q, VL);  // NK-channel blocks, vectors a row
  const int64_t wq = round_up(qv * VL + (S - 1) * dw / sw + 1, VL);  // columns a phase row holds
  const float* xw = static_cast<const float*>(xv);  // float32 values, or words of bfloat16 pairs
  O* y = static_cast<O*>(yv);

  // A task is (image, block of GB groups, block of output rows). NCHW: one group. NHWC: groups
  // whose channels fill at least a vector (a cache line), so a task transposes whole lines of x
  // into its phase rows and of its output planes into y; with one group a task, the 4 groups sharing
  // a line each read and wrote it (128->128 g32 @56 batch 4: 4.2 ms, the NCHW kernel alone 2.1).
  const int64_t GB = groups_per_task(p, nhwc, Cu), ngb = ceil_div(G, GB);
  // a task's phase rows (GB x Cu x rows x sw x wq floats; NHWC: + its output planes) within
  // 256 KiB of L2
  auto band_rows = [&](int64_t rb) { return (rb - 1) * sh + (R - 1) * dh + 1; };
  auto task_floats = [&](int64_t r) {
    return GB * (band_rows(r) * Cu * sw * wq + (nhwc ? Kg * r * Q : 0));
  };
  const int64_t rb = rows_per_task(p, P, N * ngb, task_floats, 65536);
  const int64_t nblk = ceil_div(P, rb);

  // outputs beyond both L2s, whole vectors: streaming stores (no read-for-ownership of the lines)
  const bool stream = !PAIRS && !nhwc && N * K * P * Q >= kStreamFloats && Q % VL == 0;
  for_each_task(N * ngb * nblk, p.macs(), [&](int64_t task) {
    const int64_t blk = task % nblk, gb = task / nblk % ngb, n = task / (nblk * ngb);
    const int64_t g0 = gb * GB, ng = std::min(G - g0, GB);
    const int64_t p0 = blk * rb, p1 = std::min(P, p0 + rb), nrows = band_rows(p1 - p0);
    const int64_t cstride = nrows * sw * wq;
    float* buf = scratch(1, ng * Cu * cstride);  // [group][c][row][phase][wq]
    if (!nhwc) {
      for (int64_t c = 0; c < Cu; ++c) {
#if CONV_EXT_ISA_PAIRS
        if constexpr (PAIRS) {
          const uint16_t* a = static_cast<const uint16_t*>(xv) + (n * C + g0 * Cg + 2 * c) * H * W;
          const uint16_t* b = 2 * c + 1 < Cg ? a + H * W : nullptr;  // (an odd Cg's last channel: zeros)
          pack_phase_pairs(a, b, H, W, ph - p0 * sh, pw, sw, nrows, wq, buf + c * cstride);
          continue;
        }
#endif
        pack_phase_plane(xw + (n * C + g0 * Cg + c) * H * W, H, W, ph - p0 * sh, pw, sw, nrows, wq, buf + c * cstride);
      }
    } else {  // each input row's pixels of one phase, transposed straight into the phase rows
      nhwc_phase_rows(xw + n * H * W * Cw + g0 * Cu, Cw, H, W, ng * Cu, p0 * sh - ph, pw, sw, nrows, wq, buf);
    }
    int64_t* off = scratch_i64(0, T);
    for (int64_t c = 0, t = 0; c < Cu; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s, ++t)
          off[t] = c * cstride + phase_tap_offset(r, s, dh, dw, sw, wq);
    // the task's pixel vectors: input base, output base (channel 0 of the block), store mask
    const int64_t nvec = (p1 - p0) * qv;
    const float** xb = scratch_rows(2 * nvec);
    M* qm = reinterpret_cast<M*>(scratch(2, nvec * sizeof(M) / sizeof(float) + 1));
    // NHWC: the tiles write ng*Kg float32 planes of the task's rows, transposed into y at the end
    const int64_t ostride = nhwc ? (p1 - p0) * Q : P * Q;  // from one output channel to the next
    auto tiles = [&](auto* out) {  // out: float32 planes, or y itself (NCHW)
      using OT = std::remove_pointer_t<decltype(out)>;
      OT** yo = reinterpret_cast<OT**>(const_cast<float**>(xb + nvec));
      OT* yk[NQ];
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t g = g0 + gi;
        for (int64_t pr = 0, i = 0; pr < p1 - p0; ++pr)
          for (int64_t j = 0; j < qv; ++j, ++i) {
            xb[i] = buf + gi * Cu * cstride + pr * sh * sw * wq + j * VL;
            yo[i] = out + gi * Kg * ostride + pr * Q + j * VL;
            qm[i] = Isa::mask(Q - j * VL);
          }
        // each tile of pixel vectors through all the channel blocks: its inputs stay in L1 while
        // the packed filter (T x Kg floats) streams from L2
        for (int64_t i = 0; i < nvec; i += NQ) {
          const int nq = static_cast<int>(std::min<int64_t>(NQ, nvec - i));
          for (int64_t kb = 0; kb < nkb; ++kb) {
            const int kvalid = static_cast<int>(std::min<int64_t>(NK, Kg - kb * NK));
            for (int v = 0; v < nq; ++v) yk[v] = yo[i + v] + kb * NK * ostride;
            direct_tile<NQ, PAIRS, OT>(xb + i, nq, off, T, wp + (g * nkb + kb) * T * NK, bp + (g * nkb + kb) * NK, yk,
                                       ostride, kvalid, qm + i, stream);
          }
        }
      }
    };
    if (!nhwc) {
      tiles(y + ((n * K + g0 * Kg) * P + p0) * Q);
      if (stream) _mm_sfence();
      return;
    }
    float* out = scratch(4, ng * Kg * ostride);
    tiles(out);
    transpose_out(out, ostride, ng * Kg, ostride, K, y + ((n * P + p0) * Q) * K + g0 * Kg, ng * Kg);
  });
}

// The forward's filter [g][kb][t][NK] and bias [g][kb][NK] (float32), zero past Kg: t over a
// filter's taps (c, r, s); bfloat16 (E = uint16_t): its words (c, r, s) of channels 2c and 2c + 1,
// the bias widened.
template <typename E>
std::pair<float*, float*> pack_forward_filter(const Conv2dParams& p, const E* w, const E* bias) {
  constexpr bool kWords = std::is_same_v<E, uint16_t>;
  const int64_t G = p.groups, Kg = p.Kg(), Cg = p.Cg(), RS = p.R * p.S, nkb = ceil_div(Kg, NK);
  const int64_t T = (kWords ? (Cg + 1) / 2 : Cg) * RS;  // (an odd Cg's last word: its channel and a zero)
  float* wp = scratch(0, G * nkb * T * NK + G * nkb * NK);
  float* bp = wp + G * nkb * T * NK;
  auto as_float = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  };
  for (int64_t g = 0; g < G; ++g)
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int k = 0; k < NK; ++k) {
        const int64_t kk = kb * NK + k;
        float* d = wp + (g * nkb + kb) * T * NK + k;
        const E* wk = w + (g * Kg + kk) * Cg * RS;  // filter kk: [c][r][s] (read only for kk < Kg)
        for (int64_t t = 0; t < T; ++t) {
          const E* f = wk + (kWords ? 2 * (t / RS) * RS + t % RS : t);  // (words: channel 2c's value)
          if (kk >= Kg) d[t * NK] = 0.f;
          else if constexpr (kWords)
            d[t * NK] = as_float(uint32_t(f[0]) | (2 * (t / RS) + 1 < Cg ? uint32_t(f[RS]) << 16 : 0u));
          else d[t * NK] = *f;
        }
        float b = 0.f;
        if (kk < Kg && bias) {
          if constexpr (kWords) b = as_float(uint32_t(bias[g * Kg + kk]) << 16);
          else b = bias[g * Kg + kk];
        }
        bp[(g * nkb + kb) * NK + k] = b;
      }
  return {wp, bp};
}

}  // namespace

void direct_nchw_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y,
                         bool nhwc) {
  const auto [wp, bp] = pack_forward_filter(p, w, bias);
  if (tiny_plane(p, nhwc)) return tiny_forward(p, x, wp, bp, y);
  forward_tasks<false>(p, x, wp, bp, y, nhwc);
}

#if CONV_EXT_ISA_PAIRS
// bfloat16: the sums rounded to bfloat16 as they are stored (NCHW) or by the output transposes (NHWC)
void direct_nchw_forward_bf16(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                              uint16_t* y, bool nhwc) {
  const auto [wp, bp] = pack_forward_filter(p, w, bias);
  forward_tasks<true>(p, x, wp, bp, y, nhwc);
}
#endif

// dx = the transposed convolution of dy, for <= 4 dx channels a group. The dx rows and columns
// split by stride phase: row h = psi + sh*i, column w = phi + sw*j. Tap (r, s) reaches dx only in
// the class psi = (r*dh - ph) mod sh, phi = (s*dw - pw) mod sw, where it reads dy row
// i + (psi + ph - r*dh)/sh and column j + (phi + pw - s*dw)/sw: in phase space a stride-1
// convolution of dy, so every step of a class is one contiguous vector load per 16 dx values,
// and the zeros a stride inserts are never multiplied. A task (image, group, block of i) copies
// the dy rows it needs into a zero-padded band [k][row][column] (NCHW: row copies, NHWC: vector
// transposes), runs direct_tile over each class's phase rows (the tile's "output channels" are
// the dx channels), then interleaves the phase rows into dx.
// E = float, or uint16_t for bfloat16: the band's rows then hold words of dy channels 2k and 2k + 1
// (Ku = Kg / 2 units; NCHW planes joined, NHWC words as they lie), the filter words of filters 2k
// and 2k + 1, each step a VDPBF16PS, and the dx rows rounded to bfloat16 as they are written.
template <typename E>
void backward_input_impl(const Conv2dParams& p, const E* dy, const E* w, E* dx, bool nhwc) {
  constexpr bool kWords = std::is_same_v<E, uint16_t>;
  constexpr int64_t U = kWords ? 2 : 1;  // dy channels a unit
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, P = p.P, Q = p.Q, R = p.R, S = p.S, G = p.groups;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), Ku = Kg / U, Kw = K / U;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  // the taps of each row class psi (dy row offset roff) and column class phi (column offset qoff)
  auto roff = [&](int64_t psi, int64_t r) { return (psi + ph - r * dh) / sh; };
  auto qoff = [&](int64_t phi, int64_t s) { return (phi + pw - s * dw) / sw; };
  std::vector<std::vector<int64_t>> rlist(sh), slist(sw);
  int64_t roff_min = INT64_MAX, roff_max = INT64_MIN, qoff_min = INT64_MAX, qoff_max = INT64_MIN;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t psi = floor_mod(r * dh - ph, sh), o = roff(psi, r);
    rlist[psi].push_back(r);
    roff_min = std::min(roff_min, o), roff_max = std::max(roff_max, o);
  }
  for (int64_t s = 0; s < S; ++s) {
    const int64_t phi = floor_mod(s * dw - pw, sw), o = qoff(phi, s);
    slist[phi].push_back(s);
    qoff_min = std::min(qoff_min, o), qoff_max = std::max(qoff_max, o);
  }
  const int64_t Wt = round_up(ceil_div(W, sw), VL);                  // a phase row of dx, whole vectors
  const int64_t Wb = round_up(Wt + qoff_max - qoff_min, VL);         // a band row: column q at q - qoff_min
  const int64_t Hi = ceil_div(H, sh);                                // values of i

  // The tile's NK "output channels" are blocks of the dx channels (one block on AVX-512, two for
  // 4 channels on AVX2), zeros past Cg. A 3 x 7 (or 3 x 8) tile for RGB instead of 4 x 6 with a
  // channel of zeros measured 20-25% slower (stem, 2 threads).
  const int64_t ncb = ceil_div(Cg, NK);
  // weights per (group, channel block, class): [t = (k, r, s)][NK dx channels], zero past Cg
  const int64_t ncls = sh * sw;
  std::vector<int64_t> cls_t(ncls), cls_at(ncls + 1, 0);
  for (int64_t cl = 0; cl < ncls; ++cl)
    cls_t[cl] = Ku * int64_t(rlist[cl / sw].size() * slist[cl % sw].size()), cls_at[cl + 1] = cls_at[cl] + cls_t[cl];
  const int64_t Tall = cls_at[ncls];  // = Ku*R*S
  float* wp = scratch(0, G * ncb * Tall * NK + NK);
  float* zeros = wp + G * ncb * Tall * NK;
  std::fill(zeros, zeros + NK, 0.f);
  for (int64_t gb = 0; gb < G * ncb; ++gb)
    for (int64_t cl = 0; cl < ncls; ++cl) {
      const int64_t g = gb / ncb, c0 = gb % ncb * NK;
      float* d = wp + (gb * Tall + cls_at[cl]) * NK;
      for (int64_t k = 0; k < Ku; ++k)
        for (int64_t r : rlist[cl / sw])
          for (int64_t s : slist[cl % sw]) {
            for (int c = 0; c < NK; ++c) {
              if (c0 + c >= Cg) {
                d[c] = 0.f;
                continue;
              }
              const E* f = w + (((g * Kg + k * U) * Cg + c0 + c) * R + r) * S + s;
              if constexpr (kWords) {
                const uint32_t word = uint32_t(f[0]) | uint32_t(f[Cg * R * S]) << 16;  // filters 2k, 2k + 1
                std::memcpy(d + c, &word, sizeof(word));
              } else {
                d[c] = *f;
              }
            }
            d += NK;
          }
    }

  // A task is (image, block of GB groups, block of i). NHWC: as many groups as fill a vector of dx
  // channels, so the dy rows come in and the dx rows go out as whole lines by vector transposes
  // (one group a task read a quarter of each dy line and stored dx one float at a time:
  // 128->128 g32 @56 batch 4, 7.9 ms against torch's 4.2). NCHW: one group.
  const int64_t GB = groups_per_task(p, nhwc, Cg), ngb = ceil_div(G, GB);
  // i-rows per task: the dy band (GB x Kg x rows x Wb floats) within 512 KiB
  const int64_t extra = roff_max - roff_min;
  const int64_t ib = rows_per_task(p, Hi, N * ngb, [&](int64_t i) { return GB * Ku * (i + extra) * Wb; }, 131072);
  const int64_t nblk = ceil_div(Hi, ib);
  for_each_task(N * ngb * nblk, p.macs(), [&](int64_t task) {
    const int64_t blk = task % nblk, gbk = task / nblk % ngb, n = task / (nblk * ngb);
    const int64_t g0 = gbk * GB, ng = std::min(G - g0, GB);
    const int64_t i0 = blk * ib, i1 = std::min(Hi, i0 + ib), ni = i1 - i0, nb = ni + extra;
    const int64_t kstride = nb * Wb, p_lo = i0 + roff_min;  // band row b holds dy row p_lo + b
    float* band = scratch(1, ng * Ku * kstride);            // [group][k][row][column]
    // dy columns [qa, qb) land in band columns [ca, cb); the rest of a row, and rows outside dy, are zeros
    const int64_t qa = std::max<int64_t>(0, qoff_min), qb = std::max(qa, std::min(Q, qoff_min + Wb));
    const int64_t ca = qa - qoff_min, cb = qb - qoff_min;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t pp = p_lo + b;
      const bool inside = pp >= 0 && pp < P && cb > ca;
      for (int64_t k = 0; k < ng * Ku; ++k) {
        float* row = band + k * kstride + b * Wb;
        if (!inside) {
          std::memset(row, 0, sizeof(float) * Wb);
          continue;
        }
        std::memset(row, 0, sizeof(float) * ca);
        std::memset(row + cb, 0, sizeof(float) * (Wb - cb));
        if (nhwc) continue;
        const E* src = dy + ((n * K + g0 * Kg + k * U) * P + pp) * Q + qa;
#if CONV_EXT_ISA_PAIRS
        if constexpr (kWords) {
          join_rows(src, src + P * Q, cb - ca, row + ca);
          continue;
        }
#endif
        if constexpr (!kWords) std::memcpy(row + ca, src, sizeof(float) * (cb - ca));
      }
      if (inside && nhwc)  // dy row pp: (qb - qa) pixels x ng*Ku units -> ng*Ku rows of the band
        transpose_rows(reinterpret_cast<const float*>(dy) + ((n * P + pp) * Q + qa) * Kw + g0 * Ku, Kw, qb - qa, ng * Ku,
                       kstride, band + b * Wb + ca, qb - qa);
    }
    // phase rows of dx: tmp[group][c][psi][i - i0][phi][Wt]
    const int64_t cstride = sh * ni * sw * Wt, gstride = ncb * NK * cstride;
    float* tmp = scratch(2, ng * gstride);
    int64_t* off = scratch_i64(0, Tall);
    const int64_t nv_max = ni * (Wt / VL);
    const float** xb = scratch_rows(2 * nv_max);
    float** yo = const_cast<float**>(xb + nv_max);
    M full[NQ];
    for (auto& m : full) m = Isa::mask(VL);
    for (int64_t gi = 0; gi < ng; ++gi)
      for (int64_t cl = 0; cl < ncls; ++cl) {
        const int64_t psi = cl / sw, phi = cl % sw, T = cls_t[cl];
        if (psi >= H || phi >= W) continue;
        int64_t t = 0;
        for (int64_t k = 0; k < Ku; ++k)
          for (int64_t r : rlist[psi])
            for (int64_t s : slist[phi])
              off[t++] = k * kstride + (roff(psi, r) - roff_min) * Wb + (qoff(phi, s) - qoff_min);
        const int64_t nvr = ceil_div(ceil_div(W - phi, sw), VL);  // vectors of a phase row
        int64_t nvec = 0;
        for (int64_t i = i0; i < i1 && psi + sh * i < H; ++i)
          for (int64_t j = 0; j < nvr; ++j, ++nvec) {
            xb[nvec] = band + gi * Ku * kstride + (i - i0) * Wb + j * VL;
            yo[nvec] = tmp + gi * gstride + ((psi * ni + (i - i0)) * sw + phi) * Wt + j * VL;
          }
        for (int64_t cb = 0; cb < ncb; ++cb) {
          const float* wk = wp + (((g0 + gi) * ncb + cb) * Tall + cls_at[cl]) * NK;
          if (cb > 0)
            for (int64_t v = 0; v < nvec; ++v) yo[v] += NK * cstride;
          for (int64_t v0 = 0; v0 < nvec; v0 += NQ)
            direct_tile<NQ, kWords>(xb + v0, static_cast<int>(std::min<int64_t>(NQ, nvec - v0)), off, T, wk, zeros,
                                    yo + v0, cstride, static_cast<int>(std::min<int64_t>(NK, Cg - cb * NK)), full,
                                    false);
        }
      }
    // interleave the phases into the dx rows (NHWC: into ng*Cg rows of W, then one transpose;
    // bfloat16 NCHW: rounded as they are stored)
    float* rows = nhwc ? scratch(5, ng * Cg * W) : nullptr;
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t psi = 0; psi < sh && psi + sh * i < H; ++psi) {
        const int64_t h = psi + sh * i;
        for (int64_t gi = 0; gi < ng; ++gi)
          for (int64_t c = 0; c < Cg; ++c) {
            const float* prow = tmp + gi * gstride + c * cstride + (psi * ni + (i - i0)) * sw * Wt;
            E* dr = dx + ((n * C + (g0 + gi) * Cg + c) * H + h) * W;
            if (nhwc) {
              float* d = rows + (gi * Cg + c) * W;
              if (sw == 1) std::memcpy(d, prow, sizeof(float) * W);
              else interleave_phases(prow, Wt, sw, W, d);
            } else if (sw > 1) {
              interleave_phases(prow, Wt, sw, W, dr);
            } else if constexpr (kWords) {
              narrow_row(prow, W, dr);
            } else {
              std::memcpy(dr, prow, sizeof(float) * W);
            }
          }
        if (nhwc) transpose_out(rows, W, ng * Cg, W, C, dx + (n * H + h) * W * C + g0 * Cg, ng * Cg);
      }
  });
}

void direct_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  backward_input_impl(p, dy, w, dx, nhwc);
}
#if CONV_EXT_ISA_PAIRS
void direct_backward_input_bf16(const Conv2dParams& p, const uint16_t* dy, const uint16_t* w, uint16_t* dx, bool nhwc) {
  backward_input_impl(p, dy, w, dx, nhwc);
}
#endif

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
