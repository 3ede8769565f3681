// implicit_gemm.cpp — general fp32 convolution, all three passes, NCHW and NHWC, as an implicit
// GEMM on the register-blocked micro-kernel of simd.h (AVX-512, AVX2; portable -> reference).
//
//   forward          y[n,p,q,k]   = sum_{r,s,c} x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c] * w[k,c,r,s]
//                    M = output pixels of a row (MR per tile), N = output channels (NV vectors),
//                    reduction = (r, s, c): one micro-kernel segment per filter row when the
//                    taps of a row are contiguous in the band (dil_w == 1), else per tap.
//   backward-input   dx = the same engine gathering from dy with the filter transposed
//                    (w[k,c,r,s] packed as [r][s][k][c]); stride > 1 is split into stride_w
//                    phases of dx columns, each of which reads dy with step 1 and only the taps
//                    that hit it, so the zeros a stride inserts are never multiplied.
//   backward-weight  dw[k,(s,c),r] = sum_{n,p,q} x-band[(q*sw+s*dw), c] * dy[n,p,q,k]; the rows
//                    (n,p) are cut into a fixed number of chunks (a function of the shape only),
//                    each chunk's partial sums go to its own buffer, and the buffers are added in
//                    chunk order: the same bits for any thread count.
//
// Blocking. A task is (images, group, block of output rows, block of output channels) [forward,
// stride-1 backward-input; shaped by a count of the floats moved: fwd_tasks] or (chunk, group,
// blocks of output channels) [backward-weight]. A task copies the input rows it needs into a
// "band" (rows x padded columns x channels, zero padding built in; NHWC rows are memcpy'd, NCHW
// rows transposed), so the micro-kernel never tests bounds and never sees an im2col buffer.
// (Channels_last 1x1 unpadded layers and the row tiles of 3-channel layers read x in place.)
// Weights are packed per call as [group][out-block][in-block][r][s][c][NV*VL]
// panels of <= 192 KiB (they stay in L2 while a task sweeps its rows); the reduction over
// input channels is split into such panels and accumulated in the output. Where a block of
// output channels is read by one task only (forward, stride-1 backward-input), that task packs
// it just before (FwdFilter); a filter unchanged between calls is packed once (filter_cache.h).
// NCHW outputs are written through a per-task [pixels][NV*VL] buffer and transposed on store
// (transpose_rows, simd.h: 16x16 vector blocks; was a scalar strided copy: -1..3% time at 1 thread).
// backward-weight NCHW: the dy band (rows pa..pb of each of NVL planes = one contiguous run per
// plane) is transposed by transpose_rows (simd.h; AVX-512 16x16 vpermt2ps blocks), not scalar.
//
// Forward with one vector of output channels and 2..7 taps a row (CIFAR-sized layers; 3 taps at
// stride 2): "row runs" of up to 24 output pixels in registers, each input value broadcast once
// for all the taps that read it (row_run), instead of one broadcast per FMA in the micro-kernel.
// Stride 2 (ResNeXt's 512 g32 @28/2, 16 channels a group), batch 4, 2 threads, old/new (python
// benchmarks/ab.py OLD.so NEW.so 4,512,28,28,512,3,2,1,32 --pass forward --layout L --dtype D):
// bfloat16 channels_last 1.23x (0.73x torch before), NCHW 1.11x; float32 channels_last 1.11x;
// 256 g16 @56/2 bfloat16 1.16x; AVX2 level (1.01x).
//
// Strided backward-input with one vector of dx channels and 3 taps a row at stride 2: "scatter
// runs" (scatter_run) — T dx pixels of a row in registers, each dy value broadcast once for the 3
// dx columns its taps reach, instead of the column phases' micro-kernel tiles (a broadcast per
// FMA, 1-4 taps of Kg channels a tile). ResNeXt 512 g32 @28/2 backward-input, batch 4, 2 threads,
// old/new (python benchmarks/ab.py OLD.so NEW.so 4,512,28,28,512,3,2,1,32 --pass backward_input
// --layout L --dtype D): float32 channels_last 1.34x, NCHW 1.25x; bfloat16 1.37x / 1.54x
// (channels_last 0.56x -> 0.96x torch); CIFAR 16->32 @32/2 bfloat16 1.28x.
//
// Strided backward-input otherwise ("phase lists"): the tiles of a column phase take its pixels from
// every row of the same row class that meets the same filter rows (rows by pointer: Tile::arow,
// crow, c16row), where each dx row had its own tiles: a 14-wide dx row has 7 pixels a phase, a 6-row
// tile and a 1-row tile on the 4-row instance, 70% of the computed rows real. Batch 8 unless
// said, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_input
// --layout L --dtype D, new filter each call): bfloat16 512@14/2 1.31x channels_last (0.84x ->
// 1.13x torch), NCHW batch 4 1.29x (1.42x torch), 256@28/2 1.13x / 1.11x; ResNeXt 1024
// g32 @28/2 batch 4 channels_last 1.33x float32 / 1.26x bfloat16; the 5x5/2 24->40 @27 float32
// NCHW 1.43x; 128@56/2 (28-wide rows) level. The same sums per pixel: the same bits.
//
// Backward-input with few input channels: at stride 1 (Cg*4 <= VL: CIFAR's stem) vectors over
// the pixels of a dx row from zero-padded dy planes; strided (Cg*2 <= VL: the 7x7/2 stem)
// scatter instead (col2im).
//
// 3x3 stride-1 layers with >= 32 channels per group now run winograd.cpp; the numbers below are
// this kernel's own (force it with --algo implicit_gemm).
// Speed (2 cores Zen 4 = 234 GFLOP/s FMA peak, fp32, batch 8; torch 2.13 oneDNN in brackets;
// PYTHONPATH=. python benchmarks/cpu_kernels.py, full table in
// benchmarks/cpu_kernels_results_2threads.txt):
//   ResNet-50 3x3 NHWC fwd 189-211 GFLOP/s = 81-90% of peak @56..@14 [186-221], 154 @7 [188]
//   ResNet-50 3x3 NCHW fwd 163-190 GFLOP/s [116-217]; bwd-input within 5% of forward
//   backward-weight 142-178 GFLOP/s @56..@14 (61-76%) [179-201]
//   stem 7x7/2 bwd-input 80-84 GFLOP/s, 2.05x torch [39-41]; stem NHWC fwd 189 [193]
// NCHW backward-weight with the vector dy transpose, 1 thread (--cases 3x3 --layouts nchw
// --passes bwd_w --threads 1 --cpu-time), ratio vs torch before -> after: 64@56 1.14 -> 1.22,
// 128@28 0.73 -> 0.76, 256@14 0.72 -> 0.73, 512@7 0.79 -> 0.88 (noisy), 3x3/2 128@56 0.74 -> 0.77,
// 3x3/2 256@28 0.69 -> 0.69 (us: -4..-7% everywhere).
// Single thread (time.thread_time, --threads 1 --cpu-time): 3x3 NHWC fwd 103-107 GFLOP/s =
// 88-91% of one core's 117.
#ifndef CONV_EXT_ISA_NS
#include <algorithm>
#include <numeric>
#include "output_cache.h"

#define CONV_EXT_PER_ISA_FILE "implicit_gemm.cpp"
#define CONV_EXT_PER_ISA_BF16  // the three passes also run bf16_pairs.cpp's bfloat16 pairs (Tile::pairs)
#include "per_isa.h"


namespace conv_ext {
namespace cpu {
namespace {

bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p);
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  auto f = use_avx512() ? avx512::implicit_gemm_forward : avx2::implicit_gemm_forward;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias, o.out.mutable_data_ptr<float>(), is_nhwc(p),
    o.filter, false, nullptr, nullptr, nullptr);
}

// float16, channels_last forward, where the float32 problem runs here: x, the filter and the bias
// as float32 copies (o.filter still keys the packed-filter cache), and the sums rounded to float16
// as they are stored (the micro-kernel's Tile::h16 / h16row, the row tiles and edge pixels of the
// RGB stems, the row runs' Run::h16) where the reduction is one panel, else through a float32 y
// rounded after (as every other float16 problem is, conv2d_cpu.cpp). The same float32 sums either
// way, rounded once: the same bits. A float32 y of MobileNetV2's 16->96 @112 is 19 MB written and
// read again for its rounding (half the time of its float16 forward on copies, perf record:
// fbgemm's FloatToFloat16; the 3x3/2 stem's y 30% of its samples).
// Whether a channels_last float16 problem runs here: where its float32 problem would.
bool half_runs_here(Pass pass, const Conv2dParams& p) {
  return is_nhwc(p) && supports(p, at::kFloat) && choose_automatic(pass, p, at::kFloat).name == "implicit_gemm";
}

// A float16 pass on float32 copies of its operands (strides kept: p's hold; o.filter still keys
// the packed-filter cache): run(f, yh) computes into f.out, or rounds into yh instead and returns
// true; else the float32 result is rounded into o.out here.
template <class Run>
void on_float32_copies(Operands& o, const Run& run) {
  const at::Tensor a = o.a.to(at::kFloat), b = o.b.to(at::kFloat);
  const at::Tensor bias = o.bias.defined() ? o.bias.to(at::kFloat) : at::Tensor();
  at::Tensor out = empty_output(o.out.sizes(), o.out.options().dtype(at::kFloat), at::MemoryFormat::ChannelsLast);
  Operands f{a, b, bias, out, o.filter};
  if (!run(f, o.out.mutable_data_ptr<at::Half>())) o.out.copy_(out);
}

bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kHalf ? half_runs_here(Pass::Forward, p) : supports(p, dtype);
}

void run_forward_any(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() != at::kHalf) return run_forward(p, o);
  on_float32_copies(o, [&](Operands& f, at::Half* yh) {
    auto run = use_avx512() ? avx512::implicit_gemm_forward : avx2::implicit_gemm_forward;
    return run(p, f.a.const_data_ptr<float>(), f.b.const_data_ptr<float>(),
               f.bias.defined() ? f.bias.const_data_ptr<float>() : nullptr, f.out.mutable_data_ptr<float>(), true,
               f.filter, false, nullptr, nullptr, yh);
  });
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::implicit_gemm_backward_input : avx2::implicit_gemm_backward_input;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), is_nhwc(p),
    o.filter, false, nullptr, nullptr, nullptr);
}

// float16, channels_last backward-input at stride 1 (the forward turned round: fwd_compute rounds
// dx to float16 as it rounds the forward's y), where the float32 problem runs here: dy and the
// filter as float32 copies, dx rounded as it is stored or, where fwd_compute cannot (reduction
// panels) and in the few-channel kernels (pixel rows, col2im), through a float32 dx rounded after.
// The same bits either way. Old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc
// --pass backward_input --dtype float16): 16@32 batch 8 1.07x, 32@112 1.06x; the 3x3 layers of 64
// channels and more run winograd on copies (level).
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kHalf ? turns_round(p) && half_runs_here(Pass::BackwardInput, p) : supports(p, dtype);
}

void run_backward_input_any(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() != at::kHalf) return run_backward_input(p, o);
  on_float32_copies(o, [&](Operands& f, at::Half* dxh) {
    auto run = use_avx512() ? avx512::implicit_gemm_backward_input : avx2::implicit_gemm_backward_input;
    return run(p, f.a.const_data_ptr<float>(), f.b.const_data_ptr<float>(), f.out.mutable_data_ptr<float>(), true,
               f.filter, false, nullptr, nullptr, dxh);
  });
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::implicit_gemm_backward_weight : avx2::implicit_gemm_backward_weight;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), is_nhwc(p), false,
    nullptr);
}

