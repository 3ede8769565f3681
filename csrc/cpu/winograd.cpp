// winograd.cpp — 3x3 undilated fp32 convolutions by Winograd's minimal filtering:
//  * "winograd", stride 1, F(2x2, 3x3): forward, backward-input (the same convolution of dy with
//    the filter transposed and flipped) and backward-weight (winograd_backward_weight, at the end:
//    its own blocking, described there);
//  * "winograd_s2", stride 2, forward: 25 products for a 2x2 output tile instead of 36 (the S2
//    kind below: the even input rows and columns meet taps 0 and 2 as a 2-tap convolution, done
//    by F(2, 2); the odd ones meet tap 1 alone).
// NCHW and NHWC, groups, padding 0..2 per axis. The steps below are written once for any "kind"
// (a 1-D algorithm: patch size, products, tile size; F23 and S2), the 2-D tile being the product
// of two 1-D ones (Tile2D). What follows describes F(2x2, 3x3); S2 runs the same schedules with
// 25 planes, 5x5 patches 4 apart, V, M tile-major (Planes).
//
// What it computes. The output is cut into 2x2 tiles; tile (n, i, j) reads the 4x4 input patch
// d at rows 2i - pad_h .. +3 and columns 2j - pad_w .. +3 (zeros outside the image), and
//     y(2x2) = A^T [ sum_c (G g_kc G^T) (.) (B^T d_c B) ] A          ((.) = elementwise, 4x4)
// with
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// So the 9 multiplies per output pixel and channel pair of a direct 3x3 become 4 (16 per 2x2
// tile): the sum over c is 16 independent GEMMs, one per position xi of the 4x4 tile,
//     M_xi[tile][k] = sum_c V_xi[tile][c] * U_xi[c][k],   V = B^T d B,  U = G g G^T.
// F(2x2,3x3) is the only Winograd size we use: measured on random data (sizes of ResNet layers),
// its float32 error is 1.0-1.7x that of torch's direct convolution, inside the 4x bound the
// tests hold every default algorithm to; F(3x3,3x3) and F(4x4,3x3) were 7-45x.
//
// Blocking. U (16 x Cg x Kg, padded to whole vectors) is computed once per call, in parallel
// over blocks of filters, from 16x16 vector transposes of w. A task is a block of tiles (whole
// tile rows, or a piece of one long tile row) sized so that its V and M (16 x tiles x channels
// each) stay in L2/L3. The task
//   1. copies the 4 input rows of each tile row into a band [4][cols][C] (zero padding built in;
//      NHWC rows are memcpy'd, NCHW rows vector-transposed) and transforms every tile, 16
//      channels per vector, into V[xi][tile][c];
//   2. runs the 16 GEMMs on the register-blocked micro-kernel of simd.h (tiles are the
//      broadcast rows, output channels the vectors): M[xi][tile][k];
//   3. transforms M back to 2x2 output pixels, adds the bias and stores them (NHWC directly,
//      masked at the channel tail; NCHW through a [pixel][k] row buffer and transpose_rows).
// Every output element is written by one task in a fixed order: the same bits for any thread count.
//
// Speed (2 cores Zen 4, 2 threads, float32; ratio = torch time / ours, interleaved medians).
// ResNet-50 3x3 layers, batch 8 (PYTHONPATH=. python benchmarks/cpu_kernels.py --cases "r50 3x3";
// quiet machine, before the channels_last-filter change): forward 1.46-1.66x at 56/28/14, 1.17x
// (NCHW) / 1.36x (NHWC) at 7x7, 250-370 direct-convolution GFLOP/s; backward-input the same
// within a few %; backward-weight 1.55-2.09x at 56/28/14, 1.29-1.92x at 7x7 (implicit_gemm before:
// 0.73-0.96x). Batch 4 in the default suite: README. These layers lean on the L3 cache (V, M
// and the pieces of U), so on a busy machine they lose more than torch's direct kernel does:
// the same rows have read 1.0-1.1x forward during other tenants' load.
#ifndef CONV_EXT_ISA_NS
#include <atomic>

#define CONV_EXT_PER_ISA_FILE "winograd.cpp"
#include "per_isa.h"
#include "implicit_gemm.h"

namespace conv_ext {
namespace cpu {
namespace {

// A 3x3 problem of the given stride (both axes) in forward form: input (N, C, H, W) -> output
// (N, K, P, Q).
bool wino_shape(const Conv2dParams& p, at::ScalarType dtype, int64_t stride = 1) {
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) &&
         p.R == 3 && p.S == 3 && p.stride_h == stride && p.stride_w == stride && p.dil_h == 1 && p.dil_w == 1 &&
         p.pad_h <= 2 && p.pad_w <= 2;
}

// The transforms cost about 4 * (Cg + Kg) vector operations per tile against Cg * Kg FMAs of the
// GEMMs: with few channels per group the direct kernel (implicit_gemm) is faster. Measured
// against it (batch 8, 2 threads, forced with --algo): 16->16 @32 0.65x, 32->32 @16 1.0-1.15x
// (backward-weight 0.84 -> 0.95x torch), 64->64 @8 1.6x; groups of 16 channels 0.6-0.7x.
bool worth_it(const Conv2dParams& p) { return std::min(p.Cg(), p.Kg()) >= 32 && p.Cg() * p.Kg() >= 1024; }

bool supports(const Conv2dParams& p, at::ScalarType dtype) { return wino_shape(p, dtype) && worth_it(p); }

// With AVX2 only, forward and backward-input also want 48 or more channels per group on their
// output side (Kg for forward; Cg for backward-input, a convolution from K to C channels), and
// backward-weight 64 or more on both sides (65 NCHW): so measured on the 2-core Zen 4 with
// AVX-512 (forced, 2 threads, winograd vs implicit_gemm ms, NCHW/NHWC: 32->32 @16 batch 8 fwd
// 0.122/0.113 vs 0.101/0.089, backward-weight 0.18/0.17 vs 0.116/0.102; NCHW 64->64 @56 batch 4
// backward-weight in a training step 3.79 vs 3.14, sixteenth round), kept where not measured again.
// With AVX-512, on the Xeon (family 6 model 167) of the fiftieth round, one group is faster by
// winograd from 32 channels on both sides in all three passes, as the pass runs alone and in a
// training step (ms winograd / implicit_gemm, median of 20-40, 2 threads, python
// benchmarks/algos.py SHAPE --layout L --pass P [--step], with those bounds lifted):
// backward-weight NCHW 64->64 @56 batch 4 2.23 / 3.56 (--step 2.29 / 3.48), batch 8 4.78 / 6.89,
// @32 1.43 / 2.24, @16 0.41 / 0.62, @8 0.17 / 0.20, 32->32 @32 --step 0.55 / 0.66 (channels_last
// 0.49 / 0.65), 48->48 @28 0.75 / 1.06; forward --step 32->32 @16 0.14 / 0.17 (channels_last
// 0.14 / 0.16), @32 0.52 / 0.61, 128->32 @28 1.24 / 1.61, 32->128 @28 1.48 / 1.82;
// backward-input --step 32->32 @32 0.52 / 0.68, 64->32 @16 0.25 / 0.34; 32->32 @8 level. Groups
// keep the bounds above, and many groups go to implicit_gemm (channels_last, --step): 32 groups
// of 32 @7-@28 0.65-0.85x by winograd in all three passes, ResNeXt-50's 32 groups of 64 @7 (the
// bounds let it through) forward 2.47 / 2.01, backward-input 2.38 / 2.11 (NCHW batch 8 5.94 /
// 4.04), backward-weight 3.54 / 2.48; 16 groups backward-weight: 64 channels @14 3.99 / 3.70, 32
// @28 4.78 / 4.15 (their forward and backward-input by winograd level or faster); 8 groups of 64
// @28 winograd 1.03-1.26x. (16 channels stay below worth_it: 16->16 @32 forward 0.24 / 0.18.)
bool wide_enough(const Conv2dParams& p, int64_t side, int64_t bound) {
  if (!use_avx512()) return side >= bound;
  return p.groups == 1 || (side >= bound && p.groups < 32);
}
bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) { return supports(p, dtype) && wide_enough(p, p.Kg(), 48); }
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return supports(p, dtype) && wide_enough(p, p.Cg(), 48);
}
// Backward-weight on few pixels (batch 1-2 on 7x7-14x14 planes) also wants 256 or more of them,
// or 12M products of pixels and channel pairs: its 16 per-position sums (dU, 16 Kg Cg values a
// chunk, transformed after) cost about what its GEMMs save there. AVX-512, one group, ms winograd
// / implicit_gemm, median of 20 in a training step (python benchmarks/algos.py SHAPE --layout L
// --pass backward_weight --step), NCHW (channels_last): 1x128->128 @7 0.241 / 0.119 (0.233 /
// 0.121), 2x128 @7 0.266 / 0.175, 4x128 @7 0.340 / 0.279, 1x128 @14 0.305 / 0.265 (0.296 / 0.251),
// 1x256 @7 0.665 / 0.491, 2x256 @7 0.789 / 0.661, 1x64 @8 0.075 / 0.066 (0.073 / 0.056), 1x64 @14
// 0.088 / 0.088; and still winograd: 1x256 @14 0.867 / 1.131, 4x256 @7 0.877 / 0.978
// (channels_last), 1x512 @7 1.200 / 2.000, 2x128 @14 0.368 / 0.427, 4x64 @8 0.17 / 0.20. A rule
// of the automatic choice (Algorithm::preferred): forced (tests, benchmarks) it takes them still,
// and its small-shape cases test its blocking.
bool enough_pixels(const Conv2dParams& p, at::ScalarType) {
  const int64_t pix = p.N * p.P * p.Q;
  return !use_avx512() || p.groups > 1 || pix >= 256 || pix * p.Cg() * p.Kg() >= (int64_t(12) << 20);
}
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  return supports(p, dtype) && wide_enough(p, std::min(p.Cg(), p.Kg()), is_nchw(p) ? 65 : 64) &&
         (p.groups < 16 || !use_avx512());
}

