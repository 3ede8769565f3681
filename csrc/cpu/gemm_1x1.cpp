// gemm_1x1.cpp — 1x1, stride-1, unpadded convolutions on NCHW tensors as a GEMM on the tensor
// as it lies (no reorder, no packing of activations), forward and backward-input; and
// backward-weight for NCHW and NHWC.
//
//   forward         per image and group: Y[k, pix] = bias[k] + sum_c W[k, c] * X[c, pix]
//   backward-input  per image and group: dX[c, pix] = sum_k W[k, c] * dY[k, pix]
// and the NCHW backward-weight in bfloat16 on words of pixel pairs (VDPBF16PS; see
// supports_backward_weight).
// (pix = h*W + w runs over the contiguous plane). The micro-kernel of simd.h is used with its
// rows i = output channels (weights broadcast, straight from w: row stride Cg or 1) and its
// vectors = 4 x 16 consecutive pixels (masked loads/stores at the plane's end), so every load
// and store of activations is a contiguous vector.
//
// Blocking: a task is (image, group, 64-pixel column block [NV*VL]); inside it the reduction is
// split in panels of 256 channels (accumulated in the output) so the X panel (256 x 64 floats,
// 64 KiB) stays in L1/L2 while all K rows sweep it.
// NHWC 1x1 convolutions need no special file: implicit_gemm reads NHWC 1x1 inputs in place
// (its "direct" mode), which is Y[NHW, K] = X[NHW, C] · W^T on the tensor as it lies.
// NHWC backward-input: dX[pix, c] = sum_k dY[pix, k] * W[k, c] reads both operands as they lie
// (dY rows broadcast, W's rows [k][c..c+64) the vectors): no packing at all, where implicit_gemm
// packed the transposed filter on every call (bwd-input of 512->2048 @7, batch 8: 0.70x torch
// -> 0.80x; 1024->256 @14 0.87x -> 0.91x: --cases 1x1 --layouts nhwc --passes bwd_in).
// backward-weight: dW[k, c] = sum_n dY_n[k, pix] . X_n[c, pix] over the pixel axis. One operand
// ("V": the one with fewer channels per group; with more on planes < 256 pixels) is transposed, <= 256 pixels x NVL channels at a time
// (AVX-512: 16x16 vpermt2ps blocks), into vt[pix][NVL]; the other is read in place as the
// micro-kernel's broadcast rows (a_is = HW, a_ls = 1). The N*HW pixels are cut into a fixed
// number of chunks (a function of the shape only) with their own partial sums, added in chunk
// order: the same bits for any thread count. NHWC 1x1 backward-weight runs here too, with no
// transpose at all: V's vectors are read from its pixel rows (in place when the rows are short,
// else copied 128 pixels at a time into a contiguous panel), A broadcast (a_ls = K|C).
//
// Speed (2 cores Zen 4, batch 8, PYTHONPATH=. python benchmarks/cpu_kernels.py --cases 1x1;
// torch in brackets): 64->256@56 fwd 82 GFLOP/s [55] (1.49x), bwd-input 161 [122];
// 256->64@56 fwd 132 [93] (1.42x), bwd-input 55 [32]; 512->128@28 fwd 150 [127]; at 14x14 and
// 7x7 planes (1024->256, 512->2048) 0.65-0.93x torch (the pixel vector is short, W is re-read).
// backward-weight, 1 thread (load on the machine; PYTHONPATH=. python benchmarks/cpu_kernels.py
// --cases 1x1 --layouts nchw --passes bwd_w --threads 1 --cpu-time), ratio vs torch, before
// (implicit_gemm) -> after: 64->256@56 0.74x -> 1.20x (98.7 GFLOP/s = 84% of one core),
// 256->64@56 0.85 -> 1.16, 512->128@28 0.68 -> 1.01, 1024->256@14 0.56 -> 0.99 (small planes:
// whole images per chunk, one segment per image), 512->2048@7 0.42 -> 0.83.
// 2 threads (--threads 2): NCHW 0.64/0.95/0.80/0.72/0.58x -> 1.38/1.44/1.10/1.04/0.85x (same
// order of cases); NHWC (was implicit_gemm) 1.04/0.94/0.85/0.92/0.88x -> 1.19/1.01/0.93/1.02/0.91x.
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "gemm_1x1.cpp"
#define CONV_EXT_PER_ISA_BF16  // the NCHW backward-weight also runs on bfloat16 pixel pairs
#include "per_isa.h"


