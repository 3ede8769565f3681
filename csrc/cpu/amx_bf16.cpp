// amx_bf16.cpp — bfloat16 convolution on the AMX tile units (Intel Sapphire Rapids and later):
// any stride, padding and dilation, NCHW or NHWC, KCRS or channels_last filter; groups of 16k
// channels in one pass (grouped_in_place; channels_last groups of 16 as row_mode on a band per
// group: grouped_rows), smaller groups as blocks of 32 channels with a block-diagonal filter
// (small_groups; backward-weight: only the diagonal tiles of such blocks, diagonal_groups), up to
// 4 other groups a group at a time (per_group).
// Forward (below); backward-input, at stride 1 that forward on dy with the filter turned round,
// strided by dx's stride phases (backward_input_phases); backward-weight with dy rows as A tiles
// and pairs of band pixels as B tiles (backward_weight). 1x1 stride-1 unpadded layers of one
// group: backward-weight with both tiles made from the pixels as they are read, tasks over parts
// of the pixels (backward_weight_pixels, NCHW and NHWC); NCHW forward and backward-input with the
// filter as A and pairs of the plane's channel rows as B, C tiles being rows of the output
// (rows_1x1).
//
//   y[n,p,q,k] = bias[k] + sum_{r,s,c} x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c] * w[k,c,r,s]
//
// One AMX instruction, TDPBF16PS, multiplies a 16x32 bfloat16 tile A by a 32x16 tile B (stored as
// 16 rows of 16 column pairs: "VNNI" order) into a 16x16 float32 tile C: 8192 multiply-adds, the
// products exact and every sum in float32. Here A = 16 output pixels x 32 input channels of one
// filter tap, B = those 32 channels x 16 filters, C = 16 pixels x 16 filters.
//
// Layout. The input is copied once per call into a zero-padded NHWC band xb[n][Hp][Wp][Cp]
// (Cp = C rounded up to 32; NCHW rows transposed by 16x16 word blocks; a channels_last 1x1
// stride-1 input with 32k channels is its own band, read in place), so the 16 rows of an
// A tile are 16 pixels at a fixed distance in memory: TILELOADD takes that distance as its
// stride. At stride 1 the output grid is the padded width (tile rows run on across the row end,
// and the columns past Q are computed and dropped: 16 → 18 columns on 16x16, 7 → 9 on 7x7); at
// stride sw each output row is its own run of tiles, sw pixels apart. The filter is packed as
// [16-filter block][r][s][32-channel block][16 pair rows][16 filters x 2] (1 KiB per B tile), kept
// across calls while the filter is unchanged (filter_cache.h). With fewer than 32 input channels
// (the RGB stems) a step of the reduction is 32 // C taps of a filter row instead, read side by
// side from a band of unpadded pixels (7x7 on 3 channels: 21 of 32 values a step, not 3).
//
// Blocking (forward): a task is an image, up to 4 pairs of A tiles (128 grid pixels; fewer where
// that leaves under 4 tasks a thread) and the pairs of 16-filter blocks whose B tiles fit in
// 512 KiB; for each filter pair and pixel pair it holds the 4 C tiles for the whole reduction
// (taps x channel blocks: 4 TDPBF16PS per 4 tile loads), then stores them through a 32x32 float32
// buffer (bias added, rounded to bfloat16 by VCVTNEPS2BF16). A channels_last 1x1 input read in
// place is one grid of all the images (tiles run on from one image into the next), and with few
// B tiles a task runs a pixel pair's filter pairs one after another (its A rows in L1), the next
// pair's A rows prefetched into L2 meanwhile (run_tiles). Every output element is one task's sum
// in a fixed order: the same bits for any thread count. Backward-weight: see backward_weight.
//
// float16 problems run here too, as bfloat16 problems of three times the channels on split
// operands (amx_fp16.cpp: forward() and backward_input_phases() with a Split, run_tiles rounding
// to float16), backward-weight as sums over three times the pixels (backward_weight and
// backward_weight_pixels with `half`).
//
// The tile registers need the kernel's permission (arch_prctl ARCH_REQ_XCOMP_PERM). Without AMX
// (or that permission) but with AVX512-BF16 — AMD Zen 4 — the same kernels run with the tiles
// emulated by VDPBF16PS loops (amx_tiles.h), for the layers where that beats the float32 path
// (worth_running, below). Without AVX512-BF16, or with CONV_EXT_CPU_CAPABILITY below avx512,
// bfloat16 runs the float32 kernels on float32 copies (conv2d_cpu.cpp).
//
// Speed (2 threads, batch 4; python -m conv_ext.bench --suite default --dtype bfloat16 --layout L
// --passes forward,all, thirteenth round): ResNet-50's layers 1.6-2.7x torch's own AMX path
// (oneDNN) forward and 1.2-1.7x forward+backward in NCHW, 0.89-2.2x and 0.93-1.9x channels_last,
// up to 2.4 TFLOP/s (the float32 FMA peak is ~276 GFLOP/s); through float32 copies they ran at
// 0.50-0.89x. The 7x7/2 stem forward 2.0x NCHW, 0.65x channels_last; its backward passes (3
// channels) run amx_bf16_rows.cpp. See "Other dtypes" in docs/results-history.md for what each
// change of the thirteenth round gained.
// The results equal oneDNN's bit for bit on the layers tried (the same float32 sums in the same
// order), and both are within a bfloat16 rounding of the float64 result.
#include <ATen/ATen.h>
#include <immintrin.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstring>
#include <cstdlib>
#include <string>

#include "algorithms.h"
#include "filter_cache.h"
#include "amx_tiles.h"
#include "kernel_util.h"

namespace conv_ext {
namespace cpu {

namespace amx {
bool g_tiles_emulated = false;
}

// AMX-TILE, AMX-BF16 and the kernel's permission for the tile registers: the tiles themselves.
// Else AVX512-BF16 (AMD Zen 4 and later): the same kernels with the tiles emulated by VDPBF16PS
// loops (amx_tiles.h). CONV_EXT_AMX_EMULATE=1 asks for the emulation where AMX is there too (to
// test it on such a machine).
bool amx_bf16_available() {
  static const bool ok = [] {
#if defined(__x86_64__) && defined(SYS_arch_prctl)
    if (cpu_capability() != "avx512") return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx = (d >> 22 & 1) && (d >> 24 & 1);  // AMX-BF16, AMX-TILE
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1)) return false;  // AVX512-BF16
    const char* env = std::getenv("CONV_EXT_AMX_EMULATE");
    const bool emulate = env != nullptr && std::string(env) == "1";
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    if (amx && !emulate && syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0) return true;
    amx::g_tiles_emulated = true;
    return true;
#else
    return false;
#endif
  }();
  return ok;
}

bool amx_bf16_emulated() { return amx_bf16_available() && amx::g_tiles_emulated; }

// A strided channels_last 1x1 forward (one group) read in place: rows of tiles along each output
// row, their A rows every stride-th pixel of x's row (a tile's rows past Q run on into x's next
// row: computed, never stored). The other strided 1x1 problems have the pixels they read copied
// out first (strided_1x1, conv2d_cpu.cpp: a quarter of x at stride 2), then run at stride 1 in
// place. Rows of Q pixels take round_up(Q, 16) tile rows: in place where that is at most 8/7 of
// Q (7x7 planes, 16 rows for 7, ran 0.56-0.82x). Batch 8, old/new (python benchmarks/ab.py
// OLD.so NEW.so SHAPE --layout nhwc --pass forward --dtype bfloat16 --rounds 3): 256->512 @56/2
// 1.09-1.10x, 512->1024 @28/2 1.18-1.20x, 512->2048 @28/2 1.05x, batch 1 256->512 @56/2 0.97-1.00x.
bool amx_bf16_strided_1x1_in_place(const Conv2dParams& p, bool channels_last) {
  return channels_last && p.groups == 1 && p.R == 1 && p.S == 1 && p.pad_h == 0 && p.pad_w == 0 &&
         7 * round_up(p.Q, amx::kTile) <= 8 * p.Q;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16,f16c")

namespace amx {

// has_nonfinite's test of x[0, n) on one thread (also padded_band's of its rows).
bool run_has_nonfinite(const bf16* x, int64_t n) {
  const __m512i e = _mm512_set1_epi16(0x7F80);
  __mmask32 m = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) m |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_loadu_si512(x + i), e), e);
  for (; i < n; ++i) m |= (x[i] & 0x7F80) == 0x7F80;
  return m != 0;
}

// Whether any of x[0, n) is an infinity or a NaN (exponent bits all set). A product with such a
// value is NaN even when the other factor is 0, so kernels whose tiles pair real values with
// zeros they put in (row_mode's values past a filter row, backward-weight's grid columns past Q)
// would turn a finite result NaN; they run such data on float32 copies (run_as_float32).
bool has_nonfinite(const bf16* x, int64_t n) {
  constexpr int64_t kChunk = int64_t(1) << 16;
  const int64_t nchunk = ceil_div(n, kChunk);
  std::vector<uint8_t> bad(static_cast<size_t>(nchunk), 0);
  for_each_task(nchunk, n * 4, [&](int64_t c) {
    bad[c] = run_has_nonfinite(x + c * kChunk, std::min(kChunk, n - c * kChunk));
  });
  for (const uint8_t b : bad)
    if (b) return true;
  return false;
}

// (amx_tiles.h)
at::Tensor padded_band(const bf16* x, bool nhwc, int64_t N, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
                       int64_t Hp, int64_t Wp, int64_t Cp, int64_t slack, bool* nonfinite) {
  std::vector<uint8_t> bad(nonfinite ? static_cast<size_t>(N * Hp) : 0, 0);
  const int64_t img = Hp * Wp * Cp;
  at::Tensor band_t = bf16_buffer(N * img + slack);
  bf16* xb = bf16_data(band_t);
  std::memset(xb + N * img, 0, sizeof(bf16) * slack);
  for_each_task(N * Hp, N * Hp * Wp * Cp * 16, [&](int64_t nh) {
    const int64_t n = nh / Hp, hp = nh % Hp, h = hp - ph;
    bf16* d = xb + n * img + hp * Wp * Cp;
    const int64_t wend = band_row_padding(d, h, H, W, pw, Wp, Cp);
    if (wend < 0) return;
    if (nhwc && Cp == C) {  // unpadded pixels: the row is one run
      std::memcpy(d + pw * Cp, x + ((n * H + h) * W) * C, sizeof(bf16) * wend * C);
    } else if (nhwc) {
      const bf16* src = x + ((n * H + h) * W) * C;
      for (int64_t ww = 0; ww < wend; ++ww) {
        std::memcpy(d + (pw + ww) * Cp, src + ww * C, sizeof(bf16) * C);
        if (Cp > C) std::memset(d + (pw + ww) * Cp + C, 0, sizeof(bf16) * (Cp - C));
      }
    } else if (Cp % kChan == 0) {  // NCHW: row h of every channel, transposed into pixels of Cp
      // channels by blocks of 32 channels x 16 pixels: the channel pairs' rows interleaved into
      // words, 16 words of 16 pixels turned into 16 pixels' 32 channels (transpose_16x16)
      const bf16* src = x + (n * C * H + h) * W;
      const __m512i pairs = interleave_16();
      for (int64_t c0 = 0; c0 < Cp; c0 += kChan)
        for (int64_t w0 = 0; w0 < wend; w0 += kTile) {
          const int64_t wn = std::min(kTile, wend - w0);
          const __mmask16 wm = first_lanes(wn);
          __m512i r[kTile];
          for (int64_t i = 0; i < kTile; ++i) {
            const int64_t c = c0 + 2 * i;
            // channels past C: zeros (rows past the last image's end: load_16 reads nothing there)
            const __m256i a = load_16(c < C ? wm : 0, src + c * H * W + w0);
            const __m256i b = load_16(c + 1 < C ? wm : 0, src + (c + 1) * H * W + w0);
            r[i] = _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), pairs, _mm512_castsi256_si512(b));
          }
          transpose_16x16(r);
          for (int64_t t = 0; t < wn; ++t) _mm512_storeu_si512(d + (pw + w0 + t) * Cp + c0, r[t]);
        }
    } else {  // NCHW, fewer than 32 channels (row_mode's unpadded band): a value at a time
      const bf16* src = x + (n * C * H + h) * W;
      for (int64_t c0 = 0; c0 < Cp; c0 += kChan) {
        const int64_t cn = std::min(kChan, C - c0);
        for (int64_t ww = 0; ww < wend; ++ww) {
          bf16* o = d + (pw + ww) * Cp + c0;
          for (int64_t c = 0; c < cn; ++c) o[c] = src[(c0 + c) * H * W + ww];
          for (int64_t c = std::max<int64_t>(cn, 0); c < std::min(kChan, Cp - c0); ++c) o[c] = 0;
        }
      }
    }
    if (nonfinite) bad[nh] = run_has_nonfinite(d, Wp * Cp);
  });
  if (nonfinite) *nonfinite = any_set(bad);
  return band_t;
}

// x channels_last (N, G Cg, H, W) as G zero-padded bands [g][n][Hp][Wp][Cg], a group's channels
// of a pixel side by side (row_mode's unpadded band, one per group: grouped_rows, Cg = 16),
// followed by `slack` zero elements. With nonfinite, *nonfinite tells whether x holds an infinity
// or a NaN, each image row tested once copied (still in L1): a pass over x of its own before
// the copy was 6% of the samples of ResNeXt's 32 groups of 16 @14 3x3 channels_last forward.
at::Tensor group_bands(const bf16* x, int64_t N, int64_t G, int64_t Cg, int64_t H, int64_t W, int64_t ph, int64_t pw,
                       int64_t Hp, int64_t Wp, int64_t slack, bool* nonfinite) {
  TORCH_INTERNAL_ASSERT(Cg == kTile, "group_bands copies groups of 16 channels");
  const int64_t row = Wp * Cg, band = N * Hp * row, C = G * Cg;
  at::Tensor band_t = bf16_buffer(G * band + slack);
  bf16* xb = bf16_data(band_t);
  std::memset(xb + G * band, 0, sizeof(bf16) * slack);
  std::vector<uint8_t> bad(nonfinite ? static_cast<size_t>(N * Hp) : 0, 0);
  for_each_task(N * Hp, G * band * 16, [&](int64_t nh) {
    const int64_t n = nh / Hp, hp = nh % Hp, h = hp - ph;
    bf16* d = xb + nh * row;  // group 0's row; group g's is g band further
    const int64_t wend = (h < 0 || h >= H) ? 0 : std::max<int64_t>(0, std::min(W, Wp - pw));
    for (int64_t g = 0; g < G; ++g) {
      std::memset(d + g * band, 0, sizeof(bf16) * std::min(pw, Wp) * Cg);
      if (pw + wend < Wp) std::memset(d + g * band + (pw + wend) * Cg, 0, sizeof(bf16) * (Wp - pw - wend) * Cg);
    }
    // a group's row at a time (the image row of x stays in L1): a pixel's groups in turn wrote G
    // streams a band apart, which share L1's sets (twice as slow for 32 groups)
    const bf16* src = x + (n * H + h) * W * C;
    for (int64_t g = 0; g < G; ++g) {
      bf16* o = d + g * band + pw * Cg;
      const bf16* s = src + g * Cg;
      for (int64_t ww = 0; ww < wend; ++ww)  // a pixel's 16 channels: one 32-byte move
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + ww * Cg), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + ww * C)));
    }
    if (nonfinite) bad[nh] = run_has_nonfinite(src, wend * C);
  });
  if (nonfinite) *nonfinite = any_set(bad);
  return band_t;
}

}  // namespace amx

#pragma GCC pop_options