auto isa() { return use_avx512() ? avx512::winograd_conv : avx2::winograd_conv; }

void forward(const Conv2dParams& p, Operands& o, WinoKind kind) {
  const WinoShape s{p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w, p.groups, is_nhwc(p), kind};
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  isa()(s, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), false, weight_is_krsc(p), bias,
        o.out.mutable_data_ptr<float>(), p.macs(), o.filter);
}

void run_forward(const Conv2dParams& p, Operands& o) { forward(p, o, kF2x2_3x3); }

// dx = conv(dy, w'), w'[c][k][r][s] = w[k][c][2-r][2-s], padding 2 - pad: dy is the input.
void run_backward_input(const Conv2dParams& p, Operands& o) {
  const WinoShape s{p.N, p.K, p.P, p.Q, p.C, p.H, p.W, 2 - p.pad_h, 2 - p.pad_w, p.groups, is_nhwc(p), kF2x2_3x3};
  isa()(s, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), true, weight_is_krsc(p), nullptr,
        o.out.mutable_data_ptr<float>(), p.macs(), o.filter);
}

// An infinity or a NaN in x or dy reaches every tap of the weight gradients it meets through the
// transforms (G^T dU G mixes a filter's 16 transformed values into its 9 taps), where the direct
// sum makes non-finite only the taps whose products meet it. So where winograd's dw is not all
// finite, implicit_gemm computes it again (tested as dw is written: no pass over x or dy).
void run_backward_weight(const Conv2dParams& p, Operands& o) {
  const WinoShape s{p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w, p.groups, is_nhwc(p), kF2x2_3x3};
  auto f = use_avx512() ? avx512::winograd_backward_weight : avx2::winograd_backward_weight;
  const float *dy = o.a.const_data_ptr<float>(), *x = o.b.const_data_ptr<float>();
  float* dw = o.out.mutable_data_ptr<float>();
  if (f(s, x, dy, dw, weight_is_krsc(p), p.macs())) return;
  auto direct = use_avx512() ? avx512::implicit_gemm_backward_weight : avx2::implicit_gemm_backward_weight;
  direct(p, dy, x, dw, is_nhwc(p), false, nullptr);
}

// winograd_s2: 3x3 stride-2 forward by the S2 kind (25 products for a 2x2 output tile, 36
// direct), where its U (25 x Cg x Kg floats) stays within the cached small-U schedule (2 MiB) and
// both sides have 64+ channels a group. 2 cores Zen 4, batch 4, ms winograd_s2 vs implicit_gemm,
// interleaved medians (PYTHONPATH=. python benchmarks/algos.py SHAPE --layout L --pass forward),
// channels_last / NCHW: 96->96 @56 1.21x / 1.28x, 128->128 @56 1.05-1.16x / 1.05-1.10x, 64->128
// @56 1.06x / 0.98x; not taken: 32->64 @32 0.99x / 1.01x, 128->256 @28 0.92x / 0.93x (U of 3.2
// MiB), 256->256 @28 0.90x / 0.92x (the large-U schedule). Backward-input by the transposed kind
// (dx tiles of 4x4 from 3x3 dy patches, 25 products) ran 0.96-1.07x channels_last and 0.87-0.97x
// NCHW, backward-weight 0.65-0.78x: both left to implicit_gemm.
// With AVX-512 (the Xeon of the fiftieth round), channels_last only: NCHW wins alone (128->128 @56
// batch 4 3.21 vs 3.40 ms) but not where other work runs between its calls, as in a network or a
// training step (ms winograd_s2 vs implicit_gemm, python benchmarks/algos.py SHAPE --layout nchw
// --pass forward --between / --step, medians of 20-30): batch 8 128->128 @56 --between 7.69 vs
// 7.35, --step 7.98 vs 6.60; 64->128 4.22 vs 3.69, 4.26 vs 3.47; 96->96 4.79 vs 4.16, 5.07 vs
// 4.12; batch 4 128->128 4.18 vs 3.70, 4.27 vs 3.48 (96->96 @56 batch 4 the one win left: 2.50 vs
// 2.83). Channels_last, batch 8, --between: 128->128 @56 6.45 vs 6.94, 64->128 2.79 vs 3.27.
// A rule of the automatic choice (preferred_s2): forced (tests, benchmarks) it still takes NCHW,
// as winograd's backward-weight its few pixels, and its NCHW bands stay tested.
bool supports_s2(const Conv2dParams& p, at::ScalarType dtype) {
  using S2 = avx512::S2;  // (the same constants in every ISA; AVX-512's padding of Kg is the wider)
  const int64_t u_floats = avx512::Tile2D<S2>::NP * p.groups * p.Cg() * round_up(p.Kg(), 16);
  return wino_shape(p, dtype, 2) && std::min(p.Cg(), p.Kg()) >= 64 && u_floats <= S2::kSmallU;
}
bool preferred_s2(const Conv2dParams& p, at::ScalarType) { return is_nhwc(p) || !use_avx512(); }

void run_forward_s2(const Conv2dParams& p, Operands& o) { forward(p, o, kStride2); }

const bool registered = register_algorithm({"winograd", Pass::Forward, 40, supports_forward, run_forward, true}) &&
                        register_algorithm({"winograd", Pass::BackwardInput, 40, supports_backward_input, run_backward_input, true}) &&
                        register_algorithm({"winograd", Pass::BackwardWeight, 40, supports_backward_weight, run_backward_weight, true,
                                            enough_pixels}) &&
                        register_algorithm({"winograd_s2", Pass::Forward, 39, supports_s2, run_forward_s2, true, preferred_s2});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA (namespace CONV_EXT_ISA_NS) ----------------

