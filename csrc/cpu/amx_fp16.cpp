// amx_fp16.cpp — float16 convolution on the AMX bfloat16 tile units (forward, backward-input,
// backward-weight), exact in its products: every float16 value is the sum of two bfloat16 values,
//
//   v = hi + lo,   hi = v rounded to bfloat16 (8 significant bits),   lo = v - hi (at most 3 bits),
//
// both exact (a float16 has 11 significant bits; lo is a multiple of v's last place), and
//
//   x . w = xh . wh + xh . wl + xl . wh   (+ xl . wl, left out: under 2^-18 |x w|)
//
// so a float16 convolution is a bfloat16 convolution of three times the channels: the input's
// channels as [hi | hi | lo], the filter's as [hi | lo | hi] (forward; backward-input triples dy's
// channels, the filter's output channels). amx_bf16.cpp runs that problem (forward(), its
// stride phases for backward-input) on a band made from the float16 tensor by split_band (the
// split done as the band is written: no tripled copy of x), the filter split as it is packed
// (split_filter; kept across calls like any packed filter), the float32 sums rounded to float16
// as they are stored (run_tiles' half form). Backward-weight sums over pixels, so there the
// pixels are tripled: amx_bf16.cpp's backward_weight (and, for 1x1 stride-1 layers,
// backward_weight_pixels; for fewer than 16 channels amx_bf16_rows.cpp's backward_weight) with
// `half` copies dy and x as 2N images of hi and lo parts (tiles of hi and lo parts), and its
// steps run dy's hi against x's hi and lo, dy's lo against x's hi, dw rounded to float16 as it is
// stored. TDPBF16PS multiplies bfloat16 pairs exactly and sums in float32, so the result is
// float32 sums of the products of the float16 values but for the xl . wl terms (a relative 2^-18
// at most each, under float16's own rounding of 2^-11 of the result unless the sum cancels
// 2^7-fold), rounded once to float16 — what torch's float32 accumulation gives, to within its
// order of sums. An infinity or a NaN in either operand (hi an infinity meets a lo of 0:
// inf x 0 = NaN) sends the problem to the float32 copies.
//
// Where (Algorithm::preferred): AMX tiles here (not emulated), one group, the problems amx_bf16
// takes in bfloat16 with the tripled channels, 4M multiply-adds and more (preferred, below); a
// large filter on few pixels only when the filter cache keeps its packed form (few_pixels);
// backward-weight: 16+ channels and filters, 1x1 stride-1 layers, others with 64+ a side and 32M
// multiply-adds; RGB stems (amx_bf16_rows.cpp's kernel) with 64+ filters and a filter row of 16+
// values.
// Three tile products for one: against the float32 kernels on float32 copies (the other float16
// path) it pays where the tiles run at more than three times the float32 FMA rate.
// Speed (2 threads, python -m conv_ext.bench --suite S --dtype float16 --passes
// forward,backward_input, against float32 copies; benchmarks/results/float16-amx-cpu.txt, the
// fifty-fifth round in docs/results-history.md): ResNet-50's 3x3 layers 1.17-2.57x faster, its
// 1x1 layers 1.13-2.28x, the 7x7/2 stem's forward 1.16-1.61x; the default suite's geometric mean
// against torch 2.80x -> 3.37x NCHW, 2.48x -> 3.32x channels_last. Backward-weight (fifty-sixth
// round; python benchmarks/ab.py, against float32 copies, batch 4): ResNet-50's 1x1 layers 1.38-2.10x,
// its 3x3 layers 0.97-1.98x (the float32 copies run Winograd at stride 1), MobileNetV2's 1x1
// layers 1.05-1.83x; a ResNet-50 float16 training step 1.07-1.11x faster (python
// benchmarks/ab.py OLD.so NEW.so resnet50 --model --pass train_step --dtype float16).
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "algorithms.h"
#include "amx_tiles.h"
#include "kernel_util.h"

