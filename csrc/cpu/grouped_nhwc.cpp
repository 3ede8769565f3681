// grouped_nhwc.cpp — backward-weight of grouped 3x3 convolutions at stride 1 or 2 with few
// channels a group (ResNeXt's 128->128 g32: 4 input and 4 output channels a group; 256->256 g32
// @56/2: 8 + 8), float32 (bfloat16 widened: below), on NHWC data: channels_last operands as they
// lie, NCHW ones transposed into bands per task.
//
//   dw[k,c,r,s] = sum_{n,p,q} dy[n,p,q,k] * x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, g(k)*Cg + c]
//
// Why: implicit_gemm vectorises a group's backward-weight over its output channels, so with 4 of
// them a group it fills 4 of 16 lanes. Here a vector holds 16 consecutive input channels -- the
// 16/Cg groups they belong to, side by side in an NHWC pixel -- and the dy value each lane needs
// (its own group's output channel k) is a permute of one vector of dy: lane l takes dy channel
// (l / Cg) * Kg + k of the block. The loop is dy-stationary: per output pixel, one load of dy,
// NK permutes, then for every tap (r, s) one load of x from a zero-padded band (the stride is
// only an address step) and one FMA into that tap's accumulator -- 9*NK accumulators in
// registers (NK = 2 output channels at a time: 18), 9 FMAs a permute at any stride.
//
// Tasks: chunks of the N*P output rows; a chunk walks its rows in batches whose x band (one
// block) stays in L1, and all the blocks of a batch in turn (an NHWC pixel's channels are read
// together). A chunk's sums go to its own partial buffer and the buffers are added in chunk
// order: the same bits for any thread count.
//
// Speed (2 threads, batch 4, ms median of 15, torch and the algorithms in random order;
// python benchmarks/algos.py N,C,H,W,K,3,S,1,G --layout L --pass backward_weight):
//   256->256 g32 @56/2 (Cg = Kg = 8): NHWC 1.22 [implicit_gemm 3.08], torch 2.37;
//                                     NCHW 1.22 [3.03], torch 2.45
//   128->128 g32 @56 (4 + 4):         NHWC 1.06 [5.2], torch 2.7; NCHW 1.16 [4.1], torch 9.8
//   256->256 g32 @28 (8 + 8):         NHWC 0.85 [2.0], torch 1.14; NCHW 0.88 [2.2], torch 3.0
// The x-stationary form before (a permute of x per input pixel, a dy band) needed a permute per
// 9 FMAs only at stride 1: at stride 2 each input pixel meets 1, 2 or 4 taps, so its classes of
// pixels ran 1-4 FMAs a permute with 2-8 accumulator chains (latency-bound): 256 g32 @56/2 NHWC
// 1.5 ms. It read x in place and built the dy band: 128 g32 @56 NHWC 1.2-1.7, 256 g32 @28 0.90.
// With 16 channels a group (one group a vector, the permute a broadcast) implicit_gemm is faster
// in NHWC (512 g32 @14: 0.61 vs 0.88 ms), so Cg < 16.
// bfloat16 (2026-12-04): dy and x widened into float32 scratch as each band is packed (the
// band's rows in their own layout, then pack_band), dw summed in float32 and rounded once — the
// same bits as the float32 copies of the whole tensors it ran on before, without them. Batch 4, 2
// threads, old/new (python benchmarks/ab.py OLD.so NEW.so 4,256,56,56,256,3,2,1,32 --pass
// backward_weight --dtype bfloat16 --layout L, best mins): 256 g32 @56/2 1.09x NHWC / 1.13x NCHW,
// 128 g32 @56 and 256 g32 @28 1.01-1.04x (the sweeps, at the float32 FMA rate, are the time).
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "grouped_nhwc.cpp"
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// Cg a power of two below the vector width (a vector holds whole groups), Kg <= Cg (their dy
// channels fit one vector), 3x3, stride 1 or 2; NCHW or NHWC.
// bfloat16 too: the bands widened as they are packed (see grouped_nhwc_backward_weight).
bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  const int64_t vl = use_avx512() ? 16 : 8, Cg = p.Cg();
  return (dtype == at::kFloat || dtype == at::kBFloat16) && simd_available() && (is_nchw(p) || is_nhwc(p)) &&
         weight_is_kcrs(p) && p.groups > 1 && Cg >= 2 && Cg < vl && (vl % Cg) == 0 && p.Kg() <= Cg && p.R == 3 &&
         p.S == 3 && p.stride_h <= 2 && p.stride_w <= 2;
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {  // dw in float32, rounded once
    const at::Tensor dw = at::empty(o.out.sizes(), o.out.options().dtype(at::kFloat));
    auto f = use_avx512() ? avx512::grouped_nhwc_backward_weight<uint16_t>
                          : avx2::grouped_nhwc_backward_weight<uint16_t>;
    f(p, static_cast<const uint16_t*>(o.a.const_data_ptr()), static_cast<const uint16_t*>(o.b.const_data_ptr()),
      dw.mutable_data_ptr<float>(), is_nhwc(p));
    o.out.copy_(dw);
    return;
  }
  auto f = use_avx512() ? avx512::grouped_nhwc_backward_weight<float> : avx2::grouped_nhwc_backward_weight<float>;
  f(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), is_nhwc(p));
}