namespace conv_ext {
namespace cpu {

#ifndef CONV_EXT_WINO_SHAPE
#define CONV_EXT_WINO_SHAPE
// A problem in forward form: input (N, C, H, W) -> output (N, K, P, Q), groups G. Tile (i, j) of
// a Winograd kind (below) reads the input patch at row ST*i - ph, column ST*j - pw and makes the
// output pixels from row OT*i, column OT*j.
struct WinoShape {
  int64_t N, C, H, W, K, P, Q, ph, pw, G;
  bool nhwc;
  int kind;  // WinoKind
};
enum WinoKind { kF2x2_3x3 = 0, kStride2 = 1 };
#endif

namespace CONV_EXT_ISA_NS {
namespace {

// Winograd kinds, one dimension at a time (a 2-D tile is the product of two: Tile2D below). A
// tile of OT outputs comes from a patch of PS inputs (patches ST apart) through N products:
//   in   the patch -> N values (B^T)          wt   the 3 taps -> N values (G)
//   out  N products -> OT outputs (A^T)       dy   OT output gradients -> N values (A)
//   wg   N values -> the 3 taps' gradients (G^T)
// Strided views: x[i*xs] -> v[i*vs].
//
// F(2, 3), stride 1: 4 products for 2 outputs (6 direct).
struct F23 {
  static constexpr int N = 4, PS = 4, ST = 2, OT = 2, kTag = 4;
  static constexpr int64_t kSmallU = 256 * 1024, kTaskFloats = 128 * 1024;  // schedules: winograd_conv
  static constexpr bool kTileMajor = false;  // V, M in the small-U schedule: Planes
  static void in(const V* x, int xs, V* v, int vs) {
    v[0] = Isa::sub(x[0], x[2 * xs]), v[vs] = Isa::add(x[xs], x[2 * xs]);
    v[2 * vs] = Isa::sub(x[2 * xs], x[xs]), v[3 * vs] = Isa::sub(x[xs], x[3 * xs]);
  }
  static void wt(const V* g, int gs, V* u, int us) {
    const V h = Isa::set1(0.5f), e = Isa::add(g[0], g[2 * gs]);
    u[0] = g[0], u[us] = Isa::mul(h, Isa::add(e, g[gs])), u[2 * us] = Isa::mul(h, Isa::sub(e, g[gs]));
    u[3 * us] = g[2 * gs];
  }
  static void out(const V* m, int ms, V* y, int ys) {
    y[0] = Isa::add(Isa::add(m[0], m[ms]), m[2 * ms]), y[ys] = Isa::sub(Isa::sub(m[ms], m[2 * ms]), m[3 * ms]);
  }
  static void dy(const V* e, int es, V* E, int Es) {
    E[0] = e[0], E[Es] = Isa::add(e[0], e[es]), E[2 * Es] = Isa::sub(e[0], e[es]);
    E[3 * Es] = Isa::sub(Isa::zero(), e[es]);
  }
  static void wg(const V* u, int us, V* o, int os) {
    const V h = Isa::set1(0.5f), p = Isa::mul(h, Isa::add(u[us], u[2 * us]));
    o[0] = Isa::add(u[0], p), o[os] = Isa::mul(h, Isa::sub(u[us], u[2 * us])), o[2 * os] = Isa::add(p, u[3 * us]);
  }
};

// Stride 2, forward: outputs y0, y1 read the patch x0..x4 (y0: x0 x1 x2, y1: x2 x3 x4). The even
// inputs meet the taps w0, w2 as a 2-tap convolution of 2 outputs, done by F(2, 2) in 3 products
// (x0-x2)w0, x2(w0+w2), (x4-x2)w2; the odd ones meet w1 alone, 2 products: 5 products for 2
// outputs (6 direct), 25 for a 2x2 tile (36). Additions only: its rounding is that of a direct sum.
struct S2 {
  static constexpr int N = 5, PS = 5, ST = 4, OT = 2, kTag = 5;
  // U of up to 2 MiB cached (the layers it is chosen for); tasks of ~768 KiB of V and M: 2 tile
  // rows at 128@56 (1 row, 14 tiles: 0.93x; 3 rows 0.98x); V, M tile-major 1.01-1.03x
  static constexpr int64_t kSmallU = 512 * 1024, kTaskFloats = 192 * 1024;
  static constexpr bool kTileMajor = true;
  static void in(const V* x, int xs, V* v, int vs) {
    v[0] = Isa::sub(x[0], x[2 * xs]), v[vs] = x[2 * xs], v[2 * vs] = Isa::sub(x[4 * xs], x[2 * xs]);
    v[3 * vs] = x[xs], v[4 * vs] = x[3 * xs];
  }
  static void wt(const V* g, int gs, V* u, int us) {
    u[0] = g[0], u[us] = Isa::add(g[0], g[2 * gs]), u[2 * us] = g[2 * gs], u[3 * us] = g[gs], u[4 * us] = g[gs];
  }
  static void out(const V* m, int ms, V* y, int ys) {
    y[0] = Isa::add(Isa::add(m[0], m[ms]), m[3 * ms]), y[ys] = Isa::add(Isa::add(m[ms], m[2 * ms]), m[4 * ms]);
  }
};

// The 2-D transforms of a kind T: columns first, then rows (for F23 the same operations, in the
// same order, as the hand-written 4x4 tiles this replaced: the same bits).
template <class T>
struct Tile2D {
  static constexpr int N = T::N, NP = N * N, PS = T::PS, OT = T::OT;
  // V = B^T d B: d[a*PS + b] -> v[i*N + j]
  static void input(const V* d, V* v) {
    V t[N * PS];
    for (int b = 0; b < PS; ++b) T::in(d + b, PS, t + b, PS);
    for (int i = 0; i < N; ++i) T::in(t + i * PS, 1, v + i * N, 1);
  }
  // U = G g G^T: g[r*3 + s] -> u[i*N + j]
  static void weight(const V* g, V* u) {
    V t[N * 3];
    for (int s = 0; s < 3; ++s) T::wt(g + s, 3, t + s, 3);
    for (int i = 0; i < N; ++i) T::wt(t + i * 3, 1, u + i * N, 1);
  }
  // y = A^T m A + bias: m[i*N + j] -> y[a*OT + b]
  static void output(const V* m, V bias, V* y) {
    V t[OT * N];
    for (int j = 0; j < N; ++j) T::out(m + j, N, t + j, N);
    for (int a = 0; a < OT; ++a) T::out(t + a * N, 1, y + a * OT, 1);
    for (int i = 0; i < OT * OT; ++i) y[i] = Isa::add(y[i], bias);
  }
  // E = A e A^T: the output gradient e[a*OT + b] -> E[i*N + j]
  static void dy(const V* e, V* E) {
    V t[N * OT];
    for (int b = 0; b < OT; ++b) T::dy(e + b, OT, t + b, OT);
    for (int i = 0; i < N; ++i) T::dy(t + i * OT, 1, E + i * N, 1);
  }
  // dw = G^T dU G: u[i*N + j] -> o[r*3 + s]
  static void weight_grad(const V* u, V* o) {
    V t[3 * N];
    for (int j = 0; j < N; ++j) T::wg(u + j, N, t + j, N);
    for (int r = 0; r < 3; ++r) T::wg(t + r * N, 1, o + r * 3, 1);
  }
};

// Rows [r0, r0+nr) x columns [c0, c0+ncp) (ncp a multiple of VL) of group g's U, for a w of
// shape (G*Kg, Cg, 3, 3), written to out[xi*xs + row*ld + col]:
//   forward (flip = false):       row = c, col = k, from w[g*Kg+k][c]
//   backward-input (flip = true): row = k, col = c, from w[g*Kg+k][c] rotated by 180 degrees
// Columns past Kg (Cg) are zero. w is KCRS, or KRSC (krsc: a channels_last filter). The taps of
// VL filters are brought side by side by transpose_rows (KRSC backward: they already are).
template <class T>
void weight_panel(const float* w, int64_t g, int64_t Kg, int64_t Cg, bool flip, bool krsc, int64_t r0, int64_t nr,
                  int64_t c0, int64_t ncp, float* out, int64_t xs, int64_t ld) {
  V taps[9], u[Tile2D<T>::NP];
  if (!flip) {
    // The VL filters' taps transposed kCh channels at a time (tap (c, rs) at tmp + at(c, rs)*VL),
    // each piece transformed while it is in L1. The whole row range at once before: 256 channels
    // of 16 filters, 147 KiB written to L2 and read back (weight_panel was 15% of the samples of
    // 256@14 forward, whose large U is computed on every call; perf record). Batch 4, 2 threads,
    // Xeon, old/new (python benchmarks/ab.py OLD.so NEW.so 4,256,14,14,256,3,1,1 --pass forward,
    // 12 rounds, best mins / median of the pairs): NCHW 256@14 1.04-1.06x (two runs), 512@7
    // 1.06x / 1.11x; channels_last within the noise (0.98-1.12x). What remains of it waits on the
    // reads of w (2.4 MiB at 256@14, read by both threads of a team): prefetching the next piece
    // only moved the stall onto the prefetches. A channels_last filter (KRSC) is read as 9 x 16
    // runs of kCh channels, each filter's 9 taps Cg floats apart: 64 channels (a run of 4 lines,
    // not one; tmp 36 KiB) for it, 2 threads, batch 4, old/new (python benchmarks/ab.py OLD.so
    // NEW.so 4,512,7,7,512,3,1,1 --layout nhwc --pass forward --rounds 4): 1.07-1.09x at 512@7,
    // 1.01-1.02x at 256@14 (32: 1.07x, 128 and 256: 0.98x of 64). KCRS stays at 16 (64: 0.98-0.99x;
    // its runs are already kCh x 9 floats).
    const int64_t kCh = krsc ? 64 : 16;
    float* tmp = scratch(3, kCh * 9 * VL);
    for (int64_t kb = 0; kb < ncp; kb += VL) {
      const int64_t k0 = c0 + kb, kn = std::max<int64_t>(0, std::min<int64_t>(VL, Kg - k0));
      const float* wk = w + (g * Kg + k0) * Cg * 9;
      for (int64_t q0 = 0; q0 < nr; q0 += kCh) {
        const int64_t qn = std::min(kCh, nr - q0);
        const auto at = [&](int64_t c, int rs) { return krsc ? rs * qn + c : c * 9 + rs; };
        if (krsc) {
          for (int rs = 0; rs < 9; ++rs)
            transpose_rows(wk + rs * Cg + r0 + q0, Cg * 9, kn, qn, VL, tmp + rs * qn * VL);
        } else {
          transpose_rows(wk + (r0 + q0) * 9, Cg * 9, kn, qn * 9, VL, tmp);
        }
        for (int64_t r = 0; r < qn; ++r) {
          for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::load(tmp + at(r, rs) * VL);
          Tile2D<T>::weight(taps, u);
          for (int xi = 0; xi < Tile2D<T>::NP; ++xi) Isa::store(out + xi * xs + (q0 + r) * ld + kb, u[xi]);
        }
      }
    }
  } else {
    alignas(64) float tmp[9 * VL];
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t cb = 0; cb < ncp; cb += VL) {
        const int64_t cc = c0 + cb, cn = std::max<int64_t>(0, std::min<int64_t>(VL, Cg - cc));
        const float* wk = w + (g * Kg + r0 + r) * Cg * 9;
        if (krsc) {
          const M m = Isa::mask(cn);
          for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::loadm(wk + (8 - rs) * Cg + cc, m);
        } else {
          transpose_rows(wk + cc * 9, 9, cn, 9, VL, tmp);
          for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::load(tmp + (8 - rs) * VL);
        }
        Tile2D<T>::weight(taps, u);
        for (int xi = 0; xi < Tile2D<T>::NP; ++xi) Isa::store(out + xi * xs + r * ld + cb, u[xi]);
      }
  }
}

// The stride of V's, M's and E's tile rows for n floats of channels. Backward-weight reads V and
// E down their columns (a step of the reduction = the next tile row); at 512 channels (2 KiB) the
// 64 steps of a reduction fell into 2 L1 sets for V and 8 for E, so E (re-read by every tile of
// channels) never stayed in L1. A line more at multiples of 1 KiB, 2 threads, batch 4 (ab.py):
// 512@7 backward-weight 1.01x channels_last / 1.05x NCHW, forward 1.04x / 1.02x; 256@14 forward
// 1.03x, backward-input 1.02x. Not below: padded, 64@56's backward-weight (streaming V and E,
// 25% more of them) ran 0.93x, 128@28 0.98x.
inline int64_t row_stride(int64_t n) { return n % 256 ? n : n + 16; }

// Geometry shared by the steps below, for tiles of OT x OT outputs. Tiles are numbered
// t = (n*th + i)*tw + j ("tile row" gr = n*th + i); a block is tile rows [gr0, gr1) x tile
// columns [tj0, tj1).
struct Geo {
  int64_t Cg, Kg, Cs, Kgp, Ks, th, tw, rows;
  int64_t Vr, Mr;  // row (tile) strides of V, and of M and E: Cs, Ks, a line more at multiples of 1 KiB
  Geo(const WinoShape& s, int64_t OT)
      : Cg(s.C / s.G), Kg(s.K / s.G), Cs(round_up(s.C, VL)), Kgp(round_up(s.K / s.G, VL)), Ks(s.G * Kgp),
        th(ceil_div(s.P, OT)), tw(ceil_div(s.Q, OT)), rows(s.N * th), Vr(row_stride(Cs)), Mr(row_stride(Ks)) {}
};

// The NP planes (xi) of V, M and E (and of the large-U weight panel) hold vt rows (tiles;
// channels for the panel) of `width` floats each, and a line more: at exactly vt x width apart
// (often a multiple of 4 KiB: 64 tiles x 512 channels) a tile's 16 stores (input, dy transforms)
// or loads (output transform) all fell into one L1 set.
inline int64_t plane(int64_t vt, int64_t width) { return vt * width + 16; }

// Where V, M and E keep value (xi, tile t, channel c): at xi*xs + t*ts + c. Plane-major
// ([xi][t][c], planes of plane(vt, width) floats) or tile-major ([t][xi][c]: a tile's NP values
// of a channel one contiguous run); NP * plane(vt, width) floats either way.
struct Planes {
  int64_t xs, ts;
};
inline Planes planes(int NP, int64_t vt, int64_t width, bool tile_major) {
  return tile_major ? Planes{width, NP * width} : Planes{plane(vt, width), width};
}

// V (value (xi, t, c) where pv puts it) = B^T d B for the tiles of the block,
// t = (gr - gr0)*(tj1 - tj0) + j + t0. The patches come from a band of the tile row's PS input
// rows (pack_band: zero padding built in; NCHW transposed 16 channels at a time over all rows).
template <class T>
void input_transform(const WinoShape& s, const Geo& e, const float* x, int64_t gr0, int64_t gr1, int64_t tj0,
                     int64_t tj1, float* Vb, Planes pv, int64_t t0) {
  constexpr int PS = T::PS, ST = T::ST, NP = Tile2D<T>::NP;
  const int64_t C = s.C, H = s.H, W = s.W, Cs = e.Cs, nc = tj1 - tj0, Wb = ST * nc + PS - ST, w0 = ST * tj0 - s.pw;
  // channels_last with whole vectors of channels, planes of 8+ tiles a side: the patches are read
  // from x where they lie, zeros loaded for the padding, no band copied. 2 threads, batch 4,
  // old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P --rounds 4):
  // forward 128@56/2 1.03-1.05x, 64@56 1.04x, 128@28 1.03x; 64@56 backward-input 1.04x; at
  // 4x4 and 7x7 tiles a plane (512@7, 256@14), where most tiles meet the padding, 0.98-1.00x:
  // those keep the band.
  const bool direct = s.nhwc && Cs == C && e.th >= 8 && e.tw >= 8;
  float* band = direct ? nullptr : scratch(2, PS * Wb * Cs);  // the PS input rows of a tile row, [row][col][Cs]
  // tile t's V from its patch, value (a, b) of channels c0.. given by at(a, b, c0)
  auto transform = [&](int64_t t, auto at) {
    for (int64_t c0 = 0; c0 < Cs; c0 += VL) {
      V d[PS * PS], v[NP];
      for (int a = 0; a < PS; ++a)
        for (int b = 0; b < PS; ++b) d[a * PS + b] = at(a, b, c0);
      Tile2D<T>::input(d, v);
      for (int xi = 0; xi < NP; ++xi) Isa::store(Vb + xi * pv.xs + t * pv.ts + c0, v[xi]);
    }
  };
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, h0 = ST * (gr % e.th) - s.ph;
    const int64_t h_lo = std::max<int64_t>(0, h0), h_hi = std::min(H, h0 + PS);
    if (direct) {
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t wj = w0 + ST * j, corner = ((n * H + h0) * W + wj) * C;  // (perhaps outside x)
        const bool inside = h0 >= 0 && h0 + PS <= H && wj >= 0 && wj + PS <= W;
        transform(t0 + (gr - gr0) * nc + j, [&](int a, int b, int64_t c0) {
          const bool in = inside || (h0 + a >= 0 && h0 + a < H && wj + b >= 0 && wj + b < W);
          return in ? Isa::load(x + corner + (a * W + b) * C + c0) : Isa::zero();
        });
      }
      continue;
    }
    for (int64_t a = 0; a < PS; ++a)  // rows outside the image
      if (h0 + a < h_lo || h0 + a >= h_hi) std::memset(band + a * Wb * Cs, 0, sizeof(float) * Wb * Cs);
    if (h_hi > h_lo) pack_band(x, s.nhwc, C, H, W, n, 0, C, h_lo, h_hi, -w0, Wb, Cs, band + (h_lo - h0) * Wb * Cs);
    for (int64_t j = 0; j < nc; ++j)
      transform(t0 + (gr - gr0) * nc + j,
                [&](int a, int b, int64_t c0) { return Isa::load(band + (a * Wb + ST * j + b) * Cs + c0); });
  }
}

// U's planes (uxs floats apart) hold the ncp columns in panels of kUPanel (the last one
// narrower), each panel [c][its width] over all len rows: the micro-kernel's packed B (Loop::Fast,
// simd.h). Column k of row c of a plane: at panel_at(k, len) + c * panel_width(k, ncp). The
// large-U schedule's pieces are at most kUPanel wide: one panel, rows of ncp floats.
// Rows of all ncp columns before (B rows Kgp floats apart: the general loop, a pointer per row
// and no unrolling); 2 threads, batch 4, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE
// --layout L --pass P --rounds 4, Xeon with AVX-512): winograd_s2 128@56 forward 1.14-1.15x
// channels_last, 1.09-1.10x NCHW, 96@56 1.02x; winograd 128@28 forward 1.05-1.08x, backward-input
// 1.04x; 64@56 (one panel already) and the large-U schedule (its pieces are one panel) level.
constexpr int64_t kUPanel = Isa::kMaxNV * VL;
inline int64_t panel_at(int64_t k, int64_t len) { return k / kUPanel * kUPanel * len + k % kUPanel; }
inline int64_t panel_width(int64_t k, int64_t ncp) { return std::min(kUPanel, ncp - k / kUPanel * kUPanel); }

// M_xi[t][k0 + ..] (+)= sum_{c < len} V_xi[t][c] * U_xi[c][..] for tiles [0, nt), columns
// [k0, k0 + ncp) of M, on the micro-kernel (tiles = broadcast rows, output channels = vectors).
void gemms(int NP, const float* Vb, Planes pv, int64_t nt, int64_t len, const float* U, int64_t uxs, float* Mb,
           Planes pm, int64_t k0, int64_t ncp, bool accumulate) {
  static const int64_t zero = 0;
  for (int xi = 0; xi < NP; ++xi)
    for (int64_t kb = 0; kb < ncp; kb += kUPanel) {
      const int64_t width = panel_width(kb, ncp);
      const int nv = static_cast<int>(width / VL);
      const int64_t MR = Isa::mr(nv);
      for (int64_t t0 = 0; t0 < nt; t0 += MR) {
        Tile tl;
        tl.a = Vb + xi * pv.xs + t0 * pv.ts, tl.a_is = pv.ts, tl.a_ls = 1;
        tl.b = U + xi * uxs + panel_at(kb, len), tl.b_ls = width;
        tl.a_off = &zero, tl.b_off = &zero, tl.nseg = 1, tl.len = len;
        tl.mr = static_cast<int>(std::min(MR, nt - t0));
        tl.c = Mb + xi * pm.xs + t0 * pm.ts + k0 + kb, tl.ldc = pm.ts, tl.accumulate = accumulate;
        run_tile<false>(nv, tl);
      }
    }
}

// y = A^T M A + bias for the tiles of the block (M: rows of Ks floats where pm puts them, t as in
// input_transform). Pixels past P, Q are dropped. A y of >= kStreamFloats leaves by streaming
// stores (whole, aligned vectors: channels_last pixels, NCHW's transposes), as implicit_gemm's
// outputs do: no read-for-ownership of lines written whole. 2 threads, in-process A/B in random
// order, median of 30: 64@56 forward channels_last 1.05x (batch 4) / 1.06x (batch 8), NCHW
// 1.02-1.03x, backward-input channels_last 1.05-1.06x; 128@28 (y below the threshold) level.
template <class T>
void output_transform(const WinoShape& s, const Geo& e, const float* Mb, Planes pm, int64_t t0, int64_t gr0,
                      int64_t gr1, int64_t tj0, int64_t tj1, const float* bp, float* y) {
  constexpr int OT = T::OT, NP = Tile2D<T>::NP;
  const int64_t K = s.K, P = s.P, Q = s.Q, Kg = e.Kg, Kgp = e.Kgp, Ks = e.Ks, nc = tj1 - tj0;
  float* obuf = s.nhwc ? nullptr : scratch(3, OT * OT * nc * Ks);  // [OT rows][OT*nc pixels][Ks]
  const bool stream = s.N * K * P * Q >= kStreamFloats;
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, p0 = OT * (gr % e.th);
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t t = t0 + (gr - gr0) * nc + j, q = OT * (tj0 + j);
      for (int64_t g = 0; g < s.G; ++g)
        for (int64_t k0 = 0; k0 < Kgp; k0 += VL) {
          V m[NP], out[OT * OT];
          const int64_t kc = g * Kgp + k0;
          for (int xi = 0; xi < NP; ++xi) m[xi] = Isa::load(Mb + xi * pm.xs + t * pm.ts + kc);
          Tile2D<T>::output(m, Isa::load(bp + kc), out);
          if (s.nhwc) {
            const M km = Isa::mask(Kg - k0);
            for (int a = 0; a < OT; ++a)
              for (int b = 0; b < OT; ++b)
                if (p0 + a < P && q + b < Q) {
                  float* yp = y + ((n * P + p0 + a) * Q + q + b) * K + g * Kg + k0;
                  if (stream && k0 + VL <= Kg && (reinterpret_cast<uintptr_t>(yp) % sizeof(V)) == 0) Isa::stream(yp, out[a * OT + b]);
                  else Isa::storem(yp, out[a * OT + b], km);
                }
          } else {
            for (int a = 0; a < OT; ++a)
              for (int b = 0; b < OT; ++b) Isa::store(obuf + (a * OT * nc + OT * j + b) * Ks + kc, out[a * OT + b]);
          }
        }
    }
    if (!s.nhwc) {
      const int64_t q0 = OT * tj0, nq = std::min(Q, OT * tj1) - q0;
      for (int64_t a = 0; a < OT && p0 + a < P; ++a)
        for (int64_t g = 0; g < s.G; ++g)
          transpose_rows(obuf + a * OT * nc * Ks + g * Kgp, Ks, nq, Kg, P * Q, y + ((n * K + g * Kg) * P + p0 + a) * Q + q0,
                         nq, stream);
    }
  }
  if (stream) _mm_sfence();
}

