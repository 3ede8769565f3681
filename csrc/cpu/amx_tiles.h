// amx_tiles.h — what the AMX bfloat16 kernels share (amx_bf16.cpp, amx_bf16_rows.cpp, and
// amx_fp16.cpp's float16 on them): the tile shapes, the 2x2 block of tile registers and its
// steps, lane helpers, the zero-padded NHWC band, the float16 split's interface (Split).
// The inline helpers are compiled for AVX-512 and AMX whatever the file's flags; only call them
// where amx_bf16_available() is true.
#pragma once
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "output_cache.h"

namespace conv_ext {
namespace cpu {
namespace amx {

constexpr int64_t kTile = 16;   // pixels (A rows), filters (B columns)
constexpr int64_t kChan = 32;   // channels per A row / B tile

using bf16 = uint16_t;

// A scratch tensor of n bfloat16 (float32) values, uninitialised, and its data. Large ones come
// from the output cache (output_cache.h): a fresh buffer of tens of MB is fresh pages, each
// faulting on first touch (the VGG stem's channels_last dy copy of 51 MB, NCHW backward-input:
// 35% of its time in the kernel's page faults).
inline at::Tensor bf16_buffer(int64_t n) {
  return empty_output({n}, at::TensorOptions().dtype(at::kBFloat16), at::MemoryFormat::Contiguous);
}
inline at::Tensor float_buffer(int64_t n) {
  return empty_output({n}, at::TensorOptions().dtype(at::kFloat), at::MemoryFormat::Contiguous);
}
inline bf16* bf16_data(const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr()); }

struct __attribute__((packed)) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")

// The 8 tiles of a 2x2 register block, each 16 rows of 64 bytes: C00, C01, C10, C11 = tiles 0-3
// (float32), A0, A1 = 4, 5 and B0, B1 = 6, 7 (bfloat16 pairs). The configuration is per thread.
//
// Without AMX but with AVX512-BF16 (AMD Zen 4 and later) the same kernels run with the tiles
// emulated (tiles_emulated(), set once by amx_bf16_available()). A block's products are recorded
// (zero_2x2 / load_2x2 start a block, each step_* adds one step of up to four tile products) and
// run when its sums are read (store_2x2) or the record is full: each half of the 2x2 block (16
// rows x 32 columns) 8 rows at a time, its 16 C rows held in registers across all the steps, per
// pair row k of B each A row's pair k broadcast and multiplied into the C row by VDPBF16PS (two
// products of bfloat16 summed in float32: what TDPBF16PS does a row at a time; the order of the
// sums over k and steps is fixed, so results stay deterministic). A and B are read where the
// kernels point the tile loads, so they must not change before the block's store_2x2 (the
// kernels only write them before zero_2x2). Was one product at a time with C in a per-thread
// 4 KiB block, loaded and stored around every 16 pair rows: 18% of the samples of a 1x1
// 128->512 @28 forward were those loads, stores and copies (perf annotate). On the 2-core Zen 4
// machine VDPBF16PS runs twice the float32 FMA's multiply-adds a cycle (230 GFLOP/s a core with
// C in registers, 8 rows x 2 tiles; 195 as one product at a time).
extern bool g_tiles_emulated;
inline bool tiles_emulated() { return g_tiles_emulated; }

// One recorded step: C tile t += (the A tile at a[t], 16 rows a_stride bytes apart) . (the B tile
// at b[t], 16 pair rows b_stride bytes apart); a[t] null: no product for tile t.
struct EmulatedStep {
  const char* a[4];
  const char* b[4];
  int64_t a_stride, b_stride;
};
constexpr int kEmulatedSteps = 64;
struct EmulatedBlock {
  EmulatedStep steps[kEmulatedSteps];
  int n = 0;
  const float (*init)[2 * kTile] = nullptr;  // the sums so far ([32][32] as store_2x2's cbuf); null: zeros
  alignas(64) float spill[2 * kTile][2 * kTile];  // the sums of a block whose record filled up
};
inline EmulatedBlock& emulated_block() {
  static thread_local EmulatedBlock blk;
  return blk;
}
// A new block whose sums start from init (null: zeros)
inline void emulated_begin(const float (*init)[2 * kTile]) {
  EmulatedBlock& blk = emulated_block();
  blk.n = 0, blk.init = init;
}

// Rows mh..mh+7 of C tiles L and R (accL, accR) += the products of one step: L from (aL, bL),
// R from (aR, bR); Mode 0: L only, 1: R only, 2: both on the same A (one broadcast for two
// products), 3: both, A's apart.
template <int Mode>
inline void emulated_rows(__m512* accL, __m512* accR, const char* aL, const char* aR, int64_t a_stride,
                          const char* bL, const char* bR, int64_t b_stride) {
#pragma GCC unroll 2
  for (int k = 0; k < kTile; ++k) {
    const __m512bh bl = Mode != 1 ? (__m512bh)_mm512_loadu_si512(bL + k * b_stride) : (__m512bh)_mm512_setzero_si512();
    const __m512bh br = Mode != 0 ? (__m512bh)_mm512_loadu_si512(bR + k * b_stride) : bl;
#pragma GCC unroll 8
    for (int m = 0; m < 8; ++m) {
      int32_t pair;
      if (Mode != 1) {
        std::memcpy(&pair, aL + m * a_stride + 4 * k, 4);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
        accL[m] = _mm512_dpbf16_ps(accL[m], av, bl);
        if (Mode == 2) accR[m] = _mm512_dpbf16_ps(accR[m], av, br);
      }
      if (Mode == 1 || Mode == 3) {
        std::memcpy(&pair, aR + m * a_stride + 4 * k, 4);
        accR[m] = _mm512_dpbf16_ps(accR[m], (__m512bh)_mm512_set1_epi32(pair), br);
      }
    }
  }
}

// Runs the recorded steps into out ([32][32]: C00 | C01 over C10 | C11) and empties the record.
inline void emulated_flush(float (*out)[2 * kTile]) {
  EmulatedBlock& blk = emulated_block();
  for (int half = 0; half < 2; ++half) {  // tiles 2*half (left) and 2*half + 1 (right)
    const int tL = 2 * half, tR = tL + 1;
    for (int mh = 0; mh < kTile; mh += 8) {
      const int row0 = half * kTile + mh;
      __m512 accL[8], accR[8];
#pragma GCC unroll 8
      for (int m = 0; m < 8; ++m) {
        accL[m] = blk.init ? _mm512_loadu_ps(&blk.init[row0 + m][0]) : _mm512_setzero_ps();
        accR[m] = blk.init ? _mm512_loadu_ps(&blk.init[row0 + m][kTile]) : _mm512_setzero_ps();
      }
      for (int i = 0; i < blk.n; ++i) {
        const EmulatedStep& st = blk.steps[i];
        const char* aL = st.a[tL] ? st.a[tL] + mh * st.a_stride : nullptr;
        const char* aR = st.a[tR] ? st.a[tR] + mh * st.a_stride : nullptr;
        if (aL && aR && aL == aR) emulated_rows<2>(accL, accR, aL, aR, st.a_stride, st.b[tL], st.b[tR], st.b_stride);
        else if (aL && aR) emulated_rows<3>(accL, accR, aL, aR, st.a_stride, st.b[tL], st.b[tR], st.b_stride);
        else if (aL) emulated_rows<0>(accL, accR, aL, aR, st.a_stride, st.b[tL], st.b[tR], st.b_stride);
        else if (aR) emulated_rows<1>(accL, accR, aL, aR, st.a_stride, st.b[tL], st.b[tR], st.b_stride);
      }
#pragma GCC unroll 8
      for (int m = 0; m < 8; ++m) {
        _mm512_storeu_ps(&out[row0 + m][0], accL[m]);
        _mm512_storeu_ps(&out[row0 + m][kTile], accR[m]);
      }
    }
  }
  blk.n = 0;
}

// Records a step (a[t], b[t] for C tiles 0-3), running the record into the spill block when full.
inline void emulated_step(const void* a0, const void* b0, const void* a1, const void* b1, const void* a2,
                          const void* b2, const void* a3, const void* b3, int64_t a_stride, int64_t b_stride) {
  EmulatedBlock& blk = emulated_block();
  if (blk.n == kEmulatedSteps) {
    emulated_flush(blk.spill);
    blk.init = blk.spill;
  }
  auto c = [](const void* p) { return static_cast<const char*>(p); };
  blk.steps[blk.n++] = {{c(a0), c(a1), c(a2), c(a3)}, {c(b0), c(b1), c(b2), c(b3)}, a_stride, b_stride};
}

// The tiles' configuration, loaded where the thread's differs (STTILECFG and a compare, ~7 ns
// here, against LDTILECFG's ~53; released tiles store zeros, another library's its own), and kept
// after a task (no TILERELEASE): a kernel's tasks are often small (MobileNetV2's
// 32->16 1x1 @112 channels_last forward: 784 tasks, 9% of its samples after the LDTILECFG), and
// every task of every kernel here configures the same 8 tiles. A thread keeps its tile state
// after the call (saved and restored with its other registers when it is switched out). Code
// that uses the tiles after us loads its own configuration (oneDNN's lazy configure, as torch's
// bfloat16 convolutions run it, compares the thread's stored one the same way): the tests and
// benchmarks alternate its calls and ours in one process.
inline void configure_tiles() {
  if (tiles_emulated()) return;
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.rows[i] = kTile, cfg.colsb[i] = 64;
  alignas(64) TileConfig cur;
  _tile_storeconfig(&cur);
  if (std::memcmp(&cur, &cfg, sizeof(cfg)) != 0) _tile_loadconfig(&cfg);
}
inline void zero_2x2() {
  if (tiles_emulated()) {
    emulated_begin(nullptr);
    return;
  }
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}
// C_ij += A_i . B_j, the tiles loaded between the products that free them: a tile register is
// not renamed, so a load waits for the last product reading the register's previous tile (the
// same speed as the four loads first, measured: the core reorders them).
inline void step_2x2(const void* a0, const void* a1, int64_t a_stride, const void* b0, const void* b1, int64_t b_stride) {
  if (tiles_emulated()) {
    emulated_step(a0, b0, a0, b1, a1, b0, a1, b1, a_stride, b_stride);
    return;
  }
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(7, b1, b_stride);
  _tile_dpbf16ps(1, 4, 7);
  _tile_loadd(5, a1, a_stride);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}
// C_00 += A_0 . B_0, C_10 += A_1 . B_0: the 2x2 block's left half, for a filter pair whose second
// block is all zeros (16 filters or fewer left): half the products of step_2x2.
inline void step_2x1(const void* a0, const void* a1, int64_t a_stride, const void* b0, int64_t b_stride) {
  if (tiles_emulated()) {
    emulated_step(a0, b0, nullptr, nullptr, a1, b0, nullptr, nullptr, a_stride, b_stride);
    return;
  }
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(5, a1, a_stride);
  _tile_dpbf16ps(2, 5, 6);
}
// Four A tiles on one B tile (16 filters or fewer: two pixel pairs at once, one B load for four
// products and four sums in flight): C_00 += A_0 . B_0, C_10 += A_1 . B_0, C_01 += A_2 . B_0,
// C_11 += A_3 . B_0 (store_2x2 then puts pair A_0, A_1 in cbuf's left columns, A_2, A_3 right).
inline void step_4x1(const void* a0, const void* a1, const void* a2, const void* a3, int64_t a_stride, const void* b0,
                     int64_t b_stride) {
  if (tiles_emulated()) {
    emulated_step(a0, b0, a2, b0, a1, b0, a3, b0, a_stride, b_stride);
    return;
  }
  _tile_loadd(6, b0, b_stride);
  _tile_loadd(4, a0, a_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(5, a1, a_stride);
  _tile_dpbf16ps(2, 5, 6);
  _tile_loadd(7, a2, a_stride);
  _tile_dpbf16ps(1, 7, 6);
  _tile_loadd(4, a3, a_stride);
  _tile_dpbf16ps(3, 4, 6);
}
// C_00 += A_0 . B_0, C_11 += A_1 . B_1: the 2x2 block's diagonal (two groups of 16 channels and
// 16 filters side by side: the other two tiles would meet a group's filters with the other's
// channels).
inline void step_diag(const void* a0, const void* a1, int64_t a_stride, const void* b0, const void* b1, int64_t b_stride) {
  if (tiles_emulated()) {
    emulated_step(a0, b0, nullptr, nullptr, nullptr, nullptr, a1, b1, a_stride, b_stride);
    return;
  }
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(5, a1, a_stride);
  _tile_loadd(7, b1, b_stride);
  _tile_dpbf16ps(3, 5, 7);
}
// C_00 += A_0 . B_0, C_01 += A_0 . B_1: the 2x2 block's top half, for an A pair whose second tile
// is all zeros.
inline void step_1x2(const void* a0, int64_t a_stride, const void* b0, const void* b1, int64_t b_stride) {
  if (tiles_emulated()) {
    emulated_step(a0, b0, a0, b1, nullptr, nullptr, nullptr, nullptr, a_stride, b_stride);
    return;
  }
  _tile_loadd(4, a0, a_stride);
  _tile_loadd(6, b0, b_stride);
  _tile_dpbf16ps(0, 4, 6);
  _tile_loadd(7, b1, b_stride);
  _tile_dpbf16ps(1, 4, 7);
}
inline void load_2x2(const float (*cbuf)[2 * kTile]) {  // the inverse of store_2x2
  if (tiles_emulated()) {  // read at the block's flush (cbuf is not written before its store_2x2)
    emulated_begin(cbuf);
    return;
  }
  _tile_loadd(0, &cbuf[0][0], 2 * kTile * sizeof(float));
  _tile_loadd(1, &cbuf[0][kTile], 2 * kTile * sizeof(float));
  _tile_loadd(2, &cbuf[kTile][0], 2 * kTile * sizeof(float));
  _tile_loadd(3, &cbuf[kTile][kTile], 2 * kTile * sizeof(float));
}
inline void store_2x2(float (*cbuf)[2 * kTile]) {  // cbuf[32][32]: C00 | C01 over C10 | C11
  if (tiles_emulated()) {
    emulated_flush(cbuf);
    return;
  }
  _tile_stored(0, &cbuf[0][0], 2 * kTile * sizeof(float));
  _tile_stored(1, &cbuf[0][kTile], 2 * kTile * sizeof(float));
  _tile_stored(2, &cbuf[kTile][0], 2 * kTile * sizeof(float));
  _tile_stored(3, &cbuf[kTile][kTile], 2 * kTile * sizeof(float));
}

// The first n of 16 lanes (none for n <= 0, all for n >= 16).
inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>(n >= kTile ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1); }
// The first n of 32 word lanes (none for n <= 0, all for n >= 32).
inline __mmask32 first_words(int64_t n) { return n >= kChan ? ~__mmask32(0) : n <= 0 ? 0 : (__mmask32(1) << n) - 1; }
// 16 32-bit lanes holding 0, step, 2 step, ... (gather offsets).
inline __m512i lane_steps(int64_t step) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int>(step)));
}

