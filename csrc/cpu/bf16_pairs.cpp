// bf16_pairs.cpp — bfloat16 convolution, all three passes, on CPUs with AVX512-BF16 but no AMX
// tiles (AMD Zen 4 and later): implicit_gemm's engine with every step a VDPBF16PS instead of an FMA.
//
// VDPBF16PS takes two vectors of 16 words, each word two bfloat16 values, and adds to each float32
// lane the sum of its two products: c[j] += a[2j]*b[2j] + a[2j+1]*b[2j+1] (exact products, float32
// sums, denormals flushed as AMX does). Read a word of two channels as one "channel" and a
// convolution over C bfloat16 channels is one over C/2 words, which implicit_gemm runs unchanged:
// its bands, panels, tasks and tiles move words as they moved floats, and its micro-kernel
// (simd.h, Tile::pairs) broadcasts a word of the input (two channels of a pixel) against 16 words
// of the filter (the same two channels of 16 filters) — two multiply-adds a lane a step, where
// the FMA did one, at the FMA's rate on Zen 4. With one vector of filters the forward runs
// implicit_gemm's "row runs" the same way (row_run<S, T, PAIRS>: each input word broadcast once for
// a filter row's taps; CIFAR's 16->16 5x5 forward and backward-input 1.3x faster than through the
// tiles, batch 8, python benchmarks/ab.py OLD.so NEW.so 8,16,32,32,16,5,1,2 --dtype bfloat16).
//
//   forward          the words are pairs of input channels: a channels_last input is its own
//                    array of words; the filter's pairs (w[k, 2i, r, s], w[k, 2i+1, r, s]) are
//                    adjacent in a channels_last or 1x1 filter (read as it lies) and made
//                    as the engine packs a KCRS one (implicit_gemm.cpp, FilterSrc). An odd
//                    channel count (the RGB stems): in channels_last at an even stride pairs
//                    of a row's (s, c) values (flat_rows), at stride 1 the same for pairs of
//                    pixels, else copies with a zero channel.
//   backward-input   the words are pairs of output channels (dy's channels, the reduction of
//                    dx = sum_k dy[k] w[k, c]): dy as it lies, the filter's rows k = 2i and 2i + 1
//                    interleaved as the engine packs them, KCRS or channels_last alike.
//   backward-weight  the words are pairs of output pixels (q = 2j, 2j + 1 of a row): dy's and,
//                    for each tap, the input pixels they meet (x[col], x[col + stride]), built as
//                    the engine copies its bands (simd.h: pack_*_pixel_pairs*).
// NCHW bands interleave the planes of a channel pair (or the pixel pairs of a plane row) as
// pack_band transposes them. Blocking, tasks and the order of every sum are implicit_gemm's: the
// same bits for any thread count. The results are float32 sums (bias added in float32) rounded
// to bfloat16 once: by the tiles' stores (VCVTNEPS2BF16) in channels_last forward and
// backward-input whose reduction is one panel, by the output transposes in NCHW and in every
// backward-weight (dw's final transpose), else through a float32 buffer from the output cache
// (output_cache.h). Rounding dw there instead of copying a float32 dw into the bfloat16 one
// (8% of the samples, perf record), with dw's rows in its own order (implicit_gemm.cpp): NCHW
// 512@7 backward-weight 1.20x faster, channels_last 1.32x, 512@28/2 1.09x / 1.16x (batch 4, 2
// threads, python benchmarks/ab.py OLD.so NEW.so 4,512,7,7,512,3,1,1 --pass backward_weight
// --dtype bfloat16 --layout L).
//
// Where it runs (the preferred_* rules below): AVX512-BF16 CPUs without AMX tiles, where amx_bf16
// would emulate its tiles (amx_tiles.h) — with AMX tiles amx_bf16 runs; even channel counts on the
// paired side (an odd number below 16 forward with 5x5+ filters, on copies with a zero channel),
// groups of 16+ channels; not the stems' 3-channel backward-input, nor the backward-weight of NCHW
// 1x1 layers with more channels than filters on planes of odd width under 28x28.
//
// Speed (2 cores Zen 4, batch 4, 2 threads; the float32 FMA peak 230 GFLOP/s, torch's bfloat16 mm
// 380-430): ResNet-50's 3x3 and 1x1 layers forward and backward-input at 360-430 GFLOP/s when the
// machine is at its best, 0.95-1.2x torch (oneDNN, VDPBF16PS) where amx_bf16's emulated tiles ran
// 0.8-0.95x; backward-weight 1.05-1.25x torch. Default suite in bfloat16 (python -m conv_ext.bench
// --suite default --dtype bfloat16 --layout L --passes forward,all --budget 0.5): NCHW 1.17x ->
// 1.53x torch, channels_last 1.12x -> 1.43x; whole ResNet-50 / MobileNetV2 (--models ... --dtype
// bfloat16 --batch 4, inference and training step) 0.84-1.39x -> 1.04-1.60x.
#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>