// E (rows of Ks floats where pe puts them) = A e A^T for the tiles of tile rows [gr0, gr1)
// (all tile columns), e = the OT x OT block of dy the tile produced (zeros past P, Q), t as in
// input_transform.
template <class T>
void dy_transform(const WinoShape& s, const Geo& e, const float* dy, int64_t gr0, int64_t gr1, float* E, Planes pe,
                  int64_t t0) {
  constexpr int OT = T::OT, NP = Tile2D<T>::NP;
  const int64_t K = s.K, P = s.P, Q = s.Q, Kg = e.Kg, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, Qb = OT * tw;
  float* band = s.nhwc ? nullptr : scratch(3, OT * Qb * Ks);  // NCHW: the OT dy rows, [row][q][Ks]
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, ti = gr % e.th;
    if (!s.nhwc)
      for (int64_t a = 0; a < OT; ++a) {
        float* row = band + a * Qb * Ks;
        const int64_t p = OT * ti + a;
        if (p >= P) {
          std::memset(row, 0, sizeof(float) * Qb * Ks);
          continue;
        }
        if (Qb > Q) std::memset(row + Q * Ks, 0, sizeof(float) * (Qb - Q) * Ks);
        for (int64_t g = 0; g < s.G; ++g)
          transpose_rows(dy + ((n * K + g * Kg) * P + p) * Q, P * Q, Kg, Q, Ks, row + g * Kgp, Kgp);
      }
    for (int64_t j = 0; j < tw; ++j) {
      const int64_t t = t0 + (gr - gr0) * tw + j;
      for (int64_t g = 0; g < s.G; ++g)
        for (int64_t k0 = 0; k0 < Kgp; k0 += VL) {
          const int64_t kc = g * Kgp + k0;
          V ev[OT * OT], Ev[NP];
          for (int a = 0; a < OT; ++a)
            for (int b = 0; b < OT; ++b) {
              const int64_t p = OT * ti + a, q = OT * j + b;
              V& v = ev[a * OT + b];
              if (!s.nhwc) v = Isa::load(band + (a * Qb + q) * Ks + kc);
              else if (p < P && q < Q) v = Isa::loadm(dy + ((n * P + p) * Q + q) * K + g * Kg + k0, Isa::mask(Kg - k0));
              else v = Isa::zero();
            }
          Tile2D<T>::dy(ev, Ev);
          for (int xi = 0; xi < NP; ++xi) Isa::store(E + xi * pe.xs + t * pe.ts + kc, Ev[xi]);
        }
    }
  }
}

}  // namespace