namespace {

using namespace amx;

// The farthest element of the filter from w, above it (sign 1) or below (-1: a turned-round filter).
int64_t filter_reach(const Conv2dParams& p, int64_t sign) {
  int64_t r = 0;
  for (const int64_t e : {(p.K - 1) * p.ws_k, (p.C - 1) * p.ws_c, (p.R - 1) * p.ws_r, (p.S - 1) * p.ws_s})
    r += std::max<int64_t>(0, sign * e);
  return r;
}

// Worth it where the tiles are mostly full: >= 32 channels in and out. Forward also takes fewer
// input channels (the RGB stems) with the taps of a filter row as the reduction (row_mode), and
// 16 filters (half its B tiles zero, still 1.2-3x the float32 kernels on converted copies: CIFAR's
// 16->16 3x3 @32 channels_last 0.133 -> 0.057 ms, 5x5 0.287 -> 0.090).
// The filter's elements are gathered by 32-bit offsets (pack_tiles): it must span < 2^31 of them.
bool supports_any_c(const Conv2dParams& p, at::ScalarType dtype, int64_t min_k = kTile) {  // forward's, but C's
  return dtype == at::kBFloat16 && p.groups == 1 && p.K >= min_k && (is_nchw(p) || is_nhwc(p)) &&
         (weight_is_kcrs(p) || weight_is_krsc(p)) && filter_reach(p, 1) + filter_reach(p, -1) < (int64_t(1) << 31) - 1 &&
         amx_bf16_available();
}
// NCHW also wants >= 16 values a filter row: direct_nchw (float32) ran CIFAR's 3->32 3x3 in
// half amx_bf16's time (0.145 vs 0.29 ms, batch 8), the 7x7/2 stem in twice it (5.5 vs 2.5).
bool row_mode(const Conv2dParams& p) { return p.C < kChan && p.dil_w == 1 && (is_nhwc(p) || p.S * p.C >= 16); }
// Backward-weight's groups of 4, 8 or 16 channels and as many filters, 32 / Cg groups a block of
// 32 channels (see backward_weight's diag)
bool diagonal_groups(const Conv2dParams& p) {
  const int64_t Cg = p.Cg();
  return p.groups > 1 && Cg == p.Kg() && Cg >= 4 && kTile % Cg == 0 && p.groups % (kChan / Cg) == 0;
}
// Groups of 16 channels and 16-32 filters, channels_last, filter rows of 2+ taps (ResNeXt's 32
// groups of 16): row_mode on each group's own band (group_bands), two taps a step, where a tap a
// step on the band of all channels (grouped_in_place) makes half of the products real: a 3x3
// filter takes 6 steps a pixel, 3/4 of them real, not 9 with 1/2. 32 groups of 16 @14, batch 4,
// channels_last (benchmarks/ab.py): forward 1.29x faster, backward-input 1.27x. Not for groups
// of 8 (0.75x against small_groups' 32-channel blocks: a group's 8 filters fill half a C tile,
// and every group pays its own stores).
bool grouped_rows(const Conv2dParams& p) {
  return p.groups > 1 && is_nhwc(p) && p.dil_w == 1 && p.S > 1 && p.Cg() == kTile && p.Kg() >= kTile && p.Kg() <= 2 * kTile;
}
// A channels_last 1x1 stride-1 unpadded input is forward's band as it lies, pixels C values apart
// (all channels of the groups; one group: any C, the A rows of its last block of 32 then reading
// into the next pixel's values, met by zero rows of B: such data must be finite, see reads_past).
// MobileNet's 1x1 layers, channels_last, batch 4 (benchmarks/ab.py): 144->24 @56 forward 1.84x
// faster (the band copy, 144 channels padded to 160, was most of it; torch 0.11 ms, ours 0.28
// before), 24->144 backward-input 1.90x, 32->16 @112 1.26x, 16->96 @112 forward 1.08x.
// Strided too (amx_bf16_strided_1x1_in_place).
bool in_place_1x1(const Conv2dParams& p) {
  if (p.stride_h > 1 || p.stride_w > 1) return amx_bf16_strided_1x1_in_place(p, is_nhwc(p));
  return is_nhwc(p) && p.R == 1 && p.S == 1 && p.pad_h == 0 && p.pad_w == 0 && (p.groups == 1 || p.C % kChan == 0);
}
// Whether forward's A rows meet values of the next channels or pixels with zero rows of B.
bool reads_past(const Conv2dParams& p) {
  return p.groups == 1 ? row_mode(p) || (in_place_1x1(p) && p.C % kChan != 0) : p.Cg() % kChan != 0;
}
bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return (p.C >= kChan || row_mode(p)) && supports_any_c(p, dtype);
}

// Backward-input at stride 1 is the forward convolution of dy (K channels) into dx (C channels)
// with the filter turned round, w'[c][k][r][s] = w[k][c][R-1-r][S-1-s], and the padding
// dil*(R-1) - pad (at least 0: every padding nn.Conv2d takes with a stride-1 "same" or smaller);
// strided layers (and larger paddings) run it phase by phase (backward_input_phases).
// (turns_round, turned_problem: kernel_util.h)
Conv2dParams turned(const Conv2dParams& p) {  // the forward-form problem: dy (N, K, P, Q) -> dx (N, C, H, W)
  Conv2dParams f = turned_problem(p);
  f.xs_n = p.ys_n, f.xs_c = p.ys_k, f.xs_h = p.ys_p, f.xs_w = p.ys_q;
  f.ys_n = p.xs_n, f.ys_k = p.xs_c, f.ys_p = p.xs_h, f.ys_q = p.xs_w;
  f.ws_k = p.ws_c, f.ws_c = p.ws_k, f.ws_r = -p.ws_r, f.ws_s = -p.ws_s;  // turned round
  return f;
}
// dx's C channels are the forward's filters (>= 16); dy's K its channels: >= 32, or fewer in
// row_mode where the filter is turned round (the phases' steps are one tap each)
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  if (p.C < kTile || !supports_any_c(p, dtype)) return false;
  return p.K >= kChan || (turns_round(p) && row_mode(turned(p)));
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16,f16c")

// A step of forward's reduction: A at a_off from the tile row's pixel, B tile (r, s0, c0).
struct Step { int64_t a_off, r, s0, c0; };

// The B tiles of forward's steps (one tap, 32 channels each; not row_mode) for 16-filter blocks
// kb < nkb: d[kb][st][i][j][e] = w[k = 16 kb + j][c = c0 + 2i + e][r][s], 0 past K and C. A row of
// a tile is 16 (channel pair) words, one per filter, read without a loop per element (that loop
// cost 1.7 ms a call for 512->512 3x3, three times the convolution, paid on every training step):
// - filters adjacent in memory (turned round channels_last, or a 1x1 filter: backward-input):
//   16 values of the even and of the odd channel, interleaved;
// - a channel pair adjacent (channels_last, 1x1): a 16-lane gather of 32-bit words;
// - else (KCRS) two gathers, whose words' low halves are the even and the odd channel's values.
// 0.3 ms for 512->512 3x3 (2 threads). row_cg > 0 (even): row_mode's steps, value v of a step's
// A row being channel v % row_cg of tap s0 + v / row_cg (a pair never straddles two taps).
void pack_tiles(const Conv2dParams& p, const bf16* w, const Step* steps, int64_t nst, int64_t nkb, bf16* d,
                int64_t row_cg = 0) {
  const int64_t tile_elems = kTile * kChan;
  // The element of w with the highest address is read by its word one element lower (and the
  // high half taken): a word at it would reach past the tensor's end.
  const int64_t hi = filter_reach(p, 1);
  const __m512i lanes = lane_steps(1);
  const __m512i vhi = _mm512_set1_epi32(static_cast<int>(hi)), low16 = _mm512_set1_epi32(0xFFFF);
  const __m512i pairs = interleave_16();
  auto word = [&](__mmask16 m, __m512i idx) {  // the 16-bit values at idx, in the low halves
    const __mmask16 last = _mm512_cmpeq_epi32_mask(idx, vhi);
    idx = _mm512_mask_sub_epi32(idx, last, idx, _mm512_set1_epi32(1));
    const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, w, 2);
    // (the maskz forms: no undefined lanes for GCC's warnings)
    return _mm512_and_si512(_mm512_maskz_srlv_epi32(0xFFFF, g, _mm512_maskz_set1_epi32(last, 16)), low16);
  };
  // A task: 4 blocks of 16 filters; channel blocks outer, taps and then the filter blocks inner, so
  // that the lines of the filter a tile reads are read whole while they are in L1 (in KCRS order
  // a block's taps lie together). Filter blocks outer took 2.6x as long: KCRS filters of 512
  // channels lie 9 KiB apart, whose lines fall into 1/16 of L2's sets.
  const int64_t ncb = ceil_div(p.C, kChan), nrs = nst / ncb;
  constexpr int64_t kGroup = 4;
  for_each_task(ceil_div(nkb, kGroup), kGroup * nst * tile_elems * 4, [&](int64_t g) {
    for (int64_t st = 0; st < nst; ++st) {
      const Step& step = steps[st % nrs * ncb + st / nrs];  // channel block st / nrs, tap st % nrs
      const int64_t base = step.r * p.ws_r + step.s0 * p.ws_s;
      for (int64_t kb = g * kGroup; kb < std::min(nkb, (g + 1) * kGroup); ++kb) {
        const __m512i kj = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int>(kb * kTile)));
        const __mmask16 kmask = _mm512_cmplt_epi32_mask(kj, _mm512_set1_epi32(static_cast<int>(p.K)));
        const __m512i kidx = _mm512_mullo_epi32(kj, _mm512_set1_epi32(static_cast<int>(p.ws_k)));
        bf16* t = d + (kb * nst + (&step - steps)) * tile_elems;
        if (kb * kTile >= p.K) {  // a block past the filters (16 filters: a pair's second block)
          std::memset(t, 0, sizeof(bf16) * tile_elems);
          continue;
        }
        for (int64_t i = 0; i < kTile; ++i) {
          int64_t c = step.c0 + 2 * i, off = base + c * p.ws_c;
          bool real = true;
          if (row_cg) {
            const int64_t s = step.s0 + 2 * i / row_cg;
            c = 2 * i % row_cg, off = step.r * p.ws_r + s * p.ws_s + c * p.ws_c;
            real = s < p.S && 2 * i < kChan / row_cg * row_cg;
          }
          const __mmask16 me = real && c < p.C ? kmask : 0, mo = real && c + 1 < p.C ? kmask : 0;
          __m512i row;
          if (p.ws_k == 1) {
            const bf16* src = w + kb * kTile + off;
            row = _mm512_permutex2var_epi16(_mm512_castsi256_si512(load_16(me, src)), pairs,
                                            _mm512_castsi256_si512(load_16(mo, src + p.ws_c)));
          } else {
            const __m512i ie = _mm512_add_epi32(kidx, _mm512_set1_epi32(static_cast<int>(off)));
            if (p.ws_c == 1 && mo == me) {
              row = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), me, ie, w, 2);
            } else {
              const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(static_cast<int>(p.ws_c)));
              row = _mm512_or_si512(word(me, ie), _mm512_maskz_slli_epi32(0xFFFF, word(mo, io), 16));
            }
          }
          _mm512_storeu_si512(t + i * 2 * kTile, row);
        }
      }
    }
  });
}

// What run_tiles computes: the output grid's P x Q pixels of N images, each the sum over the
// steps of A rows read from the band (a step's a_off from the grid pixel's band pixel) times the
// packed B tiles [16-filter block][step] (zero steps: zeros), plus the bias; pixel (p, q) of the
// grid is pixel (p oy + oa, q ox + ob) of the Ho x Wo output planes (a phase of backward-input).
struct TileJob {
  const bf16* xb = nullptr;              // the band: N images of Hb x Wb pixels of Cb channels
  int64_t N = 0, Hb = 0, Wb = 0, Cb = 0;
  int64_t sh = 1, sw = 1;                // the grid's stride in the band (1, 1: a flat grid)
  int64_t P = 0, Q = 0;
  const Step* steps = nullptr;
  int64_t nst = 0;
  const bf16* wp = nullptr;
  int64_t K = 0;                         // output channels (B tiles for round_up(K, 32))
  const bf16* bias = nullptr;
  bf16* y = nullptr;
  bool nhwc = false;
  int64_t Ho = 0, Wo = 0, oy = 1, ox = 1, oa = 0, ob = 0;
  const int64_t* out_at = nullptr;       // else: grid pixel (0, q) is output pixel out_at[q] (image n at n Ho Wo)
  int64_t macs = 0;                      // for the thread pool's grain
  const bf16* tail = nullptr;            // tiles from band pixel tail_from on read a copy instead,
  int64_t tail_from = 0;                 // zeros after the band's end (a band read in place)
  // Groups (1: none): group g reads the band's channels from g a_group on, B tiles from
  // wp + g wp_group, writes output channels g K on of ldk (ldk 0: K) and its bias from there.
  int64_t groups = 1, a_group = 0, wp_group = 0, ldk = 0;
  // A band read in place whose A rows read past a pixel's channels (reads_past): each task tests
  // for infinities and NaNs, sets *nonfinite where it finds one (the tasks not yet begun then
  // stop), and the caller computes the whole output again on float32 copies. It tests the band
  // pixels of its grid pixels before its tiles (bringing them into cache), or, with test_sums
  // (channels_last outputs), the float32 sums it stores: a value read past a pixel's channels
  // meets zero rows of B in every C column of the pixel's tile row, so an infinity or a NaN there
  // (0 x inf = NaN) makes every sum of the pixel NaN, and finite sums mean the values read past
  // were finite. Sums where there are fewer of them than values read (forward() sets it):
  // MobileNetV2's 144->24 @56 channels_last forward spent ~25% of its time testing its band
  // pixels (a pass over x of its own, the tiles then reading x again from cache; 28% of the
  // samples, perf record), 1.23-1.25x faster testing the sums; 16->96 @112 and 24->144 @56 ran
  // 0.94-0.96x that way (benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass forward
  // --dtype bfloat16, batch 8).
  std::atomic<bool>* nonfinite = nullptr;
  bool test_sums = false;
  // y and the bias float16, not bfloat16 (amx_fp16: the sums rounded to float16 as they are stored)
  bool half = false;
};