const bool registered = register_algorithm({"grouped_nhwc", Pass::BackwardWeight, 18, supports, run_backward_weight});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

// output channels a sweep takes: 9*kNK accumulators (AVX2 has 16 registers: one channel)
constexpr int kNK = VL == 16 ? 2 : 1;

// lane l of the result = v[idx[l]]
inline V permute(V v, const float* idx) {
#if CONV_EXT_ISA_BITS == 512
  return _mm512_maskz_permutexvar_ps(0xFFFF, _mm512_castps_si512(Isa::load(idx)), v);
#else
  return _mm256_permutevar8x32_ps(v, _mm256_castps_si256(Isa::load(idx)));
#endif
}

// acc[k][t] += sum over the np x Q output pixels of perm_k(dy) * x-band at tap t, for the NK
// output channels k0.. of each group of the block; then added to part[(k0 + k)*9 + t].
//   dy pixel (i, j) at dyb + (i*Q + j)*VL; its tap t reads xb + i*xrs + j*xcs + toff[t]
template <int NK>
void sweep(const float* dyb, int64_t np, int64_t Q, const float* idx, const float* xb, int64_t xrs, int64_t xcs,
           const int64_t* toff, float* part) {
  V acc[NK][9];
  for (int k = 0; k < NK; ++k)
    for (int t = 0; t < 9; ++t) acc[k][t] = Isa::zero();
  const float* dp = dyb;
  for (int64_t i = 0; i < np; ++i) {
    const float* xp = xb + i * xrs;
    for (int64_t j = 0; j < Q; ++j, dp += VL, xp += xcs) {
      const V dv = Isa::load(dp);
      V dk[NK];
      for (int k = 0; k < NK; ++k) dk[k] = permute(dv, idx + k * VL);
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) {
        const V xv = Isa::load(xp + toff[t]);
#pragma GCC unroll 2
        for (int k = 0; k < NK; ++k) acc[k][t] = Isa::fma(dk[k], xv, acc[k][t]);
      }
    }
  }
  for (int k = 0; k < NK; ++k)
    for (int t = 0; t < 9; ++t) {
      float* o = part + (k * 9 + t) * VL;
      Isa::store(o, Isa::add(Isa::load(o), acc[k][t]));
    }
}

// pack_band of rows [h_lo, h_hi) of image n, channels [c0, c0 + cn) of a (Ct, Hs, Ws) tensor in
// either layout; bfloat16 (T = uint16_t): those values widened first into float32 scratch (slot 3)
// in the same layout, cn channels, and packed from there
template <typename T>
void pack_band_of(const T* src, bool nhwc, int64_t Ct, int64_t Hs, int64_t Ws, int64_t n, int64_t c0, int64_t cn,
                  int64_t h_lo, int64_t h_hi, int64_t padL, int64_t Wp, float* dst) {
  if constexpr (std::is_same_v<T, float>) {
    pack_band(src, nhwc, Ct, Hs, Ws, n, c0, cn, h_lo, h_hi, padL, Wp, VL, dst);
  } else {
    const int64_t rows = h_hi - h_lo, m = rows * Ws;
    float* buf = scratch(3, m * cn);
    if (nhwc)
      for (int64_t i = 0; i < m; ++i) widen_row(src + (n * Hs * Ws + h_lo * Ws + i) * Ct + c0, cn, buf + i * cn);
    else
      for (int64_t c = 0; c < cn; ++c) widen_row(src + ((n * Ct + c0 + c) * Hs + h_lo) * Ws, m, buf + c * m);
    pack_band(buf, nhwc, cn, rows, Ws, 0, 0, cn, 0, rows, padL, Wp, VL, dst);
  }
}

}  // namespace

