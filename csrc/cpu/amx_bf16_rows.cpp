// amx_bf16_rows.cpp — the backward passes of bfloat16 layers with few input channels (C < 16: the
// RGB stems) on the AMX tile units, with the taps of a filter row as the tiles' second dimension.
//
//   dx[n,c,h,w]  = sum_{k,r,s} dy[n,k,p,q] * w[k,c,r,s]       (h = p*sh - ph + r*dh, w = q*sw - pw + s)
//   dw[k,c,r,s]  = sum_{n,p,q} dy[n,k,p,q] * x[n,c,p*sh - ph + r*dh, q*sw - pw + s]
//
// amx_bf16.cpp gives each tap's channels a tile of its own, 32 wide: with 3 channels 29 of 32
// columns would be zeros. Here the S taps of a filter row are side by side instead: in a
// zero-padded NHWC band of C channels a pixel's filter-row window, (s, c) for s < S, c < C, is
// one run of J = S*C values (dilation 1 along the width), 21 for the 7x7 stem, read as a
// 32-value row of a tile (the values past J meet zeros of the other operand or land in columns
// that are dropped).
//
// Backward-weight: for each filter row r, dw[k][r][(s, c)] is a GEMM over the output pixels:
// A = 16 filters x 32 pixels of dy (NCHW planes read in place; channels_last pixels turned into
// rows of filters a few steps of 32 pixels at a time), B = those 32 pixels' windows in VNNI pairs
// (pixels 2t, 2t + 1), built from the band for a few steps before their products. A task is a
// fixed part of the pixels (its float32 sums of every dw element), the parts' sums added in order
// at the end: the same bits for any thread count.
//
// Backward-input: per dy pixel, Z[(r, s, c)] = sum_k dy[k] * w[k][c][r][s] (A = 16 dy pixels x
// 32 filters, read from dy's NHWC rows; B = the packed filter, [r][32 filters][16 columns]), and
// each row of Z adds into dx's row p*sh - ph + r*dh at columns q*sw - pw + s: a run of J floats
// in an NHWC float32 row. A task is an image's block of dx rows; a row sums its (r, q)
// contributions in a fixed order, then is rounded to bfloat16 once.
//
// No zero put in by the kernel meets a real value in a sum (the values past J go to dropped
// columns, pixels past the image are zero rows of B), so infinities and NaNs in x or dy stay
// where torch puts them.
//
// float16 backward-weight (amx_fp16.cpp's, for the stems) runs backward_weight with `half`: its
// A and B tiles made as hi and lo parts, three tile products a step. There an infinity or a NaN
// anywhere in a B tile's 32 values (those past J too: x's own values of the next pixels) or in dy
// sends the problem to float32 copies.
//
// Speed (2 threads, batch 4, the 7x7/2 stem 3->64 @224, bfloat16; python benchmarks/ab.py and the
// default suite, fourteenth round): backward-input 1.28 ms channels_last (torch 2.0; the float32
// kernels on converted copies 6.2), 1.9 ms NCHW (torch 2.7; 5.7); backward-weight 1.32 ms (2.0;
// 3.9), 1.5 ms NCHW (2.6; 4.2). Its products are ~40% of the time: backward-weight waits on the
// B tiles it builds (the vector stores must drain before the tile loads), backward-input on its
// row adds.
#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstring>

#include "algorithms.h"
#include "amx_tiles.h"
#include "kernel_util.h"