// 32 float32 sums (lo's 16, then hi's) rounded to 16-bit values of the output's type, to nearest even
template <bool kHalf>
inline __m512i round_32(__m512 hi, __m512 lo) {
  if (!kHalf) return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  return _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(to_f16(lo)), to_f16(hi), 1);
}
template <bool kHalf>
inline __m256i round_16(__m512 v) {
  return kHalf ? to_f16(v) : to_bf16(v);
}
// a 16-bit value of the output's type as float32
template <bool kHalf>
inline float widen(uint16_t v) {
  if (kHalf) return _cvtsh_ss(v);
  const uint32_t u = uint32_t(v) << 16;  // (bfloat16 = float32's top half)
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool kHalf>
void run_tiles_as(const TileJob& jb) {
  const int64_t N = jb.N, Hp = jb.Hb, Wp = jb.Wb, Cb = jb.Cb, sh = jb.sh, sw = jb.sw, P = jb.P, Q = jb.Q, K = jb.K;
  const int64_t nst = jb.nst, tile_elems = kTile * kChan, nkp = ceil_div(K, 2 * kTile);
  const Step* steps = jb.steps;
  const bf16* xb = jb.xb;
  const bf16* wp = jb.wp;
  const bf16* bias = jb.bias;
  bf16* y = jb.y;
  const int64_t plane = jb.Ho * jb.Wo, ldk = jb.ldk ? jb.ldk : K;
  const int64_t oy = jb.oy, ox = jb.ox, oa = jb.oa, ob = jb.ob, Wo = jb.Wo;
  const int64_t* const out_at = jb.out_at;

  // the output grid: stride 1 -> rows of Wp (tiles run on across rows); else rows of Wg, one run
  // of tiles each
  const bool flat = sh == 1 && sw == 1;
  const int64_t Wg = flat ? Wp : round_up(Q, kTile);
  const int64_t ntile = flat ? ceil_div(P * Wp, kTile) : P * (Wg / kTile), npair = ceil_div(ntile, int64_t(2));
  // grid pixel m is output pixel m (channels_last: a 1x1 input read in place, its rows the
  // output's): a task's row offsets without the grid's rows and columns. Those were 15% of the
  // samples of MobileNetV2's 32->16 1x1 @112 (perf annotate; the job's fields read again a row,
  // the stores to the offsets possibly aliasing them): with them, and the fields in locals,
  // batch 8 channels_last forward (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc
  // --pass forward --dtype bfloat16 --rounds 3) 32->16 @112 1.27-1.40x, 144->24 @56 1.25x,
  // 24->144 @56 1.19-1.21x, 16->96 @112 1.13x, 64->256 @56 1.05-1.08x; 3x3 layers level.
  const bool direct = jb.nhwc && flat && Wp == Q && Wo == Q && oy == 1 && ox == 1 && oa == 0 && ob == 0 && !out_at;
  const int64_t a_stride = sw * Cb * int64_t(sizeof(bf16));
  auto tile_base = [&](int64_t n, int64_t t) {  // the band pixel of row 0 of tile t at tap (0, 0)
    if (flat) return n * Hp * Wp + t * kTile;
    const int64_t pp = t / (Wg / kTile), q0 = t % (Wg / kTile) * kTile;
    return n * Hp * Wp + pp * sh * Wp + q0 * sw;
  };

  auto a_at = [&](int64_t px) {  // a tile's first A row
    return jb.tail && px >= jb.tail_from ? jb.tail + (px - jb.tail_from) * Cb : xb + px * Cb;
  };

  // Tasks: (image, block of up to 4 tile pairs, block of filter pairs whose B tiles fit in 512 KiB);
  // inside, filter pairs outer and pixel pairs inner: a filter pair's B tiles are read from L1/L2
  // by every pixel pair of the block, the block's A rows from L2 by every filter pair. But a band
  // read in place (channels_last 1x1) whose task's B tiles take 64 KiB or less: pixel pairs outer
  // (`unit` of them: one, two for step_4x1), every filter pair on a pair's A rows while they are
  // in L1 (A rows 2C bytes apart read from L2 or memory ran much slower than from L1, fiftieth
  // round); B stays in L1/L2. Batch 8, 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so
  // SHAPE --layout nhwc --pass forward --dtype bfloat16 --rounds 5): 256->64 @56 1.11-1.12x,
  // 256->128 @56 1.07x, 64->256 @56 1.04x; with more B (128->512 and 512->128 @28: 128 KiB,
  // 1024->256 @14) level to 0.95x, with a band copied (3x3, strided) 0.89-1.00x, and with one step
  // a block (32 channels: a pair's A rows are 2 KiB) level to 0.90x (32->192 @28).
  const int64_t b_pair = std::max<int64_t>(1, 2 * nst * tile_elems * int64_t(sizeof(bf16)));  // B bytes of a filter pair
  const int64_t kpb = std::max<int64_t>(1, std::min(nkp, (int64_t(512) << 10) / b_pair)), nkpb = ceil_div(nkp, kpb);
  constexpr int64_t kPairs = 4;
  // pairs a task: 4, or fewer where that leaves under 4 tasks a thread (a flat grid of all the
  // images in place, or an image of few pixels)
  const int64_t ppb = std::clamp<int64_t>(N * npair * nkpb * jb.groups / (4 * pool_threads()), 1, kPairs);
  const int64_t nmb = ceil_div(npair, ppb);
  // Groups: a task takes a block of gpt groups (the offsets below are the same for every group;
  // worked out once a task: ResNeXt's 32 groups of 16 @14 spent half the time on a task's overheads
  // with a group a task), as many as leave 8 tasks a thread.
  const int64_t per_group_tasks = N * nmb * nkpb;
  const int64_t gpt = std::max<int64_t>(1, std::min(jb.groups, jb.groups * per_group_tasks / (8 * pool_threads())));
  // 16 filters or fewer: two pixel pairs at once on their B tile (step_4x1; CIFAR's 16->16 3x3
  // channels_last forward 1.21x faster, batch 8), but for groups read in place at 16-channel
  // offsets, whose A rows straddle cache lines (32 groups of 16 @14 NCHW: 0.93x)
  const bool four = jb.groups == 1 || jb.a_group % kChan == 0;
  const bool pair_outer = jb.tail != nullptr && nst >= 2 && nst * kChan <= Cb && kpb * b_pair <= (int64_t(64) << 10);
  const int64_t unit = !pair_outer ? kPairs : four && K % (2 * kTile) != 0 && K % (2 * kTile) <= kTile ? 2 : 1;
  const int64_t ngb = ceil_div(jb.groups, gpt);
  // Filter pairs outer whose B tiles take 37-72 KiB (19-36 steps: 3x3 on 96-128 channels, 5x5 on
  // 64): a filter pair's steps run in two halves, each over the task's pixel pairs, each pair's
  // sums stored to acc after the first half and loaded for the second (float32 stored and loaded
  // as they are: the same sums, the same bits). A half's B tiles then stay in L1 for the 4 pixel
  // pairs, where all of them came from L2 for each. Batch 8, old/new (python benchmarks/ab.py
  // OLD.so NEW.so SHAPE --layout L --pass P --dtype bfloat16 --rounds 3): 3x3 128@28 channels_last
  // forward 1.13-1.18x, backward-input 1.13x, NCHW 1.08-1.11x; 128@14 1.08x, 96@28 1.02-1.08x, 5x5
  // 32@32 1.05x, batch 1 128@56 1.10x, 128@28 1.05-1.10x; strided 128@56/2 level. In more parts
  // (B over 72 KiB) each part's stores and loads of the sums cost more than L1 gave: 256@14 0.86-0.88x
  // in four quarters, 0.86x in two halves of 72 KiB, 512@7 0.79x in eighths.
  const int64_t half_steps = !pair_outer && nst > 18 && nst <= 36 ? ceil_div(nst, int64_t(2)) : nst;
  for_each_task(ngb * per_group_tasks, jb.macs, [&](int64_t task) {
    const int64_t gb = task / per_group_tasks, kb_blk = task / (N * nmb) % nkpb, n = task / nmb % N, mb = task % nmb;
    const int64_t g0 = gb * gpt, g1 = std::min(jb.groups, g0 + gpt);
    const int64_t mp0 = mb * ppb, mp1 = std::min(npair, (mb + 1) * ppb);
    if (jb.nonfinite && !jb.test_sums) {  // (a flat grid on a band read in place: grid pixel m is band pixel m)
      const int64_t m0 = 2 * kTile * mp0, m1 = std::min(Hp * Wp, 2 * kTile * mp1);
      if (kb_blk == 0 && m1 > m0 && run_has_nonfinite(xb + (n * Hp * Wp + m0) * Cb, (m1 - m0) * Cb))
        jb.nonfinite->store(true, std::memory_order_relaxed);
    }
    if (jb.nonfinite && jb.nonfinite->load(std::memory_order_relaxed)) return;
    const bool test_sums = jb.nonfinite && jb.test_sums;
    __mmask16 bad = 0;  // lanes of the sums stored that were an infinity or a NaN (test_sums)
    configure_tiles();
    alignas(64) float cbuf[2 * kTile][2 * kTile];  // [pixel][filter]
    alignas(64) float acc[kPairs][2 * kTile][2 * kTile];  // the sums of the pixel pairs between halves
    alignas(64) float bv[2 * kTile];
    const __m512i col = lane_steps(2 * kTile);     // a filter's column of cbuf
    // each pixel pair's rows' output pixels in their plane (-1 where a row has none), and for NCHW
    // the runs they are stored by: a filter's 32 pixels, rounded together, are stored by runs of
    // pixels ox apart in the plane (one per output row the 32 grid pixels touch), each a masked
    // store of the 32 values, moved (when ox > 1, spread ox apart) so that the run's values land
    // on its lanes. Worked out once a task, not once a filter block (1x1 layers, 4 steps a pixel
    // pair, spent a third of their time on it).
    struct Piece { int64_t at; __m512i idx; __mmask32 lanes; };
    int64_t off[kPairs][2 * kTile];
    Piece pieces[kPairs][2 * kTile];
    int64_t npiece[kPairs] = {};
    for (int64_t mp = mp0; mp < mp1; ++mp) {
      int64_t* o = off[mp - mp0];
      if (direct) {  // grid pixel m is output pixel m
        for (int64_t i = 0; i < 2 * kTile; ++i) o[i] = 2 * kTile * mp + i < P * Q ? 2 * kTile * mp + i : -1;
        continue;
      }
      // the rows' grid pixels (pp, q), a division a tile, then stepped along (two divisions a row
      // were most of a 1x1 layer with 32 channels' time: 4 products a pixel pair); each tile's
      // rows in a loop of their own (one loop of the pair's 32 rows with the tile's and the grid's
      // cases inside was 15% of the samples of MobileNetV2's 3->32 stem, perf annotate). Batch 8
      // channels_last forward, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc
      // --pass forward --dtype bfloat16 --rounds 3): MobileNetV2's 3->32 3x3/2 stem 1.17-1.19x,
      // ResNet's 7x7/2 stem 1.12-1.14x, CIFAR's 16->16 3x3 1.07x; 128@28 and 128@56/2 level.
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t t = 2 * mp + h;
        int64_t* ot = o + h * kTile;
        if (t >= ntile) {
          for (int64_t i = 0; i < kTile; ++i) ot[i] = -1;
        } else if (flat) {  // grid pixel m = 16 t + i, rows of Wp
          int64_t pp = t * kTile / Wp, q = t * kTile % Wp;
          for (int64_t i = 0; i < kTile; ++i) {
            ot[i] = pp < P && q < Q ? (out_at ? out_at[q] : (pp * oy + oa) * Wo + q * ox + ob) : -1;
            if (++q == Wp) q = 0, ++pp;
          }
        } else {  // tile t: a row of Wg / 16 tiles
          const int64_t pp = t / (Wg / kTile), q0 = t % (Wg / kTile) * kTile, at = (pp * oy + oa) * Wo + ob;
          const int64_t nq = pp < P ? std::clamp<int64_t>(Q - q0, 0, kTile) : 0;  // rows with an output
          for (int64_t i = 0; i < nq; ++i) ot[i] = out_at ? out_at[q0 + i] : at + (q0 + i) * ox;
          for (int64_t i = nq; i < kTile; ++i) ot[i] = -1;
        }
      }
      if (jb.nhwc) continue;
      for (int64_t i = 0; i < 2 * kTile;) {
        if (o[i] < 0) {
          ++i;
          continue;
        }
        int64_t len = 1;
        while (i + len < 2 * kTile && len * jb.ox < 2 * kTile && o[i + len] == o[i] + len * jb.ox) ++len;
        alignas(64) uint16_t idx[2 * kTile] = {};
        __mmask32 lanes = 0;
        for (int64_t l = 0; l < len; ++l) idx[l * jb.ox] = static_cast<uint16_t>(i + l), lanes |= __mmask32(1) << (l * jb.ox);
        pieces[mp - mp0][npiece[mp - mp0]++] = {o[i], _mm512_load_si512(idx), lanes};
        i += len;
      }
    }
    for (int64_t g = g0; g < g1; ++g) {
      const bf16* gwp = wp + g * jb.wp_group;
      const bf16* gbias = bias ? bias + g * K : nullptr;
      bf16* gy = y + g * K * (jb.nhwc ? 1 : plane);
      for (int64_t mq = mp0; mq < mp1; mq += unit) {
        const int64_t mq1 = std::min(mp1, mq + unit);
        for (int64_t kp = kb_blk * kpb; kp < std::min(nkp, (kb_blk + 1) * kpb); ++kp) {
          const int64_t k0 = kp * 2 * kTile, kn = std::min(2 * kTile, K - k0);
          // bias as float32 (bfloat16 = the top half). Not one loop with a test of gbias inside:
          // GCC made it a masked load from gbias, and a masked load from a null pointer (no bias)
          // costs a fault-suppression assist of ~100+ cycles even with every lane off: 4% of
          // channels_last 256->128 1x1 @56's time (perf annotate), once a task's filter pair (with
          // pixel pairs outer, once a pixel pair's).
          if (gbias) {
            for (int64_t j = 0; j < 2 * kTile; ++j) bv[j] = j < kn ? widen<kHalf>(gbias[k0 + j]) : 0.f;
          } else {
            std::memset(bv, 0, sizeof(bv));
          }
          const bf16* b0 = gwp + (2 * kp) * nst * tile_elems;
          const bf16* b1 = b0 + nst * tile_elems;
          const __mmask16 m0 = first_lanes(kn), m1 = first_lanes(kn - kTile);
          // pixel pair mp's sums, cbuf's columns from c0 (16 filters a block; the second block
          // unless one_block): bias added, rounded, stored
          auto emit = [&](int64_t mp, int64_t c0, bool one_block) {
            const int64_t* o = off[mp - mp0];
            if (jb.nhwc && !one_block && kn == 2 * kTile) {
              // 32 filters: a pixel's two rows of sums rounded into one vector, one 64-byte store
              // (not two masked 32-byte ones)
              const __m512 blo = _mm512_load_ps(bv), bhi = _mm512_load_ps(bv + kTile);
              bf16* const out = gy + n * plane * ldk + k0;
              const int64_t ld = ldk;  // (a local: the stores could alias the captured one)
              for (int64_t i = 0; i < 2 * kTile; ++i) {
                if (o[i] < 0) continue;
                const __m512 lo = _mm512_add_ps(_mm512_load_ps(&cbuf[i][0]), blo);
                const __m512 hi = _mm512_add_ps(_mm512_load_ps(&cbuf[i][kTile]), bhi);
                if (test_sums) bad |= nonfinite_lanes(0xFFFF, lo) | nonfinite_lanes(0xFFFF, hi);
                _mm512_storeu_si512(out + o[i] * ld, round_32<kHalf>(hi, lo));
              }
              return;
            }
            if (direct && !one_block && kn < 2 * kTile && ldk == kn && o[2 * kTile - 1] == o[0] + 2 * kTile - 1) {
              // 17-31 filters in all, 32 pixels one after another in the output: their rows
              // rounded into a staging block as they lie there (each row's 32-value store
              // overwritten past its kn values by the next row's), then stored as whole cache
              // lines (32 kn values: kn lines of 64 bytes), where 24 filters' rows shared lines.
              // Batch 8 channels_last (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc
              // --pass P --dtype bfloat16 --rounds 3): forward 96->24 @56 1.18-1.20x, 144->24
              // 1.06-1.09x, 32->24 1.40x; backward-input 24<-144 @56 1.05x.
              alignas(64) bf16 stage[2 * kTile * (2 * kTile + 1)];
              const __m512 blo = _mm512_load_ps(bv), bhi = _mm512_load_ps(bv + kTile);
              for (int64_t i = 0; i < 2 * kTile; ++i) {
                const __m512 lo = _mm512_add_ps(_mm512_load_ps(&cbuf[i][0]), blo);
                const __m512 hi = _mm512_add_ps(_mm512_load_ps(&cbuf[i][kTile]), bhi);
                if (test_sums) bad |= nonfinite_lanes(m0, lo) | nonfinite_lanes(m1, hi);
                _mm512_storeu_si512(stage + i * kn, round_32<kHalf>(hi, lo));
              }
              bf16* const out = gy + (n * plane + o[0]) * kn + k0;
              for (int64_t l = 0; l < kn; ++l) _mm512_storeu_si512(out + l * kChan, _mm512_load_si512(stage + l * kChan));
              return;
            }
            if (jb.nhwc && kn == kTile && ldk == kTile) {
              // 16 filters in all: two pixels' sums side by side in the output, one 64-byte store
              // where they are adjacent there (a whole cache line, where two 32-byte stores wrote
              // halves). Batch 8 channels_last forward, old/new (python benchmarks/ab.py OLD.so
              // NEW.so SHAPE --layout nhwc --pass forward --dtype bfloat16 --rounds 3): 32->16 1x1
              // @112 1.30x, 64->16 @56 1.14x, 3x3 16->16 @32 1.17-1.19x, 32->16 @28 1.21-1.33x. (32-byte
              // stores unmasked where all lanes are stored, instead of masked: level, 24-80 filters.)
              const __m512 b = _mm512_load_ps(bv);
              bf16* const out = gy + n * plane * kTile + k0;
              for (int64_t i = 0; i < 2 * kTile; i += 2) {
                const __m512 lo = _mm512_add_ps(_mm512_load_ps(&cbuf[i][c0]), b);
                const __m512 hi = _mm512_add_ps(_mm512_load_ps(&cbuf[i + 1][c0]), b);
                if (o[i] >= 0 && o[i + 1] == o[i] + 1) {
                  if (test_sums) bad |= nonfinite_lanes(0xFFFF, lo) | nonfinite_lanes(0xFFFF, hi);
                  _mm512_storeu_si512(out + o[i] * kTile, round_32<kHalf>(hi, lo));
                  continue;
                }
                if (o[i] >= 0) {
                  if (test_sums) bad |= nonfinite_lanes(0xFFFF, lo);
                  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + o[i] * kTile), round_16<kHalf>(lo));
                }
                if (o[i + 1] >= 0) {
                  if (test_sums) bad |= nonfinite_lanes(0xFFFF, hi);
                  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + o[i + 1] * kTile), round_16<kHalf>(hi));
                }
              }
              return;
            }
            if (jb.nhwc) {
              for (int64_t i = 0; i < 2 * kTile; ++i) {
                if (o[i] < 0) continue;
                bf16* out = gy + (n * plane + o[i]) * ldk + k0;
                const __m512 lo = _mm512_add_ps(_mm512_load_ps(&cbuf[i][c0]), _mm512_load_ps(bv));
                if (test_sums) bad |= nonfinite_lanes(m0, lo);
                _mm256_mask_storeu_epi16(out, m0, round_16<kHalf>(lo));
                if (one_block) continue;
                const __m512 hi = _mm512_add_ps(_mm512_load_ps(&cbuf[i][kTile]), _mm512_load_ps(bv + kTile));
                if (test_sums) bad |= nonfinite_lanes(m1, hi);
                _mm256_mask_storeu_epi16(out + kTile, m1, round_16<kHalf>(hi));
              }
              return;
            }
            const Piece* pc = pieces[mp - mp0];
            for (int64_t j = 0; j < kn; ++j) {
              const __m512 b = _mm512_set1_ps(bv[j]);
              const int64_t cj = c0 + j;
              const __m256i lo = round_16<kHalf>(_mm512_add_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, col, &cbuf[0][cj], 4), b));
              const __m256i hi = round_16<kHalf>(_mm512_add_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, col, &cbuf[kTile][cj], 4), b));
              const __m512i v = _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(lo), hi, 1);
              bf16* out = gy + (n * ldk + k0 + j) * plane;
              for (int64_t u = 0; u < npiece[mp - mp0]; ++u)
                _mm512_mask_storeu_epi16(out + pc[u].at, pc[u].lanes, _mm512_permutexvar_epi16(pc[u].idx, v));
            }
          };
          const int64_t nhalf = kn > kTile && half_steps < nst ? 2 : 1;  // (2x2 steps only)
          for (int64_t h = 0; h < nhalf; ++h) {
            for (int64_t mp = mq; mp < mq1; ++mp) {
              const int64_t st0 = h * half_steps, st1 = std::min(nst, st0 + half_steps);
              if (h == 0) {
                zero_2x2();
              } else {
                load_2x2(acc[mp - mq]);
              }
              const int64_t t0 = 2 * mp;
              const bf16* a0 = a_at(tile_base(n, t0)) + g * jb.a_group;
              const bf16* a1 = a_at(tile_base(n, t0 + 1)) + g * jb.a_group;
              if (kn > kTile && pair_outer && kp + 1 == std::min(nkp, (kb_blk + 1) * kpb)) {
                // pixel pairs outer, the pair's last filter pair (its A rows in L1 by now): the next
                // pair's A rows prefetched into L2 as its steps run, in the order they lie (a demand
                // miss of a tile's 16 rows, 2C bytes apart, waits on each). Batch 8, old/new (python
                // benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P --dtype bfloat16 --rounds
                // 4): forward 144->24 @56 1.21x, 256->128 1.10-1.15x, 256->64 1.07-1.08x; backward-input
                // 64<-256 @56 1.09x; 64->256, 96->24, 64->64 @56 level. Into L1 (prefetcht0), or while
                // the first filter pair runs, slower (a standalone loop and the fiftieth round).
                const char* nx = reinterpret_cast<const char*>(a_at(tile_base(n, t0 + 2)) + g * jb.a_group);
                const int64_t lines = 2 * kTile * Cb * int64_t(sizeof(bf16)) / 64, per = ceil_div(lines, nst);
                for (int64_t st = 0; st < nst; ++st) {
                  for (int64_t l = st * per; l < std::min(lines, (st + 1) * per); ++l) _mm_prefetch(nx + l * 64, _MM_HINT_T2);
                  step_2x2(a0 + steps[st].a_off, a1 + steps[st].a_off, a_stride, b0 + st * tile_elems, b1 + st * tile_elems, 64);
                }
              } else if (kn > kTile) {
                for (int64_t st = st0; st < st1; ++st)
                  step_2x2(a0 + steps[st].a_off, a1 + steps[st].a_off, a_stride, b0 + st * tile_elems, b1 + st * tile_elems, 64);
                if (h + 1 < nhalf) {
                  store_2x2(acc[mp - mq]);
                  continue;
                }
              } else if (mp + 1 < mq1 && four) {  // 16 filters or fewer: two pixel pairs on the one B tile
                const bf16* a2 = a_at(tile_base(n, t0 + 2)) + g * jb.a_group;
                const bf16* a3 = a_at(tile_base(n, t0 + 3)) + g * jb.a_group;
                for (int64_t st = 0; st < nst; ++st) {
                  const int64_t ao = steps[st].a_off;
                  step_4x1(a0 + ao, a1 + ao, a2 + ao, a3 + ao, a_stride, b0 + st * tile_elems, 64);
                }
                store_2x2(cbuf);
                emit(mp, 0, true);
                emit(++mp, kTile, true);
                continue;
              } else {  // the pair's second filter block is all zeros (CIFAR's 16->16 5x5 forward 1.15x faster)
                for (int64_t st = 0; st < nst; ++st)
                  step_2x1(a0 + steps[st].a_off, a1 + steps[st].a_off, a_stride, b0 + st * tile_elems, 64);
              }
              store_2x2(cbuf);
              emit(mp, 0, kn <= kTile);
            }
          }
        }
      }
    }
    if (bad) jb.nonfinite->store(true, std::memory_order_relaxed);
  });
}