namespace conv_ext {
namespace cpu {
namespace {

bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && is_nchw(p) && weight_is_kcrs(p) && is_pointwise(p);
}

// Forward leaves planes of <= 196 pixels with >= 512 output channels per group to
// implicit_gemm (vectors over the output channels, transposed on store): a 49- or 196-pixel
// plane fills 77% of this kernel's pixel vectors, and no regrouping of the images helped.
// 2 threads, batch 4, ms g1x1 / implicit_gemm [torch]: 2048->512 @7 1.17 / 1.08 [1.01],
// 512->2048 @7 1.15 / 1.08 [0.98], 512->1024 @14 2.37 / 1.95 [1.88]; 1024->256 @14 measured
// 1.18 / 1.66 [0.98] then and stayed here, until large_filter_small_plane (below).
// Planes of under 64 pixels (7x7, MobileNetV2's and ResNet-50's last stages) are one pixel tile
// of 4 vectors, 49 of 64 lanes filled, and a task is a whole image (batch 1: one thread works):
// they go to implicit_gemm too once the weights are not small (Cg*Kg >= 32K: a 128x256 filter).
// Intel Xeon, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nchw
// --pass P, 8 rounds, best mins / median of the pairs): forward 960->320 @7 batch 8 1.40 / 1.39x,
// batch 1 1.76 / 1.68x, 576->160 1.22 / 1.06x; backward-input 256->256 1.23 / 1.30x, 160->960
// 1.19 / 1.18x. With a new filter every call (algos.py --step: no packed filter kept) less:
// 960->320 forward 1.16x, 256->256 backward-input and 576->160 forward level. Below 32K
// (128->128, 384->64) the two were within 10% either way; 64-pixel planes (8x8) stay here.
bool few_pixels(const Conv2dParams& p) { return p.H * p.W < 64 && p.Cg() * p.Kg() >= 32768; }
// And planes of <= 196 pixels with a filter of 256x256 or more (Cg*Kg >= 64K), both passes:
// ResNet-50's 1024->256 @14 (five of its layers) and the like. Intel Xeon (family 6 model 167),
// 2 threads, NCHW, ms gemm_1x1 / implicit_gemm, min of 40-60 (python benchmarks/algos.py SHAPE
// --layout nchw --pass P): forward 1024->256 @14 batch 8 3.32-3.36 / 2.90 (--step, a new filter
// each call: 3.35-3.46 / 2.98), batch 1 0.52 / 0.43, 512->256 1.60 / 1.41, 1024->128 1.72 / 1.59,
// 320->256 1.00 / 0.90, 256->256 0.78 / 0.73, 512->128 0.83 / 0.79; backward-input 256->256
// 0.83 / 0.73, 128->512 0.85 / 0.78, 256->512 1.68 / 1.42. Below 64K level (256->128, 192->256,
// 576->96, 384->64 within 5% either way).
bool large_filter_small_plane(const Conv2dParams& p) { return p.H * p.W <= 196 && p.Cg() * p.Kg() >= 65536; }
bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return supports(p, dtype) && !(p.H * p.W <= 196 && p.Kg() >= 512) && !few_pixels(p) && !large_filter_small_plane(p);
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  auto f = use_avx512() ? avx512::gemm_1x1_nchw : avx2::gemm_1x1_nchw;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias, o.out.mutable_data_ptr<float>(), false);
}

// backward-input and backward-weight also take NHWC (GEMMs that read both operands in place)
bool supports_nhwc_too(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) && p.R == 1 &&
         p.S == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

// NCHW backward-input leaves the same shapes as forward does to implicit_gemm (its outputs, dx,
// have >= 512 channels per group on a plane of <= 196 pixels). 2 threads, batch 4, ms gemm_1x1 /
// implicit_gemm: 1024->512 @14 3.72 / 2.87, 1024->256 @14 1.60 / 1.41, 2048->512 @7 2.31 / 2.29.
// So do those that reduce over >= 1024 channels of dy there (python benchmarks/algos.py SHAPE
// --pass backward_input --step, batch 4): 256->1024 @14 1.80-1.86 / 1.62-1.65 ms (batch 8 3.40 /
// 2.92), 320->1280 @7 0.93 / 0.78; not 96->576 @14 0.41 / 0.44, 160->960 @7 0.33 / 0.34.
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return supports_nhwc_too(p, dtype) &&
         !(is_nchw(p) && ((p.H * p.W <= 196 && (p.Cg() >= 512 || p.Kg() >= 1024)) || few_pixels(p) ||
                          large_filter_small_plane(p)));
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  if (is_nhwc(p)) {
    auto f = use_avx512() ? avx512::gemm_1x1_nhwc_backward_input : avx2::gemm_1x1_nhwc_backward_input;
    return f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>());
  }
  auto f = use_avx512() ? avx512::gemm_1x1_nchw : avx2::gemm_1x1_nchw;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), nullptr, o.out.mutable_data_ptr<float>(), true);
}