const bool registered =
    register_algorithm({"implicit_gemm", Pass::Forward, 10, supports_forward, run_forward_any, true}) &&
    register_algorithm(
        {"implicit_gemm", Pass::BackwardInput, 10, supports_backward_input, run_backward_input_any, true}) &&
    register_algorithm({"implicit_gemm", Pass::BackwardWeight, 10, supports, run_backward_weight, true});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- the kernels, compiled once per ISA (namespace CONV_EXT_ISA_NS) ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {

constexpr int64_t kPanelFloats = 192 * 1024 / 4;  // packed-weight panel that stays in L2
constexpr int64_t kBandFloats = 320 * 1024 / 4;   // input band of one task
constexpr int64_t kSharedFilterFloats = 512 * 1024;  // 2 MiB: a packed filter beyond a core's L2 (fwd_tasks)

// ------------------------------------------------------------------------------------------
// forward
// ------------------------------------------------------------------------------------------
struct FwdPlan {
  int nv;
  int64_t NVL, MR, nkb, cc, ncb;
  bool merge_s;
  bool pairs = false;  // A and B are words of bfloat16 pairs (Tile::pairs; bf16_pairs.cpp)
};

FwdPlan fwd_plan(const Conv2dParams& p) {
  FwdPlan f;
  // Many taps and >= 8 vectors of output channels (a multiple of 2): 12x2 micro-tiles instead of
  // 6x4. Each step then loads 2 weight vectors (not 4) from the L2-resident panel for the same 24
  // FMAs; 3x3/2 128@56 NHWC forward, 1 thread: 0.80x -> 0.87x torch (python benchmarks/
  // cpu_kernels.py --cases "3x3/2 128" --threads 1 --cpu-time). 1x1 layers keep 6x4 (measured worse),
  // and so do layers whose reduction does not fit one 12x2 panel (R*S*Cg*32 floats > kPanelFloats):
  // 3x3/2 512@14 (4 panels) ran 5-8% slower in 12x2, 256@28 (2 panels) a tie, 128@56 (one panel,
  // a filter row's (s, c) in one segment) 2-4% faster (batch 4, 2 threads, forward, the two
  // variants interleaved in one process in random order, best and median of 40).
  // Output channels in blocks that waste the fewest vectors (choose_nv_blocks, simd.h): 96 as
  // 2 x 48, not 64 + a half-empty 64. Batch 8, 2 threads, A/B of the two builds
  // (benchmarks/ab.py, best mins): NHWC 1x1 forward 576->96 @14 1.38x, 24->144 @56 1.35x;
  // 3x3/2 64->96 @56 forward 1.28x NHWC / 1.31x NCHW, backward-weight NHWC 1.22x; the same rule
  // for the backward passes' vectors (dx channels, dw's k): 3x3/2 backward-input 1.12-1.15x,
  // NHWC 1x1 backward-input 96<-576 @14 1.36x (gemm_1x1).
  f.nv = choose_nv_blocks(p.Kg());
  if (p.R * p.S > 1 && p.Kg() % (2 * VL) == 0 && p.Kg() >= 8 * VL && p.R * p.S * p.Cg() * 2 * VL <= kPanelFloats)
    f.nv = 2;
  f.NVL = f.nv * VL, f.MR = Isa::mr(f.nv), f.nkb = ceil_div(p.Kg(), f.NVL);
  f.cc = std::max<int64_t>(1, kPanelFloats / (p.R * p.S * f.NVL));  // input channels per panel
  if (f.cc >= p.Cg()) f.cc = p.Cg();
  f.ncb = ceil_div(p.Cg(), f.cc);
  f.merge_s = p.dil_w == 1 && f.ncb == 1;  // a filter row's (s, c) are contiguous in the band
  return f;
}

// How fwd_compute cuts its work into tasks: nimg images x rb output rows (several images only as
// whole images) x kbs blocks of NVL output channels. A band of input rows (band(rows) floats per
// image; none for direct NHWC 1x1, which reads the tensor in place) is built once for all the
// tasks that share it; a task sweeps the weights of its kbs blocks once, each weight panel over
// all its pixels; a band larger than the L2 share (kBandFloats) is read again for every block of channels. Among the shapes with
// enough tasks (8, or as many as there can be) and a band under 4 x kBandFloats, take the one
// that moves the fewest floats in all: bands built + tasks x (band reads + weights), times the
// share of thread time a last, partial round of tasks leaves idle (11 tasks on 2 threads: 12/11;
// 64->256 1x1 @56 NHWC, batch 4, 2 threads: 1.35 -> 1.20 ms, torch 1.06). Layers heavy
// in weights (2048->512 1x1 @7, 512->512 3x3/2 @14) get more pixels per task and fewer output
// channels; large planes keep the rows the band budget allows and all channels. ResNet-50
// batch 4, 2 threads (Xeon, AVX-512), forward ms ours / torch, before -> after: 2048->512 1x1 @7
// NHWC 2.34 / 1.87 -> 1.86 / 1.82 (all the weights streamed per 28-pixel task before), NCHW
// 2.47 / 1.62 -> 2.26 / 1.59; 512->512 3x3/2 @14 NHWC 4.64 / 3.53 -> 4.41 / 3.57;
// 1x1/2 512->1024 @28 NHWC 3.73 / 2.97 -> 3.00 / 2.81 (read in place; a band copy of every
// other row before). PYTHONPATH=. python -m conv_ext.bench --suite resnet50 --device cpu.
// A filter over kSharedFilterFloats whose blocks several tasks read (more than one block of
// pixels) is packed whole before the tasks run and read back from L3; a shape whose blocks are
// each read by one task packs them in that task, into its L2 (FwdFilter, lazy). The whole
// packing counts as the filter read and written once more. Batch 4, 2 threads, old/new (python
// benchmarks/ab.py OLD.so NEW.so SHAPE --layout L --pass P --rounds 4 [--new-filter]): 512->2048
// @7 forward 1.26-1.27x with a new filter each call (a training step), 1.02-1.04x cached, either
// layout (2 row blocks x 4 channel groups -> all 28 rows x 8); NCHW backward-input 2048<-512 @7
// 1.21x / 1.02-1.04x. Counted for every filter it moved MobileNetV2's 160->960 @7 too (a 0.6
// MB filter): 0.89x cached; hence the threshold (2 MiB, a core's L2 here).
struct FwdTasks {
  int64_t nimg, rb, kbs;
};

template <class BandFloats>
FwdTasks fwd_tasks(int64_t N, int64_t P, int64_t G, int64_t nkb, int64_t NVL, int64_t wslice,
                   const BandFloats& band, bool builds) {
  const int64_t tmax = N * G * P * nkb, want = std::min<int64_t>(8, tmax);
  FwdTasks best{1, 1, 1};
  double best_cost = -1;
  auto consider = [&](int64_t nimg, int64_t rb, int64_t kbs) {
    const int64_t tasks = ceil_div(N, nimg) * G * ceil_div(P, rb) * ceil_div(nkb, kbs);
    const int64_t a = nimg * band(rb);
    if (tasks < want || (a > 4 * kBandFloats && !(nimg == 1 && rb == 1))) return;
    const int64_t nkg = ceil_div(nkb, kbs);  // tasks that share one band (built once)
    const double per = double(a) * (a > kBandFloats ? kbs : 1) + double(kbs * NVL * wslice);
    const double wall = double(G * nkb * NVL * wslice);  // the packed filter's floats
    const double pack = ceil_div(N, nimg) * ceil_div(P, rb) > 1 && wall > kSharedFilterFloats ? 2.0 * wall : 0.0;
    const double built = builds ? double(a) * double(tasks / nkg) : 0.0;
    const double cost = (per * double(tasks) + built + pack) * round_factor(tasks);
    if (best_cost < 0 || cost < best_cost * 0.999) best = {nimg, rb, kbs}, best_cost = cost;
  };
  for (int64_t kbs = nkb;; kbs = ceil_div(kbs, 2)) {
    // rows: every count up to 64, then steps of ~1/64 (a tall 1x1 problem has thousands of rows)
    for (int64_t rb = P; rb >= 1; rb -= std::max<int64_t>(1, rb / 64)) consider(1, rb, kbs);
    for (int64_t nimg = 2; nimg <= N; nimg += std::max<int64_t>(1, nimg / 64)) consider(nimg, P, kbs);
    if (kbs == 1) break;
  }
  return best;
}

alignas(64) constexpr float kZeroColumn[VL] = {};  // a padding column of run_in_place (ccb <= VL)

// A row run's operands (row_run, below): its input as the run reads it (x, rowstep, pixf; col0 and
// width with EDGE), R filter rows of ccb channels of the panel, and its output (c, ldc; added to
// what c holds with accumulate; c16: rounded to bfloat16 there instead).
struct Run {
  const float* x;
  int64_t rowstep, pixf, col0, width, R, ccb;
  const float* panel;
  float* c;
  int64_t ldc;
  bool accumulate;
  const float* bias_v;
  const M* cmask;
  uint16_t* c16;
  at::Half* h16 = nullptr;  // the sums rounded to float16 here instead of c (never with accumulate)
};

// A run's n <= T sums (+ bias_v) to c[q*ldc] (added to what is there with accumulate; masked by
// cmask), or with PAIRS and c16 rounded to bfloat16 at c16[q*ldc], or with h16 rounded to float16
// at h16[q*ldc].
template <int T, bool PAIRS>
inline void store_run(const V* acc, int n, float* c, int64_t ldc, bool accumulate, const float* bias_v,
                      const M* cmask, uint16_t* c16, at::Half* h16) {
  const V bv = bias_v ? Isa::load(bias_v) : Isa::zero();
  if (h16) {
#pragma GCC unroll 32
    for (int q = 0; q < T && q < n; ++q) {
      const V v = bias_v ? Isa::add(acc[q], bv) : acc[q];
      if (cmask) Isa::storem(h16 + q * ldc, v, *cmask);
      else Isa::store(h16 + q * ldc, v);
    }
    return;
  }
#if CONV_EXT_ISA_PAIRS
  if (PAIRS && c16) {
#pragma GCC unroll 32
    for (int q = 0; q < T && q < n; ++q) store_bf16(c16 + q * ldc, bias_v ? Isa::add(acc[q], bv) : acc[q], cmask);
    return;
  }
#endif
#pragma GCC unroll 32
  for (int q = 0; q < T && q < n; ++q) {
    V v = bias_v ? Isa::add(acc[q], bv) : acc[q];
    float* cp = c + q * ldc;
    if (cmask) {
      if (accumulate) v = Isa::add(v, Isa::loadm(cp, *cmask));
      Isa::storem(cp, v, *cmask);
    } else {
      if (accumulate) v = Isa::add(v, Isa::load(cp));
      Isa::store(cp, v);
    }
  }
}

// Few output channels (one vector: nv == 1) and filter rows of 2..7 taps at horizontal stride and
// dilation 1. The micro-kernel has one broadcast per FMA there (12 pixel rows x 1 vector); here a
// run of T output pixels of one row sits in T accumulators, and each input value, broadcast once,
// feeds every tap that reads it (S FMAs per broadcast) with the S weight vectors of (r, c) held in
// registers. x points at the run's first band pixel; tap (r, s) of pixel q, channel ch reads
// x[r*rowstep + (q*SW + s)*pixf + ch]; EDGE (run_in_place: x read in place): x points at column 0
// of the row and the run's columns are col0 + q*SW + s, those outside [0, width) zeros. The
// weights are panel[((r*S + s)*ccb + ch)*VL].
// PAIRS (bf16_pairs): x and the panel are words of bfloat16 pairs, each step a VDPBF16PS (mac), and
// with c16 the sums leave rounded to bfloat16 there (never with accumulate).
// SW = 2 (3 taps a row): input column j feeds pixel (j - s) / 2 for the taps s of its parity
// (1.5 multiply-adds a broadcast, where the micro-kernel has one).
template <int S, int T, bool PAIRS, int SW = 1, bool EDGE = false>
void row_run(const Run& a) {
  constexpr int NX = (T - 1) * SW + S;  // the input columns of the run
  const int64_t pixf = a.pixf, ccb = a.ccb;
  V acc[T];
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) acc[q] = Isa::zero();
  V sum[T];  // chains of about kChain taps (simd.h): 64 channels x 7 taps x 7 rows in one was 5x torch's error
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) sum[q] = Isa::zero();
  bool folded = false;
  int64_t taps = 0;
  for (int64_t r = 0; r < a.R; ++r) {
    // EDGE: a pointer a column, the padding's at a block of zeros; else the band's columns at a
    // step of pixf. The pointers are volatile, so each broadcast loads its column's pointer from
    // the stack: 16 of them do not fit the general registers, and GCC kept the rest in vector
    // registers, a VMOVQ back per use (7 a channel at T = 14, on the FMA ports: 50 uops there for
    // 42 FMAs; objdump). Loads have ports to spare. Channels_last, batch 4, 2 threads (Xeon,
    // AVX-512), python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P: 512 g32 @14
    // forward 1.15x, backward-input 1.14x, 512 g32 @28/2 forward 1.10x (PAIRS, bfloat16: the same
    // code, not measured: that machine had no AVX512-BF16). Runs stay at 14 pixels or fewer (NX <=
    // 16, short_runs below): at 29 columns GCC had kept them all in vector registers, a VMOVQ a
    // broadcast.
    const float* xr = a.x + r * a.rowstep;
    const float* volatile col[EDGE ? NX : 1];
    if constexpr (EDGE) {
#pragma GCC unroll 64
      for (int j = 0; j < NX; ++j) {
        const int64_t cj = a.col0 + j;
        col[j] = cj >= 0 && cj < a.width ? xr + cj * pixf : kZeroColumn;
      }
    }
    const float* wr = a.panel + r * S * ccb * VL;
    for (int64_t ch = 0; ch < ccb; ++ch) {
      V wv[S];
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) wv[s] = Isa::load(wr + (s * ccb + ch) * VL);
#pragma GCC unroll 64
      for (int j = 0; j < NX; ++j) {
        const V xb = Isa::set1(EDGE ? col[EDGE ? j : 0][ch] : xr[j * pixf + ch]);
#pragma GCC unroll 8
        for (int s = 0; s < S; ++s) {
          const int u = j - s;  // pixel u / SW reads column j with tap s
          if (u >= 0 && u % SW == 0 && u / SW < T) acc[u / SW] = mac<PAIRS>(xb, wv[s], acc[u / SW]);
        }
      }
      if ((taps += S) >= kChain) fold_run(acc, sum, folded), taps = 0;
    }
  }
  end_runs(acc, sum, folded);
  store_run<T, PAIRS>(acc, T, a.c, a.ldc, a.accumulate, a.bias_v, a.cmask, a.c16, a.h16);
}

// A row of Q output pixels is cut into runs (cut_row) of widths the registers allow (AVX-512:
// T + S + 1 <= 32, so T <= 24 for S <= 7; AVX2: T <= 8) and a rest that goes to micro-kernel tiles,
// gathered over all the rows of the task. A run's T accumulators are its FMA chains: fewer than 8
// leave the two FMA units waiting on the 4-cycle latency. Relative cost per pixel, measured on
// 512 g32 @14 NHWC forward (16 channels a group, 2 threads; perf and the micro-kernel alone): a
// run of >= 8 about 1, of 4 about 1.7-2, the micro-kernel's 16x1 tiles (then; now 12x1) about
// 1.35 (a broadcast per FMA). cut_row minimises max(T, 8) + 0.5 per run and 1.4 per rest pixel:
// a row of 14 ran 8 + 4 + 2 (rest) with fixed widths 24/8/4 and now runs 14 (forward 0.59 -> 0.50
// ms, backward-input 0.65 -> 0.48, min of 200 calls, old and new build alternated 6 times); 28
// runs 14 + 14 (was 24 + 4); rows of 4..6 go to the micro-kernel whole.
#if CONV_EXT_ISA_BITS == 512
constexpr int kRunWidths[] = {24, 16, 14, 12, 8, 7};
#else
constexpr int kRunWidths[] = {8, 7};
#endif

// The widths of the runs of a row of Q pixels, widest first; the rest (row_rest), Q - their sum,
// goes to the micro-kernel. A shortest path over the row's pixel counts.
std::vector<int> cut_row(int64_t Q) {
  std::vector<double> cost(Q + 1);
  std::vector<int> last(Q + 1, 0);  // the width of the last run of the best cut of l pixels (0: rest)
  for (int64_t l = 0; l <= Q; ++l) {
    cost[l] = 1.4 * double(l);
    for (int t : kRunWidths) {
      const double with_run = t <= l ? cost[l - t] + std::max(t, 8) + 0.5 : cost[l];
      if (with_run < cost[l]) cost[l] = with_run, last[l] = t;
    }
  }
  std::vector<int> widths;
  for (int64_t l = Q; last[l] > 0; l -= last[l]) widths.push_back(last[l]);
  std::sort(widths.begin(), widths.end(), std::greater<int>());
  return widths;
}
int64_t row_rest(const std::vector<int>& widths, int64_t Q) {
  return Q - std::accumulate(widths.begin(), widths.end(), int64_t(0));
}

template <int T, bool PAIRS>
void row_run_s(int S, int SW, const Run& a) {
  if (SW == 2) return row_run<3, T, PAIRS, 2>(a);  // (row_runs takes stride 2 with 3 taps a row only)
  switch (S) {
    case 2: return row_run<2, T, PAIRS>(a);
    case 3: return row_run<3, T, PAIRS>(a);
    case 4: return row_run<4, T, PAIRS>(a);
    case 5: return row_run<5, T, PAIRS>(a);
    case 6: return row_run<6, T, PAIRS>(a);
    default: return row_run<7, T, PAIRS>(a);
  }
}

template <bool PAIRS>
void row_run_ts(int T, int S, int SW, const Run& a) {
  switch (T) {
#if CONV_EXT_ISA_BITS == 512
    case 24: return row_run_s<24, PAIRS>(S, SW, a);
    case 16: return row_run_s<16, PAIRS>(S, SW, a);
    case 14: return row_run_s<14, PAIRS>(S, SW, a);
    case 12: return row_run_s<12, PAIRS>(S, SW, a);
#endif
    case 8: return row_run_s<8, PAIRS>(S, SW, a);
    default: return row_run_s<7, PAIRS>(S, SW, a);
  }
}

// The runs of run_in_place: 3 taps a row at stride 1, T <= 14; at stride 2, 7.
template <bool PAIRS>
void edge_run_t(int T, int SW, const Run& a) {
  if (SW == 2) return row_run<3, 7, PAIRS, 2, true>(a);
  switch (T) {
#if CONV_EXT_ISA_BITS == 512
    case 14: return row_run<3, 14, PAIRS, 1, true>(a);
    case 12: return row_run<3, 12, PAIRS, 1, true>(a);
#endif
    case 8: return row_run<3, 8, PAIRS, 1, true>(a);
    default: return row_run<3, 7, PAIRS, 1, true>(a);
  }
}

// Strided backward-input with one vector of dx channels and 3 taps a row at stride 2 (ResNeXt's
// 512 g32 @28/2: 16 channels a group): "scatter runs". A run holds T dx pixels of a row (both
// column phases) in T accumulators; each dy value, broadcast once, feeds the 3 dx columns its
// taps reach (column 2j - pw + s of dy column j), with the 3 weight vectors of (r, k) in registers:
// 3 multiply-adds a broadcast, where the phases' micro-kernel tiles (16 dx pixels of one phase,
// 1 or 2 taps of a row) had one, and a tile's few steps (1 to 4 taps of Kg channels) carried its
// set-up and stores. The run's dx columns c0 + u take dy columns jb + jj, u = 2*jj + OFF + s,
// OFF = -2 + PAR for PAR = (c0 + pw) % 2. A ScatterRun: for each of nr dy rows (the row taps that
// reach the dx row) xrows[i] + coloff (the band at dy column jb) and wrows[i] (the panel's taps
// of that row, [s][k][VL]); nt <= T sums stored.
struct ScatterRun {
  const float* const* xrows;
  const float* const* wrows;
  int nr;
  int64_t coloff, pixf, ccb;
  float* c;
  int64_t ldc;
  int nt;
  bool accumulate;
  const M* cmask;
  uint16_t* c16;
};

template <int T, bool PAIRS, int PAR>
void scatter_run(const ScatterRun& a) {
  constexpr int OFF = -2 + PAR, NJ = (T - 1 - OFF) / 2 + 1;  // the dy columns of the run
  const int64_t pixf = a.pixf, ccb = a.ccb;
  V acc[T];
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) acc[q] = Isa::zero();
  V sum[T];  // chains of about kChain taps (simd.h)
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) sum[q] = Isa::zero();
  bool folded = false;
  int64_t taps = 0;
  for (int i = 0; i < a.nr; ++i) {
    const float* xr = a.xrows[i] + a.coloff;
    const float* wr = a.wrows[i];
    for (int64_t ch = 0; ch < ccb; ++ch) {
      V wv[3];
#pragma GCC unroll 4
      for (int s = 0; s < 3; ++s) wv[s] = Isa::load(wr + (s * ccb + ch) * VL);
#pragma GCC unroll 32
      for (int jj = 0; jj < NJ; ++jj) {
        const V xb = Isa::set1(xr[jj * pixf + ch]);
#pragma GCC unroll 4
        for (int s = 0; s < 3; ++s) {
          const int u = 2 * jj + OFF + s;
          if (u >= 0 && u < T) acc[u] = mac<PAIRS>(xb, wv[s], acc[u]);
        }
      }
      if ((taps += 3) >= kChain) fold_run(acc, sum, folded), taps = 0;
    }
  }
  end_runs(acc, sum, folded);
  store_run<T, PAIRS>(acc, a.nt, a.c, a.ldc, a.accumulate, nullptr, a.cmask, a.c16, nullptr);
}