// Word lanes 0, 1, ..., 31 (the identity index of _mm512_permutexvar_epi16).
inline __m512i word_steps() {
  return _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8,
                          7, 6, 5, 4, 3, 2, 1, 0);
}

// The index for _mm512_permutex2var_epi16(a, idx, b) that interleaves the low 16 values of a and of
// b: lane 2t takes a's value t, lane 2t + 1 b's (index 32 + t of the pair of vectors).
inline __m512i interleave_16() {
  return _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35,
                          3, 34, 2, 33, 1, 32, 0);
}

// Two pixels' 32 values interleaved into VNNI pairs by UNPCKLWD / UNPCKHWD (one operation each; a
// two-source word permute is three): the low result holds the pairs of values {0-3, 8-11, 16-19,
// 24-27}, the high one {4-7, 12-15, 20-23, 28-31} (the instructions work within 128-bit lanes), so
// column j < 32 of the two B tiles they make is value unpacked_column(j).
inline int64_t unpacked_column(int64_t j) { return j % 16 / 4 * 8 + j / 16 * 4 + j % 4; }
// The index for _mm512_permutexvar_epi16 that puts 32 results of such columns back in value order.
inline __m512i unpacked_order() {
  alignas(64) int16_t idx[2 * kTile];
  for (int64_t j = 0; j < 2 * kTile; ++j) idx[unpacked_column(j)] = static_cast<int16_t>(j);
  return _mm512_load_si512(idx);
}