void run_tiles(const TileJob& jb) {
  if (jb.half) return run_tiles_as<true>(jb);
  run_tiles_as<false>(jb);
}

// A strided channels_last layer of whole blocks of 32 channels (one group) reads x in place for
// the output pixels all of whose taps fall inside x (rows p0..p1, columns q0..q1 of the output:
// interior_rect), and the rest (the edges) from their windows copied side by side
// (interior_and_edges): no band of the whole input. ResNet-50's 3x3/2 layers, batch 8,
// channels_last forward, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass
// forward --dtype bfloat16 --rounds 3): 128@56/2 1.14-1.22x (the band's copy was 16% of its
// samples, perf record), 64->128 @56/2 1.16-1.19x, 512@14/2 1.04-1.13x, batch 2 128@56/2 1.05x;
// outputs bit-identical (the same steps in the same order, zeros where the band had them).
// interior_rect: that rectangle, false where it is empty or the two grids would cost more than
// the band (below).
bool interior_rect(const Conv2dParams& p, int64_t& p0, int64_t& p1, int64_t& q0, int64_t& q1) {
  const int64_t N = p.N, P = p.P, Q = p.Q;
  if (!(p.groups == 1 && is_nhwc(p) && (p.stride_h > 1 || p.stride_w > 1) && p.C % kChan == 0 && p.R * p.S > 1))
    return false;
  auto span = [](int64_t n, int64_t out, int64_t stride, int64_t pad, int64_t reach, int64_t& lo, int64_t& hi) {
    lo = ceil_div(pad, stride);  // the first output whose first tap is inside
    hi = n - 1 + pad - reach < 0 ? 0 : std::min(out, (n - 1 + pad - reach) / stride + 1);  // past the last whose last is
  };
  span(p.H, P, p.stride_h, p.pad_h, (p.R - 1) * p.dil_h, p0, p1);
  span(p.W, Q, p.stride_w, p.pad_w, (p.S - 1) * p.dil_w, q0, q1);
  if (p1 <= p0 || q1 <= q0) return false;
  // pairs of tiles: a band's grid rows, the interior's, the edges' (one grid row of all the
  // images' edge pixels). Not where the edges fill less than a task's block of 4 pairs (each
  // task of the edges reads all its filter block's B tiles: batch 1 512@14/2 0.82x, 128@56/2
  // 0.89-0.95x), nor where the two grids take over 10% more pairs than the band's (256@28/2 at
  // batch 8: 63 for 56, 0.97-1.00x).
  const int64_t band_pairs = N * ceil_div(P * ceil_div(Q, kTile), int64_t(2));
  const int64_t in_pairs = N * ceil_div((p1 - p0) * ceil_div(q1 - q0, kTile), int64_t(2));
  const int64_t edge_pairs = ceil_div(N * (P * Q - (p1 - p0) * (q1 - q0)), 2 * kTile);
  return (edge_pairs == 0 || edge_pairs >= 4) && 10 * (in_pairs + edge_pairs) <= 11 * band_pairs;
}

// forward's job (its steps, filter, bias and output set) on x read in place for the interior
// rectangle and on the edge pixels' windows.
void interior_and_edges(const Conv2dParams& p, const bf16* x, int64_t p0, int64_t p1, int64_t q0, int64_t q1,
                        const std::vector<Step>& steps, TileJob job) {
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  // the interior: grid pixel (pp, q) at x pixel ((p0 + pp) sh - ph, (q0 + q) sw - pw); tiles
  // from pixel `from` of xb on (their rows and taps could reach past x's end) read a copy of
  // x's last pixels with zeros after them, up to a run of tiles past the last grid row
  const int64_t off = (p0 * sh - ph) * W + (q0 * sw - pw), total = N * H * W - off;
  const int64_t Pi = p1 - p0, Qi = q1 - q0, reach = (R - 1) * dh * W + (S - 1) * dw;
  const int64_t from = std::max<int64_t>(0, total - reach - 2 * kTile * sw);
  const int64_t end = std::max(total, (N - 1) * H * W + Pi * sh * W + round_up(Qi, kTile) * sw + reach + 2 * kTile);
  at::Tensor tail_t = bf16_buffer((end - from) * C);
  bf16* t = bf16_data(tail_t);
  std::memcpy(t, x + (off + from) * C, sizeof(bf16) * (total - from) * C);
  std::memset(t + (total - from) * C, 0, sizeof(bf16) * (end - total) * C);
  job.xb = x + off * C, job.tail = t, job.tail_from = from, job.a_group = C;
  job.N = N, job.Hb = H, job.Wb = W, job.Cb = C, job.sh = sh, job.sw = sw, job.P = Pi, job.Q = Qi;
  job.Ho = P, job.Wo = Q, job.oa = p0, job.ob = q0, job.macs = p.macs() / (P * Q) * Pi * Qi;
  run_tiles(job);
  // the edges: each edge pixel's R x S x C window (zeros where it meets the padding) copied
  // side by side, one grid row of the edge pixels of all the images, R S pixels apart (a
  // window's rows S pixels long: the steps' taps at (r S + s) C), stored at out_at
  std::vector<int64_t> out_at;  // image 0's edge pixels, then the other images' at their planes
  for (int64_t pp = 0; pp < P; ++pp) {
    const bool whole = pp < p0 || pp >= p1;  // a row above or below the interior
    for (int64_t q = 0; q < (whole ? Q : q0); ++q) out_at.push_back(pp * Q + q);
    if (!whole)
      for (int64_t q = q1; q < Q; ++q) out_at.push_back(pp * Q + q);
  }
  const int64_t E = static_cast<int64_t>(out_at.size()), NE = N * E, win = R * S * C;
  for (int64_t n = 1; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) out_at.push_back(n * P * Q + out_at[e]);
  if (NE == 0) return;
  at::Tensor win_t = bf16_buffer((NE + 4 * kTile) * win);
  bf16* wb = bf16_data(win_t);
  std::memset(wb + NE * win, 0, sizeof(bf16) * 4 * kTile * win);
  for_each_task(NE, NE * win * 4, [&](int64_t e) {
    const int64_t n = out_at[e] / (P * Q), pp = out_at[e] / Q % P, q = out_at[e] % Q;
    bf16* d = wb + e * win;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s, d += C) {
        const int64_t h = pp * sh + r * dh - ph, ww = q * sw + s * dw - pw;
        if (h < 0 || h >= H || ww < 0 || ww >= W) std::memset(d, 0, sizeof(bf16) * C);
        else std::memcpy(d, x + ((n * H + h) * W + ww) * C, sizeof(bf16) * C);
      }
  });
  std::vector<Step> wsteps = steps;
  for (Step& st : wsteps) st.a_off = (st.r * S + st.s0) * C + st.c0;
  TileJob edges = job;
  edges.steps = wsteps.data(), edges.xb = wb, edges.tail = nullptr, edges.tail_from = 0;
  edges.N = 1, edges.Hb = NE * R, edges.Wb = S, edges.sh = 1, edges.sw = R * S, edges.P = 1, edges.Q = NE;
  edges.oa = edges.ob = 0, edges.out_at = out_at.data(), edges.macs = p.macs() / (N * P * Q) * NE;
  run_tiles(edges);
}

// The filter a packing reads: w, or with split its split form (made into keep; *bad = 1 where
// it is not finite, else 0)
const bf16* split_source(const Split* split, at::Tensor& keep, float* bad, const bf16* w) {
  if (!split) return w;
  bool nonfinite = false;
  keep = split->filter(&nonfinite);
  *bad = nonfinite ? 1.f : 0.f;
  return bf16_data(keep) + split->w_offset;
}

// Groups (p.groups > 1, each of a multiple of 32 channels: grouped_in_place) run in one pass
// over a band of all the channels, group g's A rows at channel g Cg, its filters at w + g
// w_group (default Kg ws_k; the turned-round filter of backward-input passes its own).
// Returns false where its A rows would meet an infinity or a NaN in x with zeros (reads_past, or
// zeros_meet: the block-diagonal filter of small_groups): the caller then runs the problem on
// float32 copies. Found as the band is copied (padded_band, group_bands; nothing written then) or
// by the tasks of run_tiles for a band read in place (see TileJob::nonfinite; outputs written
// then): not a pass over x before every call (row_mode's RGB stems: 3-5% of their time;
// MobileNet's 144->24 1x1 channels_last read in place: ~20%).
// With split (amx_fp16.cpp), p is a float16 problem of three times the channels: the band is made
// from split->a (split_band), the filter from split->filter() as it is packed, y and the bias are
// float16; false where either operand holds an infinity or a NaN, or split->cached_only and the
// filter cache neither holds nor keeps the packed filter.
bool forward(const Conv2dParams& p, const bf16* x, const bf16* w, const bf16* bias, bf16* y, const at::Tensor* filter,
             int64_t w_group = -1, bool zeros_meet = false, const Split* split = nullptr) {
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t G = p.groups, Cg = p.Cg(), K = p.Kg();
  if (w_group < 0) w_group = K * p.ws_k;
  const bool nhwc = is_nhwc(p), check_finite = reads_past(p) || zeros_meet || split;
  const int64_t Hp = std::max(H + 2 * ph, (P - 1) * sh + (R - 1) * dh + 1);
  // At stride 1 the flat grid reads on across a band row's end, so a row's right padding can be
  // the next row's left padding: rows of W + pw pixels (W + 2 pw before), Wp - Q grid columns a
  // row computed and dropped, not 2 pw. 128@28 3x3: 812 grid pixels an image, not 840 (26 pairs
  // of tiles, not 27).
  const int64_t Wp = sh == 1 && sw == 1 ? std::max(W + pw, Q) : std::max(W + 2 * pw, (Q - 1) * sw + (S - 1) * dw + 1);
  const int64_t nkb = ceil_div(K, kTile), nkp = ceil_div(nkb, int64_t(2));

  // The reduction in steps of 32 values of one A row: with >= 32 channels, a tap and a block of 32
  // channels (the band's pixels padded to Cb = a multiple of 32 channels); with fewer (row_mode),
  // sc = 32 / C consecutive taps of a filter row, whose sc*C values lie side by side in a band
  // of unpadded pixels (Cb = C; the A row's last 32 - sc*C values belong to the next pixels and
  // meet zero rows of B). Step st: A at a_off[st] from the tile row's pixel, B tile (r, s0, c0).
  const bool grows = grouped_rows(p), rows = (G == 1 && row_mode(p)) || grows;
  const int64_t Cb = rows ? Cg : round_up(C, kChan), sc = rows ? kChan / Cg : 1, Cs = rows ? Cg : round_up(Cg, kChan);
  // A strided channels_last layer of whole 32-channel blocks: x read in place (interior_rect)
  int64_t p0 = 0, p1 = 0, q0 = 0, q1 = 0;
  const bool interior = !rows && !check_finite && interior_rect(p, p0, p1, q0, q1);
  const int64_t Wa = interior ? W : Wp;  // the row of pixels A rows step along: x's or the band's
  std::vector<Step> steps;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; s += sc) {
      if (rows) {
        steps.push_back({(r * dh * Wp + s) * Cb, r, s, 0});
        continue;
      }
      for (int64_t c0 = 0; c0 < Cs; c0 += kChan) steps.push_back({(r * dh * Wa + s * dw) * Cb + c0, r, s, c0});
    }
  const int64_t nst = static_cast<int64_t>(steps.size());

  // the filter: B tiles [kb][step][16 pair rows][16 filters][2], zeros past K, C and the row
  const int64_t tile_elems = kTile * kChan, group_elems = nkp * 2 * nst * tile_elems, wfloats = G * group_elems / 2;
  // (split: one float more, 1 where the filter is not finite)
  const int64_t wextra = split ? 1 : 0;
  float* wscratch = split && split->cached_only ? nullptr : scratch(3, wfloats + wextra);
  const PackedFilter pf = packed_filter(filter, {split ? 0x616d7a : 0x616d78, C, K, R, S, p.ws_k, p.ws_c, p.ws_r, int64_t(rows), G},
                                        wfloats + wextra, wscratch, [&](float* dst) {
    bf16* d = reinterpret_cast<bf16*>(dst);
    at::Tensor split_w;
    const bf16* wv = split_source(split, split_w, dst + wfloats, w);
    if (!rows || Cg % 2 == 0) {  // a group at a time (groups in parallel; one group: its filter blocks)
      Conv2dParams pg = p;  // one group's filters
      pg.K = K, pg.C = Cg, pg.groups = 1;
      for_each_task(G, G * group_elems * 4, [&](int64_t g) {
        pack_tiles(pg, wv + g * w_group, steps.data(), nst, nkp * 2, d + g * group_elems, rows ? Cg : 0);
      });
      return;
    }
    // row_mode with an odd number of channels (the RGB stems): value v of a step's A row (tap
    // s0 + v / C, channel v % C) is element at[v] of a filter, in the tile at (v / 2) 32 + v % 2
    // + 2 j for filter j
    for_each_task(nkp * 2, nkp * 2 * nst * tile_elems, [&](int64_t kb) {
      for (int64_t st = 0; st < nst; ++st) {
        bf16* t = d + (kb * nst + st) * tile_elems;
        std::memset(t, 0, sizeof(bf16) * tile_elems);
        int64_t at[kChan], nv = 0;  // the values of taps < S: a prefix of the row
        for (int64_t v = 0; v < sc * C; ++v) {
          const int64_t s = steps[st].s0 + v / C, c = v % C;
          if (s < S) at[nv++] = c * p.ws_c + steps[st].r * p.ws_r + s * p.ws_s;
        }
        for (int64_t j = 0; j < std::min(kTile, K - kb * kTile); ++j) {
          const bf16* f = wv + (kb * kTile + j) * p.ws_k;
          for (int64_t v = 0; v < nv; ++v) t[(v >> 1) * kChan + (v & 1) + 2 * j] = f[at[v]];
        }
      }
    });
  });
  if (split && (!pf.data || pf.data[wfloats] != 0.f)) return false;
  const bf16* wp = reinterpret_cast<const bf16*>(pf.data);

  // the zero-padded NHWC band of the whole input, with slack after it for the rows of the last
  // tiles that run past the last image (computed, never stored). A channels_last input and a 1x1
  // filter at stride 1 is its own band (in_place_1x1): read in place, but for the last 32 pixels,
  // copied with zeros after them (copying MobileNet's 96->24 1x1 @56 input took 40% of its time).
  TileJob job;
  job.steps = steps.data(), job.nst = nst, job.wp = wp, job.K = K, job.bias = bias, job.y = y, job.nhwc = nhwc;
  job.groups = G, job.wp_group = group_elems, job.ldk = p.K, job.half = split != nullptr;
  if (interior) {
    interior_and_edges(p, x, p0, p1, q0, q1, steps, job);
    return true;
  }
  at::Tensor band_t;
  std::atomic<bool> nonfinite{false};
  const bool in_place = in_place_1x1(p) && !split, strided = sh > 1 || sw > 1;
  if (in_place) {
    // tiles from pixel `from` on (their 16 rows, sw pixels apart, could reach past x) read the
    // copy; a strided grid's last pair of tiles can start a grid row past the last image's
    // (tile_base of grid row P) and read a run of tiles on from there
    const int64_t total = N * H * W, from = std::max<int64_t>(0, total - 2 * kTile * sw);
    const int64_t end = strided ? (N - 1) * H * W + P * sh * W + round_up(Q, kTile) * sw + 2 * kTile : total + 4 * kTile;
    band_t = bf16_buffer((end - from) * C);
    bf16* t = bf16_data(band_t);
    std::memcpy(t, x + from * C, sizeof(bf16) * (total - from) * C);
    std::memset(t + (total - from) * C, 0, sizeof(bf16) * (end - total) * C);
    job.xb = x, job.tail = t, job.tail_from = from;
    // (in place: channels_last; strided: the sums, the tasks' test of their band pixels being
    // for a flat grid)
    if (check_finite) job.nonfinite = &nonfinite, job.test_sums = K < C || strided;
  } else {
    const int64_t slack = ((sh + 1) * Wp + S * dw + 2 * kTile * sw + 64) * Cb + kChan;
    bool band_nonfinite = false;
    band_t = split ? split_band(split->a, nhwc, N, split->channels, H, W, ph, pw, Hp, Wp, Cb, slack, &band_nonfinite)
             : grows ? group_bands(x, N, G, Cg, H, W, ph, pw, Hp, Wp, slack, check_finite ? &band_nonfinite : nullptr)
                     : padded_band(x, nhwc, N, C, H, W, ph, pw, Hp, Wp, Cb, slack, check_finite ? &band_nonfinite : nullptr);
    if (band_nonfinite) return false;
    job.xb = reinterpret_cast<const bf16*>(band_t.const_data_ptr());
  }
  job.N = N, job.Hb = Hp, job.Wb = Wp, job.Cb = in_place ? C : Cb, job.sh = sh, job.sw = sw, job.P = P, job.Q = Q;
  job.Ho = P, job.Wo = Q, job.macs = p.macs();
  // In place, output pixel m is input pixel m of the N H W: one flat grid of all the images, its
  // tiles running on from one image into the next, where a grid an image computed the last pair
  // of each image partly filled: a 14x14 plane 224 rows for 196 pixels, 7x7 64 for 49.
  if (in_place && !strided) job.N = 1, job.Hb = N * Hp, job.P = job.Ho = N * P;
  job.a_group = grows ? N * Hp * Wp * Cg : Cg;
  run_tiles(job);
  return !nonfinite.load();
}

