// grouped_interleaved.cpp — forward and backward-input of grouped convolutions with 4 or
// 8 output channels a group and no more input channels than that (ResNeXt's 128->128 g32 and
// 256->256 g32: 4 + 4 and 8 + 8), fp32 and bfloat16, channels_last, AVX-512.
//
// bfloat16 (AVX512-BF16): the same engine on words of two channels. A channels_last pixel's
// channels are already such words, so the band is built the same way (a block's words
// interleaved [c][j], at most 8 of them: band pixels of 8 words), the filter packed as words of
// channel pairs, each step a VDPBF16PS (two channels' products summed in float32), and the sums
// rounded to bfloat16 as they are stored (Isa::storem to uint16_t). These layers ran on float32
// copies before (the forwards 1.3-1.9 ms). Batch 4, 2 threads, forward ms median, ours / torch
// (python -m conv_ext.bench --suite grouped --dtype bfloat16 --layout nhwc --passes forward,all,
// benchmarks/results/zen4/grouped-cpu-nhwc-bfloat16.md): 128 g32 @56 1.26 / 1.97, 256 g32 @56/2
// 0.78 / 0.94, 256 g32 @28 0.61 / 0.71; forward+backward 1.89x, 1.12x, 1.04x torch. At 256 g32
// @56/2 the band's build (x from memory, a permute a block) is ~30% of the forward.
//
//   forward          y[n,p,q, g*Kg + k] = bias + sum_{c,r,s} x[n, p*sh-ph+r*dh, q*sw-pw+s*dw, g*Cg + c] * w[g*Kg + k, c, r, s]
//   backward-input   the same engine on dy, with the filter flipped and transposed; strided, once
//                    per stride class of dx (each a stride-1 convolution of dy with its own taps)
//
// Why: implicit_gemm vectorises a group's output channels, so 8 of them fill half of a 16-lane
// vector (4 a quarter); direct_nchw fills whole vectors with pixels, but channels_last tensors
// then go through 16x16 transposes both ways. Here a vector holds the output channels of
// GPB = 16 / Kg groups with their lanes interleaved, lane k*GPB + j = output channel k of group
// j of the block, and the input band holds each pixel's channels interleaved the same way,
// [c][j]. The GPB values x[., ., ., g_j*Cg + c] (j < GPB) of one input channel c then sit side by
// side, and one broadcast of GPB floats (vbroadcastsd for 2, vbroadcastf32x4 for 4: loads, no
// shuffle port) gives every lane its own group's input: all 16 lanes do useful work, as in a
// dense layer. One permute per band pixel on the way in (the interleave) and one per output
// vector on the way out (back to [j][k]).
//
// The micro-kernel: MR = 24 output pixels of a row in registers; for every tap (r, s) and input
// channel c one load of the packed filter (16 lanes), 24 broadcasts, 24 FMAs. With 3 taps a row
// (no dilation in width) for every filter row and channel the 3 taps' filter vectors instead, and
// each band column broadcast once for the pixels that read it (3 FMAs a broadcast at stride 1,
// 1.5 at stride 2). Batch 4, 2 threads, channels_last, old/new (python benchmarks/ab.py OLD.so
// NEW.so 4,256,28,28,256,3,1,1,32 --layout nhwc --pass P --dtype D): 256 g32 @28 forward and
// backward-input 1.23-1.25x (float32 and bfloat16), 128 g32 @56 1.22-1.24x float32, 1.11x
// bfloat16, 256 g32 @56/2 forward 1.17x / 1.10x.
// A task is (image, block of output rows) and runs every block of GPB groups; its band (blocks x
// rows x padded columns x 16 floats, zero padding built in) is built from whole input pixels (a
// task per block of groups before read 64 bytes of each 1 KiB pixel: a strided stream from L3)
// and stays in L2 while the task sweeps its rows.
//
// Speed (2 threads, batch 4, channels_last, ms median of 20 with torch and the algorithms in
// random order; python benchmarks/algos.py N,C,H,W,K,3,S,1,G --layout nhwc --pass P; eighteenth
// round, this machine 1.2-1.4x faster than when the first numbers were taken; [task per block
// of groups, same day, python benchmarks/ab.py]):
//   128->128 g32 @56 (4 + 4)   forward 0.66 [1.17x slower], torch 1.19; backward-input 0.71 [1.19x], torch 1.30
//   256->256 g32 @28 (8 + 8)   forward 0.58 [1.11x], torch 0.72;        backward-input 0.57 [1.11x], torch 0.69
//   256->256 g32 @56/2         forward 0.79 [1.43x], torch 0.88;        backward-input 0.83 [1.65x], torch 0.87-0.89
// (first numbers, then: 1.39 / 1.80 vs torch 3.19 / 3.57; 1.00 / 1.14 vs 1.40 / 1.63; 2.01 /
// 2.98 vs 2.27 / 3.16). The strided backward-input's 4 stride classes run as jobs of one pass,
// sharing each task's dy band (a pass per class, each building its band again: 1.03 ms; its
// large dx by streaming stores: 1.11x of the 1.32x before that).
// With 28 accumulators instead of 24, GCC kept the filter vector on the stack (a second load per
// FMA): half the speed. Rows are cut into tiles of equal width (kTileWidths), the band pixel is
// padded to 16 floats so that pixel i of a tile is a constant displacement from one base.
#ifndef CONV_EXT_ISA_NS
#include <type_traits>
#include <vector>