#include "algorithms.h"
#include "amx_tiles.h"
#include "filter_cache.h"
#include "implicit_gemm.h"
#include "kernel_util.h"
#include "output_cache.h"

namespace conv_ext {
namespace cpu {

at::Tensor word_aligned(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 4 == 0) return t;
  return t.clone(t.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
}

namespace {

constexpr const char* kName = "bf16_pairs";

// Every pass computes its problems on an AVX512-BF16 CPU (amx_bf16_available: with AMX tiles or
// without); the automatic choice (Algorithm::preferred, the preferred_* below) takes it only
// without AMX tiles (where they exist amx_bf16 runs them) and on the shapes where it is the faster.
// Forced (tests, benchmarks) it runs any problem it computes.

// Groups of fewer than 16 channels (ResNeXt's 4 and 8, depthwise) stay with the kernels made for
// them: through the engine here a group's reduction is a few words a tap and its tiles mostly
// idle (ResNeXt 128 g32 @56 channels_last backward-weight 0.52x the float32 path's grouped
// kernels, 512 g32 @14 with 16 channels a group 1.46x).
bool group_ok(const Conv2dParams& p) { return p.groups == 1 || (p.Cg() >= 16 && p.Kg() >= 16); }

// An odd number of input channels below 16 in one group (the RGB stems' 3): the input and the
// filter get a zero channel and run as pairs (run_forward) — where a pixel's reduction is long
// enough to carry the copies (5x5 and larger filters): the 7x7/2 stem forward 0.58x -> 0.87-0.90x
// torch channels_last (now flat_rows, below), 0.77x -> 0.89-0.96x NCHW, where CIFAR's 3x3 3->16
// ran 0.75-0.98x against the float32 path's 1.02-1.32x (PYTHONPATH=. python benchmarks/algos.py
// 4,3,224,224,64,7,2,3 --layout nhwc --dtype bfloat16).
// NCHW inputs of up to 4 channels (the stems) run direct_nchw's bfloat16 tiles by default instead,
// which pair the last channel with zeros in their phase rows (no copies): 7x7/2 stem batch 4, 2
// threads, 3.81 -> 3.19 ms (python benchmarks/algos.py 4,3,224,224,64,7,2,3 --layout nchw --dtype
// bfloat16).
bool pads_channel(const Conv2dParams& p) { return p.groups == 1 && p.C % 2 == 1 && p.C < 16; }
bool pads_by_default(const Conv2dParams& p) { return pads_channel(p) && p.R * p.S >= 25 && (is_nhwc(p) || p.C > 4); }

// Stride 1 (VGG's and CIFAR's 3x3 first layers): the windows of neighbouring pixels start on
// offsets of both parities, but those of a pixel pair (2j, 2j + 1) start at (2j - pw)*C, the same
// parity for every j. Flat rows of pixel pairs: "pixel" j of the flat problem reads the pair's
// (S + 1)*C values at a step of C words and has 2K "filters", filter k's taps for pixel 2j and
// again, C values later, for 2j + 1 — its output [Q/2][2K] is y's own [Q][K] (an even Q). A
// pair's filter row spans Sw = 6 or 7 words for 3x3 RGB (12 values, a lead zero where pw*C is
// odd): 1.33-1.56x the true taps' steps, where the copies with a zero channel took 1.33x plus the
// copies, and the float32 path (the default here before) half the rate. Batch 4, 2 threads,
// old/new (python benchmarks/ab.py OLD.so NEW.so 4,3,224,224,64,3,1,1 --layout nhwc --dtype
// bfloat16, best mins): VGG-16's first layer 1.60x (0.45x -> 0.75x torch, which pads C to 4 at
// its peak rate), CIFAR's 3->16 @32 batch 8 1.66x (0.8x -> 1.4-1.7x torch).
bool pixel_pairs(const Conv2dParams& p) { return p.stride_w == 1 && p.Q % 2 == 0; }

// Odd channel counts channels_last at an even stride in width (the RGB stems at stride 2): a filter
// row's taps read S*C consecutive values of an input row, x[h][q*sw - pw .. + S)[0 .. C), whose
// first value sits at an even or an odd offset for every q alike (q*sw*C is even). Read each input
// row as W*C/2 words of one "channel" and each filter row as the words of its S*C values (a zero
// before them where the offset is odd, one after where the count is): a convolution of one word
// channel, filter rows of Sw words at a stride of sw*C/2 words — the same engine on the tensor as it
// lies, each step a VDPBF16PS of two true taps where the copies with a zero channel spent one word of
// four on the zero (the 7x7/2 stem: 77 steps a pixel, not 98) and copied x first. Batch 4, 2
// threads: the 7x7/2 stem forward 1.44x faster (python benchmarks/ab.py OLD.so NEW.so
// 4,3,224,224,64,7,2,3 --layout nhwc --dtype bfloat16, best mins 3.33 -> 2.32 ms; 0.82x -> 1.22x
// torch in benchmarks/algos.py); 3x3/2 stems, which ran on float32 copies (too short a reduction
// to carry the zero channel): MobileNetV2's 3->32 @224 0.91 -> 0.42 ms median (torch 0.38), a
// CIFAR-sized 3->16 @32 batch 8 0.044 -> 0.023 ms (torch 0.066).
bool flat_rows(const Conv2dParams& p) {
  return is_nhwc(p) && p.groups == 1 && p.C % 2 == 1 && p.dil_w == 1 && p.W % 2 == 0 &&
         (p.stride_w % 2 == 0 || pixel_pairs(p));
}

bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && (is_nhwc(p) || is_nchw(p)) && weight_is_kcrs(p) &&
         (p.Cg() % 2 == 0 || pads_channel(p)) && amx_bf16_available();
}
bool preferred_forward(const Conv2dParams& p, at::ScalarType) {
  return amx_bf16_emulated() && group_ok(p) && (p.Cg() % 2 == 0 || pads_by_default(p) || flat_rows(p));
}

// dx's channels are the tiles' vectors: with fewer than 16 (the stems' 3) most lanes would be idle,
// and the float32 path's scatter (implicit_gemm's col2im, pixel rows) is faster there: 7x7/2 stem
// 1.8x, CIFAR's 3->16 1.15x.
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && (is_nhwc(p) || is_nchw(p)) && weight_is_kcrs(p) && p.Kg() % 2 == 0 &&
         amx_bf16_available();
}
bool preferred_backward_input(const Conv2dParams& p, at::ScalarType) {
  return amx_bf16_emulated() && p.Cg() >= 16 && group_ok(p);
}

// Not NCHW 1x1 layers with more channels than filters on planes of odd width under 28x28 (ResNet-50's
// 2048 -> 512 @7): a weight gradient of a short reduction (196 pixels at 7x7, batch 4: each plane's
// 49 pixels in 25 words, one of them zero) into many sums (1M), which amx_bf16's emulated tiles run
// 1.1x faster. Before dw was rounded by its final transpose (a float32 dw and a copy) and the pixels
// ran as tall rows (tall_rows, below), every 1x1 layer under 28x28 went there; now, batch 4, 2
// threads, ratio vs torch bf16_pairs / amx_bf16: channels_last 1024->256 @14 1.14 / 1.01, 512->2048
// @7 1.32 / 1.06, 2048->512 @7 2.17 / 1.89; NCHW 1024->256 @14 1.01 / 0.94, 512->2048 @7 1.50 /
// 1.12, 2048->512 @7 1.39 / 1.51 (PYTHONPATH=. python benchmarks/algos.py 4,2048,7,7,512,1 --layout
// nchw --pass backward_weight --dtype bfloat16).
// Nor NCHW 1x1 stride-1 layers on planes of an even number of pixels: gemm_1x1 reads their planes
// as words of pixel pairs as they lie (gemm_1x1_pixel_pairs).
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && (is_nhwc(p) || is_nchw(p)) && weight_is_kcrs(p) && amx_bf16_available();
}
bool preferred_backward_weight(const Conv2dParams& p, at::ScalarType) {
  const bool amx_1x1 = p.R * p.S == 1 && p.P * p.Q < 784 && !is_nhwc(p) && p.Q % 2 == 1 && p.C > p.K;
  return amx_bf16_emulated() && group_ok(p) && !amx_1x1 && !gemm_1x1_pixel_pairs(p);
}