template <bool PAIRS, int PAR>
void scatter_run_t(int T, const ScatterRun& a) {
  switch (T) {
#if CONV_EXT_ISA_BITS == 512
    case 24: return scatter_run<24, PAIRS, PAR>(a);
    case 16: return scatter_run<16, PAIRS, PAR>(a);
    case 14: return scatter_run<14, PAIRS, PAR>(a);
    case 12: return scatter_run<12, PAIRS, PAR>(a);
#endif
    case 8: return scatter_run<8, PAIRS, PAR>(a);
    default: return scatter_run<7, PAIRS, PAR>(a);
  }
}

// The runs of a dx row of W pixels: cut_row's, and its rest as one more run of 7 (nt < 7 stored).
std::vector<int> scatter_widths(int64_t W) {
  std::vector<int> widths = cut_row(W);
  if (row_rest(widths, W) > 0) widths.push_back(7);
  return widths;
}

// One output pixel of a channels_last forward read in place (fwd_compute's in_place) whose taps
// reach the padding: its NV vectors from the taps inside x only, summed in a tile's order (filter
// row by row, (s, c) within a row, then the bias): the bits of a tile on a band, whose padding's
// zeros add nothing. xn: the image; (h0, w0): the input pixel under tap (0, 0), maybe outside x;
// panel: the packed filter block, tap (r, s) channel c at ((r*S + s)*C + c)*NVL.
template <int NV, typename T>
void edge_pixel(const float* xn, int64_t H, int64_t W, int64_t C, int64_t h0, int64_t w0, int64_t R, int64_t S,
                int64_t dh, int64_t dw, const float* panel, int64_t NVL, const float* bias, T* o, const M* cmask) {
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = Isa::zero();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = h0 + r * dh;
    if (h < 0 || h >= H) continue;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t w = w0 + s * dw;
      if (w < 0 || w >= W) continue;
      const float* xp = xn + (h * W + w) * C;
      const float* bp = panel + (r * S + s) * C * NVL;
      for (int64_t c = 0; c < C; ++c, bp += NVL) {
        const V a = Isa::set1(xp[c]);
        for (int v = 0; v < NV; ++v) acc[v] = Isa::fma(a, Isa::load(bp + v * VL), acc[v]);
      }
    }
  }
  if (bias)
    for (int v = 0; v < NV; ++v) acc[v] = Isa::add(acc[v], Isa::load(bias + v * VL));
  store_row(o, acc, cmask, false);
}

template <typename T>  // (o: float, or at::Half: the sums rounded to float16)
inline void edge_pixel_nv(int nv, const float* xn, int64_t H, int64_t W, int64_t C, int64_t h0, int64_t w0, int64_t R,
                          int64_t S, int64_t dh, int64_t dw, const float* panel, int64_t NVL, const float* bias,
                          T* o, const M* cmask) {
  switch (nv) {
    case 1: return edge_pixel<1>(xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias, o, cmask);
    case 2: return edge_pixel<2>(xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias, o, cmask);
    case 3: return edge_pixel<3>(xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias, o, cmask);
    default:
      if constexpr (Isa::kMaxNV >= 4) edge_pixel<4>(xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias, o, cmask);
  }
}

// The packed filter of a forward problem as fwd_compute reads it: nblocks blocks of blockf floats,
// one per group and block of output channels (gk = g*nkb + kb), block(gk, dst) packing one.
// whole(): all of it, from the filter cache (filter_cache.h: under `filter`, the user's filter,
// and `tag`) or packed before the tasks run; whole(lazy = true) where each block is read by one
// task only: then, unless the cache holds it, data null, and each task packs its blocks into its
// own scratch just before it reads them. There they stay in the core's L2, where the whole filter
// went out to L3 and was read back (4.7 MB at 512@7 bfloat16). With a new filter each call (a
// training step), batch 4, 2 threads, NCHW 512@7 bfloat16, together with FilterSrc's words made
// as read (ab.py as there): forward 1.07-1.08x, backward-input 1.05-1.10x (0.86x -> 1.00x and
// 0.93x -> 1.09x torch, PYTHONPATH=. python benchmarks/algos.py 4,512,7,7,512,3,1,1 --pass P
// --dtype bfloat16 --step); 256@14 1.01-1.02x, float32 3x3/2 0.99-1.03x. Cached forms: level.
struct FwdFilter {
  const at::Tensor* filter;
  std::vector<int64_t> tag;
  int64_t nblocks, blockf, macs;
  std::function<void(int64_t, float*)> block;

  PackedFilter whole(bool lazy) const {
    const int64_t floats = nblocks * blockf;
    return packed_filter(filter, tag, floats, lazy ? nullptr : scratch(0, floats), [&](float* wp) {
      for_each_task(nblocks, macs, [&](int64_t gk) { block(gk, wp + gk * blockf); });
    });
  }
};

// The FwdFilter of forward problem f whose blocks block(gk, dst) packs: kind 1 the filter itself,
// 2 flipped and transposed (the stride-1 backward-input); krsc: the packer reads a filter of
// channel rows. Its cache tag names every parameter of the packed layout.
FwdFilter fwd_filter(int64_t kind, const Conv2dParams& f, const FwdPlan& plan, bool krsc, const at::Tensor* filter,
                     std::function<void(int64_t, float*)> block) {
  return {filter, {kind, CONV_EXT_ISA_BITS, f.groups, f.Kg(), f.Cg(), f.R, f.S, plan.NVL, plan.cc, krsc, plan.pairs},
          f.groups * plan.nkb, f.R * f.S * f.Cg() * plan.NVL, f.macs(), std::move(block)};
}