// A C-tile row of such columns (32 float32 sums) as bfloat16 in value order (order: unpacked_order()).
inline __m512i unpacked_row_bf16(const float* row, __m512i order) {
  return _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + kTile), _mm512_loadu_ps(row)));
}

// d[k * ld + i] = src[i * stride + k] for pixels i < n and filters k < K (stride 0: K):
// channels_last pixels (stride values each) turned into rows of filters, two filters of 16 pixels
// a 32-bit gather of (src[i][k], src[i][k + 1]); the pixels outer, so that their K values are
// read from L1 by every gather.
inline void pixels_to_rows(const bf16* src, int64_t K, int64_t n, bf16* d, int64_t ld, int64_t stride = 0) {
  if (stride == 0) stride = K;
  const __m512i idx = lane_steps(stride);
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const __mmask16 m = first_lanes(n - i0);
    for (int64_t k = 0; k + 1 < K; k += 2) {
      const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, src + i0 * stride + k, 2);
      const __m512i hi = _mm512_maskz_srli_epi32(0xFFFF, v, 16);  // (the maskz forms: no undefined
      _mm256_mask_storeu_epi16(d + k * ld + i0, m, _mm512_maskz_cvtepi32_epi16(0xFFFF, v));  // lanes for GCC)
      _mm256_mask_storeu_epi16(d + (k + 1) * ld + i0, m, _mm512_maskz_cvtepi32_epi16(0xFFFF, hi));
    }
  }
  if (K % 2 == 1)
    for (int64_t i = 0; i < n; ++i) d[(K - 1) * ld + i] = src[i * stride + K - 1];
}