#define CONV_EXT_PER_ISA_FILE "grouped_interleaved.cpp"
#define CONV_EXT_PER_ISA_BF16  // both passes also run on bfloat16 pairs (interleaved_*_bf16)
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// Channels_last, groups of Kg = 4 or 8 output channels fed by Cg <= Kg input channels (a
// block's interleaved pixel fits one vector), AVX-512.
bool fits(int64_t groups, int64_t ci, int64_t co) {
  return groups > 1 && (co == 4 || co == 8) && ci >= 1 && ci <= co;
}

// bfloat16 (interleaved_*_bf16): the same engine on words of two channels (VDPBF16PS), where the
// channels read (ci: Cg forward, Kg backward-input) are even, on an AVX512-BF16 CPU without AMX
// tiles (there amx_bf16 runs grouped layers: not_bf16_on_amx_tiles; forced, any AVX512-BF16 CPU).
// Before, these layers ran on float32 copies (channels_last ResNeXt 128 g32 @56, 256 g32 @28 and
// @56/2 forward 0.4-0.8x torch).
bool dtype_ok(at::ScalarType dtype, int64_t ci) {
  return dtype == at::kBFloat16 ? ci % 2 == 0 && amx_bf16_available() : dtype == at::kFloat;
}

bool supports(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype_ok(dtype, p.Cg()) && use_avx512() && is_nhwc(p) && weight_is_kcrs(p) &&
         fits(p.groups, p.Cg(), p.Kg()) && p.stride_w <= 2;
}

// strides up to 2 (each stride class of dx a stride-1 convolution of dy)
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype_ok(dtype, p.Kg()) && use_avx512() && is_nhwc(p) && weight_is_kcrs(p) &&
         fits(p.groups, p.Kg(), p.Cg()) && p.stride_h <= 2 && p.stride_w <= 2;
}

using bf16 = uint16_t;
const bf16* halves(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.const_data_ptr()); }

void run_forward(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {
    avx512::interleaved_forward_bf16(p, halves(o.a), halves(o.b), o.bias.defined() ? halves(o.bias) : nullptr,
                                     reinterpret_cast<bf16*>(o.out.mutable_data_ptr()));
    return;
  }
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  avx512::interleaved_forward(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), bias,
                              o.out.mutable_data_ptr<float>());
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  if (o.a.scalar_type() == at::kBFloat16) {
    avx512::interleaved_backward_input_bf16(p, halves(o.a), halves(o.b), reinterpret_cast<bf16*>(o.out.mutable_data_ptr()));
    return;
  }
  avx512::interleaved_backward_input(p, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(),
                                     o.out.mutable_data_ptr<float>());
}

const bool registered =
    register_algorithm({"grouped_interleaved", Pass::Forward, 16, supports, run_forward, false, not_bf16_on_amx_tiles}) &&
    register_algorithm({"grouped_interleaved", Pass::BackwardInput, 16, supports_backward_input, run_backward_input,
                        false, not_bf16_on_amx_tiles});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA (the kernel itself: AVX-512 only) ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