using bf16 = uint16_t;
const bf16* halves(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.const_data_ptr()); }
const float* words(const at::Tensor& t) { return reinterpret_cast<const float*>(t.const_data_ptr()); }
bf16* out16(at::Tensor& t) { return reinterpret_cast<bf16*>(t.mutable_data_ptr()); }

// A flat filter's words (n of them) as build writes them: kept with the filter's other packed
// forms (filter_cache.h) while it is unchanged when the kernel reads the user's filter (o.filter),
// else built into per-thread scratch (slot 11: no kernel of implicit_gemm's uses it). (The words
// of KCRS filters are made as the engine packs them: implicit_gemm.cpp, FilterSrc.)
template <class Build>
PackedFilter filter_words(const Operands& o, const Conv2dParams& p, int64_t kind, const Build& build, int64_t n) {
  const std::vector<int64_t> tag = {100 + kind, p.K, p.Cg(), p.R, p.S, weight_is_krsc(p)};
  return packed_filter(o.filter, tag, n, scratch(11, n), [&](float* d) { build(halves(o.b), d); });
}

// q's activation strides for its sizes (counted in words on the paired side), in layout nhwc
void set_strides(Conv2dParams& q, bool nhwc) {
  if (nhwc) {
    q.xs_c = 1, q.xs_w = q.C, q.xs_h = q.W * q.C, q.xs_n = q.H * q.W * q.C;
    q.ys_k = 1, q.ys_q = q.K, q.ys_p = q.Q * q.K, q.ys_n = q.P * q.Q * q.K;
  } else {
    q.xs_w = 1, q.xs_h = q.W, q.xs_c = q.H * q.W, q.xs_n = q.C * q.H * q.W;
    q.ys_q = 1, q.ys_p = q.Q, q.ys_k = q.P * q.Q, q.ys_n = q.K * q.P * q.Q;
  }
}
at::MemoryFormat format(bool nhwc) { return nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }

