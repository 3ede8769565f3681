// grouped_nhwc.cpp — backward-weight of grouped 3x3 stride-1 convolutions with few channels a
// group (ResNeXt's 128->128 g32: 4 input and 4 output channels a group), fp32, computed on NHWC
// data: channels_last operands as they lie, NCHW ones transposed into NHWC bands per task.
//
//   dw[k,c,r,s] = sum_{n,h,w} x[n,h,w, g(k)*Cg + c] * dy[n, h+ph-r*dh, w+pw-s*dw, k]
//
// Why: implicit_gemm vectorises a group's backward-weight over its output channels, so with 4 of
// them a group it fills 4 of 16 lanes. Here a vector holds 16 consecutive output channels -- the
// 16/Kg groups they belong to -- and the x value each lane needs (its own group's channel c) is
// a permute of one vector of x: lane l takes x channel (l / Kg) * Cg + c of the block's groups,
// which sit side by side in an NHWC pixel. The loop is x-stationary: per input pixel, one
// (masked) load of x, NC permutes, then for every tap (r, s) one load of dy from a zero-padded
// band and one FMA into that tap's accumulator -- 9*NC accumulators in registers (NC = 2 input
// channels at a time: 18) over all the pixels of a chunk of rows.
//
// Tasks: (block of 16 output channels, chunk of the N*H input rows); a chunk's sums go to its own
// partial buffer and the buffers are added in chunk order: the same bits for any thread count.
//
// Speed (2 threads, batch 4, ms median of 15, torch and the algorithms in random order;
// python benchmarks/algos.py N,C,H,W,K,3,1,1,G --layout nhwc --pass backward_weight):
//   128->128 g32 @56 (Cg = Kg = 4): 1.2-1.7 against implicit_gemm's 5.6-6.8, torch 2.8-5.3
//   256->256 g32 @28 (8 + 8):       0.90 against 2.03, torch 1.08
//   64->64 g16 @56 (4 + 4):         1.00 against 3.87, torch 1.75
// NCHW (x rows and dy rows through transpose_rows into [pixel][16] bands; implicit_gemm in
// brackets): 128 g32 @56 1.47 [5.2], torch 14.6; 256 g32 @28 1.47 [4.1], torch 2.4; 64 g16 @56
// 0.77 [2.8], torch 7.1.
// Stride 2 (ResNeXt's first block of a stage) stays with implicit_gemm.
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "grouped_nhwc.cpp"
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// Kg a power of two below the vector width (a vector holds whole groups), Cg <= Kg (their x
// channels fit one vector), 3x3, stride 1; NCHW or NHWC.
bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  const int64_t vl = use_avx512() ? 16 : 8, Kg = p.Kg();
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) && p.groups > 1 && Kg >= 2 &&
         Kg < vl && (vl % Kg) == 0 && p.Cg() <= Kg && p.R == 3 && p.S == 3 && p.stride_h == 1 && p.stride_w == 1;
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::grouped_nhwc_backward_weight : avx2::grouped_nhwc_backward_weight;
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

// input channels a sweep takes: 9*kNC accumulators (AVX2 has 16 registers: one channel)
constexpr int kNC = VL == 16 ? 2 : 1;

// lane l of the result = v[idx[l]]
inline V permute(V v, const float* idx) {
#if CONV_EXT_ISA_BITS == 512
  return _mm512_permutexvar_ps(_mm512_castps_si512(Isa::load(idx)), v);
#else
  return _mm256_permutevar8x32_ps(v, _mm256_castps_si256(Isa::load(idx)));
#endif
}

// acc[c][t] += sum over the pixels of rows [0, nrows) x [0, W) of perm_c(x) * dy-band at tap t,
// for the NC input channels c0.. of the chunk; then added to part[c0 + c][t].
template <int NC>
void sweep(const float* xrow0, int64_t xrs, int64_t C, int64_t nrows, int64_t W, M xm, const float* idx,
           const float* band, int64_t Wb, const int64_t* toff, float* part) {
  V acc[NC][9];
  for (int c = 0; c < NC; ++c)
    for (int t = 0; t < 9; ++t) acc[c][t] = Isa::zero();
  for (int64_t i = 0; i < nrows; ++i) {
    const float* xp = xrow0 + i * xrs;
    const float* bp = band + i * Wb * VL;
    for (int64_t w = 0; w < W; ++w, xp += C, bp += VL) {
      const V xv = Isa::loadm(xp, xm);
      V xc[NC];
      for (int c = 0; c < NC; ++c) xc[c] = permute(xv, idx + c * VL);
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) {
        const V d = Isa::load(bp + toff[t]);
#pragma GCC unroll 2
        for (int c = 0; c < NC; ++c) acc[c][t] = Isa::fma(xc[c], d, acc[c][t]);
      }
    }
  }
  for (int c = 0; c < NC; ++c)
    for (int t = 0; t < 9; ++t) Isa::store(part + (c * 9 + t) * VL, Isa::add(Isa::load(part + (c * 9 + t) * VL), acc[c][t]));
}

}  // namespace