// The geometry of one convolution as the engine sees it: src (N, H, W, G*ci) NHWC -> dst
// (N, P, Q, G*co) NHWC; tap (r, s) of output pixel (p, q) reads src pixel (p*sh - ph + r*dh,
// q*sw - pw + s*dw).
struct Geo {
  int64_t N, H, W, G, ci, co, R, S, P, Q, sh, sw, ph, pw, dh, dw;
  // where output pixel (p, q) goes: dst pixel (p*osh + oh0, q*osw + ow0) of Hd x Wd (a stride
  // class of a strided backward-input; a plain output: 1, 0, 1, 0, P x Q)
  int64_t osh = 1, oh0 = 0, osw = 1, ow0 = 0, Hd = 0, Wd = 0;
};

#if CONV_EXT_ISA_BITS == 512
// most output pixels of a tile: 24 accumulators + the filter vector + broadcasts (with 28, GCC
// kept the filter vector on the stack: a second load per FMA, half speed)
constexpr int kMR = 24;

// GPB floats at p broadcast to every GPB-lane slot of a vector
template <int GPB>
inline V bcast(const float* p) {
  if constexpr (GPB == 2) {
    double d;
    std::memcpy(&d, p, sizeof(d));
    return _mm512_castpd_ps(_mm512_set1_pd(d));
  } else {
    return _mm512_maskz_broadcast_f32x4(0xFFFF, _mm_loadu_ps(p));
  }
}

// One tile: MR consecutive output pixels of a row, the first at band position bp (pixel i at
// bp + i*SW*16: one base register, constant displacements; pixels past mr read on into the band
// and are not stored), through every tap and input channel.
// PAIRS: the band and the filter hold words of bfloat16 pairs (ci counts words), each step a
// VDPBF16PS, and y (O = uint16_t) gets the sums rounded to bfloat16.
template <int GPB, int SW, int MR, bool PAIRS, typename O, int64_t PF = PAIRS ? 8 : 16>
void tile(const float* bp, int64_t R, int64_t S, int64_t rstep, int64_t sstep, int64_t ci, const float* wb,
          O* y, int64_t ys, int mr, const __m512i& oidx, V bv, M om, bool stream) {
  V acc[MR];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) acc[i] = Isa::zero();
  if (S == 3 && sstep == PF) {
    // 3 taps a row without dilation (ResNeXt's grouped layers): each band value, broadcast once,
    // feeds the pixels whose taps read it (3 at stride 1, 1.5 at stride 2) with the row's 3 filter
    // vectors of channel c in registers, where the loop below has a broadcast per FMA
    for (int64_t r = 0; r < R; ++r) {
      const float* tp = bp + r * rstep;
      const float* wt = wb + r * 3 * ci * 16;
      for (int64_t c = 0; c < ci; ++c) {
        const V w[3] = {Isa::load(wt + c * 16), Isa::load(wt + (ci + c) * 16), Isa::load(wt + (2 * ci + c) * 16)};
#pragma GCC unroll 64
        for (int j = 0; j < (MR - 1) * SW + 3; ++j) {
          const V b = bcast<GPB>(tp + j * PF + c * GPB);
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s) {
            const int u = j - s;  // pixel u / SW reads band column j with tap s
            if (u >= 0 && u % SW == 0 && u / SW < MR) acc[u / SW] = mac<PAIRS>(b, w[s], acc[u / SW]);
          }
        }
      }
    }
  } else {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) {
        const float* tp = bp + r * rstep + s * sstep;
        const float* wt = wb + (r * S + s) * ci * 16;
        for (int64_t c = 0; c < ci; ++c, tp += GPB) {
          const V wv = Isa::load(wt + c * 16);
#pragma GCC unroll 24
          for (int i = 0; i < MR; ++i) acc[i] = mac<PAIRS>(bcast<GPB>(tp + i * SW * PF), wv, acc[i]);
        }
      }
  }
  if constexpr (std::is_same_v<O, float>) {
    if (stream) {  // whole, aligned vectors (the caller checked) by non-temporal stores
      for (int i = 0; i < mr; ++i) Isa::stream(y + i * ys, Isa::add(_mm512_maskz_permutexvar_ps(0xFFFF, oidx, acc[i]), bv));
      return;
    }
  }
  for (int i = 0; i < mr; ++i) Isa::storem(y + i * ys, Isa::add(_mm512_maskz_permutexvar_ps(0xFFFF, oidx, acc[i]), bv), om);
}