// The forward on q (p with q.C words): x and the filter's words wp (or, wp null, the KCRS
// bfloat16 filter o.b, its channel pairs made words as the engine packs it), bias added in
// float32, the sums rounded into o.out (by the tiles' stores where the engine can, else through a
// float32 y). filter: the user's filter (o.filter), under which the engine keeps its packed
// panels, or null.
void forward_on_words(const Conv2dParams& q, const at::Tensor& x, const float* wp, Operands& o, bool nhwc,
                      const at::Tensor* filter) {
  const at::Tensor bias = o.bias.defined() ? o.bias.to(at::kFloat) : at::Tensor();
  at::Tensor y = empty_output(o.out.sizes(), o.out.options().dtype(at::kFloat), format(nhwc));
  if (!avx512::implicit_gemm_forward(q, words(x), wp, bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                                     y.mutable_data_ptr<float>(), nhwc, filter, true, out16(o.out),
                                     wp ? nullptr : halves(o.b), nullptr))
    o.out.copy_(y);
}

// A flat filter row: `lead` zeros (0 or 1) before its S*C taps (pixel pairs: before the pair's
// (S + 1)*C values), Sw words in all (a zero after them where the count is odd); `pair`: the
// filters of pixel pairs
struct FlatRow {
  int64_t lead, Sw;
  bool pair;
  bool zeros_in(const Conv2dParams& p) const { return pair || 2 * Sw != p.S * p.C; }
};
FlatRow flat_row(const Conv2dParams& p) {
  const int64_t lead = p.pad_w * p.C % 2;
  const bool pair = pixel_pairs(p);
  return {lead, (lead + (p.S + pair) * p.C + 1) / 2, pair};
}