// y = conv3x3(w, x) + bias for the forward-form problem s; flip: w is the forward filter of
// a backward-input problem (use its 180-degree rotation with k and c exchanged); krsc: w is a
// channels_last filter. bias may be null.
//
// Two schedules:
//  * small U (16 x C x K floats <= 1 MiB: few channels, typically large planes): U is computed
//    once; a task is a block of tiles that it transforms, multiplies and transforms back on its
//    own, so V and M never leave the core's caches.
//  * large U (many channels, typically 14x14 and 7x7 planes): re-reading a 4-16 MiB U per block
//    of tiles would be bound by memory, so the steps are separate parallel loops over a chunk of
//    tiles: transform all of them, then a task per block of output channels computes its piece
//    of U (pieces of <= 1 MiB of the reduction, so each stays in L2) and multiplies every tile
//    by it, then transform back. U is never written to memory. With 96+ tiles a thread, each
//    thread runs these steps alone on its own tile rows (teams, below).
template <class Kd>
void conv_kind(const WinoShape& s, const float* x, const float* w, bool flip, bool krsc, const float* bias,
                   float* y, int64_t macs, const at::Tensor* filter) {
  const Geo e(s, Kd::OT);
  constexpr int NP = Tile2D<Kd>::NP;
  const int64_t G = s.G, Cg = e.Cg, Kg = e.Kg, Cs = e.Cs, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, rows = e.rows;
  // in forward form the filter of group g is Kg x Cg; w itself is (wK x wC) per group
  const int64_t wK = flip ? Cg : Kg, wC = flip ? Kg : Cg;
  float* bp = scratch(5, Ks);  // bias padded per group to whole vectors
  std::memset(bp, 0, sizeof(float) * Ks);
  if (bias)  // (not a test of bias inside the loop: a masked load from a null pointer is slow)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t k = 0; k < Kg; ++k) bp[g * Kgp + k] = bias[g * Kg + k];
  const int64_t nthreads = pool_threads();
  constexpr int64_t kChunkFloats = 2 * 1024 * 1024;  // V + M of a chunk (large-U schedule): 8 MiB

  const bool large_u = NP * G * Cg * Kgp > Kd::kSmallU && NP * tw * (Cs + Ks) <= kChunkFloats;
  // V and M tile by tile in the large-U schedule (its input transform writes a whole chunk's V,
  // read back by every block of filters): F23 forward and backward-input, 2 threads, batch 4, the
  // two layouts in one process, random order, medians of 30: 256@14 1.06-1.08x, batch 8
  // 1.00-1.10x, 512@7 0.99-1.03x. Not in the small-U schedule: 64@56 and 128@28 0.95-0.99x.
  const bool tile_major = Kd::kTileMajor || large_u;
  if (!large_u) {
    // U, kept across calls while the filter is unchanged (filter_cache.h). Not the large U of the
    // other schedule: read back from memory (16 MiB for 512x512) it cost more than computing its
    // pieces in the tasks (512@7 NCHW forward, ms fresh / cached: 4.76 / 5.01).
    const std::initializer_list<int64_t> tag = {Kd::kTag, CONV_EXT_ISA_BITS, G, Kg, Cg, Kgp, flip, krsc};
    const int64_t ncb = Kgp / VL, uf = G * NP * Cg * Kgp;
    auto u_panel = [&](float* U, int64_t task) {  // U's columns k0 .. k0 + VL of group g
      const int64_t g = task / ncb, k0 = (task % ncb) * VL;
      weight_panel<Kd>(w, g, wK, wC, flip, krsc, 0, Cg, k0, VL, U + g * NP * Cg * Kgp + panel_at(k0, Cg), Cg * Kgp,
                       panel_width(k0, Kgp));
    };
    const PackedFilter packed = packed_filter(filter, tag, uf, nullptr, [&](float* U) {
      for_each_task(G * ncb, macs, [&](int64_t task) { u_panel(U, task); });
    });
    // A filter not cached (a training step's new one): each thread computes the whole U into its
    // own scratch at its first task of the call (`made`), rather than its share of one U that the
    // other threads then read. U written by one core and read by the other crossed between the
    // cores every call (and the writer first took the lines from the reader's L2, where the last
    // call left them): 64@8 batch 8 forward, 2 threads, ms cached / new filter: 0.077 / 0.122,
    // where one thread computes the whole U in 0.014 ms (1 thread: 0.141 / 0.155).
    static std::atomic<int64_t> calls{0};
    const int64_t call = packed.data ? 0 : ++calls;
    // Tiles per task: V and M of a task within ~512 KiB (so that they and U stay in L2), and at
    // least one task per thread. Was ~2 MiB; 2 threads, batch 4 (8 at 64@32), ms at 2 MiB / 1 /
    // 512 KiB (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass P for the final choice):
    // 64@56 channels_last forward 1.50 / 1.35 / 1.34, 128@28 NCHW forward 1.62 / 1.46 / 1.35,
    // 64@56 NCHW backward-input 1.84 / 1.62 / 1.61, 64@32 channels_last forward 0.95 / 0.87 / 0.85.
    const int64_t T = rows * tw;
    const int64_t tb_max = std::max<int64_t>(8, Kd::kTaskFloats / (NP * (Cs + Ks)));
    const int64_t tb = std::max<int64_t>(1, std::min(tb_max, ceil_div(T, nthreads)));
    int64_t rb, cb;  // tile rows x tile columns per task
    if (tw <= tb) {
      cb = tw, rb = std::max<int64_t>(1, tb / tw);
      rb = ceil_div(rows, ceil_div(rows, rb));  // even row blocks
    } else {
      rb = 1, cb = ceil_div(tw, ceil_div(tw, tb));
    }
    const int64_t nrb = ceil_div(rows, rb), ncb_t = ceil_div(tw, cb);
    for_each_task(nrb * ncb_t, macs, [&](int64_t task) {
      const float* U = packed.data;
      if (!U) {
        thread_local int64_t made = 0;  // the call whose U this thread's scratch(4) holds
        float* own = scratch(4, uf);
        if (made != call) {
          for (int64_t j = 0; j < G * ncb; ++j) u_panel(own, j);
          made = call;
        }
        U = own;
      }
      const int64_t gr0 = (task / ncb_t) * rb, gr1 = std::min(rows, gr0 + rb);
      const int64_t tj0 = (task % ncb_t) * cb, tj1 = std::min(tw, tj0 + cb);
      const int64_t nt = (gr1 - gr0) * (tj1 - tj0);
      float* Vb = scratch(0, NP * plane(nt, e.Vr));
      float* Mb = scratch(1, NP * plane(nt, e.Mr));
      const Planes pv = planes(NP, nt, e.Vr, tile_major), pm = planes(NP, nt, e.Mr, tile_major);
      input_transform<Kd>(s, e, x, gr0, gr1, tj0, tj1, Vb, pv, 0);
      for (int64_t g = 0; g < G; ++g)
        gemms(NP, Vb + g * Cg, pv, nt, Cg, U + g * NP * Cg * Kgp, Cg * Kgp, Mb, pm, g * Kgp, Kgp, false);
      output_transform<Kd>(s, e, Mb, pm, 0, gr0, gr1, tj0, tj1, bp, y);
    });
    return;
  }

  const int64_t rpc = std::max<int64_t>(1, kChunkFloats / (NP * tw * (Cs + Ks)));  // tile rows per chunk
  // Pieces of U of up to 1 MiB (16 x 256 x 64 floats), the reduction split evenly. Each piece
  // after the first adds into M, read back from L2/L3 (a task's M is 16 x tiles x its filters:
  // 0.8 MiB at 256@14 batch 4), so fewer, larger pieces, as long as one stays in L2 (2 MiB here).
  // Pieces of 128 channels before; 2 threads, batch 4, ms before/after (python benchmarks/ab.py
  // OLD.so NEW.so SHAPE --pass P): 256@14 forward NHWC and backward-input NCHW 1.19x faster,
  // 512@7 forward 1.06-1.07x, backward-input 1.06x, batch 8 1.17x; 2 MiB pieces (512@7 in one)
  // were slower than 1 MiB.
  constexpr int64_t kPanelFloats = 256 * 1024;
  // tile rows [row0, row1) on `threads` threads (V, M and the panel: the running thread's scratch)
  const auto run_rows = [&](int64_t row0, int64_t row1, int64_t threads) {
    const int64_t nchunks = ceil_div(row1 - row0, rpc), rows_c = ceil_div(row1 - row0, nchunks);
    const int64_t T = rows_c * tw;
    float* Vall = scratch(4, NP * plane(T, e.Vr));
    float* Mall = scratch(7, NP * plane(T, e.Mr));
    const Planes pv = planes(NP, T, e.Vr, tile_major), pm = planes(NP, T, e.Mr, tile_major);
    // output-channel blocks: as wide as the micro-kernel (one of U's panels), narrower if that
    // leaves a thread idle
    int64_t kbw = kUPanel;
    while (kbw > VL && G * ceil_div(Kgp, kbw) < 2 * threads) kbw -= VL;
    const int64_t nkb = ceil_div(Kgp, kbw);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t R0 = row0 + ch * rows_c, R1 = std::min(row1, R0 + rows_c), nt = (R1 - R0) * tw;
      for_each_task(R1 - R0, macs, [&](int64_t i) {
        input_transform<Kd>(s, e, x, R0 + i, R0 + i + 1, 0, tw, Vall, pv, i * tw);
      });
      for_each_task(G * nkb, macs, [&](int64_t task) {
        const int64_t g = task / nkb, k0 = (task % nkb) * kbw, ncp = std::min(kbw, Kgp - k0);
        // channels a piece: sized for the widest block whatever this one's width (kbw follows the
        // thread count; the pieces are the order of the sums, so they must not: determinism)
        const int64_t npiece = ceil_div(Cg, std::max<int64_t>(1, kPanelFloats / (NP * kUPanel)));
        const int64_t pr = ceil_div(Cg, npiece);
        // the panel's 16 planes a line more than nr x ncp floats apart (plane()): at exactly that
        // (32 KiB for 128 x 64) weight_panel's 16 stores of a channel all fell into one L1 set
        // (512@7 forward and backward-input, 2 threads: 1.04-1.07x faster padded, 1.03x at 256@14)
        float* panel = scratch(6, NP * plane(pr, ncp));
        for (int64_t c0 = 0; c0 < Cg; c0 += pr) {
          const int64_t nr = std::min(pr, Cg - c0);
          weight_panel<Kd>(w, g, wK, wC, flip, krsc, c0, nr, k0, ncp, panel, plane(nr, ncp), ncp);
          gemms(NP, Vall + g * Cg + c0, pv, nt, nr, panel, plane(nr, ncp), Mall, pm, g * Kgp + k0, ncp, c0 > 0);
        }
      });
      for_each_task(R1 - R0, macs, [&](int64_t i) {
        output_transform<Kd>(s, e, Mall, pm, i * tw, R0 + i, R0 + i + 1, 0, tw, bp, y);
      });
    }
  };
  // Teams: with many tiles, each thread takes its own range of tile rows and runs all of the
  // above on it alone, computing every piece of U itself (the pieces are the same, so are the
  // bits). Shared, the steps hand V and M from thread to thread: the input transform's rows
  // are read by every block of filters, whose M the output transform's rows read back. When this
  // VM's two cores sit on different L3s (bench.thread_round_trip ~350 ns instead of ~60) that
  // traffic goes between them: 256@14 batch 4 channels_last forward 2.88 ms instead of 2.08; in
  // teams 2.10 either way. On one L3 (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass P, best
  // mins): 256@14 batch 4 forward 1.01x channels_last, 0.99x NCHW, backward-input 1.01x, batch 8
  // 0.99x. With few tiles a thread the second U costs more than that: 512@7 batch 4 (32 tiles a
  // thread) 0.87x, batch 1 0.69x, 256@14 batch 2 (49) 0.95x; so teams from kTeamTiles a thread.
  constexpr int64_t kTeamTiles = 96;
  const int64_t nteam = std::min(nthreads, rows);
  if (nteam > 1 && rows * tw >= kTeamTiles * nteam) {
    for_each_task(nteam, macs, [&](int64_t t) { run_rows(rows * t / nteam, rows * (t + 1) / nteam, 1); });
  } else {
    run_rows(0, rows, nthreads);
  }
}