// bfloat16 backward-weight, NCHW planes of an even number of pixels: a plane's values are words of
// pixel pairs as they lie, (v[2j], v[2j + 1]) — the float32 kernel's "pixels" become words and its
// steps VDPBF16PS (two pixels' products summed in float32), its transposes move words as floats;
// dw in float32, rounded once. On AVX512-BF16 CPUs without AMX tiles (not_bf16_on_amx_tiles;
// forced, on any), as bf16_pairs, which leaves these problems to it (and amx_bf16 emulated).
// bf16_pairs built words of pixel pairs for both operands in its bands (NCHW: transposes of both). Batch 4, 2 threads, old/new (python
// benchmarks/ab.py OLD.so NEW.so 4,256,56,56,64,1 --layout nchw --pass backward_weight --dtype
// bfloat16, best mins): ResNet-50's 256->64 @56 and 64->256 @56 1.58-1.59x (0.74x -> 1.72-1.82x
// torch), 512->128 @28 1.48x, 128->512 @28 1.23x, 1024->256 @14 1.24x, 256->1024 @14 1.10x;
// MobileNetV2's 32->16 @112 2.95x, 144->24 @56 2.66x, 192->32 @28 2.56x, 96->576 @14 1.03x.
bool pixel_pair_shape(const Conv2dParams& p) {
  return supports_nhwc_too(p, at::kFloat) && is_nchw(p) && p.H * p.W % 2 == 0 && amx_bf16_available();
}
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? pixel_pair_shape(p) : supports_nhwc_too(p, dtype);
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {
    const at::Tensor dy = word_aligned(o.a), x = word_aligned(o.b);
    const at::Tensor dw = at::empty(o.out.sizes(), o.out.options().dtype(at::kFloat));
    avx512::gemm_1x1_backward_weight(p, static_cast<const float*>(dy.const_data_ptr()),
                                     static_cast<const float*>(x.const_data_ptr()), dw.mutable_data_ptr<float>(),
                                     false, true);
    o.out.copy_(dw);
    return;
  }
  auto f = use_avx512() ? avx512::gemm_1x1_backward_weight : avx2::gemm_1x1_backward_weight;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), is_nhwc(p), false);
}

const bool registered = register_algorithm({"gemm_1x1", Pass::Forward, 20, supports_forward, run_forward}) &&
                        register_algorithm({"gemm_1x1", Pass::BackwardInput, 20, supports_backward_input, run_backward_input}) &&
                        register_algorithm(
                            {"gemm_1x1", Pass::BackwardWeight, 20, supports_backward_weight, run_backward_weight, false,
                             not_bf16_on_amx_tiles});

}  // namespace

