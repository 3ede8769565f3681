// bf16_pairs.cpp — bfloat16 forward and backward-input on CPUs with AVX512-BF16 but no AMX tiles
// (AMD Zen 4 and later): implicit_gemm's engine with every step a VDPBF16PS instead of an FMA.
//
// VDPBF16PS takes two vectors of 16 words, each word two bfloat16 values, and adds to each float32
// lane the sum of its two products: c[j] += a[2j]*b[2j] + a[2j+1]*b[2j+1] (exact products, float32
// sums, denormals flushed as AMX does). Read a word of two channels as one "channel" and a
// convolution over C bfloat16 channels is one over C/2 words, which implicit_gemm runs unchanged:
// its bands, panels, tasks and tiles move words as they moved floats, and its micro-kernel
// (simd.h, Tile::pairs) broadcasts a word of the input (two channels of a pixel) against 16 words
// of the filter (the same two channels of 16 filters) — two multiply-adds a lane a step, where
// the FMA did one, at the FMA's rate on Zen 4.
//
//   forward          the words are pairs of input channels: a channels_last input is its own
//                    array of words; the filter's pairs (w[k, 2i, r, s], w[k, 2i+1, r, s]) are
//                    adjacent in a channels_last or 1x1 filter (read as it lies) and built here
//                    for a KCRS one (forward_words).
//   backward-input   the words are pairs of output channels (dy's channels, the reduction of
//                    dx = sum_k dy[k] w[k, c]): dy as it lies, the filter's rows k = 2i and 2i + 1
//                    interleaved (backward_input_words), KCRS or channels_last alike.
// The results come out as float32 (bias added in float32) and are rounded to bfloat16 once.
//
// Where it runs: channels_last activations with an even number of channels a group on the reduced
// side (C/groups forward, K/groups backward-input), chosen over amx_bf16's emulated tiles
// (amx_tiles.h) where there are no AMX tiles; amx_bf16 keeps the machines that have them, the
// backward-weight (a reduction over pixels, not channels) and NCHW.
#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "algorithms.h"
#include "filter_cache.h"
#include "kernel_util.h"

namespace conv_ext {
namespace cpu {
namespace avx512 {
bool implicit_gemm_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y,
                           bool nhwc, const at::Tensor* filter, bool pairs, uint16_t* y16);
bool implicit_gemm_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx, bool nhwc,
                                  const at::Tensor* filter, bool pairs, uint16_t* dx16);
}  // namespace avx512

namespace {

constexpr const char* kName = "bf16_pairs";

// An AVX512-BF16 CPU (amx_bf16_available: with AMX tiles or without) and, unless this algorithm is
// forced (tests, benchmarks), no AMX tiles: where they exist amx_bf16 runs them.
bool runs_here(Pass pass) {
  return amx_bf16_available() && (amx_bf16_emulated() || forced_algorithm(pass) == kName);
}

bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && is_nhwc(p) && weight_is_kcrs(p) && p.Cg() % 2 == 0 && runs_here(Pass::Forward);
}

bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kBFloat16 && is_nhwc(p) && weight_is_kcrs(p) && p.Kg() % 2 == 0 &&
         runs_here(Pass::BackwardInput);
}

using bf16 = uint16_t;
const bf16* halves(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.const_data_ptr()); }
const float* words(const at::Tensor& t) { return reinterpret_cast<const float*>(t.const_data_ptr()); }
bf16* out16(at::Tensor& t) { return reinterpret_cast<bf16*>(t.mutable_data_ptr()); }

// t itself when its data can be read as 32-bit words (4-byte aligned), else an aligned copy
at::Tensor word_aligned(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 4 == 0) return t;
  return t.clone(t.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")

// The forward filter's words for a KCRS filter with R*S > 1: d[k][i][rs] = (w[k][2i][rs],
// w[k][2i+1][rs]) — a "KCRS" filter of Cg/2 word channels. Channels 2i and 2i+1 of a filter are
// 2*R*S adjacent values, interleaved by one permute when they fit a vector.
void forward_words(const Conv2dParams& p, const bf16* src, bf16* dst) {
  const int64_t K = p.K, Cg = p.Cg(), RS = p.R * p.S, pairs = Cg / 2;
  for_each_task(K, K * Cg * RS * 4, [&](int64_t k) {
    const bf16* s = src + k * Cg * RS;
    bf16* o = dst + k * Cg * RS;
    if (2 * RS <= 32) {
      alignas(64) int16_t idx[32];
      for (int j = 0; j < 32; ++j) idx[j] = static_cast<int16_t>(j % 2 ? RS + j / 2 : j / 2);
      const __m512i perm = _mm512_load_si512(idx);
      const __mmask32 m = static_cast<__mmask32>((uint64_t(1) << (2 * RS)) - 1);
      for (int64_t i = 0; i < pairs; ++i) {
        const __m512i v = _mm512_maskz_loadu_epi16(m, s + 2 * i * RS);
        _mm512_mask_storeu_epi16(o + 2 * i * RS, m, _mm512_permutexvar_epi16(perm, v));
      }
      return;
    }
    for (int64_t i = 0; i < pairs; ++i)
      for (int64_t rs = 0; rs < RS; ++rs) {
        o[(2 * i) * RS + 2 * rs] = s[(2 * i) * RS + rs];
        o[(2 * i) * RS + 2 * rs + 1] = s[(2 * i + 1) * RS + rs];
      }
  });
}

// The backward-input filter's words: rows k = 2i and 2i + 1 of w (each Cg*R*S values, KCRS or
// channels_last alike) interleaved, d[i][...] = (w[2i][...], w[2i+1][...]).
void backward_input_words(const Conv2dParams& p, const bf16* src, uint32_t* dst) {
  const int64_t L = p.Cg() * p.R * p.S, rows = p.K / 2;
  for_each_task(rows, rows * L * 8, [&](int64_t i) {
    const bf16* a = src + 2 * i * L;
    const bf16* b = a + L;
    uint32_t* o = dst + i * L;
    for (int64_t j = 0; j < L; j += 16) {
      const __mmask16 m = static_cast<__mmask16>(L - j >= 16 ? 0xFFFF : (1u << (L - j)) - 1);
      // (the maskz forms: no undefined lanes for GCC's warnings)
      const __m512i lo = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(m, a + j));
      const __m512i hi = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(m, b + j));
      _mm512_mask_storeu_epi32(o + j, m, _mm512_or_si512(lo, _mm512_maskz_slli_epi32(0xFFFF, hi, 16)));
    }
  });
}