// Tile widths: a row of Q pixels runs in ceil(Q / 24) tiles of the narrowest width here that
// covers an equal share (Q = 28: two tiles of 14, not 24 + a 4-pixel tile of 24 accumulators).
constexpr int kTileWidths[] = {4, 8, 12, 14, 16, 20, 24};

// One convolution of the engine (a forward, or one stride class of a backward-input) with its
// packed filter wpk ([block][r][s][c][16], lane k*GPB + j = filter (g0 + j)*co + k) and bias_pk
// ([block][16] in output order j*co + k).
struct Job {
  Geo g;
  const float* wpk;
  const float* bias_pk;
};

// dst = conv(src, wpk) + bias for every job, the jobs reading the same src (the stride classes
// of a backward-input all read dy; N, H, W, G, ci, co, sh and sw are the same for all of them).
// PAIRS: src is words of bfloat16 pairs (ci of them a group) and dst bfloat16.
template <int GPB, int SW, bool PAIRS>
void run(const Job* jobs, int njobs, const float* src, void* dst_) {
  using O = std::conditional_t<PAIRS, uint16_t, float>;
  O* dst = static_cast<O*>(dst_);
  const Geo& g = jobs[0].g;
  const int64_t ci = g.ci, co = g.co, C = g.G * ci, K = g.G * g.co, sh = g.sh;
  // floats of a band pixel: [c][j], ci*GPB <= 16 of them used (words of pairs: <= 8, Cg <= Kg)
  constexpr int64_t PF = PAIRS ? 8 : 16;
  const int64_t nvb = ceil_div(g.G, int64_t(GPB));  // blocks of GPB groups
  // A task is (image, block of output rows) and runs every job and every block of groups over
  // its rows: its band holds all the channels of the src rows and columns they read
  // ([block][row][column][16]), read a whole pixel at a time, once for all the jobs. A task per
  // block of groups (before) read 64 bytes of each 1 KiB pixel (256->256 g32), a strided stream
  // from L3; a pass per stride class built the band from dy again for each class.
  int64_t P = 0, col_lo = 0, col_hi = 0;  // the tallest job's rows; the band's src columns [col_lo, col_hi)
  for (int j = 0; j < njobs; ++j) {
    const Geo& e = jobs[j].g;
    const int64_t lo = -e.pw, hi = (e.Q - 1) * e.sw - e.pw + (e.S - 1) * e.dw + 1;
    col_lo = j ? std::min(col_lo, lo) : lo, col_hi = j ? std::max(col_hi, hi) : hi, P = std::max(P, e.P);
  }
  const int64_t Wb = col_hi - col_lo, blk_row = Wb * PF;  // band columns; floats of a band row of a block
  // the src rows [h0, h1) that output rows [p0, p1) of the jobs read
  auto rows_of = [&](int64_t p0, int64_t p1, int64_t& h0, int64_t& h1) {
    h0 = 0, h1 = 0;
    bool any = false;
    for (int j = 0; j < njobs; ++j) {
      const Geo& e = jobs[j].g;
      const int64_t q1 = std::min(p1, e.P);
      if (q1 <= p0) continue;
      const int64_t lo = p0 * sh - e.ph, hi = (q1 - 1) * sh - e.ph + (e.R - 1) * e.dh + 1;
      h0 = any ? std::min(h0, lo) : lo, h1 = any ? std::max(h1, hi) : hi, any = true;
    }
  };
  int64_t rb = P;  // output rows a task: its band within 128K floats, at least 8 tasks a thread
  for (int64_t h0, h1; rb > 1 && (rows_of(0, rb, h0, h1), nvb * (h1 - h0) * blk_row > 131072);) --rb;
  rb = even_row_blocks(P, rb, g.N, 8 * pool_threads());
  const int64_t nrb = ceil_div(P, rb);
  // tile width of each job: a row of Q pixels runs in ceil(Q / 24) tiles of the narrowest width
  // that covers an equal share
  int mrw[4];
  for (int j = 0; j < njobs; ++j) {
    const int64_t share = ceil_div(jobs[j].g.Q, ceil_div(jobs[j].g.Q, int64_t(kMR)));
    mrw[j] = kMR;
    for (int t : kTileWidths)
      if (t >= share) {
        mrw[j] = t;
        break;
      }
  }
  // permute indices: band lane c*GPB + j <- source lane j*ci + c (lanes past ci*GPB are never
  // read); output lane j*co + k <- k*GPB + j
  alignas(64) int32_t in_idx[16], out_idx[16];
  for (int l = 0; l < 16; ++l) {
    in_idx[l] = static_cast<int32_t>(((l % GPB) * ci + l / GPB) % 16);
    out_idx[l] = static_cast<int32_t>((l % co) * GPB + l / co);
  }
  // A stride class of a strided backward-input (every other pixel of every other row of a large
  // dx) writes whole, 64-byte aligned vectors (a block of 16 channels at a multiple of 16 floats)
  // by streaming stores: 256->256 g32 @56/2 backward-input 1.11x (python benchmarks/ab.py OLD.so
  // NEW.so 4,256,56,56,256,3,2,1,32 --layout nhwc --pass backward_input); plain outputs of
  // 0.8-1.6M floats (forward 128 g32 @56, 256 g32 @56/2) were 0.97-0.98x so.
  const bool stream_out = !PAIRS && g.osh * g.osw > 1 && g.N * g.Hd * g.Wd * K >= kStreamFloats && K % 16 == 0 &&
                          (reinterpret_cast<uintptr_t>(dst) & 63) == 0;
  int64_t macs = 0;
  for (int j = 0; j < njobs; ++j) macs += g.N * jobs[j].g.P * jobs[j].g.Q * K * ci * jobs[j].g.R * jobs[j].g.S;
  for_each_task(g.N * nrb, macs, [&](int64_t task) {
    const int64_t blk = task % nrb, n = task / nrb, p0 = blk * rb, p1 = std::min(P, p0 + rb);
    int64_t h0, h1;
    rows_of(p0, p1, h0, h1);
    const int64_t nr = h1 - h0;
    const __m512i iidx = _mm512_load_si512(in_idx), oidx = _mm512_load_si512(out_idx);
    const __m256i iidx8 = _mm256_load_si256(reinterpret_cast<const __m256i*>(in_idx));
    const M lm_full = Isa::mask(GPB * ci), lm_last = Isa::mask((g.G - (nvb - 1) * GPB) * ci);  // a pixel's block
    // the band: src rows h0.., columns col_lo.., each pixel's channels of a block interleaved
    // (zeros past the last group), blocks nr*blk_row floats apart; + zeros for the reads of a
    // last tile's unused pixels (no stale values, no denormals)
    const int64_t bblk = nr * blk_row;
    float* band = scratch(1, nvb * bblk + kMR * SW * PF);
    std::memset(band + nvb * bblk, 0, sizeof(float) * kMR * SW * PF);
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t h = h0 + i;
      if (h < 0 || h >= g.H) {
        for (int64_t vb = 0; vb < nvb; ++vb) std::memset(band + vb * bblk + i * blk_row, 0, sizeof(float) * blk_row);
        continue;
      }
      const float* srow = src + ((n * g.H + h) * g.W) * C;
      for (int64_t col = 0; col < Wb; ++col) {
        const int64_t w = col_lo + col;
        float* d = band + i * blk_row + col * PF;
        if (w < 0 || w >= g.W) {
          for (int64_t vb = 0; vb < nvb; ++vb) Isa::storem(d + vb * bblk, Isa::zero(), Isa::mask(PF));
          continue;
        }
        const float* sp = srow + w * C;
        for (int64_t vb = 0; vb < nvb; ++vb) {
          const M lm = vb + 1 < nvb ? lm_full : lm_last;
          if constexpr (PF == 8)  // an 8-lane pixel: half-width loads, permutes and stores
            _mm256_storeu_ps(d + vb * bblk, _mm256_maskz_permutexvar_ps(0xFF, iidx8, _mm256_maskz_loadu_ps(__mmask8(lm), sp + vb * GPB * ci)));
          else
            Isa::store(d + vb * bblk, _mm512_maskz_permutexvar_ps(0xFFFF, iidx, Isa::loadm(sp + vb * GPB * ci, lm)));
        }
      }
    }
    for (int j = 0; j < njobs; ++j) {
      const Geo& e = jobs[j].g;
      const int64_t rstep = e.dh * blk_row, sstep = e.dw * PF;  // from one tap row / column to the next
      const int64_t ys = e.osw * K;  // from one output pixel of a row to the next
      for (int64_t vb = 0; vb < nvb; ++vb) {
        const int64_t g0 = vb * GPB, ng = std::min<int64_t>(GPB, g.G - g0);
        const M om = Isa::mask(ng * co);
        const bool stream = stream_out && ng * co == 16;
        const float* wb = jobs[j].wpk + vb * e.R * e.S * ci * 16;
        const V bv = Isa::load(jobs[j].bias_pk + vb * 16);
        for (int64_t pr = p0; pr < std::min(p1, e.P); ++pr) {
          const float* brow = band + vb * bblk + (pr * sh - e.ph - h0) * blk_row + (-e.pw - col_lo) * PF;
          O* yrow = dst + ((n * e.Hd + pr * e.osh + e.oh0) * e.Wd + e.ow0) * K + g0 * co;
          for (int64_t q0 = 0; q0 < e.Q; q0 += mrw[j]) {
            const int mr = static_cast<int>(std::min<int64_t>(mrw[j], e.Q - q0));
            const float* bp = brow + q0 * SW * PF;
            O* y = yrow + q0 * ys;
            switch (mrw[j]) {
              case 4: tile<GPB, SW, 4, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              case 8: tile<GPB, SW, 8, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              case 12: tile<GPB, SW, 12, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              case 14: tile<GPB, SW, 14, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              case 16: tile<GPB, SW, 16, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              case 20: tile<GPB, SW, 20, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
              default: tile<GPB, SW, 24, PAIRS>(bp, e.R, e.S, rstep, sstep, ci, wb, y, ys, mr, oidx, bv, om, stream); break;
            }
          }
        }
      }
    }
    if (stream_out) _mm_sfence();
  });
}