bool gemm_1x1_pixel_pairs(const Conv2dParams& p) { return pixel_pair_shape(p) && amx_bf16_emulated(); }

}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {

// forward (transpose = false):  out[n, g*Kg + k, pix] = bias + sum_c w[g*Kg + k, c] * in[n, g*Cg + c, pix]
// backward-input (true):        out[n, g*Cg + c, pix] = sum_k w[g*Kg + k, c] * in[n, g*Kg + k, pix]
void gemm_1x1_nchw(const Conv2dParams& p, const float* in, const float* w, const float* bias, float* out,
                   bool transpose) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, N = p.N;
  const int64_t Mi = transpose ? Cg : Kg;   // output channels per group (tile rows)
  const int64_t Li = transpose ? Kg : Cg;   // reduction length
  const int64_t Ct_in = transpose ? p.K : p.C, Ct_out = transpose ? p.C : p.K;
  const int nv = choose_nv(HW);
  const int64_t NVL = nv * VL, npb = ceil_div(HW, NVL);
  // Reduction panels: a reduction of <= 256 channels in one (the sums stored once, by streaming
  // stores where the output is large); longer ones in panels of 256, or of 128 where the L1 has
  // 48 KiB or more: a tile's B (128 x 64 pixels, 32 KiB) then stays in L1 for all the tiles of
  // filters that read it (panels of 256, 64 KiB, were read from L2 by each tile). NCHW, 2 threads,
  // Xeon with AVX-512 and a 48 KiB L1, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE
  // --layout nchw --pass P --rounds 4): forward 512->128 @28 1.03-1.05x (batch 4 and 8),
  // backward-input 128<-512 @28 1.03-1.10x. Cutting a 256-channel reduction in two as well:
  // 256->512 @28 forward 1.04-1.07x, but 256->128 @56 batch 8 0.89-0.92x (its 12.8 MB output
  // written twice, not streamed once). Panels of 64: 0.95-0.99x of 128. On Zen 4 (32 KiB L1)
  // panels of 64-128 measured 0.77-1.03x of 256 (the Zen 4 rounds in docs/results-history.md): 256
  // there.
  const int64_t lc = Li <= 256 ? Li : l1d_bytes() >= (int64_t(48) << 10) ? 128 : 256;
  const int64_t nlc = ceil_div(Li, lc);
  // large outputs of one reduction panel: streaming stores (kernel_util.h, kStreamFloats)
  const bool stream = nlc == 1 && N * Ct_out * HW >= kStreamFloats;
  for_each_task(N * G * npb, p.macs(), [&](int64_t task) {
    const int64_t n = task / (G * npb), g = (task / npb) % G, pb = task % npb;
    const int64_t pix0 = pb * NVL, valid = std::min(NVL, HW - pix0);
    // the plane's last block with as few vectors as cover it (a 14x14 plane: 64+64+64+4 pixels,
    // the 4 in one vector, not four). 1024->256 @14 NCHW, batch 4, 2 threads, ratio vs torch
    // (python -m conv_ext.bench --suite resnet50 --batch 4 --cases layer3.1.conv1): forward
    // 0.78 -> 0.96, backward-input 0.68 -> 0.79.
    const int nvb = choose_nv(valid);
    const int64_t MRb = Isa::mr(nvb), NVLb = nvb * VL;
    M m[4];
    make_masks(nvb, valid, m);
    const int64_t zero = 0;
    for (int64_t lb = 0; lb < nlc; ++lb) {
      const int64_t l0 = lb * lc, ll = std::min(lc, Li - l0);
      for (int64_t i0 = 0; i0 < Mi; i0 += MRb) {
        Tile t;
        if (transpose) {  // A(i = c, l = k) = w[(g*Kg + l0 + l)*Cg + i0 + i]
          t.a = w + (g * Kg + l0) * Cg + i0, t.a_is = 1, t.a_ls = Cg;
        } else {  // A(i = k, l = c) = w[(g*Kg + i0 + i)*Cg + l0 + l]
          t.a = w + (g * Kg + i0) * Cg + l0, t.a_is = Cg, t.a_ls = 1;
        }
        t.b = in + ((n * Ct_in + g * Li + l0) * HW) + pix0, t.b_ls = HW;
        t.a_off = &zero, t.b_off = &zero, t.nseg = 1, t.len = ll;
        t.mr = static_cast<int>(std::min(MRb, Mi - i0));
        t.c = out + (n * Ct_out + g * Mi + i0) * HW + pix0, t.ldc = HW;
        t.accumulate = lb > 0;
        t.bias_i = (lb == 0 && bias) ? bias + g * Mi + i0 : nullptr;
        t.bmask = m;
        t.cmask = valid < NVLb ? m : nullptr;
        t.stream = stream;
        if (valid < NVLb) run_tile<true>(nvb, t);
        else run_tile<false>(nvb, t);
      }
    }
    if (stream) _mm_sfence();
  });
}