// The flat filter's words: d[k'][r][e] for e < 2*Sw, k' < K (pixel pairs: 2K, k' = K*phi + k) =
// w[k][c][r][s] at e = lead + phi*C + s*C + c, zero elsewhere (p's filter strides: KCRS or
// channels_last alike).
void flat_filter_words(const Conv2dParams& p, const FlatRow& f, const bf16* w, bf16* d) {
  const int64_t C = p.C, n = 2 * f.Sw;
  for (int64_t phi = 0; phi <= int64_t(f.pair); ++phi)
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t e = 0; e < n; ++e) {
          const int64_t i = e - f.lead - phi * C, s = i / C, c = i % C;
          d[((phi * p.K + k) * p.R + r) * n + e] =
              i >= 0 && s < p.S ? w[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s] : 0;
        }
}

void run_forward_flat(const Conv2dParams& p, Operands& o) {
  const int64_t C = p.C;
  const FlatRow f = flat_row(p);
  const int64_t Sw = f.Sw, U = f.pair ? 2 : 1;  // U: output pixels a flat pixel
  Conv2dParams q = p;
  q.C = 1, q.W = p.W * C / 2, q.S = Sw, q.stride_w = U * p.stride_w * C / 2, q.pad_w = (p.pad_w * C + f.lead) / 2;
  q.K = U * p.K, q.Q = p.Q / U;
  set_strides(q, true);
  q.ws_s = 1, q.ws_r = Sw, q.ws_c = p.R * Sw, q.ws_k = p.R * Sw;
  const PackedFilter wp = filter_words(
      o, p, (f.pair ? 4 : 2) + f.lead,
      [&](const bf16* s, float* d) { flat_filter_words(p, f, s, reinterpret_cast<bf16*>(d)); }, q.K * p.R * Sw);
  // (pixel pairs: the bias of each of the 2K filters; y's [N][P][Q][K] is the flat [N][P][Q/2][2K])
  const at::Tensor bias = f.pair && o.bias.defined() ? at::cat({o.bias, o.bias}) : o.bias;
  Operands op{o.a, o.b, bias, o.out, o.filter};
  // (the engine's panels not kept: their tag has no room for the lead, and they are 77 x 64 words)
  forward_on_words(q, word_aligned(o.a), wp.data, op, true, nullptr);
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const bool nhwc = is_nhwc(p);
  // (a flat row's zero before or after its taps meets a neighbouring pixel's value: an infinity or
  // a NaN there would make NaN of a product no true tap has; such x runs on the copies below)
  if (flat_rows(p) && !(flat_row(p).zeros_in(p) && amx::has_nonfinite(halves(o.a), p.N * p.C * p.H * p.W)))
    return run_forward_flat(p, o);
  if (p.C % 2 == 1) {  // pads_channel: copies with channel C zero
    at::Tensor xp = at::empty({p.N, p.C + 1, p.H, p.W}, o.a.options(), format(nhwc));
    xp.narrow(1, 0, p.C).copy_(o.a);
    xp.narrow(1, p.C, 1).zero_();
    at::Tensor wp = at::empty({p.K, p.C + 1, p.R, p.S}, o.b.options());
    wp.narrow(1, 0, p.C).copy_(o.b);
    wp.narrow(1, p.C, 1).zero_();
    Conv2dParams q = p;
    q.C = p.C + 1;
    set_strides(q, nhwc);
    q.ws_s = 1, q.ws_r = q.S, q.ws_c = q.R * q.S, q.ws_k = q.C * q.R * q.S;
    Operands op{xp, wp, o.bias, o.out};
    return run_forward(q, op);
  }
  const at::Tensor x = nhwc ? word_aligned(o.a) : o.a;  // (NCHW bands read bfloat16 values)
  const bool krsc = weight_is_krsc(p), in_place = krsc || p.R * p.S == 1;  // pairs adjacent
  const at::Tensor w_in = in_place ? word_aligned(o.b) : at::Tensor();
  Conv2dParams q = p;
  q.C = p.C / 2;
  set_strides(q, nhwc);
  if (krsc) q.ws_c = 1, q.ws_s = q.Cg(), q.ws_r = q.S * q.Cg(), q.ws_k = q.R * q.S * q.Cg();
  else q.ws_s = 1, q.ws_r = q.S, q.ws_c = q.R * q.S, q.ws_k = q.Cg() * q.R * q.S;
  forward_on_words(q, x, in_place ? words(w_in) : nullptr, o, nhwc, o.filter);  // (KCRS: pairs made as packed)
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  const bool nhwc = is_nhwc(p);
  const at::Tensor dy = nhwc ? word_aligned(o.a) : o.a;
  Conv2dParams q = p;  // (o.b's layout: p's filter strides hold)
  q.K = p.K / 2;
  set_strides(q, nhwc);
  at::Tensor dx = empty_output(o.out.sizes(), o.out.options().dtype(at::kFloat), format(nhwc));
  // the filter's words: rows k = 2i and 2i + 1 paired, made as the engine packs them
  if (!avx512::implicit_gemm_backward_input(q, words(dy), nullptr, dx.mutable_data_ptr<float>(), nhwc, o.filter, true,
                                            out16(o.out), halves(o.b), nullptr))
    o.out.copy_(dx);
}