// packs w'(g, k, c, r, s) (a function giving the filter value) as [block][r][s][c][k*GPB + j]
// and the bias as [block][j*co + k]
template <class Wf>
void pack(const Geo& g, int gpb, const Wf& wf, const float* bias, float* wpk, float* bias_pk) {
  const int64_t nvb = ceil_div(g.G, int64_t(gpb)), RS = g.R * g.S;
  for (int64_t vb = 0; vb < nvb; ++vb) {
    for (int64_t t = 0; t < RS; ++t)
      for (int64_t c = 0; c < g.ci; ++c)
        for (int l = 0; l < 16; ++l) {
          const int64_t k = l / gpb, grp = vb * gpb + l % gpb;
          wpk[((vb * RS + t) * g.ci + c) * 16 + l] = grp < g.G ? wf(grp, k, c, t / g.S, t % g.S) : 0.f;
        }
    for (int l = 0; l < 16; ++l) {
      const int64_t grp = vb * gpb + l / g.co, k = l % g.co;
      bias_pk[vb * 16 + l] = bias && grp < g.G ? bias[grp * g.co + k] : 0.f;
    }
  }
}

// Floats of a job's packed filter and bias: nvb*R*S*ci*16, then nvb*16.
inline int64_t job_floats(const Geo& g) {
  const int64_t nvb = ceil_div(g.G, 16 / g.co);
  return nvb * (g.R * g.S * g.ci + 1) * 16;
}