// NHWC backward-input: dx[pix, g*Cg + c] = sum_k dy[pix, g*Kg + k] * w[g*Kg + k, c]. A task is a
// block of 16 micro-tiles of pixels x NVL channels of dx; the reduction runs in panels of 256
// filters (rows of w re-blocked once per call as [g][NVL-column block][k][NVL]), accumulated in dx.
void gemm_1x1_nhwc_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), C = p.C, K = p.K, NP = p.N * p.H * p.W;
  const int nv = choose_nv_blocks(Cg);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), ncb = ceil_div(Cg, NVL);
  const int64_t kc = std::min<int64_t>(Kg, 256), nkc = ceil_div(Kg, kc);
  // A task is `rows` pixels x `cbs` column blocks of one group: 96 pixels x 1 block, except for
  // filters of >= 1M floats. Every task reads its pixels' dy rows (once: its column blocks take
  // turns on each panel of dy) and its blocks of w, so in all dy is read ncb/cbs times and w once
  // per pixel block; for large filters take the shape that reads the fewest floats (times the
  // idle share of a last round of tasks), with >= 8 tasks and <= 512 pixels a task. 2048->512 @7
  // NHWC backward-input, batch 4, 2 threads (w 4 MB, read 3x by 96-pixel tasks before): 0.80x ->
  // 1.2x torch. Smaller filters measured worse with it (128->512 @28 0.98x -> 0.81x).
  int64_t rows = 16 * MR, cbs = 1;
  if (G * Kg * Cg >= (int64_t(1) << 20)) {
    double best = -1;
    const int64_t want = std::min<int64_t>(8, G * ncb * ceil_div(NP, MR));
    for (int64_t c = ncb;; c = ceil_div(c, 2)) {
      for (int64_t r = std::min<int64_t>(round_up(NP, MR), 512); r >= MR; r = r > 4 * MR ? round_up(r * 3 / 4, MR) : r - MR) {
        const int64_t tasks = ceil_div(NP, r) * G * ceil_div(ncb, c);
        if (tasks < want) continue;
        const double cost =
            (double(ceil_div(NP, r)) * Kg * Cg + double(ceil_div(ncb, c)) * NP * Kg) * round_factor(tasks);
        if (best < 0 || cost < best * 0.999) best = cost, rows = r, cbs = c;
      }
      if (c == 1) break;
    }
  }
  const int64_t npb = ceil_div(NP, rows), ngc = ceil_div(ncb, cbs);
  // dx of >= kStreamFloats written by one panel: streaming stores (as implicit_gemm's NHWC
  // forward). MobileNetV2 channels_last backward-input, batch 8, ratio vs torch in the bench
  // (--suite mobilenet_v2 --layout nhwc --passes backward_input, three runs each, toggled):
  // 32<-16 @112 0.72-0.76x -> 0.85-0.86x, 96<-24 @56 0.82-0.90 -> 0.86-0.97, 144<-24 @56 0.84-0.93 -> 0.89-1.03.
  const bool stream = nkc == 1 && NP * C >= kStreamFloats;
  // w as [g][column block][k][NVL] (zero-padded), once per call: every task reads its rows in
  // place. (Each task copied its own 256-row panel before: 16 KiB per 96 pixels x 64 channels,
  // ~30% of 256->64 @56's time.)
  float* wpk = scratch(0, G * ncb * Kg * NVL);
  for_each_task(G * ncb, G * Kg * Cg * 16, [&](int64_t gc) {
    const int64_t g = gc / ncb, c0 = (gc % ncb) * NVL, cn = std::min(NVL, Cg - c0);
    pad_rows(w + g * Kg * Cg + c0, Cg, Kg, cn, NVL, wpk + gc * Kg * NVL, NVL);
  });
  for_each_task(npb * G * ngc, p.macs(), [&](int64_t task) {
    const int64_t pb = task / (G * ngc), g = (task / ngc) % G, cg = task % ngc;
    const int64_t pix0 = pb * rows, np = std::min(rows, NP - pix0);
    const int64_t zero = 0;
    for (int64_t lb = 0; lb < nkc; ++lb)
    for (int64_t cb = cg * cbs; cb < std::min(ncb, (cg + 1) * cbs); ++cb) {
      const int64_t c0 = cb * NVL, cn = std::min(NVL, Cg - c0);
      M m[4];
      make_masks(nv, cn, m);
      const int64_t l0 = lb * kc, ll = std::min(kc, Kg - l0);
      const float* panel = wpk + ((g * ncb + cb) * Kg + l0) * NVL;  // rows l0.. of the block
      for (int64_t i0 = 0; i0 < np; i0 += MR) {
        Tile t;
        t.a = dy + (pix0 + i0) * K + g * Kg + l0, t.a_is = K, t.a_ls = 1;
        t.b = panel, t.b_ls = NVL;
        t.a_off = &zero, t.b_off = &zero, t.nseg = 1, t.len = ll;
        t.mr = static_cast<int>(std::min(MR, np - i0));
        t.c = dx + (pix0 + i0) * C + g * Cg + c0, t.ldc = C;
        t.accumulate = lb > 0;
        t.cmask = cn < NVL ? m : nullptr;
        t.stream = stream;
        if (const int64_t i1 = std::min(np, i0 + 2 * MR); i0 + MR < np)  // the next tile's dy rows
          t.prefetch = prefetch_rows(t.a + MR * K, t.a + (i1 - i0 - 1) * K + ll, ll);
        run_tile<false>(nv, t);
      }
    }
    if (stream) _mm_sfence();
  });
}