// Backward-input with a stride (or a padding past dil (R-1), which the turned-round forward
// cannot take): dx in its sh x sw phases. Pixel (h' sh + a, w' sw + b) of dx, phase (a, b), is
//   sum over the taps r with (a + ph - r dh) % sh == 0 and s with (b + pw - s dw) % sw == 0 of
//   dy[h' + dr][w' + ds] . w[.][c][r][s],   dr = (a + ph - r dh) / sh, ds = (b + pw - s dw) / sw
// -- a stride-1 convolution of dy with the phase's taps at fixed offsets: run_tiles on a band of
// dy padded by the farthest negative offsets, its outputs placed sh and sw apart. No product
// with a zero that the stride inserts is computed (the float32 kernels' strided backward-input
// skips them the same way). A phase without taps (1x1 stride 2: three of four) is stored as zeros.
// With zeros_meet (small_groups' block-diagonal filter) returns false, having written nothing,
// where dy holds an infinity or a NaN (found as its band is copied).
bool backward_input_phases(const Conv2dParams& p, const bf16* dy, const bf16* w, bf16* dx, const at::Tensor* filter,
                           bool zeros_meet = false, const Split* split = nullptr) {
  const int64_t N = p.N, C = p.C, K = p.K, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const int64_t Kb = round_up(K, kChan), nkb = 2 * ceil_div(C, 2 * kTile), tile_elems = kTile * kChan;
  // the taps of each row phase a (r, dr) and column phase b (s, ds)
  auto taps = [](int64_t n, int64_t stride, int64_t pad, int64_t dil, int64_t phase) {
    std::vector<std::pair<int64_t, int64_t>> t;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t v = phase + pad - r * dil;
      if (((v % stride) + stride) % stride == 0) t.push_back({r, v / stride});
    }
    return t;
  };
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rt, ct;
  int64_t T = 0, L = 0, Hb = P, Wb = Q;
  for (int64_t a = 0; a < sh; ++a) rt.push_back(taps(R, sh, p.pad_h, p.dil_h, a));
  for (int64_t b = 0; b < sw; ++b) ct.push_back(taps(S, sw, p.pad_w, p.dil_w, b));
  for (const auto& v : rt) for (const auto& [r, d] : v) T = std::max(T, -d);
  for (const auto& v : ct) for (const auto& [s, d] : v) L = std::max(L, -d);
  Hb += T, Wb += L;
  for (int64_t a = 0; a < sh; ++a) for (const auto& [r, d] : rt[a]) Hb = std::max(Hb, T + ceil_div(H - a, sh) + d);
  for (int64_t b = 0; b < sw; ++b) for (const auto& [s, d] : ct[b]) Wb = std::max(Wb, L + ceil_div(W - b, sw) + d);

  // every phase's steps (taps outer, 32 dy channels inner) and its B tiles' place in one packing
  std::vector<std::vector<Step>> steps(static_cast<size_t>(sh * sw));
  std::vector<int64_t> first(static_cast<size_t>(sh * sw) + 1, 0);
  for (int64_t f = 0; f < sh * sw; ++f) {
    for (const auto& [r, dr] : rt[f / sw])
      for (const auto& [s, ds] : ct[f % sw])
        for (int64_t c0 = 0; c0 < Kb; c0 += kChan) steps[f].push_back({((dr + T) * Wb + ds + L) * Kb + c0, r, s, c0});
    first[f + 1] = first[f] + nkb * static_cast<int64_t>(steps[f].size()) * tile_elems;
  }
  Conv2dParams fp = p;  // the filter as forward-form B tiles: dx channels as filters, dy's as channels
  fp.K = C, fp.C = K, fp.ws_k = p.ws_c, fp.ws_c = p.ws_k;
  const int64_t wfloats = first.back() / 2 + 1, wextra = split ? 1 : 0;  // (split: as forward's)
  const PackedFilter pf = packed_filter(filter, {split ? 0x616d7b : 0x616d79, C, K, R, S, p.ws_k, p.ws_c, p.ws_r, sh, sw, p.pad_h, p.pad_w, p.dil_h, p.dil_w},
                                        wfloats + wextra, split && split->cached_only ? nullptr : scratch(3, wfloats + wextra),
                                        [&](float* dst) {
    at::Tensor split_w;
    const bf16* wv = split_source(split, split_w, dst + wfloats, w);
    for (int64_t f = 0; f < sh * sw; ++f)
      if (!steps[f].empty())
        pack_tiles(fp, wv, steps[f].data(), static_cast<int64_t>(steps[f].size()), nkb, reinterpret_cast<bf16*>(dst) + first[f]);
  });
  if (split && (!pf.data || pf.data[wfloats] != 0.f)) return false;

  const int64_t slack = (2 * Wb + 2 * kTile + 64) * Kb + kChan;
  bool nonfinite = false;
  at::Tensor band_t = split ? split_band(split->a, is_nhwc(p), N, split->channels, P, Q, T, L, Hb, Wb, Kb, slack, &nonfinite)
                            : padded_band(dy, is_nhwc(p), N, K, P, Q, T, L, Hb, Wb, Kb, slack, zeros_meet ? &nonfinite : nullptr);
  if (nonfinite) return false;
  TileJob job;
  job.xb = reinterpret_cast<const bf16*>(band_t.const_data_ptr());
  job.N = N, job.Hb = Hb, job.Wb = Wb, job.Cb = Kb, job.K = C, job.y = dx, job.nhwc = is_nhwc(p), job.half = split != nullptr;
  job.Ho = H, job.Wo = W, job.oy = sh, job.ox = sw, job.macs = p.macs() / (sh * sw);
  for (int64_t f = 0; f < sh * sw; ++f) {
    job.oa = f / sw, job.ob = f % sw, job.P = ceil_div(H - job.oa, sh), job.Q = ceil_div(W - job.ob, sw);
    if (job.P <= 0 || job.Q <= 0) continue;
    job.steps = steps[f].data(), job.nst = static_cast<int64_t>(steps[f].size());
    job.wp = reinterpret_cast<const bf16*>(pf.data) + first[f];
    run_tiles(job);
  }
  return true;
}