// The filter of a job packed by pack() into wpk (job_floats(g) floats).
template <class Wf>
Job packed_job(const Geo& g, const Wf& wf, const float* bias, float* wpk) {
  const int gpb = static_cast<int>(16 / g.co);
  float* bias_pk = wpk + job_floats(g) - ceil_div(g.G, int64_t(gpb)) * 16;
  pack(g, gpb, wf, bias, wpk, bias_pk);
  return {g, wpk, bias_pk};
}

template <bool PAIRS = false>
void run_jobs(const Job* jobs, int njobs, const float* src, void* dst) {
  const Geo& g = jobs[0].g;
  if (g.co == 8) g.sw == 1 ? run<2, 1, PAIRS>(jobs, njobs, src, dst) : run<2, 2, PAIRS>(jobs, njobs, src, dst);
  else g.sw == 1 ? run<4, 1, PAIRS>(jobs, njobs, src, dst) : run<4, 2, PAIRS>(jobs, njobs, src, dst);
}

// A filter word of bfloat16 pairs, as the float the packers store (its bits)
inline float pair_word(uint16_t lo, uint16_t hi) {
  const uint32_t u = uint32_t(lo) | uint32_t(hi) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline float widened(const uint16_t* v) { return v ? pair_word(0, *v) : 0.f; }  // a bfloat16 as float32
#endif

}  // namespace