// backward-weight: dw[g*Kg + k, c] = sum_{n, pix} dy[n, g*Kg + k, pix] * x[n, g*Cg + c, pix].
// The smaller of the two operands (per channel: Cg <= Kg -> x) is the "vector" side V: a block
// of NVL of its channels x a piece of <= 256 pixels is transposed into vt[pix][NVL]; the other
// operand A is read in place (tile rows = its channels, a_is = HW, a_ls = 1). The N*HW pixels
// are cut into nchunk chunks (a function of the shape and the machine); each chunk sums into its own
// partial [g][jb][i][NVL] and the partials are added in chunk order: same bits for any thread count.
// A task is (chunk, group, block of V's channels), or (chunk, group) with every block where
// channels_last V rows are read in place (whole rows, one stream).
// pairs (NCHW, AVX512-BF16 builds only): dy and x are bfloat16, read as words of pixel pairs (HW / 2
// "pixels" a plane), each step a VDPBF16PS.
void gemm_1x1_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dw, bool nhwc,
                              bool pairs) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W / (pairs ? 2 : 1), N = p.N;
  // V: the operand with fewer channels on large planes (less to transpose); with more on small
  // planes (HW < kPiece), where a chunk's A (several whole images) then stays in L2
  constexpr int64_t kPiece = 256;
  // NHWC: nothing is transposed (V rows are the pixels' channel runs, A broadcast with a_ls = C);
  // V = the operand with fewer channels up to 256 channels, else the one with more (measured)
  bool v_is_x = (nhwc ? std::max(Cg, Kg) > 256 : HW < kPiece) ? Cg >= Kg : Cg <= Kg;
  if (nhwc) {
    // ... unless the other choice fills clearly more of its tiles: the share of the computed
    // lanes x rows that are real channels (24->144 @56: V = x, 24 of 32 lanes; V = dy, 3 x 48 lanes
    // and 3 x 8 rows, all real).
    auto filled = [](int64_t nj, int64_t mi) {
      const int v = choose_nv_blocks(nj);
      const int64_t nvl = v * VL, mr = Isa::mr(v);
      return double(nj) / double(ceil_div(nj, nvl) * nvl) * double(mi) / double(ceil_div(mi, mr) * mr);
    };
    const double mine = v_is_x ? filled(Cg, Kg) : filled(Kg, Cg), other = v_is_x ? filled(Kg, Cg) : filled(Cg, Kg);
    if (other > 1.05 * mine) v_is_x = !v_is_x;
  }
  const float* V = v_is_x ? x : dy;
  const float* A = v_is_x ? dy : x;
  const int64_t Nj = v_is_x ? Cg : Kg, Mi = v_is_x ? Kg : Cg;
  const int64_t CtV = v_is_x ? p.C : p.K, CtA = v_is_x ? p.K : p.C;
  const int nv = choose_nv_blocks(Nj);
  const int64_t NVL = nv * VL, MR = Isa::mr(nv), njb = ceil_div(Nj, NVL);
  const int64_t part = G * njb * Mi * NVL;
  // Small planes (HW < kPiece): chunks are ranges of whole images, and one micro-kernel call
  // covers up to ~2*kPiece pixels of several images (one segment per image).
  const bool by_image = !nhwc && HW < kPiece;
  const int64_t total = by_image ? N : N * HW;  // units the chunks split
  const int64_t ipb = by_image ? std::max<int64_t>(1, 2 * kPiece / HW) : 1;  // images per call
  // Chunks: enough for the machine's threads next to a chunk's G*njg tasks, and more where the
  // last round of tasks would leave over 8% of the threads' time idle (kernel_util.h, balanced_chunks;
  // 9 blocks on 2 threads: 10%). One chunk of MobileNetV2's 24->144 @56 (3 blocks of 48
  // channels) ran 3 tasks on 2 threads; 2 chunks (6 tasks; now 2 of whole rows, below), batch 8,
  // 2 threads, channels_last, ms min of 15 (python benchmarks/algos.py 8,24,56,56,144,1 --layout
  // nhwc --pass backward_weight): 24->144 1.22-1.40 -> 0.81-0.82, 144->24 1.19-1.22 -> 0.83-0.90
  // (0.86-0.98x -> 1.13-1.41x torch). A stricter 5% doubled the 0.6 MB partials of 960->320 @7
  // (15 blocks): 0.94x on two L3s.
  const int64_t units = by_image ? N : ceil_div(total, kPiece), most = weight_chunks(units, units, part, p.macs());
  // Channels_last V rows read in place (under 256 floats): a task takes every block of V's
  // channels (jbs = njb), so each of its pixels' rows is read whole, one sequential stream of both
  // operands; a task per block read 2-3 lines of every row (the other tasks the rest, at other
  // times), which cost most where the operands come from memory, as in a training step. Batch 8,
  // 2 threads, ms median of 30, old / new [torch] (python benchmarks/algos.py SHAPE --layout nhwc
  // --pass backward_weight --step, two processes each): 24->144 @56 2.26-2.37 / 1.49-1.56
  // [1.76-1.93], 144->24 @56 1.95-2.23 / 1.47-1.77 [1.54-2.54], 96->24 @56 1.22-1.52 / 0.87-0.92
  // [1.00-1.27]; back-to-back (benchmarks/ab.py) 1.00-1.04x. Long rows, copied a block at a time,
  // keep a block a task (96->576 @14 and 1024->256 @14 whole: 0.93-0.95x in a step).
  // Channels_last A with V's rows copied (CtV >= 256) over >= 384 pixels: each piece of A is
  // transposed into at[i][pixel] first, so the tiles read their rows as NCHW's do (a_ls = 1:
  // the Fast loop, one contiguous run a row), not a line per pixel at a stride of CtA floats
  // (1-4 KiB: the lines of a tile's pixels fall into a few L1 sets and the prefetchers do not
  // follow). A task then takes several blocks of V's channels, so a piece is transposed once for
  // them: all the blocks, or a share where fewer chunks than 4 a thread would leave threads idle
  // (weight_tasks' threads, not the pool's: the chunks and so the bits do not change with it).
  // Batch 8, 2 threads, ms min of 30, before / after (python benchmarks/algos.py SHAPE --layout
  // nhwc --pass backward_weight): 512->1024 @14 7.18-7.35 / 5.41-5.59 (implicit_gemm: 6.33-6.48;
  // torch 6.17-6.31), 1024->256 @14 3.17 / 2.72, 1024->256 @28 13.97 / 11.31, 128->512 @28 3.46 /
  // 2.85, 256->512 @28 6.64 / 5.55, 256->1024 @14 3.09 / 2.70, 1024->2048 @7 7.71 / 7.08; MobileNetV2's
  // 96->576 @14, 576->96 @14, 160->960 @7, 960->160 @7 and 2048->512 @7 level; batch 2 512->1024
  // @14 level, batch 1 (196 pixels) 0.75 / 0.81, so not there.
  const bool transpose_a = nhwc && CtV >= 256 && N * HW >= 384;
  const int64_t jbs = nhwc && CtV < 256 ? njb : transpose_a ? ceil_div(njb, ceil_div(4 * weight_tasks(16), most)) : 1;
  const int64_t njg = ceil_div(njb, jbs);
  const int64_t nchunk = balanced_chunks(std::min(ceil_div(weight_tasks(16), G * njg), most), most, G * njg, 16, 0.08);
  float* partial = scratch(0, nchunk * part);

  for_each_task(nchunk * G * njg, p.macs(), [&](int64_t task) {
    const int64_t chunk = task / (G * njg), g = (task / njg) % G, jg = task % njg;
    const int64_t a = total * chunk / nchunk, b = total * (chunk + 1) / nchunk;
    float* vt = scratch(1, (by_image ? ipb * HW : kPiece) * NVL);
    int64_t* a_off = scratch_i64(0, ipb);
    int64_t* b_off = scratch_i64(1, ipb);
    b_off[0] = 0;
    bool first = true;
    if (nhwc) {  // the chunk's pixels are one run of rows [pixel][channel] in both operands
      // V's rows are read in place when they are short (CtV < 256 floats); longer rows are 1-8
      // KiB apart and the same channels of consecutive pixels fall into a few L1 sets, so each
      // piece of 128 pixels x NVL channels is copied into vt first (zero-padded) and the
      // micro-kernel's B stays in L1. 1 thread, batch 4, best of 5 alternating processes
      // (benchmarks/ab.py, --layout nhwc --pass backward_weight): 512->1024 @14 1.05-1.16x,
      // 2048->512 @7 1.5x, 128->512 @28 1.08x; short rows (64->256 @56, 24->144 @56) within noise.
      const bool in_place = CtV < 256;  // (never with transpose_a)
      const int64_t piece = in_place ? kPiece : kPiece / 2;
      float* at = transpose_a ? scratch(2, Mi * piece) : nullptr;
      // A is read in place, a line per pixel and row of tiles: its first reads of a piece come
      // from memory at a stride the hardware prefetcher does not follow far (a piece is one run
      // of pixels, but 8-128 KB of it). When A is too large to have stayed in L3 (>= 8 MiB), the
      // next piece is prefetched into L2 during this piece's tiles. 2 threads, batch 4 unless
      // said, in-process A/B in random order, median of 20-40: 256->128 @56 1.23x, 256->64 @56
      // 1.30x, 64->256 @56 1.15x, 32->16 @112 batch 8 1.27x; with A of 0.4-3 MiB (64->64 @56,
      // 512->128/256 @28, 256->512 @56/2) it cost 2-3%, so not there; @14 and @7 level.
      const bool prefetch_a = G == 1 && N * HW * CtA >= (int64_t(1) << 21);
      const int64_t jb0 = jg * jbs, jb1 = std::min(njb, jb0 + jbs);
      for (int64_t pos = a; pos < b; pos += piece) {
        const int64_t len = std::min(piece, b - pos);
        // the next piece's A pixels (one run of memory: G == 1), spread over this piece's tiles
        const char* pf = reinterpret_cast<const char*>(A + (pos + len) * CtA);
        const char* pf_end = reinterpret_cast<const char*>(A + std::min(b, pos + len + piece) * CtA);
        const int64_t pf_step = prefetch_a ? ceil_div((pf_end - pf) / 64, ceil_div(Mi, MR) * (jb1 - jb0)) : 0;
        if (at) transpose_rows(A + pos * CtA + g * Mi, CtA, len, Mi, piece, at);
        for (int64_t jb = jb0; jb < jb1; ++jb) {
          const int64_t j0 = jb * NVL, jn = std::min(NVL, Nj - j0);
          float* out = partial + chunk * part + (g * njb + jb) * Mi * NVL;  // [i][NVL]
          M bm[4];
          make_masks(nv, jn, bm);
          const float* vp = V + pos * CtV + g * Nj + j0;
          if (!in_place) pad_rows(vp, CtV, len, jn, NVL, vt, NVL), vp = vt;
          // V rows that are copied: the next piece's too, a share of its rows during each tile (the
          // copies' reads, 128 runs of NVL floats 1-8 KiB apart, waited on L3: memmove 13% of the
          // samples of 512->128 @28 on one thread). 2 threads, batch 8, ms min of 15 (python
          // benchmarks/algos.py SHAPE --layout nhwc --pass backward_weight): 512->128 @28 4.38 ->
          // 4.07, 1024->256 @14 3.96 -> 3.87, 512->1024 @28 32.8 -> 31.9, 256->1024 @14 4.09 ->
          // 3.90, 2048->512 @7 level. Rows read in place (shorter) did not gain from it.
          const int64_t v_next = in_place ? 0 : std::min(piece, b - pos - len);
          const int64_t v_step = ceil_div(v_next, ceil_div(Mi, MR));
          const float* v_pf = V + (pos + len) * CtV + g * Nj + j0;
          int64_t v_row = 0;
          for (int64_t i0 = 0; i0 < Mi; i0 += MR) {
            for (int64_t k = 0; k < pf_step && pf < pf_end; ++k, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
            for (const int64_t ve = std::min(v_next, v_row + v_step); v_row < ve; ++v_row)
              for (int64_t o = 0; o < jn; o += 16) _mm_prefetch(reinterpret_cast<const char*>(v_pf + v_row * CtV + o), _MM_HINT_T1);
            Tile t;
            if (at) t.a = at + i0 * piece, t.a_is = piece, t.a_ls = 1;
            else t.a = A + pos * CtA + g * Mi + i0, t.a_is = 1, t.a_ls = CtA;
            t.b = vp, t.b_ls = in_place ? CtV : NVL;
            t.a_off = b_off, t.b_off = b_off, t.nseg = 1, t.len = len;  // b_off[0] = 0
            t.mr = static_cast<int>(std::min(MR, Mi - i0));
            t.c = out + i0 * NVL, t.ldc = NVL;
            t.accumulate = pos > a;
            t.bmask = bm;
            if (in_place && jn < NVL) run_tile<true>(nv, t);
            else run_tile<false>(nv, t);
          }
        }
      }
      return;
    }
    const int64_t jb = jg, j0 = jb * NVL, jn = std::min(NVL, Nj - j0);  // NCHW: a block a task (jbs == 1)
    float* out = partial + chunk * part + (g * njb + jb) * Mi * NVL;  // [i][NVL]
    for (int64_t pos = a; pos < b;) {
      int64_t n, pix0, len, nseg;
      if (by_image) {
        n = pos, pix0 = 0, len = HW, nseg = std::min(ipb, b - pos);
        for (int64_t sg = 0; sg < nseg; ++sg) {
          transpose_rows(V + ((n + sg) * CtV + g * Nj + j0) * HW, HW, jn, HW, NVL, vt + sg * HW * NVL);
          a_off[sg] = sg * CtA * HW, b_off[sg] = sg * HW * NVL;
        }
        pos += nseg;
      } else {
        n = pos / HW, pix0 = pos % HW, len = std::min({kPiece, HW - pix0, b - pos}), nseg = 1;
        transpose_rows(V + (n * CtV + g * Nj + j0) * HW + pix0, HW, jn, len, NVL, vt);
        a_off[0] = 0, b_off[0] = 0;
        pos += len;
      }
      for (int64_t i0 = 0; i0 < Mi; i0 += MR) {
        Tile t;
        t.a = A + (n * CtA + g * Mi + i0) * HW + pix0, t.a_is = HW, t.a_ls = 1;
        t.b = vt, t.b_ls = NVL;
        t.a_off = a_off, t.b_off = b_off, t.nseg = static_cast<int>(nseg), t.len = len;
        t.mr = static_cast<int>(std::min(MR, Mi - i0));
        t.c = out + i0 * NVL, t.ldc = NVL;
        t.accumulate = !first;
        t.pairs = pairs;
        run_tile<false>(nv, t);
      }
      first = false;
    }
  });

  // dw[g*Kg + k, c] = sum over chunks, in chunk order
  // then out of the [g][jb][i][NVL] blocks into dw: NVL-float row pieces when V is x (i = k,
  // j = c), a vector transpose when V is dy (i = c, j = k). Was a scalar loop with two divisions
  // per element (2048->512 @7: 1M elements).
  sum_chunks(partial, nchunk, part);
  for_each_task(G * njb, part, [&](int64_t gj) {
    const int64_t g = gj / njb, j0 = gj % njb * NVL, jn = std::min(NVL, Nj - j0);
    const float* src = partial + gj * Mi * NVL;  // [i][NVL]
    if (v_is_x)
      for (int64_t k = 0; k < Kg; ++k) std::memcpy(dw + (g * Kg + k) * Cg + j0, src + k * NVL, sizeof(float) * jn);
    else  // dw[g*Kg + j0 + kk][c] = src[c][kk]
      transpose_rows(src, NVL, Mi, jn, Cg, dw + (g * Kg + j0) * Cg, Cg);
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