// y = conv(x, packed weights) + bias for the forward problem p (pad >= 0). With pairs, y16 (if not
// null) gets y rounded to bfloat16 instead of y where it can (NCHW: by the output transposes; NHWC:
// by the tiles, when a block's reduction is one panel, ncb == 1); returns whether it did.
// yh (if not null; channels_last) gets y rounded to float16 instead of y where the reduction is
// one panel (ncb == 1: tiles, row tiles, edge pixels and row runs store it; not run_in_place's
// grouped runs); returns whether it did.
bool fwd_compute(const Conv2dParams& p, const FwdPlan& f, const float* x, const FwdFilter& wf, const float* bias,
                 float* y, bool nhwc, uint16_t* y16 = nullptr, at::Half* yh = nullptr) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N, RS = R * S;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int nv = f.nv;
  const int64_t NVL = f.NVL, MR = f.MR, nkb = f.nkb, cc = f.cc, ncb = f.ncb;
  const bool merge_s = f.merge_s;

  float* bp = nullptr;  // bias [g][kb][NVL]
  if (bias) {
    bp = scratch(5, G * nkb * NVL);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < nkb * NVL; ++j) bp[g * nkb * NVL + j] = j < Kg ? bias[g * Kg + j] : 0.f;
  }

  // NHWC 1x1 unpadded ("direct"): the input is read in place, Y[pix, K] = X[pix, C] . W^T on the
  // tensor as it lies (any stride: pixel (p, q) reads row p*sh, column q*sw). At stride 1 the
  // images are one tall image (consecutive images' rows are adjacent in NHWC).
  const bool direct = nhwc && R == 1 && S == 1 && ph == 0 && pw == 0;
  const bool tall = direct && sh == 1 && sw == 1;
  const int64_t Nt = tall ? 1 : N, Ht = tall ? N * H : H, Pt = tall ? N * P : P;
  const int64_t Wp = (Q - 1) * sw + (S - 1) * dw + 1;  // band columns q*sw + s*dw
  const int64_t pixf = direct ? C : Cg, rowf = direct ? W * C : Wp * Cg;  // floats per band pixel / row
  const FwdTasks ft = fwd_tasks(Nt, Pt, G, nkb, NVL, Cg * RS, [&](int64_t rows) {
    return direct ? rows * Q * Cg : ((rows - 1) * sh + (R - 1) * dh + 1) * rowf;
  }, !direct);
  const int64_t nimg = ft.nimg, rb = ft.rb, kbs = ft.kbs;
  const int64_t nib = ceil_div(Nt, nimg), nblk = ceil_div(Pt, rb), nkg = ceil_div(nkb, kbs);

  // The band of images n0..n1, rows p0..p1 of each (image i at b + i*band_img(p0, p1)): its
  // band rows [r0, r1) of each image with (part, parts), all of them by default.
  auto band_rows = [&](int64_t p0, int64_t p1) { return (p1 - p0 - 1) * sh + (R - 1) * dh + 1; };
  auto band_img = [&](int64_t p0, int64_t p1) { return band_rows(p0, p1) * rowf; };
  auto build_band = [&](int64_t n0, int64_t n1, int64_t g, int64_t p0, int64_t p1, float* b, int64_t part = 0,
                        int64_t parts = 1) {
    const int64_t h0 = p0 * sh - ph, nrows = band_rows(p0, p1), imgf = nrows * rowf;  // band rows h0..
    const int64_t r0 = nrows * part / parts, r1 = nrows * (part + 1) / parts;
    const int64_t h_lo = std::max<int64_t>(0, h0 + r0), h_hi = std::min(H, h0 + r1);  // rows in x
    const int64_t z0 = std::min(r1, std::max(r0, -h0)), z1 = std::max(z0, std::max(r0, H - h0));  // [r0, z0), [z1, r1): zeros
    for (int64_t n = n0; n < n1; ++n) {
      float* bi = b + (n - n0) * imgf;
      if (h_hi > h_lo) pack_band(x, nhwc, C, H, W, n, g * Cg, Cg, h_lo, h_hi, pw, Wp, Cg, bi + (h_lo - h0) * rowf, f.pairs);
      if (z0 > r0) std::memset(bi + r0 * rowf, 0, sizeof(float) * (z0 - r0) * rowf);
      if (r1 > z1) std::memset(bi + z1 * rowf, 0, sizeof(float) * (r1 - z1) * rowf);
    }
  };
  if (!(f.pairs && (!nhwc || ncb == 1))) y16 = nullptr;  // NCHW: the transposes round the sums of all panels
  const std::vector<int> widths = cut_row(Q);  // the runs of an output row (row_runs below)
  const int64_t run_rest = row_rest(widths, Q);  // pixels of a row left to the micro-kernel
  // one vector of output channels, 2..7 taps a row at stride and dilation 1: row runs (row_run)
  // (pairs: not where the rows' rests would go to tiles by row pointer rounding into y16: no Tile::c16 there)
  const bool row_runs = nv == 1 && (sw == 1 ? S >= 2 && S <= 7 : sw == 2 && S == 3) && dw == 1 &&
                        (!f.pairs || (kPairs && (run_rest == 0 || !(y16 && nhwc))));
  // More than one vector of output channels on 3 input channels at stride 1 or 2 (RGB stems;
  // also a direct 1x1 on 3 channels): each output row in row tiles (run_row_tile, simd.h) of
  // MRrow pixels, one A pointer a tile. Channels_last forward, 2 threads, old/new (python
  // benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass forward --rounds 4..6):
  // MobileNetV2's 3x3/2 stem 3->32 @224 batch 8 1.07-1.08x (14x2 tiles), the 7x7/2 stem 3->64
  // batch 8 1.01-1.02x and VGG's 3->64 @224 batch 4 1.03x (6x4 tiles both ways: the pointers'
  // setup only).
  const int64_t MRrow = row_tile_rows(nv);
  const bool row_tiles = !row_runs && !f.pairs && row_tiles_fit(nv, sw * pixf) && Q >= MRrow;
  // Row tiles read in place (in_place): channels_last, one group. No band: the pixels whose taps
  // all lie inside x (columns [q_lo, q_hi) of the output rows whose filter rows do) read x where
  // it lies, at x's row stride (rowa), in row tiles and the rests' tiles; every other pixel is an
  // edge pixel (edge_pixel: its taps inside x only, the same bits). The band's copy of x was 17%
  // of MobileNetV2's 3x3/2 stem (left out, wrong sums: 1.21x; perf: 10% of the samples in
  // memmove). Channels_last forward, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so
  // SHAPE --layout nhwc --pass forward --rounds 4): that stem 3->32 @224 batch 8 1.10-1.11x (with
  // row_tile, simd.h: 1.22-1.23x, 0.94x -> 1.25-1.28x torch), VGG's 3->64 @224 batch 4
  // 1.03-1.04x (1.10-1.11x), the 7x7/2 stem 1.00-1.01x (1.02x); AVX2 (--old-env/--new-env
  // CONV_EXT_CPU_CAPABILITY=avx2, both changes) 1.30x and 1.23x.
  const bool in_place = row_tiles && nhwc && G == 1 && !direct;  // (direct reads x in place already)
  if (!(nhwc && ncb == 1 && !f.pairs)) yh = nullptr;
  auto half_at = [&](const float* o) { return yh + (o - y); };  // y's element at o, in yh
  const int64_t rowa = in_place ? W * C : rowf;  // a filter row's offset in A: r*dh*rowa
  // pixel q's taps read columns q*sw - pw + s*dw: all inside x for q in [q_lo, q_hi)
  const int64_t q_lo = std::min(Q, ceil_div(pw, sw));
  const int64_t q_hi = std::clamp(floor_div(W - 1 + pw - (S - 1) * dw, sw) + 1, q_lo, Q);
  // Tasks that share a band (nkg > 1: the same pixels, other output channels) read it from one
  // copy built up front, not each their own (2048->512 1x1 @7 NCHW: each image was transposed 4x).
  // Fewer bands than 4 a thread are built in pieces of rows (a whole band per task left one
  // thread transposing, the other waiting: 1024->512 1x1 @14 NCHW batch 1, 8% of the samples in
  // pack_band, 15% in libgomp's wait; perf record). Forward, NCHW, 2 threads, Xeon (python
  // benchmarks/ab.py OLD.so NEW.so SHAPE --pass forward, 8 rounds, best mins / median of the
  // pairs): that layer 1.17x / 1.14x, 3x3/2 512@14 batch 1 1.04x / 1.05x, 2048->512 @7 level.
  const int64_t nband = nib * G * nblk, band_max = nimg * band_img(0, std::min(rb, Pt));
  float* shared = (!direct && !in_place && nkg > 1 && nband * band_max <= (int64_t(16) << 20)) ? scratch(6, nband * band_max) : nullptr;
  if (shared) {
    const int64_t pieces = std::max<int64_t>(1, std::min(band_rows(0, std::min(rb, Pt)), ceil_div(4 * pool_threads(), nband)));
    for_each_task(nband * pieces, nband * band_max * 16, [&](int64_t t) {
      const int64_t bt = t / pieces, blk = bt % nblk, g = bt / nblk % G, n0 = bt / (nblk * G) * nimg;
      build_band(n0, std::min(Nt, n0 + nimg), g, blk * rb, std::min(Pt, blk * rb + rb), shared + bt * band_max,
                 t % pieces, pieces);
    });
  }

  // NCHW outputs of >= kStreamFloats (kernel_util.h; 2M floats before) are written by the
  // transposes with streaming stores: no read-for-ownership of lines that are about to be
  // overwritten whole. The 7x7/2 stem's 12.8 MB output, batch 4: 10-25% faster forward (2
  // threads, interleaved A/B in random order, best and median of 40), and it no longer trailed the
  // channels_last stem by the ~0.8 ms its transposes took (the stem now runs direct_nchw).
  const bool big_y = N * K * P * Q >= kStreamFloats;
  const bool stream_y = !nhwc && big_y;
  // NHWC: the micro-kernel stores y itself, streamed too when no later panel adds into it: stem
  // forward ~5% faster, 64->256 1x1 @56 7-9% (same A/B).
  const bool stream_tiles = nhwc && big_y && ncb == 1;
  auto run_row = [&](int t, const Run& a) {  // a run of t pixels
    if (f.pairs) row_run_ts<kPairs>(t, S, sw, a);
    else row_run_ts<false>(t, S, sw, a);
  };
  auto edge_run = [&](int t, const Run& a) {  // a run of t pixels of run_in_place
    if (f.pairs) edge_run_t<kPairs>(t, sw, a);
    else edge_run_t<false>(t, sw, a);
  };
  // The filter whole, or packed by the tasks as they go where each block is read by one task: every
  // image and row in it (the paths for channels_last groups below read it whole).
  const bool grouped_nhwc = nhwc && !direct && !shared && G > 1 && Cg <= VL && H * W * C >= K * Cg * RS;
  const PackedFilter packed = wf.whole(!grouped_nhwc && nib * nblk == 1);
  const float* wp = packed.data;
  // task_body(n0, n1, p0, p1, g, kg, prebuilt): a task's tiles, on its band (prebuilt: built by the caller)
  // images [n0, n1), output rows [p0, p1), group g, block kg of filter blocks
  auto task_body = [&](int64_t n0, int64_t n1, int64_t p0, int64_t p1, int64_t g, int64_t kg, const float* prebuilt) {
    const float* band;
    int64_t imgf;  // image i of the band at band + i*imgf
    if (prebuilt) {
      band = prebuilt, imgf = band_img(p0, p1);
    } else if (direct) {
      band = x + (n0 * Ht + p0 * sh) * W * C + g * Cg, imgf = Ht * W * C;
    } else if (shared) {
      band = shared + ((n0 / nimg * G + g) * nblk + p0 / rb) * band_max, imgf = band_img(p0, p1);
    } else if (in_place) {
      band = nullptr, imgf = 0;
    } else {
      imgf = band_img(p0, p1);
      float* b = scratch(1, (n1 - n0) * imgf);
      build_band(n0, n1, g, p0, p1, b);
      band = b;
    }
    const int64_t ipix = (p1 - p0) * Q, npix = (n1 - n0) * ipix;  // pixels of one image, of the task
    float* obuf = nhwc ? nullptr : scratch(2, npix * NVL);
    // where each pixel's band row starts, once per task (divisions per tile row cost more than
    // the tile itself in small layers: CIFAR's stem)
    const float** prow = scratch_rows(npix);
    for (int64_t img = 0, f = 0; band && img < n1 - n0; ++img)
      for (int64_t pr = 0; pr < p1 - p0; ++pr)
        for (int64_t q = 0; q < Q; ++q) prow[f++] = band + img * imgf + pr * sh * rowf + q * sw * pixf;
    int64_t* a_off = scratch_i64(0, RS);
    int64_t* b_off = scratch_i64(1, RS);
    for (int64_t kb = kg * kbs; kb < std::min(nkb, (kg + 1) * kbs); ++kb) {
      const int64_t kvalid = std::min(NVL, Kg - kb * NVL);
      M cm[4];
      make_masks(nv, kvalid, cm);
      const float* wblock = wp ? wp + (g * nkb + kb) * wf.blockf : nullptr;
      if (!wblock) {  // (lazy: this task is the only one that reads the block)
        float* b = scratch(9, wf.blockf);
        wf.block(g * nkb + kb, b);
        wblock = b;
      }
      for (int64_t cb = 0; cb < ncb; ++cb) {
        const int64_t c0 = cb * cc, ccb = std::min(cc, Cg - c0);
        const float* panel = wblock + c0 * RS * NVL;
        int nseg = 0;
        for (int64_t r = 0; r < R; ++r) {
          if (merge_s) {
            a_off[nseg] = r * dh * rowa + c0, b_off[nseg] = r * S * Cg * NVL, ++nseg;
          } else {
            for (int64_t s = 0; s < S; ++s)
              a_off[nseg] = r * dh * rowa + s * dw * pixf + c0, b_off[nseg] = (r * S + s) * ccb * NVL, ++nseg;
          }
        }
        const float* bias_kb = (cb == 0 && bp) ? bp + (g * nkb + kb) * NVL : nullptr;
        auto out_at = [&](int64_t f) {  // output of the task's pixel f
          return nhwc ? y + ((n0 * Pt + p0) * Q + f) * K + g * Kg + kb * NVL : obuf + f * NVL;
        };
        const int64_t ldc = nhwc ? K : NVL;
        const M* cmask = nhwc && kvalid < NVL ? cm : nullptr;
        auto tile = [&](int64_t mr) {  // a tile of mr rows on this panel, less its A and C
          Tile t;
          t.mr = static_cast<int>(mr);
          t.a_ls = 1;
          t.b = panel, t.b_ls = NVL;
          t.a_off = a_off, t.b_off = b_off, t.nseg = nseg;
          t.len = merge_s ? S * Cg : ccb;
          t.accumulate = cb > 0;
          t.bias_v = bias_kb;
          t.cmask = cmask;
          t.stream = stream_tiles && (!yh || NVL % 32 == 0);  // (float16: only blocks of whole lines)
          t.pairs = f.pairs;
          return t;
        };
        // micro-kernel tiles over n pixels: A rows ar[0..n), C rows cr[0..n) or (cr null) the
        // task's consecutive pixels from 0
        auto tiles = [&](const float* const* ar, float* const* cr, int64_t n) {
          for (int64_t f0 = 0; f0 < n; f0 += MR) {
            Tile t = tile(std::min(MR, n - f0));
            t.arow = ar + f0;
            if (cr) t.crow = cr + f0;
            else t.c = out_at(f0), t.ldc = ldc;
            if (y16 && nhwc) t.c16 = y16 + (out_at(f0) - y);  // (NCHW: the transposes write y16)
            at::Half* hrow[Isa::mr(1)];  // (the most rows a tile has)
            if (yh && cr) {
              for (int64_t i = 0; i < t.mr; ++i) hrow[i] = half_at(cr[f0 + i]);
              t.crow = nullptr, t.h16row = hrow;
            } else if (yh) {
              t.h16 = half_at(out_at(f0));
            }
            // the next tile's x rows, read in place (direct; a band's rows are in L2 already, and
            // prefetching them measured 0.97-1.03x: 3x3/2 and 7x7/2 layers, ab.py)
            if (const int64_t f1 = std::min(n, f0 + 2 * MR); direct && f0 + MR < n)
              t.prefetch = prefetch_rows(ar[f0 + MR], ar[f1 - 1] + t.len, t.len);
            run_tile<false>(nv, t);
          }
        };
        if (!row_runs && !row_tiles) {
          tiles(prow, nullptr, npix);
          continue;
        }
        // The rest of every row goes to full micro-kernel tiles together (rows of C by pointer), not
        // one mostly empty tile a row.
        const int64_t nrest = (row_runs ? run_rest : (in_place ? q_hi - q_lo : Q) % MRrow) * (npix / Q);
        float* lists = scratch(7, 4 * std::max<int64_t>(1, nrest));  // two arrays of nrest pointers
        const float** arest = reinterpret_cast<const float**>(lists);
        float** crest = reinterpret_cast<float**>(lists + 2 * nrest);
        Tile rt = tile(MRrow);  // the row tiles' (their A and C by argument)
        rt.a_is = sw * pixf, rt.ldc = ldc;
        auto row_tile_to = [&](const float* a, float* o) {  // C at o in y, or rounded into yh
          if (yh) run_row_tile(nv, rt, a, half_at(o));
          else run_row_tile(nv, rt, a, o);
        };
        int64_t m = 0;  // rests gathered (in place: none from rows of edge pixels only)
        for (int64_t fr = 0; fr < npix; fr += Q) {  // one output row at a time
          int64_t q0 = 0;
          if (row_runs) {
            for (int t : widths) {
              float* o = out_at(fr + q0);
              uint16_t* o16 = y16 && nhwc ? y16 + (o - y) : nullptr;
              Run run{prow[fr + q0] + c0, dh * rowf, pixf, 0, 0, R, ccb, panel, o, ldc, cb > 0, bias_kb, cmask, o16};
              if (yh) run.h16 = half_at(o);
              run_row(t, run);
              q0 += t;
            }
          } else if (in_place) {
            const int64_t n = n0 + fr / ipix, h0 = (p0 + fr % ipix / Q) * sh - ph;
            const float* xn = x + n * H * W * C;
            auto edge = [&](int64_t q) {
              float* o = out_at(fr + q);
              const int64_t w0 = q * sw - pw;
              if (yh) edge_pixel_nv(nv, xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias_kb, half_at(o), cmask);
              else edge_pixel_nv(nv, xn, H, W, C, h0, w0, R, S, dh, dw, panel, NVL, bias_kb, o, cmask);
            };
            if (h0 < 0 || h0 + (R - 1) * dh >= H) {  // filter rows in the padding: the whole row
              for (int64_t q = 0; q < Q; ++q) edge(q);
              continue;
            }
            auto in_x = [&](int64_t q) { return xn + (h0 * W + q * sw - pw) * C; };  // pixel q's tap (0, 0)
            for (int64_t q = 0; q < q_lo; ++q) edge(q);
            for (q0 = q_lo; q0 + MRrow <= q_hi; q0 += MRrow) row_tile_to(in_x(q0), out_at(fr + q0));
            for (; q0 < q_hi; ++q0, ++m) arest[m] = in_x(q0), crest[m] = out_at(fr + q0);
            for (int64_t q = q_hi; q < Q; ++q) edge(q);
            continue;
          } else {
            for (; q0 + MRrow <= Q; q0 += MRrow) row_tile_to(prow[fr + q0], out_at(fr + q0));
          }
          for (; q0 < Q; ++q0, ++m) arest[m] = prow[fr + q0], crest[m] = out_at(fr + q0);
        }
        tiles(arest, crest, m);
      }
      if (!nhwc) {  // transpose the block's [pixel][k] buffer into the NCHW planes
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t at = ((n * K + g * Kg + kb * NVL) * P + p0) * Q;
#if CONV_EXT_ISA_PAIRS
          if (y16) {
            transpose_rows_bf16(obuf + (n - n0) * ipix * NVL, NVL, ipix, kvalid, P * Q, y16 + at, ipix);
            continue;
          }
#endif
          transpose_rows(obuf + (n - n0) * ipix * NVL, NVL, ipix, kvalid, P * Q, y + at, ipix, stream_y);
        }
        if (stream_y) _mm_sfence();
      }
      if (stream_tiles) _mm_sfence();
    }
  };
  // Channels_last groups of <= VL channels (words: bf16_pairs) with 3 taps a row whose rows the runs
  // cover whole (ResNeXt's 512 g32 @14 and, in runs of 7, 512 g32 @28/2: 16 + 16 channels a group):
  // the runs read x in place (run_in_place), a pixel's channels g*Cg.. at a step of C, the padding's
  // columns from a block of zeros and its rows left out. A task (image, block of rows) runs every
  // group on its rows: no band (its build, below, was ~6% of the 512 g32 @14 forward and the tasks'
  // pointer lists and offsets another ~6%, perf record). Batch 4, 2 threads, channels_last, old/new
  // (python benchmarks/ab.py OLD.so NEW.so 4,512,14,14,512,3,1,1,32 --layout nhwc --pass P --dtype D):
  // 512 g32 @14 forward 1.11x float32 / 1.15x bfloat16 (0.82x -> 1.00x torch), backward-input 1.10x /
  // 1.12x; 512 g32 @28/2 forward 1.08x / 1.10x.
  const bool short_runs = std::all_of(widths.begin(), widths.end(), [](int t) { return t <= 14; });
  const bool run_in_place = grouped_nhwc && row_runs && run_rest == 0 && S == 3 &&
                            (sw == 1 ? short_runs : Q % 7 == 0) && nkb == 1 && ncb == 1;
  if (run_in_place) {
    const int64_t rb2 = even_row_blocks(Pt, rb, Nt, 4 * pool_threads()), nblk2 = ceil_div(Pt, rb2);
    M cm[4];
    make_masks(nv, Kg, cm);
    const M* cmask = Kg < NVL ? cm : nullptr;
    const std::vector<int> ws = sw == 1 ? widths : std::vector<int>(Q / 7, 7);  // the runs of a row
    for_each_task(Nt * nblk2, p.macs(), [&](int64_t t) {
      const int64_t n = t / nblk2, p0 = t % nblk2 * rb2, p1 = std::min(Pt, p0 + rb2);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t a = p0; a < p1; ++a) {
          const int64_t h0 = a * sh - ph;  // filter rows r0..r1 read input rows h0 + r*dh inside x
          const int64_t r0 = h0 >= 0 ? 0 : ceil_div(-h0, dh), r1 = h0 < H ? std::min(R, ceil_div(H - h0, dh)) : 0;
          const int64_t nr = std::max<int64_t>(0, r1 - r0);
          const float* xr = nr > 0 ? x + (n * H + h0 + r0 * dh) * W * C + g * Cg : x;
          float* o = y + (n * Pt + a) * Q * K + g * Kg;
          for (int64_t i = 0, q0 = 0; i < int64_t(ws.size()); q0 += ws[i++]) {
            float* oq = o + q0 * K;
            edge_run(ws[i], {xr, dh * W * C, C, q0 * sw - pw, W, nr, Cg, wp + (g * RS + r0 * S) * Cg * NVL, oq, K,
                                false, bp ? bp + g * NVL : nullptr, cmask, y16 ? y16 + (oq - y) : nullptr});
          }
        }
    });
    return y16 != nullptr;
  }
  // Channels_last groups of <= 16 channels (a group's slice of a pixel is one of its cache lines)
  // whose filter is no larger than an image: a task runs every group of its image and rows, their
  // bands built together from whole pixels first. A task per group read its slice of every pixel,
  // a strided stream from L3 (12% of the samples of 512 g32 @14 forward, perf record, in the
  // masked copies). 2 threads, batch 4, channels_last forward, old/new (python benchmarks/ab.py
  // OLD.so NEW.so SHAPE --layout nhwc --pass forward): 512 g32 @14 1.08x, 64 g4 @28 1.00x; not
  // 1024 g32 @7 (32 channels a group, a 1.2 MB filter swept by every task: 0.87x).
  if (grouped_nhwc) {
    const int64_t w_lo = std::min(Wp, pw), w_hi = std::min(Wp, W + pw);  // band columns with data
    // a task per image and block of rows (at least 4 tasks a thread; the shape fwd_tasks chose
    // counted the groups as tasks)
    const int64_t rb2 = even_row_blocks(Pt, rb, Nt * nkg, 4 * pool_threads()), nblk2 = ceil_div(Pt, rb2);
    for_each_task(Nt * nblk2 * nkg, p.macs(), [&](int64_t t) {
      const int64_t kg = t % nkg, blk = t / nkg % nblk2, n0 = t / (nkg * nblk2), n1 = n0 + 1;
      const int64_t p0 = blk * rb2, p1 = std::min(Pt, p0 + rb2);
      const int64_t h0 = p0 * sh - ph, nrows = (p1 - p0 - 1) * sh + (R - 1) * dh + 1, imgf = nrows * rowf;
      const int64_t bandf = (n1 - n0) * imgf;
      float* bands = scratch(8, G * bandf);  // group g's band at bands + g*bandf
      const M cm = Isa::mask(Cg);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t i = 0; i < nrows; ++i) {
          const int64_t h = h0 + i;
          float* row0 = bands + (n - n0) * imgf + i * rowf;  // group 0's row; group g's at + g*bandf
          if (h < 0 || h >= H) {
            for (int64_t g = 0; g < G; ++g) std::memset(row0 + g * bandf, 0, sizeof(float) * rowf);
            continue;
          }
          for (int64_t g = 0; g < G; ++g) {
            std::memset(row0 + g * bandf, 0, sizeof(float) * w_lo * Cg);
            std::memset(row0 + g * bandf + w_hi * Cg, 0, sizeof(float) * (Wp - w_hi) * Cg);
          }
          for (int64_t col = w_lo; col < w_hi; ++col) {
            const float* src = x + ((n * H + h) * W + col - pw) * C;
            float* d = row0 + col * Cg;
            for (int64_t g = 0; g < G; ++g, d += bandf, src += Cg) Isa::storem(d, Isa::loadm(src, cm), cm);
          }
        }
      for (int64_t g = 0; g < G; ++g) task_body(n0, n1, p0, p1, g, kg, bands + g * bandf);
    });
  } else {
    for_each_task(nib * G * nblk * nkg, p.macs(), [&](int64_t task) {
      const int64_t kg = task % nkg, blk = (task / nkg) % nblk, g = (task / (nkg * nblk)) % G;
      const int64_t n0 = task / (nkg * nblk * G) * nimg, p0 = blk * rb;
      task_body(n0, std::min(Nt, n0 + nimg), p0, std::min(Pt, p0 + rb), g, kg, nullptr);
    });
  }
  return y16 != nullptr || yh != nullptr;
}