namespace conv_ext {
namespace cpu {
namespace amx {

// C < 16 (amx_bf16 takes 16 and more), windows of at least 8 values (else a tile row is
// mostly zeros: a 1x1 layer on 3 channels stays on the float32 kernels); the dtype aside
// (bfloat16 here, float16 split: amx_fp16.cpp's backward-weight).
bool rows_supported(const Conv2dParams& p) {
  return p.groups == 1 && p.C < kTile && p.dil_w == 1 && p.S * p.C >= 8 &&
         (is_nchw(p) || is_nhwc(p)) && (weight_is_kcrs(p) || weight_is_krsc(p)) && amx_bf16_available() &&
         !amx_bf16_emulated();  // (emulated, the stems' few channels ran slower than float32)
}

}  // namespace amx

namespace {

using namespace amx;

bool supports_rows(const Conv2dParams& p, at::ScalarType dtype) { return dtype == at::kBFloat16 && rows_supported(p); }

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")

// half: dy, x and dw float16 (amx_fp16.cpp), the sums over three times the pixels: each A and B
// tile made as its hi and lo parts (split as they are stored; A always copied then), three tile
// products a step (dy's hi with x's hi and lo, dy's lo with x's hi). Returns false, nothing
// written, where dy or x holds an infinity or a NaN (a lo is not meaningful there).
bool backward_weight(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw, bool half) {
  const int64_t N = p.N, C = p.C, K = p.K, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, dh = p.dil_h;
  const bool nhwc = is_nhwc(p);
  const int64_t J = S * C, Jp = round_up(J, kChan), Kp = round_up(K, kChan), PQ = P * Q, Mg = round_up(PQ, kChan);
  const int64_t Hp = std::max(H + 2 * p.pad_h, (P - 1) * sh + (R - 1) * dh + 1);
  const int64_t Wp = std::max(W + 2 * p.pad_w, (Q - 1) * sw + S);
  // the band, and Jp zeros after it: the last window's row of 32 values stays inside
  at::Tensor band_t = padded_band(x, nhwc, N, C, H, W, p.pad_h, p.pad_w, Hp, Wp, C, Jp);
  const bf16* xb = bf16_data(band_t);
  // A tiles: 16 filters x 32 pixels of dy (a step: 32 pixels of one image, Mg / 32 steps an
  // image), 0 past P*Q pixels and past K filters. NCHW planes hold them as they lie (a filter's
  // 32 pixels in a row, rows P*Q apart) where the step is whole and K a multiple of 16; else the
  // task copies its chunk's steps (channels_last: pixels turned into rows of filters) into
  // achunk[step][k][32]. (A copy of all of dy before: 51 MB for the VGG stem at batch 8, written
  // to fresh pages each call, 60% of its time.)
  const int64_t spi = Mg / kChan, nsteps = N * spi;
  const bool a_in_place = !nhwc && K % kTile == 0 && !half;

  // A task: a part of the pixels (64 steps of 32, spanning images) x every 32 columns, filter
  // row r and 32 filters: in chunks of 4 steps; the chunk's dy rows (A) copied if they must be,
  // then for each 32 columns and r the chunk's B tiles are built (8 KiB), then each 32 filters'
  // 4 C tiles, loaded from (stored back to) the task's float32 sums, run over them; A is read
  // from L1 by every r and 32 filters. (One r and 32 filters a task over all pixels, B built a
  // step before its products, read dy from L3 for every r and built each B once per 32 filters:
  // the stem's 2.6 ms; 16-step chunks 1.6 ms.) The parts' sums are added in their order: the
  // same bits for any thread count.
  const int64_t nkb = Kp / kChan, njb = Jp / kChan;
  constexpr int64_t kPart = 64, kChunk = 4;  // steps
  const int64_t nparts = ceil_div(nsteps, kPart), blocks = nkb * njb, tile_sums = R * kChan * kChan;
  at::Tensor sums_t = float_buffer(nparts * blocks * tile_sums);
  float* sums = sums_t.data_ptr<float>();
  constexpr int64_t kStepElems = 2 * kTile * 2 * kTile;  // a step's two B tiles
  const int64_t a_lo = kChunk * Kp * kChan, b_lo = kChunk * kStepElems;  // (half) where the lo parts lie
  std::vector<uint8_t> bad(static_cast<size_t>(half ? nparts : 0), 0);
  for_each_task(nparts, p.macs(), [&](int64_t part) {
    bf16* bchunk = reinterpret_cast<bf16*>(scratch(4, (half ? 2 : 1) * b_lo / 2));  // [step][column tile][pair][16 x 2]
    bf16* achunk = reinterpret_cast<bf16*>(scratch(5, (half ? 2 : 1) * a_lo / 2));  // [step][k][32]
    __mmask32 nonfinite = 0;  // (half) lanes of the tiles' values that are not finite
    configure_tiles();
    const int64_t g_end = std::min(nsteps, (part + 1) * kPart);
    for (int64_t c0 = part * kPart; c0 < g_end; c0 += kChunk) {
      const int64_t c1 = std::min(g_end, c0 + kChunk);
      // step g's image n[g - c0] and first pixel m0[g - c0]; a0[g - c0]: its first A tile
      // (filter 0), rows (filters) a_ld values apart
      const bf16* a0[kChunk];
      int64_t n_of[kChunk], m0_of[kChunk], a_ld[kChunk];
      for (int64_t g = c0; g < c1; ++g) {
        const int64_t n = n_of[g - c0] = g / spi, m0 = m0_of[g - c0] = g % spi * kChan, nm = std::min(kChan, PQ - m0);
        if (a_in_place && nm == kChan) {
          a0[g - c0] = dy + n * K * PQ + m0, a_ld[g - c0] = PQ;
          continue;
        }
        bf16* d = achunk + (g - c0) * Kp * kChan;
        a0[g - c0] = d, a_ld[g - c0] = kChan;
        if (nm < kChan) std::memset(d, 0, sizeof(bf16) * Kp * kChan);
        else if (K < Kp) std::memset(d + K * kChan, 0, sizeof(bf16) * (Kp - K) * kChan);
        if (nhwc) {
          pixels_to_rows(dy + (n * PQ + m0) * K, K, nm, d, kChan);
        } else {
          for (int64_t k = 0; k < K; ++k) std::memcpy(d + k * kChan, dy + (n * K + k) * PQ + m0, sizeof(bf16) * nm);
        }
        for (int64_t k = 0; half && k < Kp; ++k) {
          const __m512i v = _mm512_load_si512(d + k * kChan);
          nonfinite |= nonfinite_f16(v);
          store_split(d + k * kChan, v, a_lo);
        }
      }
      // The next chunk's dy pixels (those of its first image) prefetched a few lines after each
      // product step: channels_last one run of bytes, NCHW a run in each filter's plane (too many
      // streams for the prefetchers). All at once, the prefetches wait for fill buffers (9% of
      // MobileNetV2's stem).
      const char* next = nullptr;  // the run being prefetched, its line `next_line` next
      int64_t runs_left = 0, next_line = 0, run_lines = 0, per_step = 0;
      const int64_t run_stride = PQ * int64_t(sizeof(bf16));
      if (c1 < g_end) {
        const int64_t n = c1 / spi, m0 = c1 % spi * kChan, run = std::min(kChunk * kChan, PQ - m0) * int64_t(sizeof(bf16));
        next = reinterpret_cast<const char*>(nhwc ? dy + (n * PQ + m0) * K : dy + n * K * PQ + m0);
        runs_left = nhwc ? 1 : K, run_lines = ceil_div(nhwc ? run * K : run, 64);
        per_step = ceil_div(runs_left * run_lines, njb * R * nkb * (c1 - c0));
      }
      for (int64_t jb = 0; jb < njb; ++jb)
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t g = c0; g < c1; ++g) {
            const int64_t n = n_of[g - c0], m0 = m0_of[g - c0];
            const bf16* img = xb + n * Hp * Wp * C + r * dh * Wp * C + jb * kChan;
            int64_t oy = m0 / Q, ox = m0 % Q;
            bf16* b = bchunk + (g - c0) * kStepElems;
            for (int64_t t = 0; t < kTile; ++t) {
              __m512i v[2];
              for (int64_t e = 0; e < 2; ++e) {
                v[e] = m0 + 2 * t + e < PQ ? _mm512_loadu_si512(img + (oy * sh * Wp + ox * sw) * C) : _mm512_setzero_si512();
                if (++ox == Q) ox = 0, ++oy;
              }
              const __m512i u0 = _mm512_unpacklo_epi16(v[0], v[1]), u1 = _mm512_unpackhi_epi16(v[0], v[1]);
              if (half) {
                nonfinite |= nonfinite_f16(u0) | nonfinite_f16(u1);
                store_split(b + t * 2 * kTile, u0, b_lo);
                store_split(b + (kTile + t) * 2 * kTile, u1, b_lo);
              } else {
                _mm512_store_si512(b + t * 2 * kTile, u0);
                _mm512_store_si512(b + (kTile + t) * 2 * kTile, u1);
              }
            }
          }
          for (int64_t kb = 0; kb < nkb; ++kb) {
            float(*acc)[2 * kTile] = reinterpret_cast<float(*)[2 * kTile]>(
                sums + (part * blocks + kb * njb + jb) * tile_sums + r * kChan * kChan);
            if (c0 == part * kPart) {
              zero_2x2();
            } else {
              load_2x2(acc);
            }
            const bool a_pair = K - kb * kChan > kTile;  // else the A pair's second tile is zeros
            for (int64_t g = c0; g < c1; ++g) {
              const int64_t ld = a_ld[g - c0], a_stride = ld * int64_t(sizeof(bf16));
              for (int64_t t = 0; t < (half ? 3 : 1); ++t) {  // (half: hi x hi, hi x lo, lo x hi)
                const bf16* a = a0[g - c0] + kb * kChan * ld + (t == 2 ? a_lo : 0);
                const bf16* b = bchunk + (g - c0) * kStepElems + (t == 1 ? b_lo : 0);
                constexpr int64_t b_stride = 2 * kTile * int64_t(sizeof(bf16));
                if (a_pair) {
                  step_2x2(a, a + kTile * ld, a_stride, b, b + kTile * 2 * kTile, b_stride);
                } else {
                  step_1x2(a, a_stride, b, b + kTile * 2 * kTile, b_stride);
                }
              }
              for (int64_t i = 0; i < per_step && runs_left > 0; ++i) {
                _mm_prefetch(next + next_line * 64, _MM_HINT_T0);
                if (++next_line == run_lines) next_line = 0, next += run_stride, --runs_left;
              }
            }
            store_2x2(acc);
          }
        }
    }
    if (half) bad[part] = nonfinite != 0;
  });
  if (any_set(bad)) return false;
  sum_chunks(sums, nparts, blocks * tile_sums);
  for_each_task(blocks, blocks * tile_sums * 8, [&](int64_t blk) {
    const int64_t kb = blk / njb, jb = blk % njb;
    const __m512i order = unpacked_order();
    for (int64_t r = 0; r < R; ++r) {
      const float(*cbuf)[2 * kTile] = reinterpret_cast<const float(*)[2 * kTile]>(sums + blk * tile_sums + r * kChan * kChan);
      for (int64_t i = 0; i < kChan && kb * kChan + i < K; ++i) {
        alignas(64) bf16 v[2 * kTile];  // the row's 32 window values in order
        _mm512_store_si512(v, unpacked_row(cbuf[i], order, half));
        bf16* o = dw + (kb * kChan + i) * p.ws_k + r * p.ws_r;
        for (int64_t j = 0; j < kChan && jb * kChan + j < J; ++j) {
          const int64_t col = jb * kChan + j;
          o[col % C * p.ws_c + col / C * p.ws_s] = v[j];
        }
      }
    }
  });
  return true;
}

void backward_input(const Conv2dParams& p, const bf16* dy, const bf16* w, bf16* dx) {
  const int64_t N = p.N, C = p.C, K = p.K, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h, pw = p.pad_w, dh = p.dil_h;
  const bool nhwc = is_nhwc(p);
  const int64_t J = S * C, Jp = round_up(J, kChan), Kp = round_up(K, kChan), nkb = Kp / kChan, njt = Jp / kTile;
  // wb[r][kb][jt][i][j][e] = w[k = 32 kb + 2i + e][c][r][s] at column 16 jt + j = s C + c, 0 past K and J
  constexpr int64_t kTileElems = kTile * 2 * kTile;
  at::Tensor wb_t = bf16_buffer(R * nkb * njt * kTileElems);
  bf16* wb = bf16_data(wb_t);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int64_t jt = 0; jt < njt; ++jt) {
        bf16* d = wb + ((r * nkb + kb) * njt + jt) * kTileElems;
        for (int64_t i = 0; i < kTile; ++i)
          for (int64_t j = 0; j < kTile; ++j)
            for (int64_t e = 0; e < 2; ++e) {
              const int64_t k = kb * kChan + 2 * i + e, col = jt * kTile + j;
              d[(i * kTile + j) * 2 + e] =
                  k < K && col < J ? w[k * p.ws_k + col % C * p.ws_c + r * p.ws_r + col / C * p.ws_s] : bf16(0);
            }
      }
  // dy as NHWC rows of Kp channels: in place when it is one, else a zero-padded copy (with 32
  // pixels of zeros after it, read by the last row's second A tile)
  const bool in_place = nhwc && K == Kp;
  at::Tensor dyb_t = in_place ? at::Tensor() : padded_band(dy, nhwc, N, K, P, Q, 0, 0, P, Q, Kp, kChan * Kp);
  const bf16* dyb = in_place ? dy : bf16_data(dyb_t);
  // acc[f]: a dx row in padded columns, NHWC float32 (pixel q's window starts at q sw C), of the
  // windows of pixels q = f (mod nf); the row is their sum. A window is added by whole vectors
  // (masked: the masked-off lanes count for the store-to-load checks), and those of pixels nf
  // apart do not overlap: no load of acc waits for the store of the window before it. With one
  // acc, adjacent windows overlapping, 60% of the stem's time was spent in those loads.
  const int64_t span = J > kTile ? 2 * kTile : kTile, nf = ceil_div(span, sw * C);
  const int64_t Wa = round_up(std::max((Q - 1) * sw * C + Jp, (W + pw) * C) + kTile, kTile);
  constexpr int64_t kRows = 4;  // dx rows a task
  const int64_t nyb = ceil_div(H, kRows);
  for_each_task(N * nyb, p.macs(), [&](int64_t task) {
    const int64_t n = task / nyb, y0 = task % nyb * kRows, y1 = std::min(H, y0 + kRows);
    float* acc = scratch(4, nf * Wa);
    bf16* tail = reinterpret_cast<bf16*>(scratch(5, kChan * Kp / 2));
    // A block's 32 pixels x 32 columns of Z are added into acc while the next block's products
    // run: cbuf[b & 1] holds block b (the first vector load of a block's tile store waited for
    // its products: 60% of the time in that load)
    alignas(64) float cbuf[2][2 * kTile][2 * kTile];
    struct Block { int64_t q0, nq, jt; };  // the block's first pixel, pixels, first column tile
    auto add_block = [&](const Block& b, const float (*z)[2 * kTile]) {
      const __mmask16 m0 = first_lanes(J - b.jt * kTile), m1 = first_lanes(J - (b.jt + 1) * kTile);
      for (int64_t f = 0; f < nf; ++f)
        for (int64_t i = floor_mod(f - b.q0, nf); i < b.nq; i += nf) {
          float* d = acc + f * Wa + (b.q0 + i) * sw * C + b.jt * kTile;
          _mm512_mask_storeu_ps(d, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, d), _mm512_load_ps(&z[i][0])));
          if (span > kTile)
            _mm512_mask_storeu_ps(d + kTile, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, d + kTile), _mm512_load_ps(&z[i][kTile])));
        }
    };
    configure_tiles();
    for (int64_t y = y0; y < y1; ++y) {
      std::memset(acc, 0, sizeof(float) * nf * Wa);
      int64_t nb = 0;  // blocks of the row so far
      Block pending{};
      for (int64_t r = 0; r < R; ++r) {
        const int64_t t = y + ph - r * dh;
        if (t < 0 || t % sh != 0 || t / sh >= P) continue;
        const int64_t oy = t / sh;
        const bf16* row = dyb + ((n * P + oy) * Q) * Kp;
        for (int64_t q0 = 0; q0 < Q; q0 += kChan) {
          const int64_t nq = std::min(kChan, Q - q0);
          const bf16* a = row + q0 * Kp;
          if (in_place && nq < kChan && n == N - 1 && oy == P - 1) {  // the tensor's last pixels
            std::memcpy(tail, a, sizeof(bf16) * nq * Kp);
            std::memset(tail + nq * Kp, 0, sizeof(bf16) * (kChan - nq) * Kp);
            a = tail;
          }
          for (int64_t jt = 0; jt < njt; jt += 2, ++nb) {
            zero_2x2();
            for (int64_t kb = 0; kb < nkb; ++kb) {
              const bf16* b = wb + ((r * nkb + kb) * njt + jt) * kTileElems;
              step_2x2(a + kb * kChan, a + kTile * Kp + kb * kChan, Kp * int64_t(sizeof(bf16)), b, b + kTileElems,
                       2 * kTile * int64_t(sizeof(bf16)));
            }
            if (nb > 0) add_block(pending, cbuf[(nb - 1) & 1]);
            store_2x2(cbuf[nb & 1]);
            pending = Block{q0, nq, jt};
          }
        }
      }
      if (nb > 0) add_block(pending, cbuf[(nb - 1) & 1]);
      for (int64_t i = pw * C; i < (pw + W) * C; i += kTile) {  // acc[0] = the sum of the acc[f]
        __m512 v = _mm512_loadu_ps(acc + i);
        for (int64_t f = 1; f < nf; ++f) v = _mm512_add_ps(v, _mm512_loadu_ps(acc + f * Wa + i));
        _mm512_storeu_ps(acc + i, v);
      }
      const float* src = acc + pw * C;  // dx's row: columns pw.. of acc
      if (nhwc) {
        bf16* o = dx + (n * H + y) * W * C;
        for (int64_t i = 0; i < W * C; i += kTile) {
          const __mmask16 m = first_lanes(W * C - i);
          _mm256_mask_storeu_epi16(o + i, m, to_bf16(_mm512_maskz_loadu_ps(m, src + i)));
        }
      } else {
        const __m512i idx = lane_steps(C);
        for (int64_t c = 0; c < C; ++c) {
          bf16* o = dx + ((n * C + c) * H + y) * W;
          for (int64_t x0 = 0; x0 < W; x0 += kTile) {
            const __mmask16 m = first_lanes(W - x0);
            _mm256_mask_storeu_epi16(o + x0, m, to_bf16(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src + x0 * C + c, 4)));
          }
        }
      }
    }
  });
}

#pragma GCC pop_options

void run_backward_input(const Conv2dParams& p, Operands& o) {
  backward_input(p, reinterpret_cast<const bf16*>(o.a.const_data_ptr()), reinterpret_cast<const bf16*>(o.b.const_data_ptr()),
                 reinterpret_cast<bf16*>(o.out.mutable_data_ptr()));
}
void run_backward_weight(const Conv2dParams& p, Operands& o) {
  backward_weight(p, reinterpret_cast<const bf16*>(o.a.const_data_ptr()), reinterpret_cast<const bf16*>(o.b.const_data_ptr()),
                  reinterpret_cast<bf16*>(o.out.mutable_data_ptr()), false);
}

}  // namespace

namespace amx {
bool split_backward_weight_rows(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw) {
  return backward_weight(p, dy, x, dw, true);
}
}  // namespace amx

namespace {

const bool registered =
    register_algorithm({"amx_bf16_rows", Pass::BackwardInput, 50, supports_rows, run_backward_input, true}) &&
    register_algorithm({"amx_bf16_rows", Pass::BackwardWeight, 50, supports_rows, run_backward_weight, true});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