// r[i][j] -> r[j][i] for 16 vectors of 16 32-bit words: words, then pairs of words interleaved
// within each 128-bit lane (u[4k + j] lane L: column 4L + j of rows 4k..4k+3), then the lanes
// gathered (a row's lane L from u[j], u[4 + j], u[8 + j], u[12 + j]). (The maskz forms: no
// undefined lanes for GCC's warnings.)
inline void transpose_16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_maskz_unpacklo_epi32(0xFFFF, r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_maskz_unpackhi_epi32(0xFFFF, r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    u[4 * k] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[4 * k + 1], t[4 * k + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i x0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[j], u[4 + j], 0x44);
    const __m512i x1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[j], u[4 + j], 0xEE);
    const __m512i y0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[8 + j], u[12 + j], 0x44);
    const __m512i y1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_maskz_shuffle_i32x4(0xFFFF, x0, y0, 0x88);
    r[4 + j] = _mm512_maskz_shuffle_i32x4(0xFFFF, x0, y0, 0xDD);
    r[8 + j] = _mm512_maskz_shuffle_i32x4(0xFFFF, x1, y1, 0x88);
    r[12 + j] = _mm512_maskz_shuffle_i32x4(0xFFFF, x1, y1, 0xDD);
  }
}

// The bfloat16 values at p under m, zeros elsewhere; no load at all when m is empty: p may lie past
// a tensor's end, and a masked-off load from an unmapped page takes a slow assist (~100+ cycles)
inline __m256i load_16(__mmask16 m, const bf16* p) {
  return m ? _mm256_maskz_loadu_epi16(m, p) : _mm256_setzero_si256();
}