void grouped_nhwc_backward_weight(const Conv2dParams& p, const float* dy, const float* x, float* dw, bool nhwc) {
  const int64_t N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, P = p.P, Q = p.Q, G = p.groups;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dwl = p.dil_w;
  const int64_t gpb = VL / Kg, nkb = ceil_div(G, gpb);  // groups a block of VL output channels
  // permute indices: lane l takes x channel (l / Kg) * Cg + c of the block
  alignas(64) float idx[8 * VL];  // Cg <= Kg <= VL / 2
  for (int64_t c = 0; c < Cg; ++c)
    for (int l = 0; l < VL; ++l) {
      const int32_t v = static_cast<int32_t>((l / Kg) * Cg + c);
      std::memcpy(&idx[c * VL + l], &v, sizeof(v));
    }
  // the dy band of rows [h_a, h_b) of an image: dy rows h_a + ph - 2*dh .. h_b - 1 + ph, columns
  // pw - 2*dwl .. W - 1 + pw, zeros outside dy; tap (r, s) of pixel (h, w) reads band row
  // h - h_a + (2 - r)*dh, column w + (2 - s)*dwl
  const int64_t Wb = W + 2 * dwl;
  int64_t toff[9];
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t s = 0; s < 3; ++s) toff[r * 3 + s] = ((2 - r) * dh * Wb + (2 - s) * dwl) * VL;
  const int64_t rows = N * H;
  const int64_t nchunk = std::max<int64_t>(1, std::min<int64_t>({16, rows, p.macs() / (int64_t(4) << 20)}));
  const int64_t part = Cg * 9 * VL;  // one (chunk, block): [c][tap][lane]
  float* partial = scratch(0, nchunk * nkb * part);
  const int64_t rsub = std::max<int64_t>(1, 32768 / (Wb * VL) - 2 * dh);  // rows a band holds
  for_each_task(nchunk * nkb, p.macs(), [&](int64_t task) {
    const int64_t ch = task / nkb, kb = task % nkb;
    const int64_t g0 = kb * gpb, ng = std::min(gpb, G - g0), kn = ng * Kg;
    const M xm = Isa::mask(ng * Cg), km = Isa::mask(kn);
    float* out = partial + (ch * nkb + kb) * part;
    std::fill(out, out + part, 0.f);
    float* band = scratch(1, (rsub + 2 * dh) * Wb * VL);
    const int64_t row_b = rows * (ch + 1) / nchunk;
    for (int64_t row = rows * ch / nchunk; row < row_b;) {
      const int64_t n = row / H, h_a = row % H, h_b = std::min({H, h_a + rsub, h_a + (row_b - row)});
      row += h_b - h_a;
      const int64_t nb = h_b - h_a + 2 * dh;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t pp = h_a + ph - 2 * dh + b;
        float* d = band + b * Wb * VL;
        if (pp < 0 || pp >= P) {
          std::memset(d, 0, sizeof(float) * Wb * VL);
          continue;
        }
        if (!nhwc) {  // NCHW: the kn channel rows of dy row pp, transposed into [column][VL]
          const int64_t qa = std::max<int64_t>(0, pw - 2 * dwl), qb = std::min(Q, W + pw);  // j = q - pw + 2*dwl
          std::memset(d, 0, sizeof(float) * Wb * VL);
          if (qb > qa)
            transpose_rows(dy + ((n * K + g0 * Kg) * P + pp) * Q + qa, P * Q, kn, qb - qa, VL, d + (qa - pw + 2 * dwl) * VL);
          continue;
        }
        for (int64_t j = 0; j < Wb; ++j) {
          const int64_t q = j + pw - 2 * dwl;
          const bool in = q >= 0 && q < Q;
          Isa::store(d + j * VL, in ? Isa::loadm(dy + ((n * P + pp) * Q + q) * K + g0 * Kg, km) : Isa::zero());
        }
      }
      // x: NHWC as it lies (pixel stride C, the block's channels masked); NCHW transposed into [pixel][VL]
      const float* x0 = x + ((n * H + h_a) * W) * C + g0 * Cg;
      int64_t xps = C;
      if (!nhwc) {
        float* xb = scratch(2, (h_b - h_a) * W * VL);
        transpose_rows(x + ((n * C + g0 * Cg) * H + h_a) * W, H * W, ng * Cg, (h_b - h_a) * W, VL, xb);
        x0 = xb, xps = VL;
      }
      for (int64_t c0 = 0; c0 < Cg; c0 += kNC) {
        if (kNC == 2 && Cg - c0 >= 2)
          sweep<2>(x0, W * xps, xps, h_b - h_a, W, xm, idx + c0 * VL, band, Wb, toff, out + c0 * 9 * VL);
        else
          sweep<1>(x0, W * xps, xps, h_b - h_a, W, xm, idx + c0 * VL, band, Wb, toff, out + c0 * 9 * VL);
      }
    }
  });
  // dw[k][c][r][s] = sum over the chunks, in chunk order (into chunk 0's buffers)
  sum_chunks(partial, nchunk, nkb * part);
  for_each_task(nkb, nkb * part, [&](int64_t kb) {
    const float* sum = partial + kb * part;
    const int64_t kn = std::min(gpb, G - kb * gpb) * Kg;
    for (int64_t l = 0; l < kn; ++l)
      for (int64_t c = 0; c < Cg; ++c)
        for (int t = 0; t < 9; ++t) dw[((kb * VL + l) * Cg + c) * 9 + t] = sum[(c * 9 + t) * VL + l];
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