// The filter as the packers below read it: w, float32 values (or words of bfloat16 pairs as they
// lie: bf16_pairs' channels_last and 1x1 forward filters); or h, a dense bfloat16 filter whose
// words of pairs are built as they are read, so that no filter of words is written first and
// read back (bf16_pairs.cpp):
//   channel pairs (forward, KCRS): word (k, c*RS + rs) = (h[k][2c][rs], h[k][2c + 1][rs])
//   row pairs (backward-input, KCRS or channels_last): word (i, x) = (h[2i][x], h[2i + 1][x]) for
//   x < L = Cg*R*S, the rows being whole filters
// Offsets and strides count the words of the filter of words (the paired problem's). The words
// made as read, not by a pass over the whole filter before the packing (4.7 MB each way at 512@7,
// 7.5% of the forward's samples; perf record), and the panels' rows stored in place (a buffer and
// a memcpy per row before): NCHW 512@7 bfloat16 forward with a new filter each call 1.05x, batch 4,
// 2 threads (python benchmarks/ab.py OLD.so NEW.so 4,512,7,7,512,3,1,1 --pass forward --dtype
// bfloat16 --old-env CONV_EXT_CPU_FILTER_CACHE_MB=0 --new-env CONV_EXT_CPU_FILTER_CACHE_MB=0, as a
// training step sees it); float32 1.00-1.03x.
struct FilterSrc {
  const float* w = nullptr;
  const uint16_t* h = nullptr;
  int64_t RS = 0;  // channel pairs: the taps of a channel
  int64_t L = 0;   // row pairs: the words of a row
#if CONV_EXT_ISA_PAIRS
  // channel pairs: idx[phi] gathers the 16 words of lanes l0 .. l0 + 15 (l0 % RS = phi) from the
  // 64 values from channel 2*(l0 / RS) on (one VPERMT2W), where they fit there (RS <= 10)
  alignas(64) int16_t idx[10][32];
  bool by_permute = false;

  static FilterSrc channel_pairs(const uint16_t* h, int64_t RS) {
    FilterSrc s;
    s.h = h, s.RS = RS, s.by_permute = RS <= 10;
    for (int64_t phi = 0; phi < RS && s.by_permute; ++phi)
      for (int64_t t = 0; t < 16; ++t) {
        const int64_t q = phi + t, lo = 2 * RS * (q / RS) + q % RS;
        s.idx[phi][2 * t] = static_cast<int16_t>(lo), s.idx[phi][2 * t + 1] = static_cast<int16_t>(lo + RS);
      }
    return s;
  }
  // lanes m of the 16 words from word l0 = c*RS + phi of a channel-pair row of `len` words from
  // halves s (start = 2*c*RS: the halves from channel 2c on)
  __m512 channel_pair_words(const uint16_t* s, int64_t len, int64_t l0, int64_t start, int64_t phi,
                            __mmask16 m) const {
    if (by_permute) {
      const int64_t left = 2 * len - start;
      const auto upto = [](int64_t n) {
        return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
      };
      const __m512i a = _mm512_maskz_loadu_epi16(upto(left), s + start);
      const __m512i b = _mm512_maskz_loadu_epi16(upto(left - 32), s + start + 32);
      const __m512i v = _mm512_permutex2var_epi16(a, _mm512_load_si512(idx[phi]), b);
      return _mm512_castsi512_ps(_mm512_maskz_mov_epi32(m, v));
    }
    alignas(64) uint32_t v[16];
    for (int64_t t = 0; t < 16; ++t) {
      const int64_t q = l0 + t, lo = 2 * RS * (q / RS) + q % RS;
      v[t] = (m >> t) & 1 ? uint32_t(s[lo]) | uint32_t(s[lo + RS]) << 16 : 0u;
    }
    return _mm512_castsi512_ps(_mm512_load_si512(v));
  }
  // row pairs: the first value of the pair of word off + o, for words o of the same filter row as off
  const uint16_t* row_pairs(int64_t off) const { return h + off + off / L * L; }
#endif

  // Rows [0, jn) (lds words apart) x words [0, len) from word off, transposed: row l of the
  // result (NVL floats, lanes [jn, NVL) zero) at at(l). Row pairs: the rows lie in one filter
  // row; channel pairs: rows of a KCRS filter's words (not a channels_last filter's taps).
  template <class At>
  void transposed(int64_t off, int64_t lds, int64_t jn, int64_t len, int64_t NVL, const At& at) const {
#if CONV_EXT_ISA_PAIRS
    if (h && RS) {  // (off and lds are whole channels: rows start at a pair's first tap)
      int64_t at_l0 = -1, start = 0, phi = 0;  // (one division per 16 words, not per row)
      return transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) {
        if (l0 != at_l0) at_l0 = l0, start = 2 * RS * (l0 / RS), phi = l0 % RS;
        return channel_pair_words(h + 2 * (off + i * lds), len, l0, start, phi, m);
      }, jn, len, NVL, rows_at(at));
    }
    if (h) {
      const uint16_t* lo0 = row_pairs(off);
      return transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) {
        const uint16_t* lo = lo0 + i * lds + l0;
        return _mm512_castsi512_ps(pair_words(lo, lo + L, m));
      }, jn, len, NVL, rows_at(at));
    }
#endif
    transpose_rows_at(w + off, lds, jn, len, NVL, at);
  }
  // Rows of n words (off, off + lds, ...; within one filter row) into rows of NVL floats (dst,
  // dst + ldd, ...), lanes [n, NVL) zero (pad_rows). Not for channel pairs.
  void padded(int64_t off, int64_t lds, int64_t rows, int64_t n, int64_t NVL, float* dst, int64_t ldd) const {
#if CONV_EXT_ISA_PAIRS
    if (h) {
      const uint16_t* lo0 = row_pairs(off);
      for (int64_t r = 0; r < rows; ++r) {
        const uint16_t* lo = lo0 + r * lds;
        for (int64_t v = 0; v < NVL; v += 16)
          _mm512_storeu_si512(dst + r * ldd + v,
                              pair_words(lo + v, lo + L + v, static_cast<__mmask16>(Isa::mask(n - v))));
      }
      return;
    }
#endif
    pad_rows(w + off, lds, rows, n, NVL, dst, ldd);
  }
};

// The forward filter itself (no flip), block gk (group g, output channels k0.. of NVL): a panel's
// [c][r][s] x NVL block is the transpose of NVL rows of w, done by 16x16 vector blocks and stored
// in [r][s][c] order (transpose_rows_at). A scalar gather (before) took 2.8 ms per call for a
// 2048->512 1x1 filter (0.23 ms now; PYTHONPATH=. python benchmarks/cpu_kernels.py --cases 1x1
// --layouts nhwc). Kept across calls while the filter is unchanged (filter_cache.h).
void fwd_pack_forward(const Conv2dParams& p, const FwdPlan& f, const FilterSrc& w, int64_t gk, float* dst) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S, NVL = f.NVL;
  const int64_t g = gk / f.nkb, k0 = (gk % f.nkb) * NVL, jn = std::min(NVL, Kg - k0);
  int64_t* row_of = scratch_i64(2, f.cc * RS);
  for (int64_t c0 = 0; c0 < Cg; c0 += f.cc) {
    const int64_t ccb = std::min(f.cc, Cg - c0);
    float* panel = dst + c0 * RS * NVL;  // [r][s][c][NVL]
    if (weight_is_krsc(p)) {  // channels_last filter: one transpose per tap, straight into the panel
      for (int64_t rs = 0; rs < RS; ++rs)
        w.transposed((g * Kg + k0) * Cg * RS + rs * Cg + c0, Cg * RS, jn, ccb, NVL,
                     [&](int64_t l) { return panel + (rs * ccb + l) * NVL; });
      continue;
    }
    // source column l = c*RS + rs -> panel row rs*ccb + c (a table: not a division per row)
    for (int64_t c = 0, l = 0; c < ccb; ++c)
      for (int64_t rs = 0; rs < RS; ++rs, ++l) row_of[l] = rs * ccb + c;
    w.transposed(((g * Kg + k0) * Cg + c0) * RS, Cg * RS, jn, ccb * RS, NVL,
                 [&](int64_t l) { return panel + row_of[l] * NVL; });
  }
}

// pairs: x and w are words of bfloat16 pairs of channels (p counts the words), and y16 (if not
// null) may get the output rounded to bfloat16 instead of y: returns whether it did (bf16_pairs.cpp).
// w16 (pairs, a KCRS filter; w unused): the bfloat16 filter, its channel pairs made words as packed.
// yh (float32 operands, channels_last): may get the output rounded to float16 instead of y (the
// same answer).
bool implicit_gemm_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias,
                           float* y, bool nhwc, const at::Tensor* filter, bool pairs, uint16_t* y16,
                           const uint16_t* w16, at::Half* yh) {
  FwdPlan f = fwd_plan(p);
  f.pairs = pairs;
  FilterSrc src;
#if CONV_EXT_ISA_PAIRS
  if (w16) src = FilterSrc::channel_pairs(w16, p.R * p.S);
#endif
  src.w = w;
  const FwdFilter wf = fwd_filter(1, p, f, weight_is_krsc(p), filter,
                                  [&](int64_t gk, float* dst) { fwd_pack_forward(p, f, src, gk, dst); });
  return fwd_compute(p, f, x, wf, bias, y, nhwc, y16, yh);
}


// Whether each filter of w holds the channels of a tap side by side ([k][r][s][c]): a
// channels_last filter, or any 1x1 filter (KCRS and KRSC are then the same). The packers copy
// rows of such a filter; a 1x1 KCRS filter went through 1-column vector transposes before
// (2048->512 @7 NCHW backward-input: ~2 of 5 ms at one thread).
bool channel_rows(const Conv2dParams& p) { return weight_is_krsc(p) || p.R * p.S == 1; }

// Weights of that forward problem f (k' = c, c' = k), block gk: panel element (g, k', c', r, s) =
// w[g*Kg + c', k', R-1-r, S-1-s]. For each c' the NVL filters k' of a block are one transpose of
// an NVL x R*S block of w, its taps stored flipped (transpose_rows_at).
// krsc: channel_rows(w): the NVL filters k' at a tap are already side by side, a copy.
void fwd_pack_flipped(const Conv2dParams& f, const FwdPlan& plan, const FilterSrc& w, bool krsc, int64_t gk,
                      float* dst) {
  const int64_t Cgf = f.Cg(), Kgf = f.Kg(), RS = f.R * f.S, NVL = plan.NVL;
  const int64_t g = gk / plan.nkb, j0 = (gk % plan.nkb) * NVL, jn = std::min(NVL, Kgf - j0);
  for (int64_t k = 0; k < Cgf; ++k) {  // c' of f = the original filter k
    const int64_t c0 = k / plan.cc * plan.cc, ccb = std::min(plan.cc, Cgf - c0);
    float* panel = dst + c0 * RS * NVL;  // [r][s][c'][NVL]
    if (krsc) {  // tap rs reads the filter's tap RS-1-rs: rows backwards
      w.padded(((g * Cgf + k) * RS + RS - 1) * Kgf + j0, -Kgf, RS, jn, NVL, panel + (k - c0) * NVL, ccb * NVL);
      continue;
    }
    w.transposed(((g * Cgf + k) * Kgf + j0) * RS, RS, jn, RS, NVL,
                 [&](int64_t l) { return panel + ((RS - 1 - l) * ccb + k - c0) * NVL; });
  }
}

bool bwd_input_stride1(const Conv2dParams& p, const float* dy, const FilterSrc& w, float* dx, bool nhwc,
                       const at::Tensor* filter, bool pairs, uint16_t* dx16, at::Half* dxh) {
  const Conv2dParams f = turned_problem(p);  // (kernel_util.h)
  FwdPlan plan = fwd_plan(f);
  plan.pairs = pairs;
  const bool krsc = channel_rows(p);
  const FwdFilter wf = fwd_filter(2, f, plan, krsc, filter,
                                  [&](int64_t gk, float* dst) { fwd_pack_flipped(f, plan, w, krsc, gk, dst); });
  return fwd_compute(f, plan, dy, wf, nullptr, dx, nhwc, dx16, dxh);
}

// ------------------------------------------------------------------------------------------
// backward-input: dx[n,ih,iw,c] = sum_{r,s,k} dy[n,oh,ow,k] * w[k,c,r,s]
//   over the taps with ih + ph - r*dh = oh*sh and iw + pw - s*dw = ow*sw (0 <= oh < P, ow < Q)
// ------------------------------------------------------------------------------------------
// Few input channels (the stem: Cg = 3): gathering would fill 3 of 16 lanes, so scatter instead
// (col2im): per image, T[pix, (r,s,c)] = sum_k dy[pix, k] * w[k, c, r, s] on the micro-kernel
// (dy read as it lies, vectors over the R*S*Cg columns; the filter packed by vector transposes),
// then each T row is added into the dx pixels it came from, in a fixed order (one task per image
// and group: deterministic); NCHW adds into an NHWC image of the group, transposed at the end.
// Strided layers with small dy planes take it too: there each stride phase of the gather is a
// small problem (a 7x7 plane, 1-4 taps), while T is one GEMM over all taps at the micro-kernel's
// full speed. ResNet-50 batch 8, 2 threads, ms phase gather -> col2im [torch], NCHW / NHWC:
// 512@14/2 10.1 -> 7.6 [6.8] / 10.2 -> 6.5 [7.3]; 256@28/2 6.4 -> 5.5 [6.3] / 6.2 -> 5.2 [5.1];
// 128@56/2 (784 dy pixels) a tie, so it stays with the gather. A task is an image (and group),
// so at least 4 of them (a rule of the shape only, not of the thread count: same bits).
// Since the gather's tiles take a phase's pixels of many rows (a row's 7 or 14 left tiles of 1-2
// rows before), 256@28/2 (196 dy pixels) is faster gathered: batch 8 / 4, 2 threads, col2im ->
// gather (python benchmarks/ab.py OLD.so NEW.so 8,256,28,28,256,3,2,1 --pass backward_input, best
// mins): NCHW 1.11-1.17x / 1.04-1.09x, channels_last 1.08x / 0.92-1.00x; 512@14/2 (49) mixed,
// 0.83-1.05x: col2im keeps dy planes of up to 7x7.
bool bwd_input_use_col2im(const Conv2dParams& p) {
  const bool strided = p.stride_h > 1 || p.stride_w > 1;
  return (p.Cg() * 2 <= VL && p.R * p.S * p.Cg() >= VL && p.groups == 1) ||
         (strided && p.Cg() >= 64 && p.P * p.Q <= 49 && p.N * p.groups >= 4);
}