#if CONV_EXT_ISA_BITS == 512
// T = float, or uint16_t for bfloat16 (the engine on words of channel pairs: the filter value of
// pair c is the word of channels 2c and 2c + 1, the bias widened)
template <typename T>
void forward_impl(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y) {
  constexpr bool kWords = std::is_same_v<T, uint16_t>;
  constexpr int64_t U = kWords ? 2 : 1;  // channels a unit
  Geo g{p.N, p.H, p.W, p.groups, p.Cg() / U, p.Kg(), p.R, p.S, p.P, p.Q,
        p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dil_h, p.dil_w};
  g.Hd = p.P, g.Wd = p.Q;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S;
  std::vector<float> b32;
  if constexpr (kWords) {
    if (bias)
      for (int64_t k = 0; k < p.K; ++k) b32.push_back(widened(bias + k));
  }
  const float* bf = kWords ? (bias ? b32.data() : nullptr) : reinterpret_cast<const float*>(bias);
  const Job job = packed_job(g, [&](int64_t grp, int64_t k, int64_t c, int64_t r, int64_t s) {
    const T* f = w + (((grp * Kg + k) * Cg + c * U) * R + r) * S + s;
    if constexpr (kWords) return pair_word(f[0], f[R * S]);
    else return *f;
  }, bf, scratch(0, job_floats(g)));
  run_jobs<kWords>(&job, 1, reinterpret_cast<const float*>(x), y);
}
#endif

void interleaved_forward(const Conv2dParams& p, const float* x, const float* w, const float* bias, float* y) {
#if CONV_EXT_ISA_BITS == 512
  forward_impl(p, x, w, bias, y);
#else
  (void)p, (void)x, (void)w, (void)bias, (void)y;
  TORCH_CHECK(false, "conv_ext: grouped_interleaved needs AVX-512");
#endif
}
#if CONV_EXT_ISA_PAIRS
void interleaved_forward_bf16(const Conv2dParams& p, const uint16_t* x, const uint16_t* w, const uint16_t* bias,
                              uint16_t* y) {
  forward_impl(p, x, w, bias, y);
}
#endif