// The words are pairs of output pixels (q = 2j, 2j + 1 of a row: dy's pixels and the input pixels
// each tap meets), built as the engine copies its bands (simd.h). With Q odd a row's last word
// pairs x with a zero of dy: an infinity or a NaN of x would turn that zero's product into a NaN
// no true product has, so such inputs run on float32 copies.
// A channels_last 1x1 layer at stride 1 without padding is a GEMM over its N*H*W pixels, which lie
// in one run: on planes under 28x28 its weight gradient runs on them as rows of an even width up to
// 256 (one tall image): longer segments of the reduction than the planes' 7 or 14 pixels, and no
// zero word ending each odd row. NCHW: each plane one row. See supports_backward_weight for the
// speeds; 256->64 @56 channels_last in rows of 256 ran 0.96x (python benchmarks/ab.py OLD.so NEW.so
// 4,256,56,56,64,1 --layout nhwc --pass backward_weight --dtype bfloat16 --rounds 10), 28x28 level.
Conv2dParams tall_rows(const Conv2dParams& p) {
  if (p.R * p.S != 1 || p.stride_h * p.stride_w != 1 || p.pad_h + p.pad_w != 0 || p.H * p.W >= 784) return p;
  if (!is_nhwc(p)) {
    if (p.H == 1) return p;
    Conv2dParams q = p;
    q.H = q.P = 1, q.W = q.Q = p.H * p.W;
    q.xs_h = q.W, q.ys_p = q.Q;
    return q;
  }
  const int64_t T = p.N * p.H * p.W;
  for (int64_t w = std::min<int64_t>(256, T) & ~int64_t(1); w >= std::max<int64_t>(2, p.W - 1); w -= 2) {
    if (T % w) continue;
    Conv2dParams q = p;
    q.N = 1, q.H = q.P = T / w, q.W = q.Q = w;
    q.xs_h = w * p.C, q.xs_n = T * p.C, q.ys_p = w * p.K, q.ys_n = T * p.K;
    return q;
  }
  return p;
}

void run_backward_weight(const Conv2dParams& p0, Operands& o) {
  const Conv2dParams p = tall_rows(p0);
  if (p.Q % 2 == 1 && amx::has_nonfinite(halves(o.b), p.N * p.C * p.H * p.W))
    return run_as_float32(Pass::BackwardWeight, p, o);
  const bool krsc = !o.out.is_contiguous() && o.out.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (krsc || o.out.is_contiguous())  // the last transposes round the sums into o.out
    return avx512::implicit_gemm_backward_weight(p, words(o.a), words(o.b), nullptr, is_nhwc(p), true,
                                                 reinterpret_cast<uint16_t*>(o.out.mutable_data_ptr()));
  at::Tensor dw = empty_output(o.out.sizes(), o.out.options().dtype(at::kFloat), at::MemoryFormat::Contiguous);
  avx512::implicit_gemm_backward_weight(p, words(o.a), words(o.b), dw.mutable_data_ptr<float>(), is_nhwc(p), true,
                                        nullptr);
  o.out.copy_(dw);
}

const bool registered =
    register_algorithm({kName, Pass::Forward, 55, supports_forward, run_forward, true, preferred_forward}) &&
    register_algorithm(
        {kName, Pass::BackwardInput, 55, supports_backward_input, run_backward_input, true, preferred_backward_input}) &&
    register_algorithm({kName, Pass::BackwardWeight, 55, supports_backward_weight, run_backward_weight, true,
                        preferred_backward_weight});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