// 16 float32 -> 16 bfloat16, round to nearest even
inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// Band row d (Wp pixels of Cp channels) for image row h: its padding zeroed (all of it where h lies
// outside the H rows), and the image pixels it holds from column pw on returned (-1: none).
inline int64_t band_row_padding(bf16* d, int64_t h, int64_t H, int64_t W, int64_t pw, int64_t Wp, int64_t Cp) {
  if (h < 0 || h >= H) {
    std::memset(d, 0, sizeof(bf16) * Wp * Cp);
    return -1;
  }
  std::memset(d, 0, sizeof(bf16) * std::min(pw, Wp) * Cp);
  const int64_t wend = std::max<int64_t>(0, std::min(W, Wp - pw));
  if (pw + wend < Wp) std::memset(d + (pw + wend) * Cp, 0, sizeof(bf16) * (Wp - pw - wend) * Cp);
  return wend;
}
// The lanes of m where v is an infinity or a NaN (exponent bits all set).
inline __mmask16 nonfinite_lanes(__mmask16 m, __m512 v) {
  const __m512i e = _mm512_set1_epi32(0x7F800000);
  return _mm512_mask_cmpeq_epi32_mask(m, _mm512_and_si512(_mm512_castps_si512(v), e), e);
}
// Whether any task's flag in bad is set (the tasks' findings of infinities and NaNs)
inline bool any_set(const std::vector<uint8_t>& bad) { return std::find(bad.begin(), bad.end(), uint8_t(1)) != bad.end(); }