void bwd_input_col2im(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N, RS = R * S, J = RS * Cg, PQ = P * Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int nv = choose_nv_blocks(J);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), njb = ceil_div(J, NVL), Jp = njb * NVL;
  float* wp = scratch(0, G * njb * Kg * NVL);  // [g][jb][k][NVL], column j = (r*S + s)*Cg + c
  const bool krsc = channel_rows(p);
  for_each_task(G * Kg, G * Kg * J * 16, [&](int64_t gk) {
    const int64_t g = gk / Kg, k = gk % Kg;
    float* row = scratch(1, Jp);  // filter k as [r][s][c], zero-padded to Jp
    if (krsc) std::memcpy(row, w + gk * J, sizeof(float) * J);
    else transpose_rows(w + gk * J, RS, Cg, RS, Cg, row);  // [c][rs] -> [rs][c]
    std::fill(row + J, row + Jp, 0.f);
    for (int64_t jb = 0; jb < njb; ++jb) std::memcpy(wp + ((g * njb + jb) * Kg + k) * NVL, row + jb * NVL, sizeof(float) * NVL);
  });
  // Adds T row trow (pixel (pp, q) of dy) into the dx pixels it came from.
  auto scatter = [&](const float* trow, int64_t pp, int64_t q, float* img, int64_t ldi) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t ih = pp * sh - ph + r * dh;
      if (ih < 0 || ih >= H) continue;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t iw = q * sw - pw + s * dw;
        if (iw < 0 || iw >= W) continue;
        const float* tv = trow + (r * S + s) * Cg;
        float* d = img + (ih * W + iw) * ldi;
        for (int64_t c = 0; c < Cg; ++c) d[c] += tv[c];
      }
    }
  };
  // NHWC: add straight into dx; NCHW: into an NHWC image of this group's channels, transposed
  // into dx at the end (the adds then run along contiguous channels either way)
  auto image_begin = [&](int64_t n, int64_t g, float*& img, int64_t& ldi) {
    img = nhwc ? dx + n * H * W * C + g * Cg : scratch(3, H * W * Cg);
    ldi = nhwc ? C : Cg;  // pixel stride of img
    for (int64_t i = 0; i < H * W; ++i) std::memset(img + i * ldi, 0, sizeof(float) * Cg);
  };
  auto image_end = [&](int64_t n, int64_t g, const float* img) {
    if (!nhwc) transpose_rows(img, Cg, H * W, Cg, H * W, dx + (n * C + g * Cg) * H * W);  // [pix][c] -> [c][pix]
  };
  const int64_t zero = 0;

  if (Cg >= 64) {
    // Many channels (strided layers on small planes): T for a group of images at once, then
    // the scatter. The GEMM's tasks are blocks of T's columns (and of its rows when there are few
    // columns), so each block of the packed filter is read once for all the group's pixels; per
    // image it was read again (9 MB for 512->512 3x3/2). Xeon, 2 threads, batch 4, ratio vs torch
    // per image -> batched (python -m conv_ext.bench --suite resnet50 --passes backward_input
    // --batch 4 --cases layer4.0.conv2,layer3.0.conv2 --layout nchw|nhwc): 512@14/2 NCHW
    // 0.56 -> 1.20, NHWC 0.48 -> 1.24; 256@28/2 NCHW 0.77 -> 1.09, NHWC 0.61 -> 0.89. (Planes of
    // 784 pixels, 128@56/2, stay with the phase gather: 1.28 -> 0.90 with this.)
    const int64_t ng = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(4) << 20) / (G * PQ * Jp)));
    float* T = scratch(4, G * ng * PQ * Jp);  // [g][pixel of the group][Jp]
    for (int64_t n0 = 0; n0 < N; n0 += ng) {
      const int64_t n1 = std::min(N, n0 + ng), Mg = (n1 - n0) * PQ;
      const int64_t nmb = ceil_div(8, G * njb), mb = round_up(ceil_div(Mg, nmb), MR);
      for_each_task(G * njb * ceil_div(Mg, mb), int64_t(Mg) * Kg * NVL * G * njb, [&](int64_t task) {
        const int64_t nm = ceil_div(Mg, mb), g = task / (njb * nm), jb = task / nm % njb, m0 = task % nm * mb;
        const float* arow[16];
        for (int64_t f0 = m0; f0 < std::min(Mg, m0 + mb); f0 += MR) {
          Tile t;
          t.mr = static_cast<int>(std::min(MR, Mg - f0));
          for (int i = 0; i < t.mr; ++i) {
            const int64_t n = n0 + (f0 + i) / PQ, pix = (f0 + i) % PQ;
            arow[i] = nhwc ? dy + (n * PQ + pix) * K + g * Kg : dy + (n * K + g * Kg) * PQ + pix;
          }
          t.arow = arow, t.a_ls = nhwc ? 1 : PQ;
          t.b = wp + (g * njb + jb) * Kg * NVL, t.b_ls = NVL;
          t.a_off = &zero, t.b_off = &zero, t.nseg = 1, t.len = Kg;
          t.c = T + (g * Mg + f0) * Jp + jb * NVL, t.ldc = Jp;
          run_tile<false>(nv, t);
        }
      });
      for_each_task((n1 - n0) * G, int64_t(Mg) * J * G, [&](int64_t task) {
        const int64_t n = n0 + task / G, g = task % G;
        float* img;
        int64_t ldi;
        image_begin(n, g, img, ldi);
        const float* Tn = T + (g * Mg + (n - n0) * PQ) * Jp;
        for (int64_t pix = 0; pix < PQ; ++pix) scatter(Tn + pix * Jp, pix / Q, pix % Q, img, ldi);
        image_end(n, g, img);
      });
    }
    return;
  }

  for_each_task(N * G, p.macs(), [&](int64_t task) {
    const int64_t n = task / G, g = task % G;
    float* img;
    int64_t ldi;
    image_begin(n, g, img, ldi);
    float* tbuf = scratch(2, MR * Jp);
    for (int64_t f0 = 0; f0 < PQ; f0 += MR) {
      const int mr = static_cast<int>(std::min(MR, PQ - f0));
      for (int64_t jb = 0; jb < njb; ++jb) {
        Tile t;
        if (nhwc) t.a = dy + (n * PQ + f0) * K + g * Kg, t.a_is = K, t.a_ls = 1;
        else t.a = dy + (n * K + g * Kg) * PQ + f0, t.a_is = 1, t.a_ls = PQ;
        t.b = wp + (g * njb + jb) * Kg * NVL, t.b_ls = NVL;
        t.a_off = &zero, t.b_off = &zero, t.nseg = 1, t.len = Kg, t.mr = mr;
        t.c = tbuf + jb * NVL, t.ldc = Jp;
        run_tile<false>(nv, t);
      }
      for (int i = 0; i < mr; ++i) scatter(tbuf + i * Jp, (f0 + i) / Q, (f0 + i) % Q, img, ldi);
    }
    image_end(n, g, img);
  });
}

// Few input channels at stride 1 (CIFAR's 3->16 stem): vectors over a dx row's pixels instead.
// dx[n, c, ih, iw..iw+16) = sum_{k,r,s} w[k,c,r,s] * dyb[k][ih+ph-r*dh][iw+pw-s*dw ..]: dy is
// copied once per image and group into zero-padded planes (dyb), so every tap is one unaligned
// vector load and one FMA, with no bounds tests and no scatter (col2im spent most of its time in
// the scalar scatter). CIFAR stem 8x3x32x32 <- 16 3x3, 2 threads (python -m conv_ext.bench --suite
// default --passes backward_input --cases cifar.stem --layout nchw|nhwc), col2im -> this, torch
// in brackets: NCHW 0.163 -> 0.085 ms [0.156], NHWC 0.155 -> 0.089 ms [0.127].
bool bwd_input_use_pixel_rows(const Conv2dParams& p) {
  const int64_t band = p.Kg() * (p.H + 2 * p.R * p.dil_h) * (round_up(p.W, 2 * VL) + 2 * p.S * p.dil_w);
  return p.Cg() * 4 <= VL && p.stride_h == 1 && p.stride_w == 1 && band <= (int64_t(4) << 20);
}

// NQ vectors per row: 2 x 16 pixels for CIFAR's 32-wide rows, 1 for rows of <= VL pixels (the
// (1,3,8,8) layer: 2 vectors computed 4x the pixels there are). A tile is CB dx channels x RB
// rows x NQ vectors of accumulators (AVX-512: 24, RB*NQ = 8; AVX2: CB*RB*NQ <= 8): each step
// (k, r, s) loads the RB*NQ dy vectors once for the CB channels' weight broadcasts. Was one
// channel x 4/NQ rows a tile (4 FMA chains, and every dy vector loaded once per channel): the
// (1,3,8,8) layer's backward-input ran at half the FMA rate, bound by the chains' latency.
// dyb has RB extra zero rows, so the rows of a last, partial step read inside it.
template <int NQ, int CB>
void bwd_input_pixel_rows_nq(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  constexpr int RB = (VL == 16 ? 8 : 4) / NQ;
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N, RS = R * S;
  const int64_t ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t padT = std::max<int64_t>(0, (R - 1) * dh - ph), padL = std::max<int64_t>(0, (S - 1) * dw - pw);
  const int64_t Wr = round_up(W, NQ * VL);                    // dx columns computed per row
  const int64_t Hb = H + ph + padT + RB, Wb = Wr + pw + padL; // dyb rows ih+ph-r*dh+padT, cols iw+pw-s*dw+padL
  const int64_t kfold = std::max<int64_t>(1, kChain / RS);
  for_each_task(N * G, p.macs(), [&](int64_t task) {
    const int64_t n = task / G, g = task % G;
    float* dyb = scratch(1, Kg * Hb * Wb);
    std::fill(dyb, dyb + Kg * Hb * Wb, 0.f);
    const int64_t qn = std::min(Q, Wb - padL), on = std::min(P, Hb - RB - padT);  // the dy pixels read
    if (nhwc) {  // a row of qn pixels x Kg channels -> Kg plane rows (vector transposes, simd.h)
      for (int64_t oh = 0; oh < on; ++oh)
        transpose_rows(dy + (n * P + oh) * Q * K + g * Kg, K, qn, Kg, Hb * Wb, dyb + (oh + padT) * Wb + padL, qn);
    } else if (qn <= VL) {  // short rows: one masked vector each, not a memcpy call
      const M m = Isa::mask(qn);
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t oh = 0; oh < on; ++oh)
          Isa::storem(dyb + (k * Hb + oh + padT) * Wb + padL, Isa::loadm(dy + ((n * K + g * Kg + k) * P + oh) * Q, m), m);
    } else {
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t oh = 0; oh < on; ++oh)
          std::memcpy(dyb + (k * Hb + oh + padT) * Wb + padL, dy + ((n * K + g * Kg + k) * P + oh) * Q, sizeof(float) * qn);
    }
    float* wt = scratch(2, Cg * Kg * RS);  // wt[c][k][r][s]
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s)
            wt[(c * Kg + k) * RS + r * S + s] = w[(g * Kg + k) * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s];
    alignas(64) float row[NQ * 16];
    for (int64_t c0 = 0; c0 < Cg; c0 += CB)
      for (int64_t ih = 0; ih < H; ih += RB)
        for (int64_t iw0 = 0; iw0 < W; iw0 += NQ * VL) {
          V acc[CB][RB][NQ];
#pragma GCC unroll 4
          for (int cb = 0; cb < CB; ++cb)
#pragma GCC unroll 8
            for (int j = 0; j < RB; ++j)
#pragma GCC unroll 2
              for (int v = 0; v < NQ; ++v) acc[cb][j][v] = Isa::zero();
          const float* wc[CB];  // a channel past Cg repeats the last one (computed, not stored)
#pragma GCC unroll 4
          for (int cb = 0; cb < CB; ++cb) wc[cb] = wt + std::min<int64_t>(c0 + cb, Cg - 1) * Kg * RS;
          // chains of kfold filters' taps, about kChain (simd.h): 64 x 5x5 taps in one chain were
          // 7x torch's float32 error
          constexpr int NA = CB * RB * NQ;
          V(&flat)[NA] = reinterpret_cast<V(&)[NA]>(acc);
          V sum[NA];
#pragma GCC unroll 32
          for (int i = 0; i < NA; ++i) sum[i] = Isa::zero();
          bool folded = false;
          for (int64_t k = 0; k < Kg; ++k) {
            if (k > 0 && k % kfold == 0) fold_run(flat, sum, folded);
            for (int64_t r = 0; r < R; ++r) {
              const float* src = dyb + (k * Hb + ih + ph - r * dh + padT) * Wb + iw0 + pw + padL;
              const int64_t t0 = (k * R + r) * S;
              for (int64_t s = 0; s < S; ++s) {
                V wv[CB];
#pragma GCC unroll 4
                for (int cb = 0; cb < CB; ++cb) wv[cb] = Isa::set1(wc[cb][t0 + s]);
#pragma GCC unroll 8
                for (int j = 0; j < RB; ++j)
#pragma GCC unroll 2
                  for (int v = 0; v < NQ; ++v) {
                    const V xv = Isa::load(src + j * Wb - s * dw + v * VL);
#pragma GCC unroll 4
                    for (int cb = 0; cb < CB; ++cb) acc[cb][j][v] = Isa::fma(wv[cb], xv, acc[cb][j][v]);
                  }
              }
            }
          }
          end_runs(flat, sum, folded);
          const int64_t valid = std::min<int64_t>(NQ * VL, W - iw0);
          for (int cb = 0; cb < CB && c0 + cb < Cg; ++cb)
            for (int j = 0; j < RB && ih + j < H; ++j) {
              const int64_t c = c0 + cb;
              if (!nhwc) {
                float* d = dx + ((n * C + g * Cg + c) * H + ih + j) * W + iw0;
                for (int v = 0; v < NQ; ++v) Isa::storem(d + v * VL, acc[cb][j][v], Isa::mask(valid - v * VL));
              } else {
                for (int v = 0; v < NQ; ++v) Isa::store(row + v * VL, acc[cb][j][v]);
                float* d = dx + ((n * H + ih + j) * W + iw0) * C + g * Cg + c;
                for (int64_t i = 0; i < valid; ++i) d[i * C] = row[i];
              }
            }
        }
  });
}

// Channels a tile: 3 on AVX-512 (2 for 4 channels: two full blocks), fewer when there are fewer.
template <int NQ>
void bwd_input_pixel_rows_cb(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  const int64_t cb = std::min<int64_t>(p.Cg() == 4 ? 2 : p.Cg(), VL == 16 ? 3 : 2);
  if (cb == 1) bwd_input_pixel_rows_nq<NQ, 1>(p, dy, w, dx, nhwc);
  else if (cb == 2) bwd_input_pixel_rows_nq<NQ, 2>(p, dy, w, dx, nhwc);
  else bwd_input_pixel_rows_nq<NQ, VL == 16 ? 3 : 2>(p, dy, w, dx, nhwc);
}

void bwd_input_pixel_rows(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc) {
  if (p.W <= VL) bwd_input_pixel_rows_cb<1>(p, dy, w, dx, nhwc);
  else bwd_input_pixel_rows_cb<2>(p, dy, w, dx, nhwc);
}