// Backward-weight: dw[k][c][r][s] = sum over the output grid m (flat, as forward's at stride 1:
// rows of Wp, the columns past Q and the rows past P carry dy = 0) of dy[m][k] * band[m + tap][c];
// strided, the same on each phase of the band (below). C tile = 16 filters x 16 channels of one
// tap, A = 16 filters x 32 grid pixels of dy (dy copied once as dyt[n][k][m]), B = 32 pixels x 16
// channels in VNNI pairs (pixels 2j, 2j + 1; a tap at an odd offset m + 2j' + 1 sums over m - 1
// instead: its A rows start a pixel early, at a zero). Every dw element is one task's sum over
// every pixel of every image, in a fixed order.
// Returns false, having written nothing, where x holds an infinity or a NaN (see has_nonfinite:
// the grid's columns past Q pair x's values with zeros), found while its pairs are copied.
// half: dy, x and dw are float16, and the sums run over three times the pixels (amx_fp16.cpp):
// dy's hi with x's hi, dy's hi with x's lo, dy's lo with x's hi — the copies below hold 2N images
// (the hi parts of the N images, then their lo parts), split as they are made; an infinity or a
// NaN in dy returns false too (its lo is not meaningful).
bool backward_weight(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dwt, bool half) {
  const int64_t N = p.N, C = p.C, K = p.K, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  const bool nhwc = is_nhwc(p);
  const int64_t Cp = round_up(C, kChan), Kp = round_up(K, kChan);
  const int64_t Hp = std::max(H + 2 * ph, (P - 1) * sh + (R - 1) * dh + 1);
  const int64_t Wp = std::max(W + 2 * pw, (Q - 1) * sw + (S - 1) * dw + 1);
  // Strided: the band split into sh x sw phases, phase (a, b) = band pixels (i sh + a, j sw + b)
  // (Ws = ceil(Wp / sw) a row); tap (r, s) reads phase (r dh % sh, s dw % sw) at (p + r dh / sh, q + s dw / sw), a
  // fixed offset from the output pixel on a grid of rows of Ws: stride 1 within a phase.
  const int64_t nph = sh * sw, Ws = ceil_div(Wp, sw);
  // Groups of Cg = 4, 8 or 16 channels and as many filters (diag): a block of 32 holds 32 / Cg
  // groups, and only the 2x2 block's diagonal tiles are computed, the cross terms of the block's
  // first and last 16 channels being all between groups (ResNeXt's 32 groups ran on a
  // block-diagonal filter of 32 channels: 1/2, 1/4, 1/8 of the products real, now twice that).
  // Its B tiles hold channels 0-15 and 16-31 of the block in order (a word permute), not unpack's
  // mix of both.
  const bool diag = diagonal_groups(p);
  // grid pixels an image; with a tap at an odd offset (below), at least one past the last of dy
  bool odd = false;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s) odd = odd || ((r * dh / sh * Ws + s * dw / sw) & 1);
  const int64_t Mg = round_up(P * Ws + odd, kChan);
  const int64_t max_off = (R - 1) * dh / sh * Ws + (S - 1) * dw / sw;
  const int64_t Jn = (Mg + max_off) / 2 + 2;   // pixel pairs a phase of an image, zeros past it
  const int64_t NI = half ? 2 * N : N;           // images of the copies (half: hi, then lo)
  // channels_last x is read in place; NCHW through the zero-padded NHWC band (a transpose)
  at::Tensor band_t = nhwc ? at::Tensor() : padded_band(x, false, N, C, H, W, ph, pw, Hp, Wp, Cp, 0);
  const bf16* xb = nhwc ? x : reinterpret_cast<const bf16*>(band_t.const_data_ptr());
  // xv[phase][n][c / 32][j][c % 32][2] = the phase's pixels (2j, 2j + 1) of image n, channel c (0
  // in the padding and past the band): a task's B tiles lie in one run, rows of 128 bytes (with
  // the channels of a pixel pair together, B rows 512 bytes apart at 128 channels, 3x3/2 128@56
  // spent half its time waiting on B loads from L2). A tap at an odd offset from the grid pixel
  // starts its pairs one pixel early, and its A rows (dy) with it.
  at::Tensor xv_t = bf16_buffer(nph * NI * Jn * Cp * 2);
  bf16* xv = bf16_data(xv_t);
  std::vector<uint8_t> nonfinite(static_cast<size_t>(nph * N), 0);
  for_each_task(nph * N, nph * NI * Jn * Cp * 16, [&](int64_t fn) {
    const int64_t f = fn / N, n = fn % N;
    const __m512i ex = _mm512_set1_epi16(half ? 0x7C00 : 0x7F80);  // the exponent's bits
    const __m512i in_lo = interleave_16(), in_hi = _mm512_add_epi16(in_lo, _mm512_set1_epi16(16));
    __mmask32 bad = 0;
    bf16* d = xv + (f * NI + n) * Jn * Cp * 2;
    // the pixel of x (nhwc) or of the band holding the phase's pixel (rw, cl), -1 for a zero
    auto pixel = [&](int64_t rw, int64_t cl) -> int64_t {
      if (cl >= Ws) ++rw, cl -= Ws;
      const int64_t i = rw * sh + f / sw, jj = cl * sw + f % sw;
      if (!nhwc) return i < Hp && jj < Wp ? (n * Hp + i) * Wp + jj : -1;
      return i >= ph && i - ph < H && jj >= pw && jj - pw < W ? (n * H + i - ph) * W + jj - pw : -1;
    };
    const int64_t cs = nhwc ? C : Cp;  // channels a pixel of the source
    int64_t row = 0, col = 0;  // the phase's pixel 2j as (row, column), kept without divisions
    for (int64_t j = 0; j < Jn; ++j, col += 2) {
      while (col >= Ws) ++row, col -= Ws;
      const int64_t i0 = pixel(row, col), i1 = pixel(row, col + 1);
      for (int64_t c0 = 0; c0 < Cp; c0 += kChan) {
        const __mmask32 cm = first_words(cs - c0);
        const __m512i a = _mm512_maskz_loadu_epi16(i0 >= 0 ? cm : 0, xb + std::max<int64_t>(i0, 0) * cs + c0);
        const __m512i b = _mm512_maskz_loadu_epi16(i1 >= 0 ? cm : 0, xb + std::max<int64_t>(i1, 0) * cs + c0);
        bad |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_max_epu16(_mm512_and_si512(a, ex), _mm512_and_si512(b, ex)), ex), ex);
        bf16* o = d + (c0 / kChan * Jn + j) * 2 * kChan;  // columns in unpacked_column order
        const __m512i u0 = diag ? _mm512_permutex2var_epi16(a, in_lo, b) : _mm512_unpacklo_epi16(a, b);
        const __m512i u1 = diag ? _mm512_permutex2var_epi16(a, in_hi, b) : _mm512_unpackhi_epi16(a, b);
        if (half) {  // the lo parts in image N + n
          store_split(o, u0, N * Jn * Cp * 2);
          store_split(o + kChan, u1, N * Jn * Cp * 2);
        } else {
          _mm512_storeu_si512(o, u0);
          _mm512_storeu_si512(o + kChan, u1);
        }
      }
    }
    nonfinite[fn] = bad != 0;
  });
  for (const uint8_t b : nonfinite)
    if (b) return false;
  // dyt[n][k][1 + m]: dy on the grid, 0 at the columns past Q, the pixels past P*Ws and the
  // filters past K, and before pixel 0 (read by the A rows of odd taps)
  // (zeroed by memset: at::zeros fills bfloat16 a value at a time, 5% of 1x1 128->512's time)
  // (half: dy's hi parts in images 0..N-1, its lo parts in N..2N-1, split in place once a row of
  // dy is there)
  at::Tensor dyt_t = bf16_buffer(NI * Kp * Mg + kChan);
  bf16* dyt = bf16_data(dyt_t) + 1;
  for_each_task(NI, NI * Kp * Mg, [&](int64_t n) { std::memset(dyt - 1 + n * Kp * Mg, 0, sizeof(bf16) * Kp * Mg); });
  std::memset(dyt - 1 + NI * Kp * Mg, 0, sizeof(bf16) * kChan);
  std::vector<uint8_t> dy_bad(static_cast<size_t>(half ? N * P : 0), 0);
  for_each_task(N * P, N * P * Q * K * 16, [&](int64_t np) {
    const int64_t n = np / P, pp = np % P;
    bf16* o = dyt + n * Kp * Mg + pp * Ws;
    if (nhwc) pixels_to_rows(dy + ((n * P + pp) * Q) * K, K, Q, o, Mg);
    else
      for (int64_t k = 0; k < K; ++k) std::memcpy(o + k * Mg, dy + ((n * K + k) * P + pp) * Q, sizeof(bf16) * Q);
    if (!half) return;
    __mmask16 b = 0;
    __m256i hi, lo;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t q0 = 0; q0 < Q; q0 += kTile) {
        const __mmask16 m = first_lanes(Q - q0);
        bf16* v = o + k * Mg + q0;
        const __m512 f = widen_16(m, v);
        b |= nonfinite_lanes(m, f);
        split_16(f, hi, lo);
        _mm256_mask_storeu_epi16(v, m, hi);
        _mm256_mask_storeu_epi16(v + N * Kp * Mg, m, lo);
      }
    dy_bad[np] = b != 0;
  });
  if (any_set(dy_bad)) return false;

  // A task: a group of 32-filter blocks x 32 channels x a group of taps, over every pixel of every
  // image in chunks of 256 (that may span images: 7x7 planes are 64 grid pixels): for a chunk,
  // each tap of the group and each filter block in turn (the order: below), its 4 C tiles loaded
  // from and stored back to a float32 buffer (the sums so far), so that the chunk's band pixels (B,
  // 16 KiB a tap) and its dy rows (A, 16 KiB a filter block) are read from L1 or L2 by every
  // filter block and every tap, not from L3. Groups as large as the
  // buffer allows (256 KiB) and as small as 2 tasks a thread need (taps split first, then
  // filters). One tap and one filter block a task over whole images streamed A and B from L3
  // for every tap: 64@56 3x3 ran at 700 GFLOP/s, a third of forward's; with every filter block a
  // task re-reading the band, 3x3/2 128@56 at 650.
  // Groups (of 32k channels and filters: grouped_in_place): channel block cp belongs to group
  // cp / ncpg, whose filter blocks alone it meets (diag: groups taken two at a time).
  const int64_t G2 = diag ? p.groups / (kChan / p.Cg()) : p.groups, Cg2 = diag ? kChan : p.Cg();
  const int64_t ncp = Cp / kChan, nkp = Kp / kChan, RS = R * S, ncpg = ncp / G2, nkpg = nkp / G2;
  const int64_t want = 2 * at::get_num_threads();
  int64_t ntg = std::min(RS, ceil_div(want, ncp));
  const int64_t tg = ceil_div(RS, ntg);
  ntg = ceil_div(RS, tg);
  int64_t nkg = std::max(ceil_div(nkpg * tg, 64), std::min(nkpg, ceil_div(want, ncp * ntg)));
  const int64_t kg = ceil_div(nkpg, nkg);
  nkg = ceil_div(nkpg, kg);
  constexpr int64_t kChunk = 8 * kChan;
  std::vector<int64_t> tap_w(static_cast<size_t>(RS));  // where tap (r, s) lies in a (k, c) filter row
  for (int64_t rs = 0; rs < RS; ++rs) tap_w[rs] = rs / S * p.ws_r + rs % S * p.ws_s;
  const bool direct = p.ws_c == 1;  // KRSC, or a 1x1 filter
  bool kcrs_run = tg == RS && p.ws_c == RS;
  for (int64_t rs = 0; rs < RS; ++rs) kcrs_run = kcrs_run && tap_w[rs] == rs;
  for_each_task(ncp * nkg * ntg, p.macs(), [&](int64_t task) {  // channels outer: a task's band pairs stay in L2
    const int64_t cp = task / (nkg * ntg), gk = cp / ncpg * nkpg;  // the group's first filter block
    const int64_t kg0 = gk + task / ntg % nkg * kg, kg1 = std::min(gk + nkpg, kg0 + kg);
    const int64_t rs0 = task % ntg * tg, rs1 = std::min(RS, rs0 + tg);
    const int64_t c0 = cp % ncpg * kChan, cn = diag ? p.Cg() : std::min(kChan, Cg2 - c0);  // channels within the group
    const __mmask16 cmask0 = first_lanes(cn), cmask1 = first_lanes(cn - kTile);
    configure_tiles();
    // acc[tap][filter block][filter][channel]: the C tiles between chunks
    float (*acc)[2 * kTile][2 * kTile] = reinterpret_cast<float (*)[2 * kTile][2 * kTile]>(scratch(5, tg * kg * kChan * kChan));
    bf16* ob = reinterpret_cast<bf16*>(scratch(4, kChan * kChan * tg / 2 + 16));  // [filter][channel][tap]
    // steps of 32 grid pixels: an image's, all (half: three times, the products of hi and hi, hi
    // and lo, lo and hi)
    const int64_t spi = Mg / kChan, nsteps = (half ? 3 : 1) * N * spi;
    // A chunk's blocks (tap, filter block): at stride 1 the filter blocks outside, so that a
    // block's dy rows (A, 16 KiB a chunk) are read from L1 by each tap in turn; strided, the taps
    // outside (their B tiles lie in different phases of x). Filter blocks outside, old/new
    // (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_weight --dtype bfloat16
    // --rounds 3, batch 4, NCHW / channels_last): 3x3 256@14 1.09x / 1.05-1.11x (batch 8 1.02x /
    // 1.07x), 512@7 1.09-1.11x / 1.14x, 128@28 0.97-1.01x / 1.08-1.11x, 64@56 1.00x, 5x5 96@28
    // 1.00x / 1.05x; strided 3x3/2 128@56 and 256@28 0.96-0.97x NCHW: kept taps outside there.
    const bool blocks_outside = sh == 1 && sw == 1;
    const int64_t nkb = kg1 - kg0, ntap = rs1 - rs0;
    for (int64_t g0 = 0; g0 < nsteps; g0 += kChunk / kChan) {
      const int64_t g1 = std::min(nsteps, g0 + kChunk / kChan);
      for (int64_t u = 0; u < nkb * ntap; ++u) {
        const int64_t kp = kg0 + (blocks_outside ? u / ntap : u % nkb), rs = rs0 + (blocks_outside ? u % ntap : u / nkb);
        const int64_t rd = rs / S * dh, sd = rs % S * dw, f = rd % sh * sw + sd % sw;
        const int64_t off = rd / sh * Ws + sd / sw, e = off & 1;
        float (*c)[2 * kTile] = acc[(rs - rs0) * kg + kp - kg0];
        if (g0 == 0) {
          zero_2x2();
        } else {
          load_2x2(c);
        }
        const bool a_pair = K - kp * kChan > kTile;  // else filters 16-31 of the block are zeros:
        for (int64_t g = g0; g < g1; ++g) {           // half the products (CIFAR's 16 filters)
          const int64_t part = g / (N * spi), n = g / spi % N, m0 = g % spi * kChan;
          const int64_t na = part == 2 ? N + n : n, nb = part == 1 ? N + n : n;  // dy's and x's image
          const bf16* a0 = dyt + (na * Kp + kp * kChan) * Mg + m0 - e;
          const bf16* b0 = xv + ((f * NI + nb) * Jn * Cp + cp * Jn * kChan + (m0 + off - e) / 2 * kChan) * 2;
          constexpr int64_t b_stride = 2 * kChan * int64_t(sizeof(bf16));
          if (diag) {
            step_diag(a0, a0 + kTile * Mg, Mg * int64_t(sizeof(bf16)), b0, b0 + 2 * kTile, b_stride);
          } else if (a_pair) {
            step_2x2(a0, a0 + kTile * Mg, Mg * int64_t(sizeof(bf16)), b0, b0 + 2 * kTile, b_stride);
          } else {
            step_1x2(a0, Mg * int64_t(sizeof(bf16)), b0, b0 + 2 * kTile, b_stride);
          }
        }
        store_2x2(c);
      }
    }
    const __m512i order = diag ? word_steps() : unpacked_order();  // diag's columns are in order
    for (int64_t kp = kg0; kp < kg1; ++kp) {
      const int64_t k0 = kp * kChan, kn = std::min(kChan, K - k0);
      for (int64_t rs = rs0; rs < rs1; ++rs) {
        const float (*cbuf)[2 * kTile] = acc[(rs - rs0) * kg + kp - kg0];
        for (int64_t i = 0; i < 2 * kTile; ++i) {
          alignas(64) bf16 v[2 * kTile];  // the row's 32 channels in order
          _mm512_store_si512(v, unpacked_row(cbuf[i], order, half));
          if (diag && i >= p.Cg()) std::memcpy(v, v + i / p.Cg() * p.Cg(), sizeof(bf16) * p.Cg());  // its group's
          if (direct) {  // channels contiguous in dw: the row's 32 channels at once
            if (i < kn) {
              bf16* o = dwt + (k0 + i) * p.ws_k + c0 + tap_w[rs];
              _mm256_mask_storeu_epi16(o, cmask0, _mm256_load_si256(reinterpret_cast<const __m256i*>(v)));
              _mm256_mask_storeu_epi16(o + kTile, cmask1, _mm256_load_si256(reinterpret_cast<const __m256i*>(v + kTile)));
            }
            continue;
          }
          for (int64_t j = 0; j < 2 * kTile; ++j) ob[(i * kChan + j) * tg + rs - rs0] = v[j];
        }
      }
      if (direct) continue;
      // dw rows: for a KCRS filter with every tap here, a filter's (channel, tap) run is contiguous
      // in ob and in dw
      for (int64_t i = 0; i < kn; ++i) {
        if (kcrs_run) {
          std::memcpy(dwt + (k0 + i) * p.ws_k + c0 * RS, ob + i * kChan * tg, sizeof(bf16) * cn * RS);
          continue;
        }
        for (int64_t j = 0; j < cn; ++j) {
          bf16* o = dwt + (k0 + i) * p.ws_k + (c0 + j) * p.ws_c;
          const bf16* v = ob + (i * kChan + j) * tg;
          for (int64_t t = 0; t < rs1 - rs0; ++t) o[tap_w[rs0 + t]] = v[t];
        }
      }
    }
  });
  return true;
}

// A 1x1 stride-1 unpadded layer's dw[k][c] = sum_m dy[m][k] x[m][c] over the pixels m
// (channels_last: the N*H*W pixels of both tensors, one run; NCHW: each image's plane in steps of
// 32, the last one partial): the A tiles (dy's filters x 32 pixels) and B tiles (pixel pairs of
// x's channels) are made from the tensors as they are read, 2 or 4 steps of 32 pixels at a time
// in L1, and never written out. backward_weight first transposes all of dy and pairs
// all of x in memory (each written and read again: 4x the bytes of the layer's operands), and
// splits only filters and channels between tasks: MobileNetV2's 32->16 @112 was one task.
// Here a task is a part of the pixels (`part` steps of 32, a function of the shape only) for
// every filter and channel; the parts' sums are added in their order (sum_chunks): the same bits
// for any thread count and machine. Filters beyond K, channels beyond C and pixels beyond the
// last are zeros in the tiles that hold them, and the sums they make are not written: an
// infinity or NaN in dy or x meets only what it meets in the convolution (no float32 copy).
//
// dy's transpose, 32 pixels x 16 filters: 16 vectors of two pixels' 16 values as 32-bit words
// (filter pairs), transpose_16x16 (vector d < 8: pair d of the even pixels, d + 8 of the odd
// ones), then one two-source word permute per A row (filter 2d: the low words of d and d + 8
// interleaved; 2d + 1 the high ones). x's pairs: UNPCKLWD / UNPCKHWD of two pixels' 32 channels
// (unpacked_column order, put back in order when the sums are written). NCHW: dy's rows are A
// rows already (copied, zeros past the plane), and 16 channels' 32 pixels as 32-bit pairs,
// transposed (transpose_16x16), are a B tile (columns in order).
// python benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_weight --dtype bfloat16, batch 8,
// MobileNetV2's and ResNet-50's 1x1 layers: channels_last 32->16 @112 4.2x faster, 16->96 @112
// 3.2x, 24->144 and 144->24 @56 2.2-2.4x, 64->256 @56 2.2x, 96->576 @14 2.3x, 1024->256 @14
// 1.3x, ResNet-50's 7x7 ones 0.93-1.05x; NCHW 2.9-5.4x on the planes of 56 and 112, 1.2-1.8x at
// 7x7 and 14x14.
// Steps a round (`sub`): 2 with 16 filters or one 32x32 block, else 4 (8 ran 0.85-0.95x on the
// large layers, 2 was best for the smallest, 0.87x at 64->64).
bool weight_1x1_pixels(const Conv2dParams& p) {
  return is_pointwise(p) && p.groups == 1 && (is_nhwc(p) || is_nchw(p));
}