// dw = the weight gradient of the forward-form problem s (x input, dy output gradient):
//     dU_xi[c][k] = sum_tiles V_xi[tile][c] * E_xi[tile][k],   dw[k][c] = G^T dU[c][k] G
// (the exact gradient of y = A^T [U (.) V] A, which equals the direct convolution). Where dU is
// at most 1 MiB (128 x 128 channels), slots of tile rows sum into dUs of their own (the slot
// schedule, below). Otherwise tiles are taken in chunks of whole tile rows whose V and E fit in
// ~8 MiB (a function of the shape only); per chunk, every tile is transformed, then a task per
// (group, xi, block of output channels) adds the chunk's tiles into its part of dU on the
// micro-kernel (input channels are the broadcast rows, read down V's columns). Each dU element is
// summed in the same order whatever the thread count: deterministic. With one chunk and a dU of
// over 4 MiB, a task takes a block of channels and filters instead (below).
// Returns whether every value of dw is finite (see run_backward_weight).
template <class Kd>
bool backward_weight_kind(const WinoShape& s, const float* x, const float* dy, float* dw, bool krsc, int64_t macs) {
  const Geo e(s, Kd::OT);
  constexpr int NP = Tile2D<Kd>::NP;
  const int64_t G = s.G, Cg = e.Cg, Kg = e.Kg, Cs = e.Cs, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, rows = e.rows;
  constexpr int64_t kChunkFloats = 2 * 1024 * 1024, kSumTiles = 64;
  constexpr int64_t kFusedFloats = 1024 * 1024, kFusedChannels = 64;  // dU over 4 MiB; 256 KiB a task
  constexpr int64_t kLocalPart = 256 * 1024, kLocalBlock = 128 * 1024, kLocalSlots = 8;  // the slot schedule
  const int64_t rpc = std::max<int64_t>(1, kChunkFloats / (NP * tw * (Cs + Ks)));
  const int64_t nchunks = ceil_div(rows, rpc), rows_c = ceil_div(rows, nchunks), T = rows_c * tw;
  const int64_t kbw = Isa::kMaxNV * VL, nkb = ceil_div(Kgp, kbw);
  // dU[.][xi][c][k0..k0+kbw) += V_xi[tiles of l0..][c0..]^T E_xi[tiles][k0..] into dU (row stride
  // ldu), V and E laid out by pv and pe, the tiles summed in pieces of kSumTiles in registers
  // (shorter float32 sums than one run over the chunk: the error grows with the length of a sum).
  const auto add_products = [&](const float* V, Planes pv, const float* E, Planes pe, int64_t g, int64_t xi,
                                int64_t c0, int64_t c1, int64_t k0, int64_t nt, float* dUx, int64_t ldu,
                                bool accumulate) {
    static const int64_t zero = 0;
    const int nv = static_cast<int>(std::min(kbw, Kgp - k0) / VL);
    const int64_t MR = Isa::mr(nv);
    for (int64_t c = c0; c < c1; c += MR)
      for (int64_t l0 = 0; l0 < nt; l0 += kSumTiles) {
        Tile tl;
        tl.a = V + xi * pv.xs + l0 * pv.ts + g * Cg + c, tl.a_is = 1, tl.a_ls = pv.ts;
        tl.b = E + xi * pe.xs + l0 * pe.ts + g * Kgp + k0, tl.b_ls = pe.ts;
        tl.a_off = &zero, tl.b_off = &zero, tl.nseg = 1, tl.len = std::min(kSumTiles, nt - l0);
        tl.mr = static_cast<int>(std::min(MR, c1 - c));
        tl.c = dUx + (c - c0) * ldu, tl.ldc = ldu, tl.accumulate = accumulate || l0 > 0;
        run_tile<false>(nv, tl);
      }
  };
  // dw[g*Kg + k0 + j][c0..c1) = G^T dU[xi][c][j] G for the nk <= VL filters at k0 (dU's xi
  // planes xs apart, row stride ldu, filter j in lane j), transposed back to (K, Cg, 3, 3), or to
  // (K, 3, 3, Cg) for a channels_last filter (krsc)
  // A large channels_last dw, written in runs of a block of channels (nine 256-byte runs a filter
  // in the fused schedule below), goes out by streaming stores (whole lines, no read for
  // ownership): 512@7 channels_last backward-weight 1.08-1.09x (ab.py); the NCHW dw's long rows
  // 0.99x streamed, so not there.
  const bool stream_dw = krsc && G * Kg * Cg * 9 >= kStreamFloats;
  std::atomic<bool> nonfinite{false};
  const auto finish = [&](int64_t g, int64_t c0, int64_t c1, int64_t k0, const float* dUk, int64_t xs, int64_t ldu) {
    const int64_t nc = c1 - c0, nk = std::min<int64_t>(VL, Kg - k0);
    if (nk <= 0) return;
    float* tmp = scratch(3, nc * 9 * VL);
    V u[NP], o[9];
    V inf_nan = Isa::set1(0.f);  // 0 while every o is finite (o - o: 0, or NaN for an infinity or a NaN)
    for (int64_t c = 0; c < nc; ++c) {
      for (int xi = 0; xi < NP; ++xi) u[xi] = Isa::load(dUk + xi * xs + c * ldu);
      Tile2D<Kd>::weight_grad(u, o);
      for (int rs = 0; rs < 9; ++rs) {
        Isa::store(tmp + (krsc ? rs * nc + c : c * 9 + rs) * VL, o[rs]);
        inf_nan = Isa::add(inf_nan, Isa::sub(o[rs], o[rs]));
      }
    }
    alignas(64) float lanes[VL];
    Isa::store(lanes, inf_nan);
    for (int64_t j = 0; j < nk; ++j)  // (lanes past Kg: padding filters, not written)
      if (lanes[j] != 0.f) nonfinite.store(true, std::memory_order_relaxed);
    float* out = dw + (g * Kg + k0) * Cg * 9;
    if (krsc && nc < Cg)  // a block of channels: 9 runs of nc a filter
      for (int rs = 0; rs < 9; ++rs)
        transpose_rows(tmp + rs * nc * VL, VL, nc, nk, Cg * 9, out + rs * Cg + c0, nc, stream_dw);
    else
      transpose_rows(tmp, VL, nc * 9, nk, Cg * 9, out + c0 * 9, nc * 9);
    if (stream_dw) _mm_sfence();
  };
  // dw from a whole dU ([g][xi][c][k]), a task per group and vector of filters
  const auto finish_all = [&](const float* dU) {
    const int64_t nkv = Kgp / VL;
    for_each_task(G * nkv, macs, [&](int64_t task) {
      const int64_t g = task / nkv, k0 = (task % nkv) * VL;
      finish(g, 0, Cg, k0, dU + g * NP * Cg * Kgp + k0, Cg * Kgp, Kgp);
    });
  };
  const int64_t part = G * NP * Cg * Kgp;  // dU's floats
  if (part <= kLocalPart) {
    // Few channels, many tiles (64@56, 128@28): the slot schedule. A fixed number of slots
    // (weight_tasks: the same on every run on a machine) each own a range of tile rows and sum
    // them into their own dU, a block of tile rows at a time: the block's V and E (thread-local;
    // 0.5 MiB, or twice dU where that is more) are transformed and multiplied by the same thread
    // while they are in its L2. The slots' dUs are added in slot order at the end (sum_chunks).
    // No thread reads what another wrote: the chunked schedule below transforms a chunk's rows on
    // both threads and then reads all of them on each, through L3 (a chunk's V and E are 8 MiB)
    // and, when this VM's two cores sit on different L3s (core-to-core round trip ~350 ns instead
    // of ~60; the host moves them), from the other core's L3: 64@56 batch 8 channels_last ran
    // 11.6 ms instead of 4.8. Slot schedule vs chunked (python benchmarks/ab.py OLD.so NEW.so
    // SHAPE --pass backward_weight, best mins, the cores on one L3): channels_last 64@56 batch 8
    // 1.06x, batch 4 1.06x, 128@28 batch 4 0.99x, batch 8 1.03x, 64->128 @112 batch 2 1.04x,
    // 64@32 batch 8 1.03x; NCHW 128@28 1.01x / 1.04x; on two L3s 1.6-2.5x. Blocks of 2 tile rows
    // instead of 9 at 128@28 (its dU of 1 MiB read and written once a block): 2.19 vs 2.10 ms.
    // Not for 256@14 (dU of 4 MiB a slot): 0.89x.
    const int64_t rb = std::max<int64_t>(1, std::max(kLocalBlock, 2 * part) / (NP * tw * (Cs + Ks)));
    const int64_t nslot = std::min(weight_tasks(kLocalSlots), rows);
    float* partial = scratch(8, nslot * part);
    const Planes pv = planes(NP, rb * tw, e.Vr, false), pe = planes(NP, rb * tw, e.Mr, false);
    for_each_task(nslot, macs, [&](int64_t sl) {
      const int64_t r0 = rows * sl / nslot, r1 = rows * (sl + 1) / nslot;
      float* V = scratch(0, NP * pv.xs);
      float* E = scratch(1, NP * pe.xs);
      float* dUs = partial + sl * part;
      for (int64_t b0 = r0; b0 < r1; b0 += rb) {
        const int64_t b1 = std::min(r1, b0 + rb);
        input_transform<Kd>(s, e, x, b0, b1, 0, tw, V, pv, 0);
        dy_transform<Kd>(s, e, dy, b0, b1, E, pe, 0);
        for (int64_t g = 0; g < G; ++g)
          for (int64_t xi = 0; xi < NP; ++xi)
            for (int64_t k0 = 0; k0 < Kgp; k0 += kbw)
              add_products(V, pv, E, pe, g, xi, 0, Cg, k0, (b1 - b0) * tw, dUs + ((g * NP + xi) * Cg) * Kgp + k0,
                           Kgp, b0 > r0);
      }
    });
    sum_chunks(partial, nslot, part);
    finish_all(partial);
    return !nonfinite.load();
  }
  float* Vall = scratch(4, NP * plane(T, e.Vr));
  float* Eall = scratch(7, NP * plane(T, e.Mr));
  // plane-major (tile-major for F23 here: 0.69-0.97x, 64@56 .. 512@7)
  const Planes pv = planes(NP, T, e.Vr, false), pe = planes(NP, T, e.Mr, false);
  if (nchunks == 1 && part > kFusedFloats) {
    // Many channels and few tiles (512 @7): dU would be over 4 MiB (16 MiB for 512x512), written
    // to memory and read back; and where other passes run between two backward-weights (a
    // training step) it is not in L3 either. A task takes a block of filters and one of channels
    // instead, sums its 16 x cb x kbw piece of dU in L2 and turns it into dw at once. 512 @7,
    // batch 4, 2 threads, ms (python benchmarks/ab.py ... 4,512,7,7,512,3,1,1 --pass
    // backward_weight): 3.49 -> 3.07 NCHW, 3.32 -> 3.14 channels_last; called between a forward
    // and a backward-input, as in a training step: 6.2-6.6 -> 3.5-3.6; 384 @7 2.8-3.2 -> 2.1.
    // Not at 256 @14 (dU of 4 MiB, 196 tiles): 2.24-2.45 -> 2.42-2.72 ms. Blocks of 64 channels
    // (were 128: a task's 512 KiB of dU, with the V and E it reads, filled L2 and finish read dU
    // back from L3): 512@7 1.02x channels_last, 1.03x NCHW; batch 8 and 384@7 level; 32 slower.
    const int64_t cb = ceil_div(Cg, ceil_div(Cg, kFusedChannels)), ncb = ceil_div(Cg, cb);
    for_each_task(rows, macs, [&](int64_t i) {
      input_transform<Kd>(s, e, x, i, i + 1, 0, tw, Vall, pv, i * tw);
      dy_transform<Kd>(s, e, dy, i, i + 1, Eall, pe, i * tw);
    });
    for_each_task(G * ncb * nkb, macs, [&](int64_t task) {
      const int64_t g = task / (ncb * nkb), c0 = (task / nkb) % ncb * cb, c1 = std::min(Cg, c0 + cb);
      const int64_t k0 = (task % nkb) * kbw;
      // [xi][c - c0][k - k0], planes a line more than cb x kbw apart (plane()): at exactly that
      // (32 KiB), finish's 16 loads of a channel fell into one L1 set
      const int64_t xs = plane(cb, kbw);
      float* dUl = scratch(8, NP * xs);
      for (int64_t xi = 0; xi < NP; ++xi)
        add_products(Vall, pv, Eall, pe, g, xi, c0, c1, k0, rows * tw, dUl + xi * xs, kbw, false);
      for (int64_t k = k0; k < std::min(Kgp, k0 + kbw); k += VL) finish(g, c0, c1, k, dUl + (k - k0), xs, kbw);
    });
    return !nonfinite.load();
  }
  float* dU = scratch(8, part);  // [g][xi][c][k]
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t R0 = ch * rows_c, R1 = std::min(rows, R0 + rows_c), nt = (R1 - R0) * tw;
    for_each_task(R1 - R0, macs, [&](int64_t i) {
      input_transform<Kd>(s, e, x, R0 + i, R0 + i + 1, 0, tw, Vall, pv, i * tw);
      dy_transform<Kd>(s, e, dy, R0 + i, R0 + i + 1, Eall, pe, i * tw);
    });
    for_each_task(G * NP * nkb, macs, [&](int64_t task) {
      const int64_t g = task / (NP * nkb), xi = (task / nkb) % NP, k0 = (task % nkb) * kbw;
      add_products(Vall, pv, Eall, pe, g, xi, 0, Cg, k0, nt, dU + ((g * NP + xi) * Cg) * Kgp + k0, Kgp, ch > 0);
    });
  }
  finish_all(dU);
  return !nonfinite.load();
}

void winograd_conv(const WinoShape& s, const float* x, const float* w, bool flip, bool krsc, const float* bias,
                   float* y, int64_t macs, const at::Tensor* filter) {
  if (s.kind == kStride2) return conv_kind<S2>(s, x, w, flip, krsc, bias, y, macs, filter);
  conv_kind<F23>(s, x, w, flip, krsc, bias, y, macs, filter);
}

bool winograd_backward_weight(const WinoShape& s, const float* x, const float* dy, float* dw, bool krsc, int64_t macs) {
  return backward_weight_kind<F23>(s, x, dy, dw, krsc, macs);
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