// pairs: dy and w are words of bfloat16 pairs of output channels (p counts the words), and dx16
// (if not null) may get dx rounded to bfloat16 instead of dx: returns whether it did (bf16_pairs.cpp).
// w16 (pairs; w unused): the bfloat16 filter, pairs of its rows made words as packed.
// dxh (if not null; channels_last): dx rounded to float16 instead, where the stride-1 pass (the
// forward turned round) rounds its outputs in its tiles (fwd_compute's yh); returns whether it did.
bool implicit_gemm_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc,
                                  const at::Tensor* filter, bool pairs, uint16_t* dx16, const uint16_t* w16,
                                  at::Half* dxh) {
  if (!pairs && bwd_input_use_pixel_rows(p)) return bwd_input_pixel_rows(p, dy, w, dx, nhwc), false;
  if (!pairs && bwd_input_use_col2im(p)) return bwd_input_col2im(p, dy, w, dx, nhwc), false;
  FilterSrc src;
  src.w = w, src.h = w16, src.L = p.Cg() * p.R * p.S;
  if (turns_round(p)) return bwd_input_stride1(p, dy, src, dx, nhwc, filter, pairs, dx16, dxh);
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int nv = choose_nv_blocks(Cg);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), nob = ceil_div(Cg, NVL);
  const int64_t RS = R * S;
  // Output channels per panel. A reduction that fits twice the panel budget stays whole: each dx
  // tile is then written once, not loaded and stored again per panel, which on the short per-phase
  // reductions of a strided layer (1 to 4 taps of kc channels) cost more than the panel's L2 reuse
  // gains. 3x3/2 128@56 (one 288 KiB panel, was 85 + 43 channels), batch 4, 2 threads (python
  // benchmarks/ab.py OLD.so NEW.so 4,128,56,56,128,3,2,1 --pass backward_input): channels_last
  // 1.05-1.06x, NCHW 1.07-1.11x. Equal panels alone (64 + 64) were level; 256@28/2 as one 576 KiB
  // panel (4x the budget) level too.
  int64_t kc = std::max<int64_t>(1, kPanelFloats / (RS * NVL));
  if (kc >= Kg || RS * Kg * NVL <= 2 * kPanelFloats) kc = Kg;
  const int64_t nkc = ceil_div(Kg, kc);
  if (!(pairs && (!nhwc || nkc == 1))) dx16 = nullptr;  // bfloat16 out: NHWC one panel (written once), NCHW the transposes

  // packed transposed weights [g][ob][kcb][r][s][k][NVL]
  const bool krsc = channel_rows(p);
  const int64_t wfloats = G * nob * RS * Kg * NVL;
  const std::initializer_list<int64_t> tag = {3, CONV_EXT_ISA_BITS, G, Kg, Cg, R, S, NVL, kc, krsc, pairs};
  const PackedFilter packed = packed_filter(filter, tag, wfloats, scratch(0, wfloats), [&](float* wp) {
    for_each_task(G * nob, p.macs(), [&](int64_t go) {
      const int64_t g = go / nob, ob = go % nob;
      float* panel0 = wp + (g * nob + ob) * RS * Kg * NVL;
      for (int64_t kcb = 0; kcb < nkc; ++kcb) {
        const int64_t k0 = kcb * kc, kcl = std::min(kc, Kg - k0);
        float* panel = panel0 + k0 * RS * NVL;
        const int64_t jn = std::min(NVL, Cg - ob * NVL);
        for (int64_t k = 0; k < kcl; ++k) {
          if (krsc) {  // w[k][rs][ob*NVL ..] is already a row of channels
            src.padded((g * Kg + k0 + k) * RS * Cg + ob * NVL, Cg, RS, jn, NVL, panel + k * NVL, kcl * NVL);
            continue;
          }
          // panel[rs][k][j] = w[k][ob*NVL + j][rs] (vector transposes)
          src.transposed(((g * Kg + k0 + k) * Cg + ob * NVL) * RS, RS, jn, RS, NVL,
                         [&](int64_t l) { return panel + (l * kcl + k) * NVL; });
        }
      }
    });
  });
  const float* wp = packed.data;

  // dy band: columns ow + padL for every ow a dx column can reach
  const int64_t padL = std::max<int64_t>(0, -floor_div(pw - (S - 1) * dw, sw));
  const int64_t ow_max = floor_div(W - 1 + pw, sw);
  // scatter runs (one vector of dx channels, 3 taps a row at stride 2): a last run of 7 may reach
  // past the row (its sums there not stored): zero columns up to dy column (W + 6 + pw) / 2
  const bool scatter = nv == 1 && sw == 2 && S == 3 && dw == 1 && (!pairs || kPairs);
  const std::vector<int> swidths = scatter ? scatter_widths(W) : std::vector<int>();
  const int64_t Wp = std::max(std::max(Q, ow_max + 1), scatter ? (W + 6 + pw) / 2 + 1 : 0) + padL;
  // rows a task: the band budget's, blocks of equal rows (40 + 16 at 3x3/2 128@56: 1.01x, ab.py)
  const int64_t rb = even_row_blocks(H, (kBandFloats / std::max<int64_t>(1, Wp * Kg)) * sh - (R - 1) * dh, N * G, 8);
  const int64_t nblk = ceil_div(H, rb);

  // NCHW: a dx of >= kStreamFloats goes out of the transposes with streaming stores, as the
  // forward's outputs do (no read-for-ownership of lines about to be overwritten whole; rows
  // that are not whole aligned lines fall back to plain stores). Batch 4, 2 threads, in-process
  // A/B, random order, median of 50: 3x3/2 128@56 1.12x, 64->96 @56/2 1.16x.
  // Channels_last: the micro-kernel streams its tiles' rows (a pixel's NVL channels: whole lines
  // when aligned) when the reduction is one panel (each dx vector written once). Same A/B, median
  // of 30: 3x3/2 128@56 1.11-1.13x, 96@56 batch 8 1.15x, 64->128 @56 1.04x; 256@28 and 512@14
  // (several panels) unchanged.
  const bool stream_dx = N * C * H * W >= kStreamFloats;
  auto dy_row = [&](int64_t ih, int64_t r) {  // the dy row that dx row ih meets with filter row r (-1: none)
    const int64_t th = ih + ph - r * dh;
    return th < 0 || th % sh != 0 || th / sh >= P ? int64_t(-1) : th / sh;
  };
  for_each_task(N * G * nblk, p.macs(), [&](int64_t task) {
    const int64_t n = task / (G * nblk), g = (task / nblk) % G, blk = task % nblk;
    const int64_t i0 = blk * rb, i1 = std::min(H, i0 + rb);
    const int64_t oh_lo = std::max<int64_t>(0, ceil_div(i0 + ph - (R - 1) * dh, sh));
    const int64_t oh_hi = std::min(P, floor_div(i1 - 1 + ph, sh) + 1);
    float* band = scratch(1, std::max<int64_t>(1, oh_hi - oh_lo) * Wp * Kg);
    if (oh_hi > oh_lo) pack_band(dy, nhwc, K, P, Q, n, g * Kg, Kg, oh_lo, oh_hi, padL, Wp, Kg, band, pairs);
    float* obuf = nhwc ? nullptr : scratch(2, (i1 - i0) * W * NVL);
    int64_t* a_off = scratch_i64(0, RS);
    int64_t* b_off = scratch_i64(1, RS);
    const float** xrows = scatter ? scratch_rows(2 * R) : nullptr;  // a scatter run's dy rows and filter rows
    const float** wrows = scatter ? xrows + R : nullptr;
    for (int64_t ob = 0; ob < nob; ++ob) {
      const int64_t cvalid = std::min(NVL, Cg - ob * NVL);
      M cm[4];
      make_masks(nv, cvalid, cm);
      for (int64_t kcb = 0; kcb < nkc; ++kcb) {
        const int64_t k0 = kcb * kc, kcl = std::min(kc, Kg - k0);
        const float* panel = wp + ((g * nob + ob) * RS * Kg + k0 * RS) * NVL;
        if (scatter) {
          for (int64_t ih = i0; ih < i1; ++ih) {
            int nr = 0;  // the row taps that reach dx row ih
            for (int64_t r = 0; r < R; ++r) {
              const int64_t oh = dy_row(ih, r);
              if (oh < 0) continue;
              xrows[nr] = band + ((oh - oh_lo) * Wp + padL) * Kg + k0, wrows[nr] = panel + r * S * kcl * NVL;
              ++nr;
            }
            int64_t c0 = 0;
            for (int t : swidths) {
              const int par = int((c0 + pw) & 1);
              const int64_t jb = (c0 + pw - 2 + par) / 2;  // the run's first dy column
              ScatterRun a{xrows, wrows, nr, jb * Kg, Kg, kcl, nullptr, 0, int(std::min<int64_t>(t, W - c0)),
                           kcb > 0, nullptr, nullptr};
              if (nhwc) {
                a.c = dx + ((n * H + ih) * W + c0) * C + g * Cg + ob * NVL, a.ldc = C;
                a.cmask = cvalid < NVL ? cm : nullptr;
                if (dx16) a.c16 = dx16 + (a.c - dx);
              } else {
                a.c = obuf + ((ih - i0) * W + c0) * NVL, a.ldc = NVL;
              }
              if (pairs) (par ? scatter_run_t<kPairs, 1> : scatter_run_t<kPairs, 0>)(t, a);
              else (par ? scatter_run_t<false, 1> : scatter_run_t<false, 0>)(t, a);
              c0 += t;
            }
          }
          continue;
        }
        // A phase (rows i0 + cls + m*sh, columns phase + j*sw) meets the same taps in consecutive rows
        // whose filter rows reach dy alike (all but the edge rows), each row one dy row further down:
        // their pixels are one list of tiles (header: "phase lists").
        auto rows_met = [&](int64_t ih) {  // the filter rows whose taps reach dy from dx row ih (R <= 64)
          uint64_t m = 0;
          for (int64_t r = 0; r < R; ++r)
            if (dy_row(ih, r) >= 0) m |= uint64_t(1) << r;
          return m;
        };
        for (int64_t cls = 0; cls < std::min(sh, i1 - i0); ++cls)
          for (int64_t phase = 0; phase < std::min(sw, W); ++phase) {
            const int64_t ncol = ceil_div(W - phase, sw);
            for (int64_t ih0 = i0 + cls; ih0 < i1;) {
              // the taps that reach dx row ih0's columns phase, phase + sw, ... (the same for all of them)
              int nseg = 0;
              for (int64_t r = 0; r < R; ++r) {
                const int64_t oh = dy_row(ih0, r);
                if (oh < 0) continue;
                for (int64_t s = 0; s < S; ++s) {
                  const int64_t tw = phase + pw - s * dw;
                  if (floor_mod(tw, sw) != 0) continue;
                  a_off[nseg] = ((oh - oh_lo) * Wp + floor_div(tw, sw) + padL) * Kg + k0;
                  b_off[nseg] = (r * S + s) * kcl * NVL;
                  ++nseg;
                }
              }
              int64_t nrow = 1;  // rows ih0, ih0 + sh, ... in this list (taller filters: a row a list)
              if (R <= 64)
                for (const uint64_t met = rows_met(ih0); ih0 + nrow * sh < i1 && rows_met(ih0 + nrow * sh) == met;)
                  ++nrow;
              const int64_t npx = nrow * ncol;
              const float** ar = scratch_ptrs<const float>(npx);
              float** cr = scratch_ptrs<float>(npx);
              uint16_t** cr16 = dx16 && nhwc ? scratch_ptrs<uint16_t>(npx) : nullptr;
              for (int64_t m = 0, f = 0; m < nrow; ++m)
                for (int64_t j = 0; j < ncol; ++j, ++f) {
                  const int64_t ih = ih0 + m * sh, iw = phase + j * sw;
                  ar[f] = band + (m * Wp + j) * Kg;  // (row ih reads dy rows m further down the band)
                  cr[f] = nhwc ? dx + ((n * H + ih) * W + iw) * C + g * Cg + ob * NVL
                               : obuf + ((ih - i0) * W + iw) * NVL;
                  if (cr16) cr16[f] = dx16 + (cr[f] - dx);
                }
              for (int64_t f0 = 0; f0 < npx; f0 += MR) {
                Tile t;
                t.arow = ar + f0, t.a_ls = 1;
                t.b = panel, t.b_ls = NVL;
                t.a_off = a_off, t.b_off = b_off, t.nseg = nseg, t.len = kcl;
                t.mr = static_cast<int>(std::min(MR, npx - f0));
                t.accumulate = kcb > 0;
                t.crow = cr + f0;
                if (cr16) t.c16 = cr16[f0], t.c16row = cr16 + f0;
                if (nhwc) {
                  t.cmask = cvalid < NVL ? cm : nullptr;
                  t.stream = stream_dx && nkc == 1;  // written once: whole lines, no read-for-ownership
                }
                t.pairs = pairs;
                run_tile<false>(nv, t);
              }
              ih0 += nrow * sh;
            }
          }
      }
      if (!nhwc) {
        const int64_t at = ((n * C + g * Cg + ob * NVL) * H + i0) * W;
#if CONV_EXT_ISA_PAIRS
        if (dx16) transpose_rows_bf16(obuf, NVL, (i1 - i0) * W, cvalid, H * W, dx16 + at, (i1 - i0) * W);
        else
#endif
        transpose_rows(obuf, NVL, (i1 - i0) * W, cvalid, H * W, dx + at, (i1 - i0) * W, stream_dx);
      }
    }
    if (stream_dx) _mm_sfence();  // the task's streamed dx (either layout) before it ends
  });
  return dx16 != nullptr;
}

// ------------------------------------------------------------------------------------------
// backward-weight with few output channels (NHWC, Kg <= VL, no column dilation): the roles
// turn around. The tile's vectors run over a filter row's (s, c) -- S*Cg contiguous floats of
// the x band at column q*sw -- and its rows over k, broadcast from dy as it lies:
//     dw[g][r][k][(s,c)] += sum_{n,p,q} dy[n,p,q,g*Kg+k] * band[p*sh-ph+r][q*sw + s][c]
// 6 rows x 4 vectors per tile load 10 values per 24 FMAs, where k-vector tiles of 16 rows x one
// vector of 16 k's load 17 per 16. Chunks of rows and their partial sums as below.
// Ratio vs torch, 2 threads (python -m conv_ext.bench --suite default --layout nhwc --passes
// backward_weight --cases cifar.bias,cifar.16x32): 16->16 5x5 @32 0.67-0.79x -> 0.88x, 16->16 3x3
// @32 0.96x -> 1.18x.
// Chunks: 16 tasks' worth (chunks x groups), was 16 chunks for any group count: ResNeXt 512 g32 @14
// (16 channels a group) summed 16 partial buffers of 0.3 MB for 56 rows; one chunk: 0.87 -> 0.60
// ms (min of 200 calls, old and new build alternated 6 times; torch 0.58-0.88).
// ------------------------------------------------------------------------------------------
bool small_k_backward_weight(const Conv2dParams& p, bool nhwc) {
  return nhwc && p.Kg() <= VL && p.dil_w == 1 && p.S * p.Cg() >= 2 * VL;
}

void backward_weight_small_k(const Conv2dParams& p, const float* dy, const float* x, float* dwt) {
  const bool krsc = weight_is_krsc(p);  // dw written as [k][r][s][c] (a channels_last filter)
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h;
  const int64_t J = S * Cg, JP = round_up(J, VL), JB = Isa::kMaxNV * VL;
  const int64_t part = G * R * Kg * JP;  // one chunk's partial sums [g][r][k][(s,c)]
  const int64_t rows = N * P;
  const int64_t nchunk = weight_chunks(ceil_div(int64_t(16), G), rows, part, p.macs());
  float* partial = scratch(0, nchunk * part);
  const int64_t Wp = (Q - 1) * sw + S, rowf = Wp * Cg;  // band: columns q*sw + s, channels of g
  const int64_t rsub = std::max<int64_t>(1, kBandFloats / (sh * rowf));
  // Grouped layers: the group's Kg channels of dy are copied side by side per batch. Read in place,
  // a step of the reduction (the next pixel) is K floats on, and at 512 channels (2 KiB) the
  // broadcasts of a tile's reduction fell into 2 L1 sets. ResNeXt 512 g32 @14 channels_last
  // (python benchmarks/ab.py OLD.so NEW.so 4,512,14,14,512,3,1,1,32 --layout nhwc --pass
  // backward_weight): 1.04x (medians 1.05x).
  const bool copy_dy = K != Kg;
  for_each_task(nchunk * G, p.macs(), [&](int64_t task) {
    const int64_t chunk = task / G, g = task % G;
    float* out = partial + chunk * part + g * R * Kg * JP;  // [r][k][(s,c)]
    std::fill(out, out + R * Kg * JP, 0.f);
    int64_t* a_off = scratch_i64(0, rsub);
    int64_t* b_off = scratch_i64(1, rsub);
    float* dyc = copy_dy ? scratch(2, std::min(rsub, P) * Q * Kg) : nullptr;
    const int64_t row_b = rows * (chunk + 1) / nchunk;
    for (int64_t row = rows * chunk / nchunk; row < row_b;) {
      // a batch: rows [pa, pb) of image n, at most rsub
      const int64_t n = row / P, pa = row % P, pb = std::min({P, pa + rsub, pa + (row_b - row)});
      row += pb - pa;
      const int64_t h0 = pa * sh - ph, nr = (pb - pa - 1) * sh + (R - 1) * dh + 1;
      const int64_t h_lo = std::max<int64_t>(0, h0), h_hi = std::min(H, h0 + nr);
      if (h_hi <= h_lo) continue;  // every tap of these rows reads padding
      float* xb = scratch(1, nr * rowf);
      pack_band(x, true, C, H, W, n, g * Cg, Cg, h_lo, h_hi, pw, Wp, Cg, xb + (h_lo - h0) * rowf);
      if (copy_dy) {  // the group's Kg channels of the batch's dy pixels, side by side
        const M m = Isa::mask(Kg);
        const float* src = dy + (n * P + pa) * Q * K + g * Kg;
        for (int64_t i = 0; i < (pb - pa) * Q; ++i) Isa::storem(dyc + i * Kg, Isa::loadm(src + i * K, m), m);
      }
      for (int64_t r = 0; r < R; ++r) {
        int nseg = 0;
        for (int64_t pp = pa; pp < pb; ++pp) {
          const int64_t ih = pp * sh - ph + r * dh;
          if (ih < 0 || ih >= H) continue;  // (band rows outside the image are never read)
          a_off[nseg] = copy_dy ? (pp - pa) * Q * Kg : (n * P + pp) * Q * K, b_off[nseg] = (ih - h0) * rowf, ++nseg;
        }
        if (nseg == 0) continue;
        for (int64_t j0 = 0; j0 < J; j0 += JB) {
          const int64_t jn = std::min(JB, J - j0);
          const int nv = static_cast<int>(ceil_div(jn, VL));
          const int64_t MR = Isa::mr(nv);
          M bm[4];
          make_masks(nv, jn, bm);  // lanes past the filter row read zeros (not the next column)
          for (int64_t i0 = 0; i0 < Kg; i0 += MR) {
            Tile t;
            if (copy_dy) t.a = dyc + i0, t.a_is = 1, t.a_ls = Kg;
            else t.a = dy + g * Kg + i0, t.a_is = 1, t.a_ls = K;
            t.b = xb + j0, t.b_ls = sw * Cg;
            t.a_off = a_off, t.b_off = b_off, t.nseg = nseg, t.len = Q;
            t.mr = static_cast<int>(std::min(MR, Kg - i0));
            t.c = out + (r * Kg + i0) * JP + j0, t.ldc = JP;  // j0 + nv*VL <= JP: whole vectors
            t.accumulate = true;
            t.bmask = bm;
            if (jn < nv * VL) run_tile<true>(nv, t);
            else run_tile<false>(nv, t);
          }
        }
      }
    }
  });
  // dw[g*Kg + k][c][r][s] = sum over chunks, in chunk order
  sum_chunks(partial, nchunk, part);
  for_each_task(G * Kg, part, [&](int64_t gk) {
    const int64_t g = gk / Kg, k = gk % Kg;
    float* dst = dwt + gk * Cg * R * S;
    for (int64_t r = 0; r < R; ++r) {
      const float* src = partial + ((g * R + r) * Kg + k) * JP;
      if (krsc) std::memcpy(dst + r * J, src, sizeof(float) * J);  // [r][(s, c)] as it is
      else for (int64_t sc = 0; sc < J; ++sc) dst[((sc % Cg) * R + r) * S + sc / Cg] = src[sc];
    }
  });
}