namespace conv_ext {
namespace cpu {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16,f16c")

namespace amx {

// The float16 x (N, C, H, W; NCHW or NHWC) as padded_band's band of 3C bfloat16 channels: channel
// c of x as channels c and C + c (its hi) and 2C + c (its lo) of the band (split_16); channels
// past 3C zero up to Cp, which is a multiple of 32 or (row_mode) 3C itself. *nonfinite: whether
// x holds an infinity or a NaN (a hi does), tested on each band row as it is written.
at::Tensor split_band(const bf16* x, bool nhwc, int64_t N, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
                      int64_t Hp, int64_t Wp, int64_t Cp, int64_t slack, bool* nonfinite) {
  const int64_t C3 = 3 * C, img = Hp * Wp * Cp;
  std::vector<uint8_t> bad(static_cast<size_t>(N * Hp), 0);
  at::Tensor band_t = bf16_buffer(N * img + slack);
  bf16* xb = bf16_data(band_t);
  std::memset(xb + N * img, 0, sizeof(bf16) * slack);
  for_each_task(N * Hp, N * Hp * Wp * Cp * 16, [&](int64_t nh) {
    const int64_t n = nh / Hp, hp = nh % Hp, h = hp - ph;
    bf16* d = xb + n * img + hp * Wp * Cp;
    const int64_t wend = band_row_padding(d, h, H, W, pw, Wp, Cp);
    if (wend < 0) return;
    __m256i hi, lo;
    if (nhwc) {  // a pixel's channels 16 at a time
      const uint16_t* src = x + ((n * H + h) * W) * C;
      for (int64_t ww = 0; ww < wend; ++ww) {
        bf16* o = d + (pw + ww) * Cp;
        for (int64_t c0 = 0; c0 < C; c0 += kTile) {
          const __mmask16 m = first_lanes(C - c0);
          split_16(widen_16(m, src + ww * C + c0), hi, lo);
          _mm256_mask_storeu_epi16(o + c0, m, hi);
          _mm256_mask_storeu_epi16(o + C + c0, m, hi);
          _mm256_mask_storeu_epi16(o + 2 * C + c0, m, lo);
        }
        if (Cp > C3) std::memset(o + C3, 0, sizeof(bf16) * (Cp - C3));
      }
    } else if (Cp % kChan == 0) {  // NCHW: blocks of 32 band channels x 16 pixels, as padded_band's
      const uint16_t* src = x + (n * C * H + h) * W;
      const __m512i pairs = interleave_16();
      for (int64_t w0 = 0; w0 < wend; w0 += kTile) {
        const __mmask16 wm = first_lanes(wend - w0);
        auto channel = [&](int64_t c) {  // band channel c's 16 values
          if (c >= C3) return _mm256_setzero_si256();
          split_16(widen_16(wm, src + (c % C) * H * W + w0), hi, lo);
          return c >= 2 * C ? lo : hi;
        };
        for (int64_t c0 = 0; c0 < Cp; c0 += kChan) {
          __m512i r[kTile];
          for (int64_t i = 0; i < kTile; ++i)
            r[i] = _mm512_permutex2var_epi16(_mm512_castsi256_si512(channel(c0 + 2 * i)), pairs,
                                             _mm512_castsi256_si512(channel(c0 + 2 * i + 1)));
          transpose_16x16(r);
          for (int64_t t = 0; t < std::min(kTile, wend - w0); ++t) _mm512_storeu_si512(d + (pw + w0 + t) * Cp + c0, r[t]);
        }
      }
    } else {  // NCHW, fewer than 32 band channels (row_mode's unpadded band): through a block
      const uint16_t* src = x + (n * C * H + h) * W;
      alignas(64) bf16 blk[kChan][kTile];
      for (int64_t w0 = 0; w0 < wend; w0 += kTile) {
        const __mmask16 wm = first_lanes(wend - w0);
        for (int64_t c = 0; c < C; ++c) {
          split_16(widen_16(wm, src + c * H * W + w0), hi, lo);
          _mm256_store_si256(reinterpret_cast<__m256i*>(blk[c]), hi);
          _mm256_store_si256(reinterpret_cast<__m256i*>(blk[C + c]), hi);
          _mm256_store_si256(reinterpret_cast<__m256i*>(blk[2 * C + c]), lo);
        }
        for (int64_t t = 0; t < std::min(kTile, wend - w0); ++t)
          for (int64_t c = 0; c < C3; ++c) d[(pw + w0 + t) * Cp + c] = blk[c][t];
      }
    }
    bad[nh] = run_has_nonfinite(d, Wp * Cp);
  });
  *nonfinite = any_set(bad);
  return band_t;
}

// Whether the float16 filter w is split from its channels_last form (K x R x S x C in memory) or
// from its KCRS form
bool channels_last_filter(const at::Tensor& w) {
  return !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The float16 filter w (K, C, R, S) split for a band of split_band's, as a bfloat16 buffer laid
// out for pack_tiles to read 16 adjacent filters a load (its gathers of a KCRS filter's values
// took ~2 ms a call for 512->512 3x3 split, the split filter being 7M values):
// - forward: K filters of 3C channels [hi | lo | hi] (x's hi meets w's hi and lo, x's lo w's hi),
//   w3[c'][r][s][k] from a KCRS w, w3[r][s][c'][k] from a channels_last one (split_strides);
// - backward-input: 3K filters [hi; lo; hi] of C channels (dy's channels tripled),
//   w3[k'][r][s][c]: the turned-round problem's filters (c) adjacent.
// *nonfinite: whether w holds an infinity or a NaN.
at::Tensor split_filter(const at::Tensor& w, bool forward, bool* nonfinite) {
  const int64_t K = w.size(0), C = w.size(1), RS = w.size(2) * w.size(3), J = C * RS;
  const bool krsc = channels_last_filter(w);
  // filter k's J values at src + k J: in KCRS order, or RSC for forward from channels_last / backward-input
  const at::Tensor wc = forward ? (krsc ? w : w.contiguous()) : w.contiguous(at::MemoryFormat::ChannelsLast);
  const bf16* src = reinterpret_cast<const bf16*>(wc.const_data_ptr());
  at::Tensor out = bf16_buffer(3 * K * J);
  bf16* dst = bf16_data(out);
  if (!forward) {  // filter k' = part K + k: filter k's values split, as they lie
    std::vector<uint8_t> bad(static_cast<size_t>(K), 0);
    for_each_task(K, K * J * 8, [&](int64_t k) {
      __m256i hi, lo;
      __mmask16 b = 0;
      for (int64_t j = 0; j < J; j += kTile) {
        const __mmask16 m = first_lanes(J - j);
        const __m512 f = widen_16(m, src + k * J + j);
        b |= nonfinite_lanes(m, f);
        split_16(f, hi, lo);
        _mm256_mask_storeu_epi16(dst + k * J + j, m, hi);
        _mm256_mask_storeu_epi16(dst + (K + k) * J + j, m, lo);
        _mm256_mask_storeu_epi16(dst + (2 * K + k) * J + j, m, hi);
      }
      bad[k] = b != 0;
    });
    *nonfinite = any_set(bad);
    return out;
  }
  // forward: 16 filters x 16 of their values at a time, turned into 16 filters' values each
  // (transpose_16x16 on the float32 values) and stored split where value j of part `part` goes. A
  // task is 64 values (two cache lines) of every filter: the stores of a value's filters fill
  // whole lines, and the loads use whole lines. With 16 filters a task (32 bytes of each 1 KiB
  // line of 512 filters stored) it took 35% of a 512->512 3x3 forward's samples with a new filter
  // each call, with 16 values of every filter (half of each line loaded) 26%.
  constexpr int64_t kValues = 4 * kTile;
  const int64_t njb = ceil_div(J, kValues);
  std::vector<uint8_t> bad(static_cast<size_t>(njb), 0);
  for_each_task(njb, K * J * 8, [&](int64_t jb) {
    __m256i hi, lo;
    __mmask16 b = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
      const int64_t kn = std::min(kTile, K - k0);
      const __mmask16 km = first_lanes(kn);
      for (int64_t j0 = jb * kValues; j0 < std::min(J, (jb + 1) * kValues); j0 += kTile) {
        const int64_t jn = std::min(kTile, J - j0);
        const __mmask16 jm = first_lanes(jn);
        __m512i r[kTile];
        for (int64_t i = 0; i < kTile; ++i) {
          const __m512 f = widen_16(i < kn ? jm : 0, src + (k0 + i) * J + j0);
          b |= nonfinite_lanes(i < kn ? jm : 0, f);
          r[i] = _mm512_castps_si512(f);
        }
        transpose_16x16(r);
        for (int64_t t = 0; t < jn; ++t) {
          const int64_t j = j0 + t;
          split_16(_mm512_castsi512_ps(r[t]), hi, lo);
          for (int64_t part = 0; part < 3; ++part) {
            const int64_t at = krsc ? j + (2 * (j / C) + part) * C : part * J + j;  // (r s c' or c' r s) x K
            _mm256_mask_storeu_epi16(dst + at * K + k0, km, part == 1 ? lo : hi);
          }
        }
      }
    }
    bad[jb] = b != 0;
  });
  *nonfinite = any_set(bad);
  return out;
}

}  // namespace amx

#pragma GCC pop_options

namespace {

using namespace amx;

// The problem with the input's channels (forward) or the filters (backward-input: dy's channels)
// tripled; x's and y's strides those of its layout with them (never read through: split_band
// reads the float16 tensor), the filter's a KCRS filter's (what amx_bf16's supports() asks about).
Conv2dParams tripled(const Conv2dParams& p, bool forward) {
  Conv2dParams q = p;
  if (forward) q.C = 3 * p.C;
  else q.K = 3 * p.K;
  if (is_nhwc(p)) {
    q.xs_c = 1, q.xs_w = q.C, q.xs_h = q.W * q.C, q.xs_n = q.H * q.W * q.C;
    q.ys_k = 1, q.ys_q = q.K, q.ys_p = q.Q * q.K, q.ys_n = q.P * q.Q * q.K;
  } else {
    q.xs_w = 1, q.xs_h = q.W, q.xs_c = q.H * q.W, q.xs_n = q.C * q.H * q.W;
    q.ys_q = 1, q.ys_p = q.Q, q.ys_k = q.P * q.Q, q.ys_n = q.K * q.P * q.Q;
  }
  q.ws_s = 1, q.ws_r = q.S, q.ws_c = q.R * q.S, q.ws_k = q.C * q.R * q.S;
  return q;
}
// ... with the strides of split_filter's buffer (krsc: split from a channels_last filter)
Conv2dParams split_strides(Conv2dParams q, bool forward, bool krsc) {
  const int64_t K = q.K, C = q.C, S = q.S;
  if (!forward) q.ws_c = 1, q.ws_s = C, q.ws_r = S * C, q.ws_k = q.R * S * C;       // [k'][r][s][c]
  else if (krsc) q.ws_k = 1, q.ws_c = K, q.ws_s = C * K, q.ws_r = S * C * K;         // [r][s][c'][k]
  else q.ws_k = 1, q.ws_s = K, q.ws_r = S * K, q.ws_c = q.R * S * K;                 // [c'][r][s][k]
  return q;
}

template <Pass pass>
bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  if (dtype != at::kHalf || p.groups != 1 || !(is_nchw(p) || is_nhwc(p))) return false;
  if (pass == Pass::BackwardWeight && p.C < kTile) return rows_supported(p);  // (the stems: amx_bf16_rows)
  return split_supported(pass, pass == Pass::BackwardWeight ? p : tripled(p, pass == Pass::Forward));
}
// Where the split pays (python -m conv_ext.bench --suite S --dtype float16 --layout L --passes
// forward,backward_input, batch 4-8, against the session's base build on float32 copies; the
// fifty-fifth round in docs/results-history.md), in terms of the forward-form problem
// (backward-input: dx's channels are its filters, dy's its channels, its products an output
// value's over the stride phases):
// - 4M multiply-adds or more: CIFAR's 3->16 3x3 stem (3.5M) ran 0.60x / 0.88x (NCHW / channels_last)
//   split, its 32->64 1x1/2 shortcut (1M) 0.75x / 0.77x, where 16->32 3x3/2 (9.4M) ran 1.05x / 1.35x;
// - the RGB stems (3C < 32 band channels side by side, row_mode) with 32+ filters and 64+ products
//   an output value: ResNet's 7x7/2 1.16-1.61x, MobileNetV2's 3x3/2 (27 products) 0.65x / 0.81x;
// - 1x1 layers with enough filters to carry the band's copy and the stores a pixel: channels_last
//   32+ (16->96 and 24->144 @112/@56 backward-input 0.79x and 0.86x), NCHW, whose band is
//   transposed in and outputs gathered out, 256+ forward (64->64, 256->64 and 256->128 @56
//   0.77-0.94x, 128->512 @28 1.77x, 2048->512 @7 1.29x) and 128+ backward-input (64->256 @56
//   0.74x, 128->512 @28 1.30x); MobileNetV2's NCHW 144->24 and 192->32 projections ran 0.64-0.72x;
// - other NCHW layers unless both sides have over 16 channels or an output value 256+ products:
//   CIFAR's 16->32 3x3/2 (144 and 72 products) 0.87-0.93x, 16->16 3x3 (144) 0.91-1.02x, where
//   16->16 5x5 (400) ran 1.44-1.52x, 32->32 3x3 1.07-1.20x, and channels_last all of them 1.33-1.59x.
// Backward-weight (python benchmarks/ab.py BASE.so NEW.so SHAPE --pass backward_weight --dtype
// float16 --layout L --rounds 2, batch 4, against float32 copies; best mins NCHW / channels_last):
// - 1x1 stride-1 layers (tiles made from the pixels as they are read) of any size it takes:
//   64->256, 256->64 and 64->64 @56 1.38-1.69x / 1.73-1.83x, 128->512 @28 1.51x / 1.53x,
//   1024->256 @14 1.83x / 2.10x, 512->2048 and 2048->512 @7 1.38-1.84x / 1.48-1.92x,
//   MobileNetV2's 32->16 and 16->96 @112 1.05-1.15x / 1.35-1.50x, 24->144 and 144->24 @56
//   1.22-1.53x, 96->576 @14 1.47x / 1.83x;
// - the others (dy's rows and x's pixel pairs copied) with 64+ channels and filters and 32M+
//   multiply-adds: 3x3 64@56 0.97-1.04x / 1.00-1.04x, 128@28 1.26x / 1.32x, 256@14 1.10-1.17x /
//   1.12-1.24x, 512@7 1.38x / 1.54x (padded; unpadded, 35 of an image's 64 grid pixels real,
//   0.85-0.91x / 1.07-1.19x), 128@56/2 1.68-1.74x / 1.49-1.98x, 1x1/2 256->512 @56 1.46x / 1.27x,
//   512->1024 @28 1.46x / 1.56x and 1024->2048 @14 1.62x / 2.03x, 5x5 96@28 1.95x; smaller ones,
//   where the float32 copies run Winograd: CIFAR's 64@8 (batch 8, 19M) 0.93x / 0.96x, 32->32 @32
//   0.87x / 0.91x, 16->16 0.55x / 0.50x, 32->64 3x3/2 0.91x / 1.05x;
// - the RGB stems (amx_bf16_rows' kernel: a filter row's S taps of C channels side by side, S C
//   of a tile row's 32 values real) with 64+ filters and 16+ values a row: ResNet's 7x7/2 (21)
//   1.04x / 1.08x (--rounds 3); VGG's 3x3 (9 of 32) 0.88x / 0.81x, MobileNetV2's 3x3/2 with 32
//   filters slower too (benchmarks/algos.py --dtype float16, best mins 1.44 vs 1.36 and 1.69
//   vs 1.31 ms NCHW / channels_last), left on the float32 copies.
template <Pass pass>
bool preferred(const Conv2dParams& p, at::ScalarType) {
  if (amx_bf16_emulated() || p.macs() < (int64_t(1) << 22)) return false;
  if (pass == Pass::BackwardWeight) {
    if (p.C < kTile) return p.K >= 64 && p.S * p.C >= 16;  // (the RGB stems: amx_bf16_rows' kernel)
    // (a 1x1 stride-1 unpadded layer: backward-weight's tiles made from the pixels as they are read)
    return is_pointwise(p) || (std::min(p.C, p.K) >= 64 && p.macs() >= (int64_t(1) << 25));
  }
  const bool forward = pass == Pass::Forward, nhwc = is_nhwc(p);
  const int64_t filters = forward ? p.K : p.C;
  const int64_t products = forward ? p.C * p.R * p.S : p.K * p.R * p.S / (p.stride_h * p.stride_w);
  if (forward && 3 * p.C < kChan) return p.K >= 32 && products >= 64;
  if (p.R == 1 && p.S == 1) return filters >= (nhwc ? 32 : forward ? 256 : 128);
  return nhwc || std::min(p.C, p.K) > 16 || products >= 256;
}

const bf16* half_data(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.const_data_ptr()); }
bf16* half_data(at::Tensor& t) { return reinterpret_cast<bf16*>(t.mutable_data_ptr()); }

// Splitting and packing a filter costs ~1-1.5 ns a value (its three parts written twice: 512->512
// 3x3, 2.4M values, ~3 ms a call, 2048->512 1x1 ~1 ms), where the float32 path packs its own
// filter at ~0.1-0.2 ns a value: layers with few output pixels a filter value (N P Q) and a large
// filter run on float32 copies unless the filter cache keeps the packed filter (inference, frozen
// layers: then 1.8-2.4x faster than float32 copies for 512->512 3x3 @7 at batch 4). Measured
// against float32 copies with a new filter each call (python benchmarks/ab.py OLD.so NEW.so SHAPE
// --pass forward --dtype float16 --new-filter): see the fifty-fifth round in
// docs/results-history.md.
bool few_pixels(const Conv2dParams& p) {
  return p.N * p.P * p.Q < 512 && p.K * p.C * p.R * p.S > (int64_t(1) << 16);
}

void run_forward(const Conv2dParams& p, Operands& o) {
  Split s{half_data(o.a), p.C, [&](bool* bad) { return split_filter(o.b, true, bad); }, 0, few_pixels(p)};
  const Conv2dParams q = split_strides(tripled(p, true), true, channels_last_filter(o.b));
  if (!split_forward(q, s, o.bias.defined() ? half_data(o.bias) : nullptr, half_data(o.out), o.filter))
    run_as_float32(Pass::Forward, p, o);
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  Split s{half_data(o.a), p.K, [&](bool* bad) { return split_filter(o.b, false, bad); }, 0, few_pixels(p)};
  if (!split_backward_input(split_strides(tripled(p, false), false, false), s, half_data(o.out), o.filter))
    run_as_float32(Pass::BackwardInput, p, o);
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  const auto split = p.C < kTile ? split_backward_weight_rows : split_backward_weight;
  if (!split(p, half_data(o.a), half_data(o.b), half_data(o.out))) run_as_float32(Pass::BackwardWeight, p, o);
}

const bool registered =
    register_algorithm({"amx_fp16", Pass::Forward, 50, supports<Pass::Forward>, run_forward, true, preferred<Pass::Forward>}) &&
    register_algorithm({"amx_fp16", Pass::BackwardInput, 50, supports<Pass::BackwardInput>, run_backward_input, true,
                        preferred<Pass::BackwardInput>}) &&
    register_algorithm({"amx_fp16", Pass::BackwardWeight, 50, supports<Pass::BackwardWeight>, run_backward_weight, true,
                        preferred<Pass::BackwardWeight>});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