// 16 float32 -> 16 float16, round to nearest even (the maskz form: no undefined lanes for GCC's warnings)
inline __m256i to_f16(__m512 v) { return _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// unpacked_row_bf16's row, as float16 where half (backward-weight of float16 problems)
inline __m512i unpacked_row(const float* row, __m512i order, bool half) {
  if (!half) return unpacked_row_bf16(row, order);
  const __m256i lo = to_f16(_mm512_loadu_ps(row)), hi = to_f16(_mm512_loadu_ps(row + kTile));
  return _mm512_permutexvar_epi16(order, _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(lo), hi, 1));
}

// float16 as two bfloat16 values: f (16 float16 inputs widened) = hi + lo exactly, hi = f rounded
// to bfloat16 (8 significant bits), lo = f - hi (a float16 has 11: the rest, at most 3 bits, each
// a multiple of the float16's last place). Infinities and NaNs: hi is one, lo not meaningful.
inline void split_16(__m512 f, __m256i& hi, __m256i& lo) {
  hi = (__m256i)_mm512_cvtneps_pbh(f);
  // (the maskz forms: no undefined lanes for GCC's warnings)
  const __m512 hf = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, hi), 16));
  lo = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(f, hf));
}
inline __m512 widen_16(__mmask16 m, const uint16_t* p) { return _mm512_maskz_cvtph_ps(0xFFFF, load_16(m, p)); }

// 32 float16 values (words of v) split the same way: hi and lo as 32 bfloat16 words each, in v's
// order (the maskz forms: no undefined lanes for GCC's warnings)
inline void split_32(__m512i v, __m512i& hi, __m512i& lo) {
  __m256i h0, l0, h1, l1;
  split_16(_mm512_maskz_cvtph_ps(0xFFFF, _mm512_maskz_extracti64x4_epi64(0xF, v, 0)), h0, l0);
  split_16(_mm512_maskz_cvtph_ps(0xFFFF, _mm512_maskz_extracti64x4_epi64(0xF, v, 1)), h1, l1);
  hi = _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(h0), h1, 1);
  lo = _mm512_maskz_inserti64x4(0xFF, _mm512_castsi256_si512(l0), l1, 1);
}
// The 32 float16 values v (any order: the split is value by value) split, hi stored at d and lo
// lo_at values after it (tiles of hi parts and of lo parts; d 64-byte aligned)
inline void store_split(bf16* d, __m512i v, int64_t lo_at) {
  __m512i hi, lo;
  split_32(v, hi, lo);
  _mm512_store_si512(d, hi);
  _mm512_store_si512(d + lo_at, lo);
}
// The lanes of v (32 float16 values) that hold an infinity or a NaN (exponent bits all set)
inline __mmask32 nonfinite_f16(__m512i v) {
  const __m512i e = _mm512_set1_epi16(0x7C00);
  return _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, e), e);
}