// half: dy, x and dw float16, each tile made as its hi and lo parts (split as they are stored)
// and three tile products a step (hi x hi, hi x lo, lo x hi: amx_fp16.cpp); returns false, with
// nothing written, where dy or x holds an infinity or a NaN (a lo is not meaningful there).
bool backward_weight_pixels(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dwt, bool half) {
  const int64_t K = p.K, C = p.C, HW = p.H * p.W;
  // (16+ filters and channels, supports_backward_weight: the channels_last A rows' second pixel
  // is loaded from 16 values before it, inside dy)
  TORCH_INTERNAL_ASSERT(K >= kTile && C >= kTile);
  const bool nhwc = is_nhwc(p);
  const int64_t Kt = round_up(K, kTile), Kp = round_up(K, kChan), Cp = round_up(C, kChan);
  const int64_t nkb = Kp / kChan, ncb = Cp / kChan, blocks = nkb * ncb;
  constexpr int64_t kBlockSums = kChan * kChan;  // a 2x2 block's C tiles as float32
  // steps of 32 pixels: channels_last across images (one run), NCHW an image's plane at a time
  const int64_t spi = nhwc ? ceil_div(p.N * HW, kChan) : ceil_div(HW, kChan), nsteps = nhwc ? spi : p.N * spi;
  const int64_t M = nhwc ? p.N * HW : HW;  // pixels of a run of steps
  // parts of 64 steps (2048 pixels) or more: at most 4 MiB of partial sums
  const int64_t part = std::max<int64_t>(64, ceil_div(nsteps * blocks * kBlockSums * 4, int64_t(4) << 20));
  const int64_t nparts = ceil_div(nsteps, part);
  at::Tensor sums_t = float_buffer(nparts * blocks * kBlockSums);
  float* sums = sums_t.data_ptr<float>();
  constexpr int64_t kSubMax = 4;
  const int64_t sub = Kt == kTile || Kp * Cp <= kChan * kChan ? 2 : kSubMax;  // steps whose A and B tiles are made at once (a round)
  alignas(64) int16_t even_idx[2 * kTile];  // lane 2i: word 2i of a, lane 2i + 1: word 2i of b
  for (int i = 0; i < kTile; ++i) even_idx[2 * i] = int16_t(2 * i), even_idx[2 * i + 1] = int16_t(2 * kTile + 2 * i);
  const __m512i even = _mm512_load_si512(even_idx), odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  const int64_t a_lo = sub * Kt * kChan, b_lo = sub * kTile * 2 * kChan;  // (half) where the lo parts lie
  // channel blocks split between tasks where the parts are too few for the threads (dy's A tiles
  // made again by each): the sums and their order are the same
  const int64_t ncg = std::min(ncb, ceil_div(2 * pool_threads(), nparts)), cg = ceil_div(ncb, ncg);
  std::vector<uint8_t> bad(static_cast<size_t>(half ? nparts * ncg : 0), 0);
  for_each_task(nparts * ncg, p.macs(), [&](int64_t task) {
    const int64_t pt = task / ncg, cb0 = task % ncg * cg, cb1 = std::min(ncb, cb0 + cg);
    // at[step][k][32 pixels] (Kt rows a step); bt[step][pair][32 channels x 2] (one block of channels)
    bf16* at = reinterpret_cast<bf16*>(scratch(4, (half ? 2 : 1) * a_lo / 2 + 32));
    bf16* bt = reinterpret_cast<bf16*>(scratch(5, (half ? 2 : 1) * b_lo / 2 + 32));
    // 32 values of a tile row stored at d (half: split, hi at d and lo lo_at after it)
    __mmask32 nonfinite = 0;
    auto put = [&](bf16* d, __m512i v, int64_t lo_at) {
      if (!half) return _mm512_store_si512(d, v);
      nonfinite |= nonfinite_f16(v);
      store_split(d, v, lo_at);
    };
    float* acc = sums + pt * blocks * kBlockSums;
    configure_tiles();
    const int64_t g_end = std::min(nsteps, (pt + 1) * part);
    int64_t sn[kSubMax], sm0[kSubMax], snm[kSubMax];  // the round's steps: image, first pixel, pixels
    for (int64_t g0 = pt * part; g0 < g_end; g0 += sub) {
      const int64_t ns = std::min(sub, g_end - g0);
      for (int64_t s = 0; s < ns; ++s)
        sn[s] = (g0 + s) / spi, sm0[s] = (g0 + s) % spi * kChan, snm[s] = std::min(kChan, M - sm0[s]);
      for (int64_t s = 0; s < ns; ++s) {  // A: dy's 32 pixels of the step as rows of filters
        const int64_t n = sn[s], m0 = sm0[s], nm = snm[s];
        if (!nhwc) {  // rows of dy already
          for (int64_t k = 0; k < Kt; ++k)
            put(at + (s * Kt + k) * kChan, _mm512_maskz_loadu_epi16(k < K ? first_words(nm) : 0, dy + (n * K + k) * HW + m0), a_lo);
          continue;
        }
        for (int64_t k0 = 0; k0 < Kt; k0 += kTile) {
          const __mmask16 km = first_lanes(K - k0);
          __m512i r[kTile];
          for (int64_t i = 0; i < kTile; ++i) {
            const bf16* src = dy + (m0 + 2 * i) * K + k0;
            const __m512i lo = _mm512_maskz_loadu_epi16(2 * i < nm ? km : 0, src);  // pixel 2i, then 2i + 1
            r[i] = _mm512_mask_loadu_epi16(lo, 2 * i + 1 < nm ? __mmask32(km) << 16 : 0, src + K - kTile);  // in lanes 16-31
          }
          transpose_16x16(r);
          bf16* d = at + (s * Kt + k0) * kChan;
          for (int64_t j = 0; j < kTile / 2; ++j) {
            put(d + 2 * j * kChan, _mm512_permutex2var_epi16(r[j], even, r[j + 8]), a_lo);
            put(d + (2 * j + 1) * kChan, _mm512_permutex2var_epi16(r[j], odd, r[j + 8]), a_lo);
          }
        }
      }
      for (int64_t cb = cb0; cb < cb1; ++cb) {
        const int64_t c0 = cb * kChan;
        const __mmask32 cm = first_words(C - c0);
        for (int64_t s = 0; s < ns; ++s) {  // B: pairs of x's pixels, 32 channels
          const int64_t n = sn[s], m0 = sm0[s], nm = snm[s];
          if (!nhwc) {  // 16 channels' 32 pixels as 32-bit pairs, transposed: row j = pair j of each channel
            const __mmask32 mm = first_words(nm);
            for (int64_t h = 0; h < 2; ++h) {
              __m512i r[kTile];
              for (int64_t i = 0; i < kTile; ++i) {
                const int64_t c = c0 + h * kTile + i;
                r[i] = _mm512_maskz_loadu_epi16(c < C ? mm : 0, x + (n * C + c) * HW + m0);
              }
              transpose_16x16(r);
              for (int64_t j = 0; j < kTile; ++j) put(bt + ((s * kTile + j) * 2 + h) * kChan, r[j], b_lo);
            }
            continue;
          }
          for (int64_t j = 0; j < kTile; ++j) {
            const bf16* src = x + (m0 + 2 * j) * C + c0;
            const __m512i a = 2 * j < nm ? _mm512_maskz_loadu_epi16(cm, src) : _mm512_setzero_si512();
            const __m512i b = 2 * j + 1 < nm ? _mm512_maskz_loadu_epi16(cm, src + C) : _mm512_setzero_si512();
            bf16* o = bt + (s * kTile + j) * 2 * kChan;
            put(o, _mm512_unpacklo_epi16(a, b), b_lo);
            put(o + kChan, _mm512_unpackhi_epi16(a, b), b_lo);
          }
        }
        for (int64_t kb = 0; kb < nkb; ++kb) {
          float(*c)[2 * kTile] = reinterpret_cast<float(*)[2 * kTile]>(acc + (kb * ncb + cb) * kBlockSums);
          if (g0 == pt * part) {
            zero_2x2();
          } else {
            load_2x2(c);
          }
          const bool a_pair = K - kb * kChan > kTile;  // else the A pair's second tile is zeros
          for (int64_t s = 0; s < ns; ++s)
            for (int64_t t = 0; t < (half ? 3 : 1); ++t) {  // (half: hi x hi, hi x lo, lo x hi)
              const bf16* a0 = at + (s * Kt + kb * kChan) * kChan + (t == 2 ? a_lo : 0);
              const bf16* b0 = bt + s * kTile * 2 * kChan + (t == 1 ? b_lo : 0);
              constexpr int64_t a_stride = kChan * int64_t(sizeof(bf16)), b_stride = 2 * kChan * int64_t(sizeof(bf16));
              if (a_pair) {
                step_2x2(a0, a0 + kTile * kChan, a_stride, b0, b0 + kChan, b_stride);
              } else {
                step_1x2(a0, a_stride, b0, b0 + kChan, b_stride);
              }
            }
          store_2x2(c);
        }
      }
    }
    if (half) bad[task] = nonfinite != 0;
  });
  if (any_set(bad)) return false;
  sum_chunks(sums, nparts, blocks * kBlockSums);
  const __m512i order = nhwc ? unpacked_order() : word_steps();  // (NCHW's B columns are in order)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t kb = blk / ncb, cb = blk % ncb, c0 = cb * kChan, cn = std::min(kChan, C - c0);
    const float(*cbuf)[2 * kTile] = reinterpret_cast<const float(*)[2 * kTile]>(sums + blk * kBlockSums);
    for (int64_t i = 0; i < kChan && kb * kChan + i < K; ++i) {
      alignas(64) bf16 v[2 * kTile];  // the row's 32 channels in order
      _mm512_store_si512(v, unpacked_row(cbuf[i], order, half));
      bf16* o = dwt + (kb * kChan + i) * p.ws_k + c0 * p.ws_c;
      if (p.ws_c == 1) {
        std::memcpy(o, v, sizeof(bf16) * cn);
      } else {
        for (int64_t j = 0; j < cn; ++j) o[j * p.ws_c] = v[j];
      }
    }
  }
  return true;
}

// An NCHW 1x1 stride-1 unpadded layer as out[n][o][m] = bias[o] + sum_i a[o][i] in[n][i][m] over
// the plane's pixels m: forward (a = w, in = x: o filters, i channels) or backward-input (a = w's
// transpose, in = dy). The filters are the A tiles (16 of them x 32 channels, packed once a
// call) and the B tiles pairs of channel rows (row j: channels 2j and 2j + 1 of 16 pixels
// interleaved, UNPCKLWD / UNPCKHWD of 32 pixels), so a C tile is 16 outputs x 16 pixels: rows of
// out as they lie. forward's NCHW path transposes x into a band of pixels and every C tile back
// (MobileNetV2's 16->96 @112 forward at 4 ms, writing 19 MB). A task is 256 pixels of an image:
// for each 32 their B tiles (all channels, made once) meet every 32 outputs' A tiles. Pixels past
// the plane are zeros in B and their sums not written; channels past I are zero rows of B and
// zero columns of A; outputs past O not written: an infinity or NaN meets only what it meets in
// the convolution. python benchmarks/ab.py (forward, backward-input), bfloat16, batch 8:
// MobileNetV2's 1x1 layers on planes of 56 and 112 1.7-3.2x faster, 1024->256 @14 1.1-1.2x,
// MobileNetV2's 7x7 ones 1.0-1.3x. With a filter of 1M values or more (ResNet-50's 512->2048 and
// 2048->512 @7: 0.47-0.96x, every 32 pixels reading all of it) forward's band path runs.
bool nchw_1x1(const Conv2dParams& p) {
  return is_pointwise(p) && p.groups == 1 && is_nchw(p) && p.ws_c == 1 && p.ws_k == p.C && p.K * p.C < (int64_t(1) << 20);
}

void rows_1x1(int64_t N, int64_t HW, int64_t O, int64_t I, const bf16* in, const bf16* w, bool transposed, const bf16* bias,
              bf16* out) {
  const int64_t Ot = round_up(O, kTile), Op = round_up(O, kChan), Ip = round_up(I, kChan), nib = Ip / kChan;
  // aw[o][i] (Op rows of Ip): w[o][i], or w[i][o] transposed; zeros past O and I
  at::Tensor aw_t = bf16_buffer(Op * Ip);
  bf16* aw = bf16_data(aw_t);
  // (in blocks of 64 outputs: the transposes of a 2048 x 512 filter were 0.3 ms on one thread)
  for_each_task(ceil_div(Op, 64), Op * Ip * 4, [&](int64_t t) {
    const int64_t o0 = t * 64, no = std::min<int64_t>(64, Op - o0);
    std::memset(aw + o0 * Ip, 0, sizeof(bf16) * no * Ip);
    if (transposed) {
      for (int64_t o = o0; o < std::min(O, o0 + no); o += kTile)  // w's I rows of O values as O rows of I
        pixels_to_rows(w + o, std::min(kTile, O - o), I, aw + o * Ip, Ip, O);
    } else {
      for (int64_t o = o0; o < std::min(O, o0 + no); ++o) std::memcpy(aw + o * Ip, w + o * I, sizeof(bf16) * I);
    }
  });
  std::vector<float> bias_f(static_cast<size_t>(O), 0.f);  // bias as float32 (bfloat16 = the top half)
  for (int64_t o = 0; bias && o < O; ++o) bias_f[o] = widen<false>(bias[o]);
  constexpr int64_t kBlocks = 8;  // 32-pixel blocks a task
  const int64_t bpi = ceil_div(HW, kChan), tpi = ceil_div(bpi, kBlocks);
  for_each_task(N * tpi, N * HW * O * I, [&](int64_t task) {
    const int64_t n = task / tpi, b0 = task % tpi * kBlocks, b1 = std::min(bpi, b0 + kBlocks);
    bf16* bt = reinterpret_cast<bf16*>(scratch(4, nib * 2 * kTile * kChan / 2 + 32));  // [ib][tile][pair][16 x 2]
    float(*cbuf)[2 * kTile] = reinterpret_cast<float(*)[2 * kTile]>(scratch(5, kChan * kChan));
    const __m512i order = unpacked_order();
    configure_tiles();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t m0 = b * kChan, nm = std::min(kChan, HW - m0);
      const __mmask32 mm = first_words(nm);
      const bf16* src = in + n * I * HW + m0;
      for (int64_t ib = 0; ib < nib; ++ib)
        for (int64_t j = 0; j < kTile; ++j) {
          const int64_t i = ib * kChan + 2 * j;
          const __m512i lo = _mm512_maskz_loadu_epi16(i < I ? mm : 0, src + i * HW);
          const __m512i hi = _mm512_maskz_loadu_epi16(i + 1 < I ? mm : 0, src + (i + 1) * HW);
          bf16* d = bt + (ib * 2 * kTile + j) * kChan;
          _mm512_store_si512(d, _mm512_unpacklo_epi16(lo, hi));
          _mm512_store_si512(d + kTile * kChan, _mm512_unpackhi_epi16(lo, hi));
        }
      for (int64_t o0 = 0; o0 < Ot; o0 += kChan) {
        zero_2x2();
        const bool a_pair = Ot - o0 > kTile;
        for (int64_t ib = 0; ib < nib; ++ib) {
          const bf16* a0 = aw + o0 * Ip + ib * kChan;
          const bf16* bb = bt + ib * 2 * kTile * kChan;
          constexpr int64_t b_stride = kChan * int64_t(sizeof(bf16));
          if (a_pair) {
            step_2x2(a0, a0 + kTile * Ip, Ip * int64_t(sizeof(bf16)), bb, bb + kTile * kChan, b_stride);
          } else {
            step_1x2(a0, Ip * int64_t(sizeof(bf16)), bb, bb + kTile * kChan, b_stride);
          }
        }
        store_2x2(cbuf);
        for (int64_t r = 0; r < kChan && o0 + r < O; ++r) {
          const int64_t o = o0 + r;
          const __m512 bv = _mm512_set1_ps(bias_f[o]);
          const __m512i v = _mm512_permutexvar_epi16(
              order, (__m512i)_mm512_cvtne2ps_pbh(_mm512_add_ps(_mm512_loadu_ps(cbuf[r] + kTile), bv),
                                                  _mm512_add_ps(_mm512_loadu_ps(cbuf[r]), bv)));
          _mm512_mask_storeu_epi16(out + (n * O + o) * HW + m0, mm, v);
        }
      }
    }
  });
}

#pragma GCC pop_options

// Forward of one problem (not run_groups' small groups): false, where zeros_meet (small_groups'
// block-diagonal filter; the caller then runs the whole problem on float32 copies) and x holds an
// infinity or a NaN; else true, having run reads_past's such x on float32 copies itself.
bool forward_one(const Conv2dParams& p, Operands& o, bool zeros_meet = false) {
  const bf16* bias = o.bias.defined() ? reinterpret_cast<const bf16*>(o.bias.const_data_ptr()) : nullptr;
  if (nchw_1x1(p)) {  // (one group: never zeros_meet)
    rows_1x1(p.N, p.H * p.W, p.K, p.C, reinterpret_cast<const bf16*>(o.a.const_data_ptr()),
             reinterpret_cast<const bf16*>(o.b.const_data_ptr()), false, bias, reinterpret_cast<bf16*>(o.out.mutable_data_ptr()));
    return true;
  }
  if (forward(p, reinterpret_cast<const bf16*>(o.a.const_data_ptr()), reinterpret_cast<const bf16*>(o.b.const_data_ptr()),
              bias, reinterpret_cast<bf16*>(o.out.mutable_data_ptr()), o.filter, -1, zeros_meet))
    return true;
  if (zeros_meet) return false;
  run_as_float32(Pass::Forward, p, o);
  return true;
}

// Backward-input of one problem, as forward_one (dy in x's place).
bool backward_input_one(const Conv2dParams& p, Operands& o, bool zeros_meet = false) {
  const bf16* dy = reinterpret_cast<const bf16*>(o.a.const_data_ptr());
  bf16* dx = reinterpret_cast<bf16*>(o.out.mutable_data_ptr());
  if (nchw_1x1(p)) {  // (one group: never zeros_meet)
    rows_1x1(p.N, p.H * p.W, p.C, p.K, dy, reinterpret_cast<const bf16*>(o.b.const_data_ptr()), true, nullptr, dx);
    return true;
  }
  bool done;
  if (!turns_round(p)) {
    done = backward_input_phases(p, dy, reinterpret_cast<const bf16*>(o.b.const_data_ptr()), dx, o.filter, zeros_meet);
  } else {
    const bf16* w = reinterpret_cast<const bf16*>(o.b.const_data_ptr()) + (p.R - 1) * p.ws_r + (p.S - 1) * p.ws_s;
    done = forward(turned(p), dy, w, nullptr, dx, o.filter, p.Kg() * p.ws_k, zeros_meet);
  }
  if (done) return true;
  if (zeros_meet) return false;
  run_as_float32(Pass::BackwardInput, p, o);
  return true;
}

// A 1x1 stride-1 unpadded layer's dw[k][c] = sum_m dy[m][k] x[m][c] is symmetric in x and dy:
// with roles swapped (x as dy, dy as x) the result is dw's transpose, written through swapped
// strides (backward_weight_pixels' A side is the smaller tensor: see backward_weight_one).
Conv2dParams swapped_1x1(const Conv2dParams& p) {
  Conv2dParams q = p;
  q.C = p.K, q.K = p.C;  // H, W = P, Q already
  q.xs_n = p.ys_n, q.xs_c = p.ys_k, q.xs_h = p.ys_p, q.xs_w = p.ys_q;
  q.ys_n = p.xs_n, q.ys_k = p.xs_c, q.ys_p = p.xs_h, q.ys_q = p.xs_w;
  q.ws_k = p.ws_c, q.ws_c = p.ws_k;
  return q;
}