// T: float, or uint16_t for bfloat16 dy and x (widened as the bands are packed; dw float32)
template <typename T>
void grouped_nhwc_backward_weight(const Conv2dParams& p, const T* dy, const T* x, float* dw, bool nhwc) {
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, P = p.P, Q = p.Q, G = p.groups;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dwl = p.dil_w;
  const int64_t sh = p.stride_h, sw = p.stride_w;
  const int64_t gpb = VL / Cg, nkb = ceil_div(G, gpb);  // groups a block of VL input channels
  // permute indices: lane l (input channel l % Cg of the block's group l / Cg) takes dy channel
  // (l / Cg) * Kg + k of the block
  alignas(64) float idx[VL * VL];  // Kg <= Cg <= VL / 2
  for (int64_t k = 0; k < Kg; ++k)
    for (int l = 0; l < VL; ++l) {
      const int32_t v = static_cast<int32_t>((l / Cg) * Kg + k);
      std::memcpy(&idx[k * VL + l], &v, sizeof(v));
    }
  // The x band of output rows [p_a, p_b): input rows p_a*sh - ph .. (p_b - 1)*sh - ph + 2*dh,
  // columns -pw .. (Q - 1)*sw - pw + 2*dwl, zeros outside x; tap (r, s) of output pixel (p, q)
  // reads band row (p - p_a)*sh + r*dh, column q*sw + s*dwl.
  const int64_t Wx = (Q - 1) * sw + 2 * dwl + 1;
  int64_t toff[9];
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t s = 0; s < 3; ++s) toff[r * 3 + s] = (r * dh * Wx + s * dwl) * VL;
  const int64_t rows = N * P;
  // about 4M multiply-adds a chunk, up to 16, and as many more as a whole number of rounds on the
  // machine's threads needs (kernel_util.h, balanced_chunks; the partials are small: 13 chunks
  // ran 7 + 6 on 2 threads, now 14)
  const int64_t nchunk = balanced_chunks(std::max<int64_t>(1, std::min<int64_t>({16, rows, p.macs() / (int64_t(4) << 20)})),
                                         std::min<int64_t>(32, rows), 1, 16, 0.0);
  const int64_t part = Kg * 9 * VL;  // one (chunk, block): [k][tap][lane]
  float* partial = scratch(0, nchunk * nkb * part);
  // output rows a batch: its x band (one block) about 8K floats, in L1 while the sweeps read it
  const int64_t rsub = std::max<int64_t>(1, (8192 / (Wx * VL) - 2 * dh) / sh);
  for_each_task(nchunk, p.macs(), [&](int64_t ch) {
    float* out_ch = partial + ch * nkb * part;
    std::fill(out_ch, out_ch + nkb * part, 0.f);
    const int64_t row_b = rows * (ch + 1) / nchunk;
    for (int64_t row = rows * ch / nchunk; row < row_b;) {
      const int64_t n = row / P, p_a = row % P, p_b = std::min({P, p_a + rsub, p_a + (row_b - row)});
      row += p_b - p_a;
      const int64_t h0 = p_a * sh - ph, nr = (p_b - p_a - 1) * sh + 2 * dh + 1;  // band rows h0 ..
      const int64_t h_lo = std::max<int64_t>(0, h0), h_hi = std::min(H, h0 + nr);
      float* xb = scratch(1, nr * Wx * VL);
      float* dyb = scratch(2, (p_b - p_a) * Q * VL);
      for (int64_t kb = 0; kb < nkb; ++kb) {  // all blocks of a batch: a pixel's channels are read together
        const int64_t g0 = kb * gpb, ng = std::min(gpb, G - g0);
        if (h_hi > h_lo) {
          pack_band_of(x, nhwc, C, H, W, n, g0 * Cg, ng * Cg, h_lo, h_hi, pw, Wx, xb + (h_lo - h0) * Wx * VL);
          if (h_lo > h0) std::memset(xb, 0, sizeof(float) * (h_lo - h0) * Wx * VL);
          if (h0 + nr > h_hi) std::memset(xb + (h_hi - h0) * Wx * VL, 0, sizeof(float) * (h0 + nr - h_hi) * Wx * VL);
        } else {
          std::memset(xb, 0, sizeof(float) * nr * Wx * VL);
        }
        pack_band_of(dy, nhwc, K, P, Q, n, g0 * Kg, ng * Kg, p_a, p_b, 0, Q, dyb);
        float* out = out_ch + kb * part;
        for (int64_t k0 = 0; k0 < Kg; k0 += kNK) {
          if (kNK == 2 && Kg - k0 >= 2)
            sweep<2>(dyb, p_b - p_a, Q, idx + k0 * VL, xb, sh * Wx * VL, sw * VL, toff, out + k0 * 9 * VL);
          else
            sweep<1>(dyb, p_b - p_a, Q, idx + k0 * VL, xb, sh * Wx * VL, sw * VL, toff, out + k0 * 9 * VL);
        }
      }
    }
  });
  // dw[k][c][r][s] = sum over the chunks, in chunk order (into chunk 0's buffers)
  sum_chunks(partial, nchunk, nkb * part);
  for_each_task(nkb, nkb * part, [&](int64_t kb) {
    const float* sum = partial + kb * part;
    const int64_t ng = std::min(gpb, G - kb * gpb);
    for (int64_t gl = 0; gl < ng; ++gl)
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t c = 0; c < Cg; ++c)
          for (int t = 0; t < 9; ++t)
            dw[(((kb * gpb + gl) * Kg + k) * Cg + c) * 9 + t] = sum[(k * 9 + t) * VL + gl * Cg + c];
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