#pragma GCC pop_options

// run_has_nonfinite: has_nonfinite's test on one thread (a band row as it is written)
bool run_has_nonfinite(const bf16* x, int64_t n);
// Whether any of x[0, n) is an infinity or a NaN (exponent bits all set). A product with such a
// value is NaN even when the other factor is 0, so kernels whose tiles pair real values with
// zeros they put in (row_mode's values past a filter row, backward-weight's grid columns past Q)
// would turn a finite result NaN; they run such data on float32 copies (run_as_float32).
bool has_nonfinite(const bf16* x, int64_t n);

// x (N, C, H, W; NCHW or NHWC) as a zero-padded NHWC band [n][Hp][Wp][Cp] (rows ph.., columns
// pw.. hold the image, channels past C are 0), followed by `slack` zero elements. With
// `nonfinite`, whether x holds an infinity or a NaN (has_nonfinite) is set there too, from each
// band row as it is written (while it is in L1): not a pass of its own over x.
at::Tensor padded_band(const bf16* x, bool nhwc, int64_t N, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
                       int64_t Hp, int64_t Wp, int64_t Cp, int64_t slack, bool* nonfinite = nullptr);

// float16 on the tiles (amx_fp16.cpp): a float16 problem run as a bfloat16 problem of three times
// the channels on its split operands. Split holds what amx_bf16.cpp's kernels read in its place:
// the band made from `a` by split_band, the filter from filter() (split_filter) when it is packed.
struct Split {
  const bf16* a = nullptr;                  // the float16 input (x; dy for backward-input)
  int64_t channels = 0;                     // its channels (a third of the problem's)
  std::function<at::Tensor(bool*)> filter;  // the split filter; sets *nonfinite where w is not finite
  int64_t w_offset = 0;                     // where the problem's filter starts in it (turned round: its last tap)
  bool cached_only = false;                 // use only a packed filter the cache keeps (else: return false)
};
// (amx_fp16.cpp) x (N, C, H, W; float16, NCHW or NHWC) as padded_band's band of 3C bfloat16
// channels [hi | hi | lo], Cp a multiple of 32 or 3C; *nonfinite: whether x holds an infinity or
// a NaN
at::Tensor split_band(const bf16* x, bool nhwc, int64_t N, int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
                      int64_t Hp, int64_t Wp, int64_t Cp, int64_t slack, bool* nonfinite);
// (amx_bf16.cpp) the split problem q (its channels, forward, or filters, backward-input, tripled;
// its filter's strides those of split_filter's buffer; backward-weight: the float16 problem
// itself): whether amx_bf16 takes it, and its pass; false where an operand is not finite, or
// s.cached_only and the filter cache neither holds nor keeps the packed filter (nothing written
// then: the caller runs it on float32 copies). y, dx and the bias float16.
bool split_supported(Pass pass, const Conv2dParams& q);
bool split_forward(const Conv2dParams& q, const Split& s, const bf16* bias, bf16* y, const at::Tensor* filter);
bool split_backward_input(const Conv2dParams& q, Split& s, bf16* dx, const at::Tensor* filter);
// backward-weight of the float16 problem p itself (dy, x, dw float16): its sums over three times
// the pixels (dy's hi with x's hi and lo, dy's lo with x's hi); false where dy or x is not finite
bool split_backward_weight(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw);
// (amx_bf16_rows.cpp) whether its kernels take p (fewer than 16 channels: the RGB stems; the
// dtype aside), and backward-weight of such a float16 problem the same way (false: not finite)
bool rows_supported(const Conv2dParams& p);
bool split_backward_weight_rows(const Conv2dParams& p, const bf16* dy, const bf16* x, bf16* dw);

}  // namespace amx
}  // namespace cpu
}  // namespace conv_ext