// Backward-weight of one group: 1x1 stride-1 unpadded layers on the pixels as they are read, the
// others on copies (backward_weight); half: float16 (amx_fp16.cpp's). False, nothing written,
// where an operand's infinities or NaNs send the problem to float32 copies.
bool backward_weight_any(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw, bool half) {
  // 1x1: the A side (made again by each task of a part's channel blocks, its tiles read by every
  // channel block) the smaller of x and dy; with the filter's 1M values or more (ResNet-50's
  // 512->2048 @7, batch 8: 1.15-1.20x, channels_last and NCHW) dy's 2048 filters as A.
  // python benchmarks/ab.py with either choice, channels_last, bfloat16, batch 8: 16->96 @112,
  // 24->144 @56, 64->256 @56, 256->1024 @14 swapped 1.1-1.2x (NCHW 1.3-1.6x) faster.
  if (weight_1x1_pixels(p)) {
    if (p.K > p.C && p.K * p.C < (int64_t(1) << 20)) return backward_weight_pixels(swapped_1x1(p), x, dy, dw, half);
    return backward_weight_pixels(p, dy, x, dw, half);
  }
  return backward_weight(p, dy, x, dw, half);
}
void backward_weight_one(const Conv2dParams& p, Operands& o) {
  const bf16* dy = reinterpret_cast<const bf16*>(o.a.const_data_ptr());
  const bf16* x = reinterpret_cast<const bf16*>(o.b.const_data_ptr());
  bf16* dw = reinterpret_cast<bf16*>(o.out.mutable_data_ptr());
  if (!backward_weight_any(p, dy, x, dw, false)) run_as_float32(Pass::BackwardWeight, p, o);
}

// Grouped layers (groups > 1): each group as a problem of its own on contiguous copies of its
// channels (x, dy) and a view of its filters, its result copied into its channels of the output
// (dw's rows of the group are written in place). The copies cost a pass over x and y; ResNeXt's
// 16-channel groups ran the float32 kernels on converted copies at 0.27-0.41x torch.
Conv2dParams group_params(const Conv2dParams& p) {
  Conv2dParams q = p;
  q.C = p.Cg(), q.K = p.Kg(), q.groups = 1;
  if (is_nhwc(p)) {
    q.xs_c = 1, q.xs_w = q.C, q.xs_h = q.W * q.C, q.xs_n = q.H * q.W * q.C;
    q.ys_k = 1, q.ys_q = q.K, q.ys_p = q.Q * q.K, q.ys_n = q.P * q.Q * q.K;
  } else {
    q.xs_w = 1, q.xs_h = q.W, q.xs_c = q.H * q.W, q.xs_n = q.C * q.H * q.W;
    q.ys_q = 1, q.ys_p = q.Q, q.ys_k = q.P * q.Q, q.ys_n = q.K * q.P * q.Q;
  }
  return q;
}

// Groups of 16k channels (forward; backward-input where the filter is turned round: groups of
// 16k filters; backward-weight: 32k channels and filters) run in one pass over a band of all the
// channels (forward's groups). With 16 (mod 32) channels a group, the A rows' last 16 values are
// the next group's, met by zero rows of B: such data must be finite (0 * inf), else it runs on
// float32 copies. ResNeXt's 32 groups of 16 @14 forward 0.55 -> 0.37 ms channels_last (torch 0.16).
// ResNeXt's 32 groups of 32 @7, channels_last, forward 0.47 -> 0.16 ms (torch 0.15).
bool grouped_in_place(Pass pass, const Conv2dParams& p) {
  if (p.groups == 1 || !(is_nchw(p) || is_nhwc(p))) return false;
  if (pass == Pass::Forward) return (p.Cg() % kTile == 0 && p.Kg() >= kTile) || grouped_rows(p);
  if (pass == Pass::BackwardWeight) return (p.Cg() % kChan == 0 && p.Kg() % kChan == 0) || diagonal_groups(p);
  return pass == Pass::BackwardInput && turns_round(p) &&
         ((p.Kg() % kTile == 0 && p.Cg() >= kTile) || grouped_rows(turned(p)));
}

template <typename One>
void per_group(Pass pass, const Conv2dParams& p, Operands& o, One one) {
  if (p.groups == 1 || grouped_in_place(pass, p)) return one(p, o);
  const Conv2dParams q = group_params(p);
  const auto fmt = is_nhwc(p) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t Cg = q.C, Kg = q.K;
  for (int64_t g = 0; g < p.groups; ++g) {
    if (pass == Pass::Forward) {
      const at::Tensor x = o.a.narrow(1, g * Cg, Cg).contiguous(fmt), w = o.b.narrow(0, g * Kg, Kg);
      const at::Tensor bias = o.bias.defined() ? o.bias.narrow(0, g * Kg, Kg) : at::Tensor();
      at::Tensor y = at::empty({q.N, Kg, q.P, q.Q}, o.out.options().memory_format(fmt));
      Operands og{x, w, bias, y};
      one(q, og);
      o.out.narrow(1, g * Kg, Kg).copy_(y);
    } else if (pass == Pass::BackwardInput) {
      const at::Tensor dy = o.a.narrow(1, g * Kg, Kg).contiguous(fmt), w = o.b.narrow(0, g * Kg, Kg);
      at::Tensor dx = at::empty({q.N, Cg, q.H, q.W}, o.out.options().memory_format(fmt));
      Operands og{dy, w, at::Tensor(), dx};
      one(q, og);
      o.out.narrow(1, g * Cg, Cg).copy_(dx);
    } else {
      const at::Tensor dy = o.a.narrow(1, g * Kg, Kg).contiguous(fmt), x = o.b.narrow(1, g * Cg, Cg).contiguous(fmt);
      at::Tensor dw = o.out.narrow(0, g * Kg, Kg);
      Operands og{dy, x, at::Tensor(), dw};
      one(q, og);
    }
  }
}

// Each group costs its copies, band, packing and a round of the thread pool: worth it for a few
// groups, or for groups that fill the tiles (ResNeXt's 32 groups of 16 channels ran 0.54x the
// float32 path's time; 4 groups of 16, 1.46x; 32 of 32 channels at 7x7, 1.18x).
bool grouped_ok(const Conv2dParams& p) {
  return (is_nchw(p) || is_nhwc(p)) && (p.groups <= 4 || (p.Cg() >= kChan && p.Kg() >= kChan));
}
// Small groups (4 <= Cg < 32 dividing 32: ResNeXt's 32 groups of 4, 8 or 16 channels) run as blocks of
// 32 channels (32 / Cg groups each) with a block-diagonal filter: a block's filters see its 32
// channels, zeros where a filter and a channel are of different groups; then they are groups of
// 32 channels (grouped_in_place). A Cg / 32 share of the products is real (8 channels: a
// quarter, still ~2.5x the float32 peak); backward-weight's dw of the blocks is computed whole
// and its diagonal kept. The zeros meet other groups' values: forward and backward-input data
// must be finite (scanned; else float32 copies). ResNeXt's 32-group layers, channels_last, batch
// 4, vs the float32 kernels on copies (benchmarks/ab.py): 8 channels a group @28 forward 1.79x,
// backward-input 1.91x, backward-weight 2.29x faster; 4 @56 1.33x / 1.33x / 1.81x; 16 @14
// backward-weight 1.87x (forward and backward-input were in place already); NCHW 0.95-2.1x.
// (At least 4 channels a group: a depthwise layer would make 1 of 32 products real.)
bool small_groups(const Conv2dParams& p) {
  const int64_t Cg = p.Cg();
  return p.groups > 1 && Cg >= 4 && Cg < kChan && kChan % Cg == 0 && p.groups % (kChan / Cg) == 0 && (is_nchw(p) || is_nhwc(p));
}
Conv2dParams blocked_params(const Conv2dParams& p) {  // the problem on the block-diagonal filter
  Conv2dParams q = p;
  q.groups = p.groups / (kChan / p.Cg());
  q.ws_k = kChan * p.R * p.S, q.ws_c = p.R * p.S, q.ws_r = p.S, q.ws_s = 1;
  return q;
}
// Filter k of group g = k / Kg is block row k, its channels at (g mod 32 / Cg) Cg of the block:
// f(blocked element, element of the filter w / dw (p's strides)) for every element of the groups.
template <typename F>
void for_blocked(const Conv2dParams& p, F f) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, gpb = kChan / Cg;
  for (int64_t k = 0; k < p.K; ++k)
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t t = 0; t < S; ++t)
          f(((k * kChan + k / Kg % gpb * Cg + c) * R + r) * S + t, k * p.ws_k + c * p.ws_c + r * p.ws_r + t * p.ws_s);
}
at::Tensor blocked_filter(const Conv2dParams& p, const at::Tensor& w) {
  at::Tensor d_t = at::zeros({p.K, kChan, p.R, p.S}, w.options().memory_format(at::MemoryFormat::Contiguous));
  const bf16* src = reinterpret_cast<const bf16*>(w.const_data_ptr());
  bf16* d = reinterpret_cast<bf16*>(d_t.data_ptr());
  for_blocked(p, [&](int64_t b, int64_t e) { d[b] = src[e]; });
  return d_t;
}

// With the tiles emulated (no AMX), amx_bf16 takes the layers with 32+ channels and filters in
// one group; in backward-weight only those the float32 path does not run as Winograd (2.25x fewer
// multiplies there). First with one tile product at a time (C loaded and stored around each, at
// about the float32 FMA peak: 227-252 GFLOP/s on channels_last 1x1 and strided layers), for every
// pass only off Winograd. 2 cores Zen 4, batch 4, bfloat16, against the float32 copies (python -m
// conv_ext.bench --suite default --dtype bfloat16 --layout L --passes forward,all --budget 0.5),
// ratio to torch before -> after: 1x1 layers 0.50-0.76x -> 0.72-1.13x, 3x3/2 128@56 0.48-0.59x ->
// 0.70-0.77x, 32->32 @16 0.68-0.84x -> 0.91-0.99x; grouped layers and fewer channels (the stems,
// 16->32 @32) were slower emulated. With C kept in registers across a block's steps
// (amx_tiles.h, 1.11-1.21x) the Winograd layers' forward and backward-input run faster emulated
// too (python benchmarks/ab.py X.so X.so SHAPE --dtype bfloat16 --new-env with the gate off,
// best mins, NHWC / NCHW): forward 512@7 1.39x / 1.16x, 64@56 1.03x / 1.10x, 256@14 1.04x /
// 0.98x; backward-input 512@7 1.57x / 1.12x, 64@56 1.09x / 1.01x, 256@14 0.98x / 0.99x. Their
// backward-weight stays on float32 Winograd (emulated 0.84x at 256@14 NHWC, 0.91x 512@7 NCHW).
// A rule of the automatic choice (Algorithm::preferred): forced (tests, benchmarks), emulated or
// not, it runs every bfloat16 problem it computes. Nor (emulated) the NCHW 1x1 backward-weight that
// gemm_1x1 runs on words of pixel pairs. (choose_automatic asks every algorithm about the float32
// problem, this one included: its supports() tests the dtype first.)
bool worth_running(Pass pass, const Conv2dParams& p) {
  return !amx_bf16_emulated() ||
         (p.groups == 1 && p.C >= 2 * kTile && p.K >= 2 * kTile &&
          (pass != Pass::BackwardWeight ||
           (choose_automatic(pass, p, at::kFloat).name != "winograd" && !gemm_1x1_pixel_pairs(p))));
}
template <Pass pass>
bool preferred(const Conv2dParams& p, at::ScalarType) { return worth_running(pass, p); }

bool supports_forward_any(const Conv2dParams& p, at::ScalarType dtype) {
  if (dtype != at::kBFloat16) return false;
  if (p.groups == 1) return supports_forward(p, dtype);
  if (grouped_rows(p) && supports_any_c(group_params(p), dtype, 1)) return true;  // 8+ filters a group
  if ((grouped_ok(p) || grouped_in_place(Pass::Forward, p)) && supports_forward(group_params(p), dtype)) return true;
  return small_groups(p) && supports_forward_any(blocked_params(p), dtype);
}
bool supports_backward_input_any(const Conv2dParams& p, at::ScalarType dtype) {
  if (dtype != at::kBFloat16) return false;
  if (p.groups == 1) return supports_backward_input(p, dtype);
  if (turns_round(p) && grouped_rows(turned(p)) && supports_any_c(group_params(p), dtype, 1)) return true;
  if ((grouped_ok(p) || grouped_in_place(Pass::BackwardInput, p)) && supports_backward_input(group_params(p), dtype)) return true;
  return small_groups(p) && supports_backward_input_any(blocked_params(p), dtype);
}
// 16+ channels and filters (the tiles' other halves zero: CIFAR's 16->16 layers)
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  if (dtype != at::kBFloat16) return false;
  const Conv2dParams q = p.groups == 1 ? p : group_params(p);
  if ((p.groups == 1 || grouped_ok(p) || grouped_in_place(Pass::BackwardWeight, p)) && q.C >= kTile && supports_any_c(q, dtype))
    return true;
  return small_groups(p) && supports_backward_weight(blocked_params(p), dtype);
}
// Forward or backward-input: with small groups (not in place) on the block-diagonal filter, unless
// o.a (x, dy), which the filter's zeros meet, is not finite (then on float32 copies), found as
// its bands are copied (one(.., true)): a pass over o.a of its own before was 8% of the samples of
// ResNeXt's 32 groups of 4 @56 3x3 channels_last forward, 4% NCHW.
template <typename One>
void run_groups(Pass pass, const Conv2dParams& p, Operands& o, One one) {
  if (!small_groups(p) || grouped_in_place(pass, p)) return per_group(pass, p, o, [&](const Conv2dParams& q, Operands& oq) { one(q, oq, false); });
  const at::Tensor w = blocked_filter(p, o.b);
  Operands ob{o.a, w, o.bias, o.out};
  bool finite = true;
  per_group(pass, blocked_params(p), ob, [&](const Conv2dParams& q, Operands& oq) { finite = finite && one(q, oq, true); });
  if (!finite) run_as_float32(pass, p, o);
}
void run_forward(const Conv2dParams& p, Operands& o) { run_groups(Pass::Forward, p, o, forward_one); }
void run_backward_input(const Conv2dParams& p, Operands& o) { run_groups(Pass::BackwardInput, p, o, backward_input_one); }
void run_backward_weight(const Conv2dParams& p, Operands& o) {
  if (!small_groups(p) || grouped_in_place(Pass::BackwardWeight, p)) return per_group(Pass::BackwardWeight, p, o, backward_weight_one);
  const Conv2dParams q = blocked_params(p);
  at::Tensor dwb = at::empty({p.K, kChan, p.R, p.S}, o.out.options().memory_format(at::MemoryFormat::Contiguous));
  Operands ob{o.a, o.b, o.bias, dwb};
  per_group(Pass::BackwardWeight, q, ob, backward_weight_one);
  const bf16* src = reinterpret_cast<const bf16*>(dwb.const_data_ptr());
  bf16* d = reinterpret_cast<bf16*>(o.out.mutable_data_ptr());
  for_blocked(p, [&](int64_t b, int64_t e) { d[e] = src[b]; });  // the diagonal blocks
}

}  // namespace

namespace amx {
bool split_supported(Pass pass, const Conv2dParams& q) {
  if (q.groups != 1) return false;
  if (pass == Pass::Forward) return supports_forward(q, at::kBFloat16);
  if (pass == Pass::BackwardInput) return supports_backward_input(q, at::kBFloat16);
  return supports_backward_weight(q, at::kBFloat16);
}
bool split_forward(const Conv2dParams& q, const Split& s, const bf16* bias, bf16* y, const at::Tensor* filter) {
  return forward(q, nullptr, nullptr, bias, y, filter, -1, false, &s);
}
bool split_backward_input(const Conv2dParams& q, Split& s, bf16* dx, const at::Tensor* filter) {
  if (!turns_round(q)) return backward_input_phases(q, nullptr, nullptr, dx, filter, false, &s);
  s.w_offset = (q.R - 1) * q.ws_r + (q.S - 1) * q.ws_s;
  return forward(turned(q), nullptr, nullptr, nullptr, dx, filter, q.Kg() * q.ws_k, false, &s);
}
bool split_backward_weight(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw) {
  return backward_weight_any(p, dy, x, dw, true);
}
}  // namespace amx

namespace {

const bool registered =
    register_algorithm(
        {"amx_bf16", Pass::Forward, 50, supports_forward_any, run_forward, true, preferred<Pass::Forward>}) &&
    register_algorithm({"amx_bf16", Pass::BackwardInput, 50, supports_backward_input_any, run_backward_input, true,
                        preferred<Pass::BackwardInput>}) &&
    register_algorithm({"amx_bf16", Pass::BackwardWeight, 50, supports_backward_weight, run_backward_weight, true,
                        preferred<Pass::BackwardWeight>});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