// ------------------------------------------------------------------------------------------
// backward-weight: dw[k,c,r,s] = sum_{n,p,q} dy[n,p,q,k] * x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c]
// ------------------------------------------------------------------------------------------
// pairs: dy and x are bfloat16 (passed as float*), the reduction runs over words of pixel pairs
// (q = 2j, 2j + 1: pack_band_pixel_pairs*, pack_dy_pixel_pairs* in simd.h) with VDPBF16PS steps,
// and dwt gets the float32 sums or, given dw16, dw rounded to bfloat16 (bf16_pairs.cpp).
// Backward-weight's chains of sums (Tile::chain): 64 steps (output pixels), not simd.h's kChain of
// 256. A batch of up to ~256 pixels was one chain: 5-8e-7 against the float64 result, 3.5-5x
// torch's error ((1,256,15,26) -> 256 7x5 g4 channels_last, 264 pixels, found by python
// benchmarks/accuracy_search.py --seed 47); in chains of 64, 1.9-2.5e-7 (1.2-1.6x). Speed level:
// python benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_weight, 64@56, 3x3/2 128@56,
// 256@14, 512@7, 16@32, 1x1 64->256 @56, 0.99-1.00x.
constexpr int64_t kWeightChain = 64;

void implicit_gemm_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dwt, bool nhwc,
                                   bool pairs, uint16_t* dw16) {
  if (!pairs && small_k_backward_weight(p, nhwc)) return backward_weight_small_k(p, dy, x, dwt);
  const bool krsc = weight_is_krsc(p);  // dw written as [k][r][s][c] (a channels_last filter)
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t H = p.H, W = p.W, C = p.C, K = p.K, N = p.N;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int nv = choose_nv_blocks(Kg);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), nkb = ceil_div(Kg, NVL);
  const int64_t RS = R * S;
  // The x band is [row][col][c] (NHWC rows memcpy'd, NCHW transposed 16 channels at a time by
  // pack_band) and, with dil_w == 1, tile rows i run over (s, c). NCHW kept a channel-major band
  // ([c][row][col], tile rows = channels; at stride > 1 its rows split into column phases) for 8+
  // channels until pack_band's transposes ran as sequential streams; now the transposed band is
  // as fast or faster everywhere measured. NCHW backward-weight, 2 threads, the two bands in one
  // process in random order, median of 30-80: 3x3/2 128@56 1.08x, 256@28 1.09x, 512@14 1.12x,
  // 64->96 @56 1.07x; batch 8: 16->16 3x3 @32 1.12x, 5x5 1.11x, 32->32 @16 1.14x, 64->64 @8
  // 1.08x, 16->16 @32/2 1.16x; 64->64 7x7 @28 1.05x; 5x5 64@28, 256@14, 1x1 layers level.
  // The [row][col][c] band's pixels are cs floats apart. A step of the reduction (the next output
  // pixel) is sw*cs floats on; at a multiple of 2 KiB all of a tile's A reads fell into 1-2 L1 sets,
  // so such bands get a line more a pixel (and tile rows over c, not (s, c)). Channels_last (ab.py,
  // 2 threads, batch 4): 3x3/2 512@14 1.04x, 256@28 1.03x; 128@56 (1 KiB, 4 sets) padded ran
  // 0.97-0.98x, the lost (s, c) merge outweighing the sets, so it is not padded.
  // pairs: a step of the reduction is two output pixels (2*sw band columns), Qr steps a row
  const int64_t xstep = pairs ? 2 * sw : sw, Qr = pairs ? (Q + 1) / 2 : Q;
  const int64_t cs = (xstep * Cg) % 512 == 0 ? Cg + 16 : Cg;
  const bool merge_s = dw == 1 && cs == Cg;
  const int64_t part = G * nkb * RS * Cg * NVL;  // one chunk's partial sums [g][kb][r][s][c][NVL]

  // Chunks of the N*P output rows: a function of the shape and the machine only (determinism:
  // weight_tasks, kernel_util.h), enough of them to keep the threads busy next to G*nkb, few
  // enough that the partials stay small: about 4M multiply-adds each, but at least 2 (a CIFAR
  // stem, 3->16 @32 batch 8 = 3.5M, ran as one chunk on one thread: NHWC 0.49x torch -> 0.71x,
  // NCHW 0.84x -> 0.93x; 1M-MAC chunks instead cost the 5x5 24->40 @27 layer 0.88x -> 0.70x
  // forward+backward). Up to weight_tasks(8) tasks' worth (chunks x blocks; 2 on a 2-core
  // machine). It was 16, then 8 on any machine: 512->512 3x3/2 @14 has 8 blocks of 64 filters and
  // ran 2 chunks of 9.4 MB partials for a 196-pixel reduction; one chunk: NCHW 8.16 -> 7.79 ms,
  // NHWC 7.64 -> 7.10 (2 threads, median of 30, random order); the stem, g4, 5x5 24->40, 1x1
  // 64@56 unchanged. A task runs kbs blocks of filters on one x band (built once for them all),
  // so the chunks x block-groups (~weight_tasks(8) tasks) are chosen to move the fewest floats:
  // each block-group copies the input once (nkg * |x|), each chunk adds one partial (nchunk * part). A task per block before
  // (the band copied once per block: memmove 8-10% of the samples of 3x3/2 128@56, perf record);
  // 2 threads, batch 4 (python benchmarks/ab.py OLD.so NEW.so 4,128,56,56,128,3,2,1 --pass
  // backward_weight): 1.02x channels_last, 1.04x NCHW (8 chunks of both blocks, not 4 x 2); 64@56,
  // 256@28/2, 512@14/2 (still a block a task), the stem, g4, 5x5 level. Reading x in place instead
  // of a band (zero-padded windows only for the edge columns) was 0.95x channels_last: the band
  // copy streams x into L2 faster than the micro-kernel's strided first reads do.
  const int64_t rows = N * P;
  int64_t nchunk = 1, kbs = nkb;
  for (int64_t k = 1, best = -1;; k = ceil_div(nkb, ceil_div(nkb, k) - 1)) {
    const int64_t nkg = ceil_div(nkb, k), nc = weight_chunks(ceil_div(weight_tasks(8), G * nkg), rows, part, p.macs());
    // times the share of the machine's threads left idle (a few rows cap the chunks: one tall
    // image's rows, bf16_pairs.cpp)
    const int64_t tasks = nc * G * nkg, hw = weight_tasks(8);
    const int64_t cost = (nkg * N * C * H * W + nc * part) * (ceil_div(tasks, hw) * hw) / tasks;
    if (best < 0 || cost < best) best = cost, nchunk = nc, kbs = k;
    if (nkg == 1) break;
  }
  const int64_t nkg = ceil_div(nkb, kbs);
  float* partial = scratch(0, nchunk * part);

  // A block's partial sums [row][NVL] -> its NVL filters: one pass of vector transposes, the rows
  // laid out as dw's own (r, s, c) for a channels_last filter ([k][r][s][c]), (c, r, s) for KCRS
  // (the tiles write their rows there by pointer). The KCRS partial was [(r, s, c)][NVL] too, turned
  // round by a second transpose per filter, and that pass cost a quarter of NCHW 512@7's bfloat16
  // backward-weight (perf record); dw16 (pairs): the transpose rounds the filters to bfloat16 (an
  // fp32 dw copied into a bfloat16 one was another 8%). Earlier, a scalar gather at stride NVL per
  // filter: 512->512 3x3/2 @14 NCHW, 2 threads: the gather 19.5% of the samples -> the transposes
  // 12.4%. With one chunk the task that computed a block finishes it at once (a pass over all of
  // them after the tasks read them back from memory), prefetching 64 rows ahead: the transposes'
  // loads waited on memory (perf annotate); NCHW 512@7 bfloat16 1.02-1.03x (an environment switch
  // in one process, random order, median of 100). Old -> new, NCHW 512@7 bfloat16, batch 4, 2
  // threads: 1.20x (python benchmarks/ab.py OLD.so NEW.so 4,512,7,7,512,3,1,1 --pass
  // backward_weight --dtype bfloat16 --rounds 10); float32 3x3/2 128@56 level (0.99-1.02x).
  const int64_t CRS = Cg * RS;
  auto prow = [&](int64_t r, int64_t s, int64_t c) { return krsc ? (r * S + s) * Cg + c : (c * R + r) * S + s; };
  auto finish = [&](int64_t g, int64_t kb) {
    const int64_t gk = g * nkb + kb, kn = std::min(NVL, Kg - kb * NVL), d0 = (g * Kg + kb * NVL) * CRS;
    const float* src = partial + gk * CRS * NVL;
    constexpr int64_t kRows = 64;  // rows a step, the next step's prefetched
    for (int64_t j0 = 0; j0 < CRS; j0 += kRows) {
      const int64_t jn = std::min(kRows, CRS - j0);
      const char* next = reinterpret_cast<const char*>(src + (j0 + kRows) * NVL);
      const int64_t ahead = std::min(kRows, std::max<int64_t>(0, CRS - j0 - kRows)) * NVL * 4;
      for (int64_t b = 0; b < ahead; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
#if CONV_EXT_ISA_PAIRS
      if (dw16) {
        transpose_rows_bf16(src + j0 * NVL, NVL, jn, kn, CRS, dw16 + d0 + j0, jn);
        continue;
      }
#endif
      transpose_rows(src + j0 * NVL, NVL, jn, kn, CRS, dwt + d0 + j0, jn);
    }
  };

  // rows per batch: one micro-kernel call runs over all pixels of a batch (which may span
  // images), with its dy rows ([row][q][NVL]) and x rows (band with zero rows) in L2. Every batch
  // adds its products into the task's partial sums (a load and a store of each), so the band
  // gets twice the forward's budget: fewer, longer batches. 2 threads, batch 4, in-process A/B in
  // random order, median of 30, channels_last / NCHW: 3x3/2 512@14 (2 rows a batch before, a
  // 4.7 MB partial) 1.10-1.15x / 1.08-1.17x, 256@28 1.08x / 1.06x, 128@56 0.99-1.03x, 64@56
  // NCHW 1.03x, 7x7/2 stem 0.99x / 1.06x, g4 1.04x / 1.02x, 5x5/2 and CIFAR layers 0.99-1.02x.
  // Three times the budget: 512@14 1.13-1.26x but 128@56 and the 5x5 0.98x.
  const int64_t Wp = (Qr - 1) * xstep + (S - 1) * dw + 1, rowf = Wp * cs;
  const int64_t rsub = std::max<int64_t>(1, std::min<int64_t>(2 * kBandFloats / 4 / (Qr * NVL), 2 * kBandFloats / (sh * rowf)));

  for_each_task(nchunk * G * nkg, p.macs(), [&](int64_t task) {
    const int64_t chunk = task / (G * nkg), g = (task / nkg) % G, kg = task % nkg;
    const int64_t kb0 = kg * kbs, kb1 = std::min(nkb, kb0 + kbs);
    const int64_t row_a = rows * chunk / nchunk, row_b = rows * (chunk + 1) / nchunk;
    float* dyb = scratch(2, rsub * Qr * NVL);
    int64_t* a_off = scratch_i64(0, rsub);
    int64_t* b_off = scratch_i64(1, rsub);
    float** orow = scratch_ptrs<float>(S * Cg);
    struct Piece { int64_t n, pa, pb, h0, xoff; };
    Piece pieces[64];
    bool first = true;
    for (int64_t row = row_a; row < row_b;) {
      // a batch: whole pieces of images, at most rsub rows and 64 pieces
      const int64_t batch0 = row;
      int npc = 0;
      int64_t xsize = 0;
      while (row < row_b && row - batch0 < rsub && npc < 64) {
        const int64_t n = row / P, pa = row % P;
        const int64_t pb = std::min({P, pa + (rsub - (row - batch0)), pa + (row_b - row)});
        const int64_t h0 = pa * sh - ph, nr = (pb - pa - 1) * sh + (R - 1) * dh + 1;
        pieces[npc++] = {n, pa, pb, h0, xsize};
        xsize += nr * rowf;
        row += pb - pa;
      }
      float* xb = scratch(1, xsize);
      for (int ip = 0; ip < npc; ++ip) {
        const Piece& pc = pieces[ip];
        const int64_t nr = (pc.pb - pc.pa - 1) * sh + (R - 1) * dh + 1;
        const int64_t h_lo = std::max<int64_t>(0, pc.h0), h_hi = std::min(H, pc.h0 + nr);
        if (h_hi <= h_lo) continue;  // rows outside the image are never read (their segments are skipped)
        float* xd = xb + pc.xoff + (h_lo - pc.h0) * rowf;
#if CONV_EXT_ISA_PAIRS
        if (pairs) {
          auto pack = nhwc ? pack_band_pixel_pairs : pack_band_pixel_pairs_nchw;
          pack(reinterpret_cast<const uint16_t*>(x), C, H, W, pc.n, g * Cg, Cg, h_lo, h_hi, pw, Wp, sw, cs, xd);
          continue;
        }
#endif
        pack_band(x, nhwc, C, H, W, pc.n, g * Cg, Cg, h_lo, h_hi, pw, Wp, cs, xd);
      }
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        // the block's dy rows as [row][q][NVL]; its x band is the batch's
        const int64_t kvalid = std::min(NVL, Kg - kb * NVL);
        float* out = partial + chunk * part + (g * nkb + kb) * RS * Cg * NVL;  // [prow(r, s, c)][NVL]
        for (int ip = 0; ip < npc; ++ip) {
          const Piece& pc = pieces[ip];
          float* dyd = dyb + (pc.n * P + pc.pa - batch0) * Qr * NVL;
#if CONV_EXT_ISA_PAIRS
          if (pairs) {
            auto pack = nhwc ? pack_dy_pixel_pairs : pack_dy_pixel_pairs_nchw;
            pack(reinterpret_cast<const uint16_t*>(dy), K, P, Q, pc.n, g * Kg + kb * NVL, kvalid, pc.pa, pc.pb, NVL, dyd);
            continue;
          }
#endif
          if (nhwc) pack_band(dy, nhwc, K, P, Q, pc.n, g * Kg + kb * NVL, kvalid, pc.pa, pc.pb, 0, Q, NVL, dyd);
          else  // NCHW: rows pa..pb of a plane are one contiguous run; vector transpose (simd.h)
            transpose_rows(dy + ((pc.n * K + g * Kg + kb * NVL) * P + pc.pa) * Q, P * Q, kvalid, (pc.pb - pc.pa) * Q, NVL, dyd);
        }
        for (int64_t r = 0; r < R; ++r) {
          int nseg = 0;
          for (int ip = 0; ip < npc; ++ip) {
            const Piece& pc = pieces[ip];
            for (int64_t pp = pc.pa; pp < pc.pb; ++pp) {
              const int64_t ih = pp * sh - ph + r * dh;
              if (ih < 0 || ih >= H) continue;
              a_off[nseg] = pc.xoff + (ih - pc.h0) * rowf;
              b_off[nseg] = (pc.n * P + pp - batch0) * Qr * NVL;
              ++nseg;
            }
          }
          for (int64_t s0 = 0; s0 < (merge_s ? 1 : S); ++s0) {
            const int64_t I = merge_s ? S * Cg : Cg;  // tile rows: (s, c) or c
            for (int64_t i = 0; i < I; ++i)  // where they go in the partial sums
              orow[i] = out + prow(r, merge_s ? i / Cg : s0, merge_s ? i % Cg : i) * NVL;
            for (int64_t i0 = 0; i0 < I; i0 += MR) {
              Tile t;
              t.a = xb + s0 * dw * cs + i0, t.a_is = 1, t.a_ls = xstep * cs;
              t.b = dyb, t.b_ls = NVL;
              t.a_off = a_off, t.b_off = b_off, t.nseg = nseg, t.len = Qr;
              t.pairs = pairs;
              t.mr = static_cast<int>(std::min(MR, I - i0));
              t.crow = orow + i0;
              t.accumulate = !first;
              t.chain = kWeightChain;
              run_tile<false>(nv, t);
            }
          }
        }
      }
      first = false;
    }
    if (nchunk == 1)
      for (int64_t kb = kb0; kb < kb1; ++kb) finish(g, kb);
  });
  if (nchunk == 1) return;

  // dw[k,c,r,s] = sum over chunks, in chunk order
  sum_chunks(partial, nchunk, part);
  for_each_task(G * nkb, part, [&](int64_t gk) { finish(gk / nkb, gk % nkb); });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