#pragma GCC pop_options

// The filter's words (K*Cg*R*S/2 of them) as build writes them: kept with the filter's other
// packed forms (filter_cache.h) while it is unchanged when the kernel reads the user's filter
// (o.filter), else built into per-thread scratch.
template <class Build>
PackedFilter filter_words(const Operands& o, const Conv2dParams& p, int64_t kind, const Build& build) {
  const int64_t n = p.K * p.Cg() * p.R * p.S / 2;
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(static_cast<size_t>(n));
  const std::initializer_list<int64_t> tag = {100 + kind, p.K, p.Cg(), p.R, p.S, weight_is_krsc(p)};
  return packed_filter(o.filter, tag, n, scratch.data(), [&](float* d) { build(halves(o.b), d); });
}

// The strides of a channels_last (N, C, H, W) array and of an (N, K, P, Q) one in p.
void nhwc_strides(Conv2dParams& q) {
  q.xs_c = 1, q.xs_w = q.C, q.xs_h = q.W * q.C, q.xs_n = q.H * q.W * q.C;
  q.ys_k = 1, q.ys_q = q.K, q.ys_p = q.Q * q.K, q.ys_n = q.P * q.Q * q.K;
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const at::Tensor x = word_aligned(o.a);
  const bool krsc = weight_is_krsc(p), in_place = krsc || p.R * p.S == 1;  // pairs adjacent
  const at::Tensor w_in = in_place ? word_aligned(o.b) : at::Tensor();
  const PackedFilter wp = in_place ? PackedFilter{w_in, words(w_in)} : filter_words(o, p, 0, [&](const bf16* s, float* d) {
    forward_words(p, s, reinterpret_cast<bf16*>(d));
  });
  Conv2dParams q = p;
  q.C = p.C / 2;
  nhwc_strides(q);
  if (krsc) q.ws_c = 1, q.ws_s = q.Cg(), q.ws_r = q.S * q.Cg(), q.ws_k = q.R * q.S * q.Cg();
  else q.ws_s = 1, q.ws_r = q.S, q.ws_c = q.R * q.S, q.ws_k = q.Cg() * q.R * q.S;
  const at::Tensor bias = o.bias.defined() ? o.bias.to(at::kFloat) : at::Tensor();
  at::Tensor y = at::empty(o.out.sizes(), o.out.options().dtype(at::kFloat), at::MemoryFormat::ChannelsLast);
  if (!avx512::implicit_gemm_forward(q, words(x), wp.data, bias.defined() ? bias.const_data_ptr<float>() : nullptr,
                                     y.mutable_data_ptr<float>(), true, o.filter, true, out16(o.out)))
    o.out.copy_(y);
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  const at::Tensor dy = word_aligned(o.a);
  const PackedFilter wp = filter_words(o, p, 1, [&](const bf16* s, float* d) {  // o.b's layout: p's filter strides hold
    backward_input_words(p, s, reinterpret_cast<uint32_t*>(d));
  });
  Conv2dParams q = p;
  q.K = p.K / 2;
  nhwc_strides(q);
  at::Tensor dx = at::empty(o.out.sizes(), o.out.options().dtype(at::kFloat), at::MemoryFormat::ChannelsLast);
  if (!avx512::implicit_gemm_backward_input(q, words(dy), wp.data, dx.mutable_data_ptr<float>(), true, o.filter, true,
                                            out16(o.out)))
    o.out.copy_(dx);
}

const bool registered =
    register_algorithm({kName, Pass::Forward, 55, supports_forward, run_forward, true}) &&
    register_algorithm({kName, Pass::BackwardInput, 55, supports_backward_input, run_backward_input, true});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