// dx[n,h,w, g*Cg + c] = sum_{k,r,s} dy[n, (h+ph-r*dh)/sh, (w+pw-s*dw)/sw, g*Kg + k] * w[g*Kg + k, c, r, s]
// over the taps whose quotients are whole. The dx pixels split into stride classes (h mod sh,
// w mod sw); in a class (psi, phi), h = psi + sh*i, the taps that reach it are a fixed list whose
// dy rows are i + (psi + ph - r*dh)/sh: a stride-1 forward convolution of dy (Kg channels a group
// in, Cg out) with those taps, their order flipped (offsets rising), written to every sh-th row
// and sw-th column of dx from (psi, phi). At stride 1, one class: the filter flipped, padding
// (R-1)*dh - ph. The zeros a stride inserts into dy are never multiplied. The classes run as jobs
// of one pass (run): each task builds its band of dy once for all of them. A pass per class
// before: 256->256 g32 @56/2 channels_last, 2 threads, batch 4 (python benchmarks/ab.py OLD.so
// NEW.so 4,256,56,56,256,3,2,1,32 --layout nhwc --pass backward_input): 1.03 -> 0.83 ms (1.24x;
// torch 0.87-0.89).
#if CONV_EXT_ISA_BITS == 512
template <typename T>
void backward_input_impl(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
  constexpr bool kWords = std::is_same_v<T, uint16_t>;
  constexpr int64_t U = kWords ? 2 : 1;  // channels of dy a unit
  const int64_t Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, H = p.H, W = p.W, C = p.C;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h, dw = p.dil_w;
  Geo geos[4];  // the classes with taps (strides <= 2: at most 4)
  std::vector<int64_t> rls[4], sls[4];
  int njobs = 0;
  for (int64_t psi = 0; psi < std::min(sh, H); ++psi)
    for (int64_t phi = 0; phi < std::min(sw, W); ++phi) {
      // the taps of the class, rising in r (s), so their dy offsets fall by dh / gcd(dh, sh) a tap
      std::vector<int64_t> rl, sl;
      for (int64_t r = 0; r < R; ++r)
        if (floor_mod(psi + ph - r * dh, sh) == 0) rl.push_back(r);
      for (int64_t s = 0; s < S; ++s)
        if (floor_mod(phi + pw - s * dw, sw) == 0) sl.push_back(s);
      const int64_t Hc = ceil_div(H - psi, sh), Wc = ceil_div(W - phi, sw), Rc = rl.size(), Sc = sl.size();
      if (Rc == 0 || Sc == 0) {  // no tap reaches these dx pixels
        for_each_task(p.N * Hc, p.N * Hc * Wc * C, [&](int64_t t) {
          T* row = dx + ((t / Hc * H + psi + t % Hc * sh) * W + phi) * C;
          for (int64_t j = 0; j < Wc; ++j) std::memset(row + j * sw * C, 0, sizeof(T) * C);
        });
        continue;
      }
      const int64_t rmin = floor_div(psi + ph - rl.back() * dh, sh), smin = floor_div(phi + pw - sl.back() * dw, sw);
      const int64_t rstep = Rc > 1 ? floor_div(psi + ph - rl[Rc - 2] * dh, sh) - rmin : 1;
      const int64_t sstep = Sc > 1 ? floor_div(phi + pw - sl[Sc - 2] * dw, sw) - smin : 1;
      Geo& g = geos[njobs];
      g = Geo{p.N, p.P, p.Q, p.groups, Kg / U, Cg, Rc, Sc, Hc, Wc, 1, 1, -rmin, -smin, rstep, sstep};
      g.osh = sh, g.oh0 = psi, g.osw = sw, g.ow0 = phi, g.Hd = H, g.Wd = W;
      rls[njobs] = rl, sls[njobs] = sl, ++njobs;
    }
  if (njobs == 0) return;
  int64_t floats = 0;
  for (int j = 0; j < njobs; ++j) floats += job_floats(geos[j]);
  float* wpk = scratch(0, floats);
  Job jobs[4];
  for (int j = 0; j < njobs; ++j) {
    const std::vector<int64_t>&rl = rls[j], &sl = sls[j];
    const int64_t Rc = rl.size(), Sc = sl.size();
    jobs[j] = packed_job(geos[j], [&](int64_t grp, int64_t c, int64_t k, int64_t r, int64_t s) {
      const T* f = w + (((grp * Kg + k * U) * Cg + c) * R + rl[Rc - 1 - r]) * S + sl[Sc - 1 - s];
      if constexpr (kWords) return pair_word(f[0], f[Cg * R * S]);  // filters 2k and 2k + 1
      else return *f;
    }, nullptr, wpk);
    wpk += job_floats(geos[j]);
  }
  run_jobs<kWords>(jobs, njobs, reinterpret_cast<const float*>(dy), dx);
}
#endif

void interleaved_backward_input(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
#if CONV_EXT_ISA_BITS == 512
  backward_input_impl(p, dy, w, dx);
#else
  (void)p, (void)dy, (void)w, (void)dx;
  TORCH_CHECK(false, "conv_ext: grouped_interleaved needs AVX-512");
#endif
}
#if CONV_EXT_ISA_PAIRS
void interleaved_backward_input_bf16(const Conv2dParams& p, const uint16_t* dy, const uint16_t* w, uint16_t* dx) {
  backward_input_impl(p, dy, w, dx);
}
#endif

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
