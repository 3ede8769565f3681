// simd.h — vector traits, the register-blocked micro-kernel and a vector transpose
// (transpose_rows: NCHW channel rows -> [pixel][NVL] panels), the band copy of implicit_gemm
// (pack_band) and the phase-split row copies of the NCHW direct kernels (pack_phase_plane,
// interleave_phases), compiled once per instruction set. In files that define
// CONV_EXT_PER_ISA_BF16 (implicit_gemm.cpp) the AVX-512 micro-kernel also runs on words of
// bfloat16 pairs (Tile::pairs: VDPBF16PS steps), with the band builders those need.
//
// No include guard on purpose: an algorithm file includes it once per ISA, each time inside a
// `#pragma GCC target(...)` region and with CONV_EXT_ISA_NS (the namespace: avx512 | avx2) and
// CONV_EXT_ISA_BITS (512 | 256) defined, so the same source becomes an AVX-512 and an AVX2
// kernel in one build (the build itself has no -mavx512f; cpu_capability() picks at run time).
//
// The micro-kernel (BLIS style) does one thing:
//     C(MR x NV*VL) (+)= sum_{seg} sum_{l < len} A(i, l) * B(l)[v]
//       A(i, l) = a[a_off[seg] + i*a_is + l*a_ls]      broadcast, one scalar per row i
//       B(l)    = b[b_off[seg] + l*b_ls + 0 .. NV*VL)   NV vector loads
// with MR*NV accumulators held in registers the whole time (AVX-512: 6x4, 8x3, 12x2, 12x1 = 12..24
// zmm, and 9x3, 14x2 for rows at a fixed distance (run_row_tile); AVX2: 4x3, 6x2, 12x1 = 12
// ymm). "Segments" are what makes it a convolution without an
// im2col buffer: one segment per filter tap (or per filter row when the taps of a row are
// contiguous in memory, or per image row in backward-weight), each pointing into the tensor or
// a small packed band of it. Rows i >= mr re-read row mr-1 and are not stored (tile remainders);
// a tile of <= 3/4 MR rows runs an instance of 3/4 MR rows (sized_tile).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

// CONV_EXT_ISA_PAIRS: this inclusion has the bfloat16 pairs (AVX-512 in a file that defines
// CONV_EXT_PER_ISA_BF16: Tile::pairs and the band builders it needs)
#undef CONV_EXT_ISA_PAIRS
#if CONV_EXT_ISA_BITS == 512 && defined(CONV_EXT_PER_ISA_BF16)
#define CONV_EXT_ISA_PAIRS 1
#else
#define CONV_EXT_ISA_PAIRS 0
#endif

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

#if CONV_EXT_ISA_BITS == 512
struct Isa {
  static constexpr int VL = 16;    // floats per vector
  static constexpr int kMaxNV = 4;  // vectors of output channels per micro-tile
  using V = __m512;
  using M = __mmask16;
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V loadm(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  // bfloat16 values (the top halves of float32s) as float32 (the maskz forms: no undefined
  // lanes for GCC's warnings)
  static inline V widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16));
  }
  static inline V load(const uint16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static inline V loadm(const uint16_t* p, M m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
  // v rounded to bfloat16 (to nearest even, a NaN stays a NaN: c10::BFloat16's rule), by integer
  // steps: no AVX512-BF16 needed (Zen 4 and Cooper Lake have it, Skylake-X does not); the maskz
  // forms as in widen
  static inline __m256i narrow(V v) {
    return _mm512_maskz_cvtepi32_epi16(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, round_high(v), 16));
  }
  // the same rounding left in the top halves of the 32-bit lanes (the low halves: what is left over)
  static inline __m512i round_high(V v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  }
  static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline void storem(float* p, V v, M m) { _mm512_mask_storeu_ps(p, m, v); }
  static inline void store(uint16_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static inline void storem(uint16_t* p, V v, M m) { _mm256_mask_storeu_epi16(p, m, narrow(v)); }
  // float16 (at::Half) values as float32 (exact), and float32 rounded to float16 to nearest even
  // (as c10::Half and torch's vectorised copies round: overflow to infinity, subnormals kept)
  // (the maskz forms, as in widen)
  static inline V load(const at::Half* p) {
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline V loadm(const at::Half* p, M m) {
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(m, p));
  }
  static inline __m256i narrow_half(V v) {
    return _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static inline void store(at::Half* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_half(v)); }
  static inline void stream(at::Half* p, V v) { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), narrow_half(v)); }
  static inline void storem(at::Half* p, V v, M m) { _mm256_mask_storeu_epi16(p, m, narrow_half(v)); }
  static inline void stream(float* p, V v) { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  static inline V set1(float x) { return _mm512_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline M mask(int64_t n) {
    return n <= 0 ? M(0) : n >= VL ? M(0xFFFF) : M((1u << n) - 1u);
  }
  // rows per micro-tile for NV vectors: MR*NV accumulators + NV B vectors + 1 broadcast <= 32,
  // and at most 12 rows: each row has its own A pointer in the micro-kernel's loop, and 12 of them
  // (+ B's pointer and the step) fill the 15 general registers. One vector had 16 rows: 5 of its
  // pointers lived on the stack, reloaded every step (objdump), 22 loads for 16 FMAs, and loads
  // (2 a cycle here) bound the loop: 11 cycles a step, not 8. With 12 rows, 13 loads for 12 FMAs.
  // Batch 8, 2 threads, Xeon, old/new (python benchmarks/ab.py OLD.so NEW.so SHAPE --layout L
  // --pass P --rounds 4..8): 1x1 32->16 @112 forward channels_last 1.08-1.20x, NCHW 1.03x; 3->16
  // 3x3 @32 (CIFAR's stem) channels_last backward-weight 1.39-1.41x; 1x1 16->96 @112 channels_last
  // backward-input 1.05x; 16-channel 3x3 and 5x5 layers, 512 g32 @14, the other passes level.
  static constexpr int mr(int nv) { return nv == 4 ? 6 : nv == 3 ? 8 : 12; }
};
#else
struct Isa {
  static constexpr int VL = 8;
  static constexpr int kMaxNV = 3;
  using V = __m256;
  using M = __m256i;
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const float* p) { return _mm256_loadu_ps(p); }
  static inline V loadm(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  // bfloat16 values (the top halves of float32s) as float32
  static inline V load(const uint16_t* p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static inline V loadm(const uint16_t* p, M m) { return load(masked_words(p, m).data()); }
  // v rounded to bfloat16 (as the AVX-512 narrow)
  static inline __m128i narrow(V v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // the 8 values fit 16 bits: packed without saturating, lanes [0..3 0..3 | 4..7 4..7] -> [0..7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
  }
  static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline void storem(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
  static inline void store(uint16_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v)); }
  static inline void storem(uint16_t* p, V v, M m) { storem_words(p, narrow(v), m); }
  // float16 (at::Half) as the AVX-512 Isa converts it (F16C)
  static inline V load(const at::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline V loadm(const at::Half* p, M m) {
    const Words w = masked_words(reinterpret_cast<const uint16_t*>(p), m);
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(w.data())));
  }
  static inline __m128i narrow_half(V v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline void store(at::Half* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_half(v)); }
  static inline void stream(at::Half* p, V v) { _mm_stream_si128(reinterpret_cast<__m128i*>(p), narrow_half(v)); }
  static inline void storem(at::Half* p, V v, M m) { storem_words(reinterpret_cast<uint16_t*>(p), narrow_half(v), m); }
  // no 16-bit masked loads and stores: the lanes through a buffer
  struct Words {
    alignas(16) uint16_t w[8];
    const uint16_t* data() const { return w; }
  };
  static inline Words masked_words(const uint16_t* p, M m) {
    alignas(32) int32_t on[8];
    Words b;
    _mm256_store_si256(reinterpret_cast<__m256i*>(on), m);
    for (int i = 0; i < 8; ++i) b.w[i] = on[i] ? p[i] : uint16_t(0);
    return b;
  }
  static inline void storem_words(uint16_t* p, __m128i words, M m) {
    alignas(32) int32_t on[8];
    alignas(16) uint16_t b[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(on), m);
    _mm_store_si128(reinterpret_cast<__m128i*>(b), words);
    for (int i = 0; i < 8; ++i)
      if (on[i]) p[i] = b[i];
  }
  static inline void stream(float* p, V v) { _mm256_stream_ps(p, v); }  // p 32-byte aligned
  static inline V set1(float x) { return _mm256_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline M mask(int64_t n) {
    const int m = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(n, VL)));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // 16 ymm registers: MR*NV + NV + 1 <= 16
  static constexpr int mr(int nv) { return nv == 3 ? 4 : nv == 2 ? 6 : 12; }
};
#endif

using V = Isa::V;
using M = Isa::M;
constexpr int VL = Isa::VL;

// Sums of at most kChain steps. A tile's sums run kChain steps of the reduction in registers, are
// then added into a second set of sums in memory (L1) and start again from zero: a blocked
// summation, whose rounding error grows with kChain + steps/kChain rather than with the steps.
// One chain over a whole reduction (64 channels x 7x7 taps = 3136 steps forward; 2000 pixels in
// backward-weight) came to 4-10x torch's float32 error against a float64 result (2e-6 vs 2e-7),
// past the 4x the issue allows. A reduction of at most kChain steps is summed as before (the
// same bits); longer ones cost a load, an add and a store of each sum per kChain steps (kChain x
// MR x NV FMAs): old/new 0.94-1.06x, the machine's noise (python benchmarks/ab.py OLD.so NEW.so
// SHAPE --pass P --rounds 8 on 3x3/2 128@56, 512@7, 2048->512 1x1, 512 g32 @14, the stem).
// A tile may ask for shorter chains (Tile::chain: implicit_gemm's backward-weight, 64).
constexpr int64_t kChain = 256;

// One call of the micro-kernel.
struct Tile {
  const float* a = nullptr;      // A(i, l) = a[a_off[seg] + i*a_is + l*a_ls]
  int64_t a_is = 0, a_ls = 1;
  const float* const* arow = nullptr;  // if set, row i starts at arow[i] instead of a + i*a_is
  const float* b = nullptr;      // B(l)    = b[b_off[seg] + l*b_ls + v*VL + lane]
  int64_t b_ls = 0;
  const int64_t* a_off = nullptr;
  const int64_t* b_off = nullptr;
  int nseg = 0;
  int64_t len = 0;               // l runs over [0, len) in every segment
  int mr = 0;                    // valid rows, 1..MR
  float* c = nullptr;            // C(i, v) at c + i*ldc + v*VL
  int64_t ldc = 0;
  float* const* crow = nullptr;  // if set, row i of C starts at crow[i] instead of c + i*ldc
  bool accumulate = false;       // C += A·B (else C = A·B)
  const float* bias_v = nullptr; // NV*VL values added to every row, or null
  const float* bias_i = nullptr; // one value per row, or null
  const M* bmask = nullptr;      // NV masks for the B loads (used when MASKB)
  const M* cmask = nullptr;      // NV masks for the C stores, or null = full vectors
  bool stream = false;           // full, aligned C vectors by non-temporal stores (caller fences)
  // Loop::Fast (not with pairs): where the caller's next tile reads A (prefetch_rows): step l of
  // segment seg loads the line at prefetch + a_off[seg] floats + 64*l bytes into L1 (len lines a
  // segment). A tile's first steps touch all its MR rows at once, each a line of its own, and the
  // hardware's prefetchers did not keep up with rows streamed from L3: the micro-kernel alone,
  // 12x1 tiles of 96 steps over 38 MB of rows, one core, 78 -> 127 GFLOP/s. Channels_last 1x1
  // layers (C->K), batch 8 (4: ResNet), 2 threads, old/new (python benchmarks/ab.py OLD.so NEW.so
  // SHAPE --layout nhwc --pass P --rounds 6): forward 32->16 @112 1.19-1.21x, 24->144 @56
  // 1.21-1.22x, 64->256 @56 1.10-1.11x, 576->96 @14 1.01-1.10x; backward-input 16->96 @112
  // 1.39-1.42x, 32->16 @112 1.16-1.22x, 256->64 @56 1.10x.
  const char* prefetch = nullptr;
  // bfloat16 pairs (bf16_pairs.cpp): every float of A and B is a word of two bfloat16 values and
  // each step multiplies the pairs (VDPBF16PS: two products summed into the float32 C). Only in
  // files compiled with CONV_EXT_PER_ISA_BF16, and only on CPUs with AVX512-BF16.
  bool pairs = false;
  // With pairs: C(i, v) rounded to bfloat16 (VCVTNEPS2BF16) at c16 + i*ldc + v*VL instead of c
  // (never with accumulate), or at c16row[i] + v*VL where c16row is set (with crow).
  uint16_t* c16 = nullptr;
  uint16_t* const* c16row = nullptr;
  // Not with pairs: C(i, v) rounded to float16 at h16 + i*ldc + v*VL instead of c (never with
  // accumulate; implicit_gemm's channels_last float16 forward), or at h16row[i] + v*VL where
  // h16row is set (with crow).
  at::Half* h16 = nullptr;
  at::Half* const* h16row = nullptr;
  int64_t chain = kChain;        // steps a chain of the sums (kChain above; shorter in backward-weight)
};

// Tile::prefetch for a tile of len steps a segment whose caller's next tile reads, in each
// segment, A from [begin, end) + a_off[seg]: begin, where those are at most len lines (one a
// step), else null.
inline const char* prefetch_rows(const float* begin, const float* end, int64_t len) {
  return end > begin && end - begin <= len * (64 / int64_t(sizeof(float))) ? reinterpret_cast<const char*>(begin)
                                                                            : nullptr;
}

// Fast: a_ls == 1 and b_ls == NV*VL (packed panels, the common case): a loop with one induction
// variable (l from -len up to 0, row pointers at their ends) and a constant B stride, in its own
// instantiation. With the general loop in the same function GCC kept 3 of a 12x2 tile's 16 live
// integers in vector registers (3 vmovq a step on the FMA port 0; objdump -d) or on the stack;
// this one holds them all in registers: 2 loads, 12 broadcasts, 24 FMAs, 2 adds and a branch.
// 3x3/2 128@56 channels_last forward, batch 4, 2 threads: 0.77-0.80x torch -> 0.86-0.94x
// (python benchmarks/algos.py 4,128,56,56,128,3,2,1 --layout nhwc, the two builds alternated).
// The same FMAs in the same order: the same bits. Unrolled by 4 (the loop's add, compare and
// branch once per 4 steps; B at constant offsets): a 6x4 tile alone over 256 steps in L1, one
// core, 174 -> 182 GFLOP/s (the FMA loop: 213). Layers, 2 threads, old/new (python
// benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P --rounds 4..8): long reductions
// gain (3x3/2 512@28 forward 1.06x, 3x3/2 256@28 backward-input 1.04-1.05x, 1x1 256->64 @56
// forward 1.04x, 1024->256 @14 backward-input 1.05x, 512->128 @28 forward 1.03x), short ones
// (64 or 128 steps: 1x1 64->256 and 128->512 forward, 256->64 backward-input) 0.98-1.00x.
//
// Row (a_is == 1, every row of the tile valid): the MR values of a step lie side by side
// (backward-weight's (s, c) rows of a channels_last band, Winograd's transformed tiles; any
// a_ls and b_ls), so one A pointer serves every row at constant offsets (was the general loop,
// a pointer per row). Channels_last backward-weight, batch 4, 2 threads (python
// benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass backward_weight): 3x3/2 128@56
// 1.04x, 256@28 1.06x, 512@14 1.12x, the 7x7/2 stem 1.04x, 64@56 and 1x1 64->256 @56
// 1.01-1.02x; Winograd's backward-weight at 512@7 1.01-1.02x. The same FMAs in the same order.
// The same loop with the rows AIS floats apart (AIS > 1, a compile-time constant): run_row_tile.
enum class Loop { General, Fast, Row };

// One step of an accumulator: c + a*b (float32), or with PAIRS c + a.lo*b.lo + a.hi*b.hi on the
// bfloat16 halves of each 32-bit lane (VDPBF16PS; the products exact, summed in float32).
#if CONV_EXT_ISA_PAIRS
constexpr bool kPairs = true;
template <bool PAIRS>
inline V mac(V a, V b, V c) {
  if constexpr (PAIRS) return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b);
  else return Isa::fma(a, b, c);
}
// v's 16 sums rounded to bfloat16 (VCVTNEPS2BF16) at p: the lanes of *m, all 16 when m is null
inline void store_bf16(uint16_t* p, V v, const __mmask16* m = nullptr) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  if (m) _mm256_mask_storeu_epi16(p, *m, h);
  else _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
}
#else
constexpr bool kPairs = false;
template <bool PAIRS>
inline V mac(V a, V b, V c) { return Isa::fma(a, b, c); }
#endif

// sum (+)= acc, acc = 0: the end of a chain (kChain above)
template <int NV, int MR>
inline __attribute__((always_inline)) void fold_chain(V (&acc)[MR][NV], V (&sum)[MR][NV], bool& folded) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      sum[i][v] = folded ? Isa::add(sum[i][v], acc[i][v]) : acc[i][v];
      acc[i][v] = Isa::zero();
    }
  folded = true;
}

// The same for the T sums of a run (implicit_gemm.cpp's row and scatter runs), sum zeroed first:
// fold_run at the end of a chain, end_runs after the last (acc += the earlier chains' sums, if
// there were any).
template <int T>
inline __attribute__((always_inline)) void fold_run(V (&acc)[T], V (&sum)[T], bool& folded) {
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) sum[q] = Isa::add(sum[q], acc[q]), acc[q] = Isa::zero();
  folded = true;
}
template <int T>
inline __attribute__((always_inline)) void end_runs(V (&acc)[T], const V (&sum)[T], bool folded) {
  if (!folded) return;
#pragma GCC unroll 32
  for (int q = 0; q < T; ++q) acc[q] = Isa::add(sum[q], acc[q]);
}

// One step of rows AIS floats apart (Loop::Row, row_tile): acc[i][v] += A(i) * B[v] with
// A(i) = ap[i*AIS] broadcast and B the NV vectors at bp.
template <int NV, int MR, int AIS, bool PAIRS>
inline __attribute__((always_inline)) void row_step(V (&acc)[MR][NV], const float* ap, const float* bp) {
  V bv[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) bv[v] = Isa::load(bp + v * VL);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const V av = Isa::set1(ap[i * AIS]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = mac<PAIRS>(av, bv[v], acc[i][v]);
  }
}

// acc[i][v] += bias[v] (the NV*VL values at bias_v), every row: the tiles' last term
template <int NV, int MR>
inline __attribute__((always_inline)) void add_bias(V (&acc)[MR][NV], const float* bias_v) {
  V bias[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) bias[v] = Isa::load(bias_v + v * VL);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Isa::add(acc[i][v], bias[v]);
}

// A row of C, the NV vectors r at cp (T: float, or at::Half rounded to float16): the lanes of
// cmask (null: all), or by streaming stores where `stream` and cp is aligned (then every vector is)
template <int NV, typename T>
inline __attribute__((always_inline)) void store_row(T* cp, const V (&r)[NV], const M* cmask, bool stream) {
  if (cmask) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Isa::storem(cp + v * VL, r[v], cmask[v]);
  } else if (stream && (reinterpret_cast<uintptr_t>(cp) & (VL * sizeof(T) - 1)) == 0) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Isa::stream(cp + v * VL, r[v]);
  } else {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Isa::store(cp + v * VL, r[v]);
  }
}

// AIS: Loop::Row's distance between the tile's rows (t.a_is, a compile-time constant).
template <int NV, bool MASKB, Loop LOOP, int MR = Isa::mr(NV), bool PAIRS = false, bool PREFETCH = false, int AIS = 1>
void micro_kernel_impl(const Tile& t) {
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Isa::zero();

  M bm[NV];
  if (MASKB)
    for (int v = 0; v < NV; ++v) bm[v] = t.bmask[v];

  // The blocked sums (kChain above): a segment's steps run in pieces that end where a chain does;
  // done = the steps in acc since the last fold.
  V sum[MR][NV];
  bool folded = false;
  int64_t done = 0;
  const int64_t len = t.len, chain = t.chain;
  if constexpr (LOOP == Loop::Row) {
    const int64_t als = t.a_ls, bls = t.b_ls;
    for (int seg = 0; seg < t.nseg; ++seg) {
      const float* ap = t.a + t.a_off[seg];
      const float* bp = t.b + t.b_off[seg];
      for (int64_t l0 = 0; l0 < len;) {
        if (done == chain) fold_chain(acc, sum, folded), done = 0;  // (a reduction of one chain never folds)
        const int64_t n = std::min(len - l0, chain - done);
        for (int64_t l = n; l > 0; --l, ap += als, bp += bls) row_step<NV, MR, AIS, PAIRS>(acc, ap, bp);
        l0 += n, done += n;
      }
    }
  } else if constexpr (LOOP == Loop::Fast) {
    for (int seg = 0; seg < t.nseg; ++seg) {
      for (int64_t l0 = 0; l0 < len;) {
        if (done == chain) fold_chain(acc, sum, folded), done = 0;  // (a reduction of one chain never folds)
        const int64_t n = std::min(len - l0, chain - done);
        const float* ap[MR];  // row i at the piece's end: A(i, l0 + n + l) = ap[i][l], l in [-n, 0)
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          const int ii = i < t.mr ? i : t.mr - 1;
          ap[i] = (t.arow ? t.arow[ii] : t.a + ii * t.a_is) + t.a_off[seg] + l0 + n;
        }
        const float* bp = t.b + t.b_off[seg] + l0 * (NV * VL);
        // step l prefetches pf + 64*l
        const char* pf = PREFETCH ? t.prefetch + sizeof(float) * t.a_off[seg] + 64 * (l0 + n) : nullptr;
#pragma GCC unroll 4
        for (int64_t l = -n; l < 0; ++l, bp += NV * VL) {
          if constexpr (PREFETCH) _mm_prefetch(pf + 64 * l, _MM_HINT_T0);
          V bv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) bv[v] = Isa::load(bp + v * VL);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            const V av = Isa::set1(ap[i][l]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = mac<PAIRS>(av, bv[v], acc[i][v]);
          }
        }
        l0 += n, done += n;
      }
    }
  } else {
    for (int seg = 0; seg < t.nseg; ++seg) {
      const float* ap[MR];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const int ii = i < t.mr ? i : t.mr - 1;
        ap[i] = (t.arow ? t.arow[ii] : t.a + ii * t.a_is) + t.a_off[seg];
      }
      const float* bp = t.b + t.b_off[seg];
      int64_t ao = 0;
      for (int64_t l0 = 0; l0 < len;) {
        if (done == chain) fold_chain(acc, sum, folded), done = 0;  // (a reduction of one chain never folds)
        const int64_t n = std::min(len - l0, chain - done);
        for (int64_t l = 0; l < n; ++l) {
          V bv[NV];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) bv[v] = MASKB ? Isa::loadm(bp + v * VL, bm[v]) : Isa::load(bp + v * VL);
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i) {
            const V av = Isa::set1(ap[i][ao]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = mac<PAIRS>(av, bv[v], acc[i][v]);
          }
          ao += t.a_ls;
          bp += t.b_ls;
        }
        l0 += n, done += n;
      }
    }
  }
  if (folded) {  // the last chain added to the earlier ones
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = Isa::add(sum[i][v], acc[i][v]);
  }

  // epilogue: bias, accumulate, (masked) store of the valid rows. Each flag is tested once per
  // tile (the biases) or per row (the kind of store), not per vector: with short reductions (the
  // 3x3 stem on 3 channels: 27 steps a tile) the per-vector tests were ~20% of the tile's
  // instructions (perf annotate). The same additions in the same order: the same bits.
  if (t.bias_v) add_bias(acc, t.bias_v);
  if (t.bias_i) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      if (i >= t.mr) break;
      const V bi = Isa::set1(t.bias_i[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = Isa::add(acc[i][v], bi);
    }
  }
#if CONV_EXT_ISA_PAIRS
  if constexpr (PAIRS) {
    if (t.c16) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        if (i >= t.mr) break;
        uint16_t* cp = t.c16row ? t.c16row[i] : t.c16 + i * t.ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) store_bf16(cp + v * VL, acc[i][v], t.cmask ? t.cmask + v : nullptr);
      }
      return;
    }
  }
#endif
  if (t.h16 || t.h16row) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      if (i >= t.mr) break;
      store_row(t.h16row ? t.h16row[i] : t.h16 + i * t.ldc, acc[i], t.cmask, t.stream);
    }
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= t.mr) break;
    float* cp = t.crow ? t.crow[i] : t.c + i * t.ldc;
    if (t.accumulate)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[i][v] = Isa::add(acc[i][v], t.cmask ? Isa::loadm(cp + v * VL, t.cmask[v]) : Isa::load(cp + v * VL));
    store_row(cp, acc[i], t.cmask, t.stream);
  }
}

template <int NV, bool MASKB, int MR = Isa::mr(NV), bool PAIRS = false>
void micro_kernel(const Tile& t) {
  if constexpr (!MASKB) {
    if (t.a_ls == 1 && t.b_ls == NV * VL) {
      if constexpr (!PAIRS)
        if (t.prefetch) return micro_kernel_impl<NV, MASKB, Loop::Fast, MR, PAIRS, true>(t);
      return micro_kernel_impl<NV, MASKB, Loop::Fast, MR, PAIRS>(t);
    }
    if (t.a_is == 1 && !t.arow && t.mr == MR) return micro_kernel_impl<NV, MASKB, Loop::Row, MR, PAIRS>(t);
  }
  micro_kernel_impl<NV, MASKB, Loop::General, MR, PAIRS>(t);
}

// A tile of at most 3/4 of MR rows runs an instance with that many rows (MRS): the rows a tile
// does not have cost no FMAs there (MR's instance computes them from a repeated row). A 3x3
// filter on 3 channels has 9 (s, c) rows in backward-weight: 9 of 12 in a 12x2 tile. Channels_last
// backward-weight, 2 threads, 4 alternating processes each (benchmarks/ab.py ... --child, min of
// 30 calls): MobileNetV2's 3->32 3x3/2 stem, batch 8, 1.72-1.80 -> 1.31-1.56 ms; CIFAR's 3->16
// stem, batch 8, 0.087-0.144 -> 0.065-0.116 ms; the 7x7/2 stem (21 rows) within noise.
template <int NV, bool MASKB>
inline void sized_tile(const Tile& t) {
  constexpr int MRS = Isa::mr(NV) * 3 / 4;
  if constexpr (kPairs && !MASKB) {
    if (t.pairs) {
      if (t.mr <= MRS) micro_kernel<NV, MASKB, MRS, true>(t);
      else micro_kernel<NV, MASKB, Isa::mr(NV), true>(t);
      return;
    }
  }
  if (t.mr <= MRS) micro_kernel<NV, MASKB, MRS>(t);
  else micro_kernel<NV, MASKB>(t);
}

// Runtime NV -> template.
template <bool MASKB>
inline void run_tile(int nv, const Tile& t) {
  switch (nv) {
    case 1: sized_tile<1, MASKB>(t); break;
    case 2: sized_tile<2, MASKB>(t); break;
    case 3: sized_tile<3, MASKB>(t); break;
    default:
      if constexpr (Isa::kMaxNV >= 4) sized_tile<4, MASKB>(t);
      break;
  }
}

// Row tiles at a distance of ais floats: the pixels of one output row of a band with 3 channels
// at stride 1 or 2 (RGB stems, ais = 3 or 6; implicit_gemm.cpp's forward). One A pointer at
// compile-time offsets leaves the general registers free, so a tile has more rows than mr(NV)
// (12x2 -> 14x2 on AVX-512: 28 accumulators, 2 B vectors and the broadcast), and a segment
// starts with two pointers, not MR: the 3x3 stem's 9-step segments spent 28% of the
// micro-kernel's samples setting up MR row pointers (perf annotate).
// Rows: as many as the vector registers hold beside NV B vectors and the broadcast (MR*NV + NV + 1
// <= 32 zmm: 14x2, 9x3, 6x4; 16 ymm: 6x2, 4x3); none for one vector (row runs take those).
constexpr int row_tile_rows(int nv) { return nv < 2 ? 0 : ((CONV_EXT_ISA_BITS == 512 ? 32 : 16) - 1 - nv) / nv; }
inline bool row_tiles_fit(int nv, int64_t ais) { return row_tile_rows(nv) > 0 && (ais == 3 || ais == 6); }

// A row tile whose whole reduction is one chain (nseg*len <= kChain: a stem's 27 or 147 steps), C
// written, not added to: the micro-kernel's Loop::Row without what a tile of any length needs,
// chain bookkeeping each segment (a test, a min and two accumulators spilled around the step
// loop; perf annotate: 20% of the 3x3 stem's micro-kernel samples were outside that loop, 12%
// now). The steps are a loop with A's and B's strides read at run time: with a constant step,
// GCC's predictive commoning carried a 6x4 tile's broadcasts from step to step (row i+1 at step l
// is row i at step l+3) and spilled accumulators to do it (29 stack accesses, 0.86x; objdump).
// Not inlined: inside implicit_gemm's task loop its 6x4 instance ran 0.88x (the caller's live
// values beside 24 accumulators). The same sums in the same order as the micro-kernel (the bias
// last): the same bits, whichever kernel a pixel gets.
template <int NV, int MR, int AIS, typename T>
__attribute__((noinline)) void row_tile(const Tile& t, const float* a, T* c) {
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = Isa::zero();
  const int64_t len = t.len, als = t.a_ls, bls = t.b_ls;
  for (int seg = 0; seg < t.nseg; ++seg) {
    const float* ap = a + t.a_off[seg];
    const float* bp = t.b + t.b_off[seg];
    for (int64_t l = 0; l < len; ++l, ap += als, bp += bls) row_step<NV, MR, AIS, false>(acc, ap, bp);
  }
  if (t.bias_v) add_bias(acc, t.bias_v);  // last, as the micro-kernel adds it: the same bits whichever kernel a pixel gets
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) store_row(c + i * t.ldc, acc[i], t.cmask, t.stream);
}

// One row tile of NV vectors at a distance of AIS: row_tile, or the micro-kernel's Loop::Row where
// the tile adds to C or its reduction is longer than a chain (a 3-channel filter of more than 85
// taps). C: float, or at::Half (the sums rounded to float16 as they are stored; never added to).
template <int NV, int AIS, typename T>
inline void row_tile_at(const Tile& t, const float* a, T* c) {
  constexpr int MR = row_tile_rows(NV);
  if (!t.accumulate && t.nseg * t.len <= t.chain) return row_tile<NV, MR, AIS>(t, a, c);
  Tile u = t;
  u.a = a;
  if constexpr (std::is_same_v<T, at::Half>) u.h16 = c;
  else u.c = c;
  micro_kernel_impl<NV, false, Loop::Row, MR, false, false, AIS>(u);
}

template <int AIS, typename T>
inline void row_tile_nv(int nv, const Tile& t, const float* a, T* c) {
  switch (nv) {
    case 2: row_tile_at<2, AIS>(t, a, c); break;
    case 3: row_tile_at<3, AIS>(t, a, c); break;
    default:
      if constexpr (Isa::kMaxNV >= 4) row_tile_at<4, AIS>(t, a, c);
      break;
  }
}

// A tile of row_tile_rows(nv) rows (t.mr) on A at a and C at c (t.a and t.c not read): row i at
// a + i*t.a_is (row_tiles_fit(nv, t.a_is)); no crow, bias_i or pairs. The caller builds t once
// for all its row tiles: a Tile built a tile (~20 stores) had the stores wait behind the last
// tile's stores of C (perf annotate: 11% of the 3x3 stem's samples on storing a field of Tile).
template <typename T>
inline void run_row_tile(int nv, const Tile& t, const float* a, T* c) {
  if (t.a_is == 3) row_tile_nv<3>(nv, t, a, c);
  else row_tile_nv<6>(nv, t, a, c);
}

// How many vectors of output channels a tile carries for `width` channels.
inline int choose_nv(int64_t width) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(Isa::kMaxNV, (width + VL - 1) / VL)));
}

// NV for a width cut into several blocks of NV vectors: the one that computes the fewest vectors
// in all (ceil(width / VL) rounded up to a multiple of NV), the widest of those; never 1 for
// more than one vector (16x1 tiles load a broadcast per FMA). 96 channels: 2 x 48 (3 vectors),
// not 64 + a half-empty 64; 160: 5 x 32.
inline int choose_nv_blocks(int64_t width) {
  const int64_t vecs = (width + VL - 1) / VL;
  if (vecs <= Isa::kMaxNV) return choose_nv(width);
  int best = Isa::kMaxNV;
  for (int nv = Isa::kMaxNV - 1; nv >= 2; --nv)
    if ((vecs + nv - 1) / nv * nv < (vecs + best - 1) / best * best) best = nv;
  return best;
}

// Masks of the NV vectors that cover `valid` lanes (<= NV*VL).
inline void make_masks(int nv, int64_t valid, M* m) {
  for (int v = 0; v < nv; ++v) m[v] = Isa::mask(valid - v * VL);
}

// Rows of n floats (src, src + lds, ...) into rows of NVL floats (dst, dst + ldd, ...), lanes
// [n, NVL) zero: packed panels of the micro-kernel's B operand from rows that are already
// channel runs (transpose_rows below for rows that are not).
inline void pad_rows(const float* src, int64_t lds, int64_t rows, int64_t n, int64_t NVL, float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * ldd, src + r * lds, sizeof(float) * n);
    if (n < NVL) std::memset(dst + r * ldd + n, 0, sizeof(float) * (NVL - n));
  }
}

#if CONV_EXT_ISA_BITS == 512
// The 16x16 blocks of transpose_rows with row i's 16 values from l0 (the first of mask m) given by
// load(i, l0, m), and output row l's lanes [j0, j0 + 16) (those of mask sm) written by
// store(l, j0, v, sm).
template <class Load, class Store>
inline void transpose_block_rows(const Load& load, int64_t jn, int64_t len, int64_t jw, const Store& store) {
  alignas(64) static const int32_t idx_tab[8][16] = {
      // stage b: lo[c] = (c & b) ? 16 + c - b : c ; hi[c] = (c & b) ? 16 + c : c + b
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
      {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
      {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
      {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
  __m512i lo[4], hi[4];
  for (int s = 0; s < 4; ++s) {
    lo[s] = _mm512_load_si512(idx_tab[2 * s]);
    hi[s] = _mm512_load_si512(idx_tab[2 * s + 1]);
  }
  for (int64_t j0 = 0; j0 < jw; j0 += 16) {
    const int64_t jv = std::max<int64_t>(0, std::min<int64_t>(16, jn - j0));
    for (int64_t l0 = 0; l0 < len; l0 += 16) {
      const int64_t lv = std::min<int64_t>(16, len - l0);
      const __mmask16 m = Isa::mask(lv);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) r[i] = i < jv ? load(j0 + i, l0, m) : _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int s = 0; s < 4; ++s) {
        const int b = 8 >> s;
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
          if (i & b) continue;
          const __m512 a = r[i], c = r[i + b];
          r[i] = _mm512_permutex2var_ps(a, lo[s], c);
          r[i + b] = _mm512_permutex2var_ps(a, hi[s], c);
        }
      }
      const __mmask16 sm = Isa::mask(jw - j0);  // jw need not be a multiple of 16
      // unrolled with the bound inside: a loop to lv (known at run time) indexed r[], which put
      // all 16 rows on the stack and back (perf annotate). The NCHW depthwise tiles of 576@14/2
      // (depthwise.cpp, on_nhwc_tiles), batch 4, 2 threads: forward and backward-weight 1.06-1.07x
      // (python benchmarks/ab.py OLD.so NEW.so 4,576,14,14,576,3,2,1,576 --pass P, best mins).
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        if (i < lv) store(l0 + i, j0, r[i], sm);
    }
  }
}

// transpose_block_rows' store into the row at at(l) (the packers' panels: transpose_rows_at)
template <class At>
inline auto rows_at(const At& at) {
  return [&at](int64_t l, int64_t j0, __m512 v, __mmask16 sm) { _mm512_mask_storeu_ps(at(l) + j0, sm, v); };
}

// transpose_block_rows' store into dst[l][NVL] (streamed: see transpose_rows)
inline auto float_rows(float* dst, int64_t NVL, int64_t jw, bool stream) {
  return [=](int64_t l, int64_t j0, __m512 v, __mmask16 sm) {
    float* d = dst + l * NVL + j0;
    if (stream && jw - j0 >= 16 && (reinterpret_cast<uintptr_t>(d) & 63) == 0) _mm512_stream_ps(d, v);
    else _mm512_mask_storeu_ps(d, sm, v);
  };
}
#endif

// Transpose rows [0, jn) x columns [0, len) of src (row stride lds) into dst[l][NVL] (lanes
// [jn, NVL) zero). AVX-512: 16x16 blocks by four block-swap stages of vpermt2ps.
// jw >= 0: write only lanes [0, jw) of each dst row (a block of a longer row), else [0, NVL).
// stream: whole, 64-byte aligned 16-float rows go out with non-temporal stores (large outputs;
// the caller issues the _mm_sfence).
inline void transpose_rows(const float* src, int64_t lds, int64_t jn, int64_t len, int64_t NVL, float* dst,
                           int64_t jw = -1, bool stream = false) {
  if (jw < 0) jw = NVL;
#if CONV_EXT_ISA_BITS == 512
  transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) { return _mm512_maskz_loadu_ps(m, src + i * lds + l0); },
                       jn, len, jw, float_rows(dst, NVL, jw, stream));
#else
  for (int64_t l = 0; l < len; ++l) {
    float* d = dst + l * NVL;
    for (int64_t j = 0; j < jn; ++j) d[j] = src[j * lds + l];
    for (int64_t j = jn; j < jw; ++j) d[j] = 0.f;
  }
#endif
}

// transpose_rows with row l of the result (NVL floats, lanes [jn, NVL) zero) at at(l): packed
// panels whose rows are not in the source's column order (implicit_gemm's filters, flipped or
// with their taps before their channels), written in place instead of through a buffer.
template <class At>
inline void transpose_rows_at(const float* src, int64_t lds, int64_t jn, int64_t len, int64_t NVL, const At& at) {
#if CONV_EXT_ISA_BITS == 512
  transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) { return _mm512_maskz_loadu_ps(m, src + i * lds + l0); },
                       jn, len, NVL, rows_at(at));
#else
  for (int64_t l = 0; l < len; ++l) {
    float* d = at(l);
    for (int64_t j = 0; j < jn; ++j) d[j] = src[j * lds + l];
    for (int64_t j = jn; j < NVL; ++j) d[j] = 0.f;
  }
#endif
}

#if CONV_EXT_ISA_PAIRS
// bfloat16 pairs (Tile::pairs, bf16_pairs.cpp): the bands and blocks of the paired problems.
// pair_words: 16 words (lo[j], hi[j]) — lo in the low half, as VDPBF16PS reads a pair; a null
// side zeros, lanes outside its mask (ml, mh; m for both) zero and never read.
inline __m512i pair_words(const uint16_t* lo, const uint16_t* hi, __mmask16 ml, __mmask16 mh) {
  const __m512i l = lo ? _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(ml, lo)) : _mm512_setzero_si512();
  const __m512i h = hi ? _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(mh, hi)) : _mm512_setzero_si512();
  return _mm512_or_si512(l, _mm512_maskz_slli_epi32(0xFFFF, h, 16));
}
inline __m512i pair_words(const uint16_t* lo, const uint16_t* hi, __mmask16 m) { return pair_words(lo, hi, m, m); }

// pack_band's channels_last band (below) in words of pixel pairs sw apart, from bfloat16 src:
// dst[row][col][cs] = (X(col, c), X(col + sw, c)), X(col, c) = src[n, h, col - padL, c0 + c] for
// col - padL in [0, Ws), else 0; lanes [cn, cs) zero. Step j of a reduction over the output
// pixels q = 2j, 2j + 1 reads column 2j*sw + s*dw: both pixels' values of tap s at once.
inline void pack_band_pixel_pairs(const uint16_t* src, int64_t Ct, int64_t Hs, int64_t Ws, int64_t n, int64_t c0,
                                  int64_t cn, int64_t h_lo, int64_t h_hi, int64_t padL, int64_t Wp, int64_t sw,
                                  int64_t cs, float* dst) {
  for (int64_t h = h_lo; h < h_hi; ++h) {
    int32_t* d = reinterpret_cast<int32_t*>(dst) + (h - h_lo) * Wp * cs;
    const uint16_t* row = src + ((n * Hs + h) * Ws) * Ct + c0;
    for (int64_t col = 0; col < Wp; ++col, d += cs) {
      const int64_t w0 = col - padL, w1 = w0 + sw;
      const uint16_t* lo = w0 >= 0 && w0 < Ws ? row + w0 * Ct : nullptr;
      const uint16_t* hi = w1 >= 0 && w1 < Ws ? row + w1 * Ct : nullptr;
      for (int64_t j = 0; j < cs; j += 16) {
        const __mmask16 m = static_cast<__mmask16>(Isa::mask(cn - j));
        _mm512_mask_storeu_epi32(d + j, static_cast<__mmask16>(Isa::mask(cs - j)),
                                 pair_words(lo ? lo + j : nullptr, hi ? hi + j : nullptr, m));
      }
    }
  }
}

// dy rows [pa, pb) of image n of a channels_last bfloat16 (N, Kt, P, Q), channels [k0, k0 + kn), as
// words of pixel pairs: dst[row][j][NVL] = (dy[n, row, 2j, k0 + k], dy[n, row, 2j + 1, k0 + k]), the
// pixel past Q and the lanes past kn zero.
inline void pack_dy_pixel_pairs(const uint16_t* src, int64_t Kt, int64_t P, int64_t Q, int64_t n, int64_t k0,
                                int64_t kn, int64_t pa, int64_t pb, int64_t NVL, float* dst) {
  const int64_t Qh = (Q + 1) / 2;
  int32_t* d = reinterpret_cast<int32_t*>(dst);
  for (int64_t row = pa; row < pb; ++row) {
    const uint16_t* r = src + ((n * P + row) * Q) * Kt + k0;
    for (int64_t j = 0; j < Qh; ++j, d += NVL) {
      const uint16_t* lo = r + 2 * j * Kt;
      const uint16_t* hi = 2 * j + 1 < Q ? lo + Kt : nullptr;
      for (int64_t v = 0; v < NVL; v += 16)
        _mm512_storeu_si512(d + v, pair_words(lo + v, hi ? hi + v : nullptr, static_cast<__mmask16>(Isa::mask(kn - v))));
    }
  }
}

// Lanes [lo, hi) of 16 (clamped)
inline __mmask16 lane_range(int64_t lo, int64_t hi) {
  lo = std::clamp<int64_t>(lo, 0, 16), hi = std::clamp<int64_t>(hi, 0, 16);
  return hi <= lo ? __mmask16(0) : static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// pack_band_pixel_pairs from NCHW bfloat16 planes: a band row is the transpose of the channels'
// runs of words (X(col), X(col + sw)) of their plane rows (zero where col or col + sw is padding).
inline void pack_band_pixel_pairs_nchw(const uint16_t* src, int64_t Ct, int64_t Hs, int64_t Ws, int64_t n, int64_t c0,
                                       int64_t cn, int64_t h_lo, int64_t h_hi, int64_t padL, int64_t Wp, int64_t sw,
                                       int64_t cs, float* dst) {
  for (int64_t h = h_lo; h < h_hi; ++h) {
    const uint16_t* row0 = src + ((n * Ct + c0) * Hs + h) * Ws;  // channel c0's row h
    transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) {
      const int64_t col = l0 - padL;  // image column of lane 0 (lanes outside the row are masked: never read)
      const uint16_t* r = row0 + i * Hs * Ws + col;
      return _mm512_castsi512_ps(pair_words(r, r + sw, m & lane_range(-col, Ws - col), m & lane_range(-col - sw, Ws - col - sw)));
    }, cn, Wp, cs, float_rows(dst + (h - h_lo) * Wp * cs, cs, cs, false));
  }
}

// dy rows [pa, pb) of image n of an NCHW bfloat16 (N, Kt, P, Q), channels [k0, k0 + kn), as words of
// pixel pairs (pack_dy_pixel_pairs): a plane row's values are its words already, transposed.
inline void pack_dy_pixel_pairs_nchw(const uint16_t* src, int64_t Kt, int64_t P, int64_t Q, int64_t n, int64_t k0,
                                     int64_t kn, int64_t pa, int64_t pb, int64_t NVL, float* dst) {
  const int64_t Qh = (Q + 1) / 2;
  for (int64_t row = pa; row < pb; ++row) {
    const uint16_t* r0 = src + ((n * Kt + k0) * P + row) * Q;
    transpose_block_rows([&](int64_t i, int64_t l0, __mmask16) {
      const int64_t left = Q - 2 * l0;  // values of the row from word l0 on
      const __mmask32 m = left >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1u << left) - 1u);
      return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, r0 + i * P * Q + 2 * l0));
    }, kn, Qh, NVL, float_rows(dst + (row - pa) * Qh * NVL, NVL, NVL, false));
  }
}

// transpose_rows on words of channel pairs from bfloat16 NCHW planes (lds values apart): row i of
// src is the word run (src[2i*lds + l], src[(2i+1)*lds + l]).
inline void transpose_pair_rows(const uint16_t* src, int64_t lds, int64_t jn, int64_t len, int64_t NVL, float* dst,
                                int64_t jw) {
  transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) {
    const uint16_t* lo = src + 2 * i * lds + l0;
    return _mm512_castsi512_ps(pair_words(lo, lo + lds, m));
  }, jn, len, jw, float_rows(dst, NVL, jw, false));
}

// transpose_rows into bfloat16 rows (each value rounded by VCVTNEPS2BF16): dst[l][NVL], lanes [0, jw)
inline void transpose_rows_bf16(const float* src, int64_t lds, int64_t jn, int64_t len, int64_t NVL, uint16_t* dst,
                                int64_t jw) {
  transpose_block_rows([&](int64_t i, int64_t l0, __mmask16 m) { return _mm512_maskz_loadu_ps(m, src + i * lds + l0); },
                       jn, len, jw, [&](int64_t l, int64_t j0, __m512 v, __mmask16 sm) {
    store_bf16(dst + l * NVL + j0, v, &sm);
  });
}
#endif

// Copy rows [h_lo, h_hi) of image n, channels [c0, c0+cn) of a (N, Ct, Hs, Ws) tensor (NCHW or
// NHWC, contiguous) into a "band": dst[row][col][cs] with col = w + padL for w in [0, Ws) and
// zeros in the other columns of [0, Wp) and in the lanes [cn, cs). padL < 0: the band starts
// -padL columns into the rows (a piece of a row). NHWC rows are memcpy'd;
// NCHW rows are transposed on the way by transpose_rows (all the rows at once when there are no
// padding columns: then each channel's rows are one contiguous run; was a scalar strided copy).
// pairs (NCHW): src is bfloat16 with 2*Ct planes a image, and a band channel c is the word of
// planes 2c and 2c + 1 (transpose_pair_rows); NHWC words need nothing of the kind.
inline void pack_band(const float* src, bool nhwc, int64_t Ct, int64_t Hs, int64_t Ws, int64_t n,
                      int64_t c0, int64_t cn, int64_t h_lo, int64_t h_hi, int64_t padL, int64_t Wp,
                      int64_t cs, float* dst, bool pairs = false) {
  const int64_t w_lo = std::clamp<int64_t>(padL, 0, Wp), w_hi = std::max(w_lo, std::min(Wp, Ws + padL));  // with data
#if CONV_EXT_ISA_PAIRS
  const uint16_t* src16 = reinterpret_cast<const uint16_t*>(src);
  if (pairs && !nhwc && w_lo == 0 && w_hi == Wp && Wp == Ws) {
    transpose_pair_rows(src16 + ((n * 2 * Ct + 2 * c0) * Hs + h_lo) * Ws, Hs * Ws, cn, (h_hi - h_lo) * Ws, cs, dst, cs);
    return;
  }
#endif
  if (!nhwc && w_lo == 0 && w_hi == Wp && Wp == Ws) {
    transpose_rows(src + ((n * Ct + c0) * Hs + h_lo) * Ws, Hs * Ws, cn, (h_hi - h_lo) * Ws, cs, dst);
    return;
  }
  for (int64_t h = h_lo; h < h_hi; ++h) {
    float* d = dst + (h - h_lo) * Wp * cs;
    if (w_lo > 0) std::memset(d, 0, sizeof(float) * w_lo * cs);
    if (Wp > w_hi) std::memset(d + w_hi * cs, 0, sizeof(float) * (Wp - w_hi) * cs);
    // all the channels, no lane padding: the row is one run (one memcpy, not one per pixel:
    // channels_last, 2 threads, median of 30-100 in random order: CIFAR stem 3->16 @32 batch 8
    // forward 0.068 -> 0.054 ms, backward-weight 0.103 -> 0.082; 7x7/2 stem forward 4.52 -> 4.11)
    if (nhwc && cn == Ct && cs == Ct) {
      if (w_hi > w_lo)
        std::memcpy(d + w_lo * cs, src + ((n * Hs + h) * Ws + (w_lo - padL)) * Ct, sizeof(float) * (w_hi - w_lo) * Ct);
    } else if (nhwc && cs <= VL) {  // a slice of <= one vector a pixel (grouped layers): masked vectors
      // (a memcpy and a memset call per pixel were 30% of 128->128 g32 @56 NHWC backward-weight)
      const float* s = src + ((n * Hs + h) * Ws + (w_lo - padL)) * Ct + c0;
      const M lm = Isa::mask(cn), sm = Isa::mask(cs);
      for (int64_t col = w_lo; col < w_hi; ++col, s += Ct) Isa::storem(d + col * cs, Isa::loadm(s, lm), sm);
    } else if (nhwc) {
      const float* s = src + ((n * Hs + h) * Ws + (w_lo - padL)) * Ct + c0;
      for (int64_t col = w_lo; col < w_hi; ++col, s += Ct) {
        std::memcpy(d + col * cs, s, sizeof(float) * cn);
        if (cs > cn) std::memset(d + col * cs + cn, 0, sizeof(float) * (cs - cn));
      }
    }
  }
  // NCHW: transposed 16 channels at a time, all the band's rows of those channels before the next
  // 16 (each channel's rows h_lo..h_hi are one run of memory: 16 sequential streams for the
  // hardware prefetcher, not a new line of every channel of the slice per row). 3x3/2 128@56
  // NCHW forward, batch 4, 2 threads (Zen 4; in-process A/B, random order, median of 60): 1.05x;
  // 256@28/2 1.03x, 512@14/2 1.02x, backward-input 128@56/2 1.015x. A software prefetch of
  // the next row on top gained nothing more.
  if (!nhwc && w_hi > w_lo)
    for (int64_t j0 = 0; j0 < cs; j0 += 16) {
      const int64_t jn = std::max<int64_t>(0, std::min<int64_t>(16, cn - j0)), jw = std::min<int64_t>(16, cs - j0);
#if CONV_EXT_ISA_PAIRS
      if (pairs) {
        const uint16_t* s0 = src16 + ((n * 2 * Ct + 2 * (c0 + j0)) * Hs + h_lo) * Ws + (w_lo - padL);
        for (int64_t h = h_lo; h < h_hi; ++h)
          transpose_pair_rows(s0 + (h - h_lo) * Ws, Hs * Ws, jn, w_hi - w_lo, cs, dst + ((h - h_lo) * Wp + w_lo) * cs + j0, jw);
        continue;
      }
#endif
      const float* s0 = src + ((n * Ct + c0 + j0) * Hs + h_lo) * Ws + (w_lo - padL);
      for (int64_t h = h_lo; h < h_hi; ++h)
        transpose_rows(s0 + (h - h_lo) * Ws, Hs * Ws, jn, w_hi - w_lo, cs, dst + ((h - h_lo) * Wp + w_lo) * cs + j0, jw);
    }
}

// n zeros at d, by vector stores (a loop of scalar zeros becomes a memset call: ~20 cycles for
// the one or two floats of a row's padding)
inline void zero_floats(float* d, int64_t n) {
  for (int64_t i = 0; i < n; i += Isa::VL) Isa::storem(d + i, Isa::zero(), Isa::mask(n - i));
}

// n floats from s rounded to bfloat16 (H = uint16_t; Isa::narrow: c10::BFloat16's rounding) or
// float16 (H = at::Half) at d
template <typename H>
inline void narrow_row(const float* s, int64_t n, H* d) {
  int64_t i = 0;
  for (; i + Isa::VL <= n; i += Isa::VL) Isa::store(d + i, Isa::load(s + i));
  if (i < n) Isa::storem(d + i, Isa::loadm(s + i, Isa::mask(n - i)), Isa::mask(n - i));
}
// n bfloat16 (H = uint16_t) or float16 (at::Half) values from s widened to float32 at d (exact)
template <typename H>
inline void widen_row(const H* s, int64_t n, float* d) {
  int64_t i = 0;
  for (; i + Isa::VL <= n; i += Isa::VL) Isa::store(d + i, Isa::load(s + i));
  if (i < n) Isa::storem(d + i, Isa::loadm(s + i, Isa::mask(n - i)), Isa::mask(n - i));
}

#if CONV_EXT_ISA_BITS == 512
// The 32 floats from s (the first `left` of them: masked loads past the end read nothing) split by
// index parity with two permutes: s[0], s[2], .. s[30] into e, s[1], .. s[31] into o. The stride-2
// de-interleave of pack_phase_plane and of depthwise.cpp's split_plane.
inline void split_even_odd(const float* s, int64_t left, __m512& e, __m512& o) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 a = left >= 32 ? Isa::load(s) : Isa::loadm(s, Isa::mask(left));
  const __m512 b = left >= 32 ? Isa::load(s + 16) : Isa::loadm(s + 16, Isa::mask(left - 16));
  e = _mm512_permutex2var_ps(a, even, b), o = _mm512_permutex2var_ps(a, odd, b);
}
#endif

// Copy plane (n, c) of an NCHW tensor into buf[row][phase][j] = src[row - ph][j*sw + phase - pw]
// (zero outside), rows [0, nrows), j in [0, wq); wq includes a zero tail for vector over-reads.
// ph < 0 starts the copy at row -ph of the plane (a band of rows). Used by depthwise.cpp and
// direct_nchw.cpp.
// Stride 1 is a memcpy per row and stride 2 (AVX-512) a vector de-interleave, the row's end
// included (masked loads and stores): the scalar copy was most of the NCHW forward at 96@112/2
// (1.6 ms against torch's 1.4). Other strides copy one value at a time, with each phase's
// bounds computed once per call (they were four integer divisions a row, and two small fills
// through memset: with them, the pack of that layer took twice as long as a plain read of x).
inline void pack_phase_plane(const float* plane, int64_t H, int64_t W, int64_t ph, int64_t pw, int64_t sw,
                             int64_t nrows, int64_t wq, float* buf) {
  // Generic strides: phase rows dp[j] = s[j*sw + phase - pw] for j in [jl, jh), zeros elsewhere;
  // the bounds of the first kMaxPhases phases once per call, of the others per row.
  constexpr int64_t kMaxPhases = 16;
  auto bounds = [&](int64_t phase, int64_t& lo, int64_t& hi) {
    const int64_t off = phase - pw;
    lo = std::min(wq, std::max<int64_t>(0, ceil_div(-off, sw)));
    hi = std::max(lo, std::min(wq, floor_div(W - 1 - off, sw) + 1));
  };
  int64_t jl[kMaxPhases], jh[kMaxPhases];
  for (int64_t phase = 0; phase < std::min(sw, kMaxPhases); ++phase) bounds(phase, jl[phase], jh[phase]);
  for (int64_t row = 0; row < nrows; ++row) {
    const int64_t ih = row - ph;
    float* d = buf + row * sw * wq;
    if (ih < 0 || ih >= H) {
      std::memset(d, 0, sizeof(float) * sw * wq);
      continue;
    }
    const float* s = plane + ih * W;
    if (sw == 1) {  // a shifted copy of the row, zeros around it
      const int64_t lo = std::min(wq, pw), hi = std::max(lo, std::min(wq, pw + W));
      zero_floats(d, lo);
      std::memcpy(d + lo, s + lo - pw, sizeof(float) * (hi - lo));
      zero_floats(d + hi, wq - hi);
      continue;
    }
#if CONV_EXT_ISA_BITS == 512
    if (sw == 2) {  // de-interleave 32 inputs into 16 of each phase with two permutes
      const int64_t v_lo = std::min(wq, ceil_div(pw, 2));  // columns j < v_lo read left of the row
      for (int64_t j = 0; j < v_lo; ++j)
        for (int64_t phase = 0; phase < 2; ++phase) {
          const int64_t col = 2 * j + phase - pw;
          d[phase * wq + j] = col >= 0 && col < W ? s[col] : 0.f;
        }
      // up to wq: masked loads read zeros past column W (nothing at all once past it) and
      // masked stores end at wq
      for (int64_t v = v_lo; v < wq; v += 16) {
        __m512 e, o;
        split_even_odd(s + 2 * v - pw, W - (2 * v - pw), e, o);
        const __mmask16 m = Isa::mask(wq - v);
        Isa::storem(d + v, e, m);
        Isa::storem(d + wq + v, o, m);
      }
      continue;
    }
#endif
    for (int64_t phase = 0; phase < sw; ++phase) {  // one value at a time
      float* dp = d + phase * wq;
      const int64_t off = phase - pw;  // dp[j] = s[j*sw + off]
      int64_t lo, hi;
      if (phase < kMaxPhases) lo = jl[phase], hi = jh[phase];
      else bounds(phase, lo, hi);
      zero_floats(dp, lo);
      for (int64_t j = lo; j < hi; ++j) dp[j] = s[j * sw + off];
      zero_floats(dp + hi, wq - hi);
    }
  }
}

// Where tap (r, s) of output column 0 reads in one channel's phase rows of pack_phase_plane: row
// r*dh, phase (s*dw) % sw, column (s*dw) / sw (output column q then adds q).
inline int64_t phase_tap_offset(int64_t r, int64_t s, int64_t dh, int64_t dw, int64_t sw, int64_t wq) {
  return (r * dh * sw + (s * dw) % sw) * wq + (s * dw) / sw;
}

// A dx row from its sw phase rows: row[phase + j*sw] = ph[phase*Wt + j], O = float or uint16_t
// (bfloat16: rounded as stored, Isa::storem). Stride 2 (AVX-512) interleaves 16 + 16 values with
// two permutes; it was a scalar store per element, ~35% of the NCHW 96@112/2 backward-input
// (batch 4, 2 threads: perf record -e cpu-clock of 400 calls, the kernel's samples 12030 -> 7627).
// Other strides gather a vector of outputs at a time. Used by depthwise.cpp and direct_nchw.cpp.
template <typename O>
inline void interleave_phases(const float* ph, int64_t Wt, int64_t sw, int64_t W, O* row) {
#if CONV_EXT_ISA_BITS == 512
  if (sw == 2) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    for (int64_t done = 0; 2 * done < W; done += 16) {  // Wt is a whole number of vectors: the loads stay inside
      const __m512 a = _mm512_loadu_ps(ph + done), b = _mm512_loadu_ps(ph + Wt + done);
      const int64_t rest = W - 2 * done;
      Isa::storem(row + 2 * done, _mm512_permutex2var_ps(a, lo, b), Isa::mask(rest));
      Isa::storem(row + 2 * done + 16, _mm512_permutex2var_ps(a, hi, b), Isa::mask(rest - 16));
    }
    return;
  }
#endif
  float t[Isa::VL];
  for (int64_t i0 = 0; i0 < W; i0 += Isa::VL) {
    const int64_t n = std::min<int64_t>(Isa::VL, W - i0);
    for (int64_t i = 0; i < n; ++i) t[i] = ph[(i0 + i) % sw * Wt + (i0 + i) / sw];
    if (n == Isa::VL) Isa::store(row + i0, Isa::load(t));
    else Isa::storem(row + i0, Isa::loadm(t, Isa::mask(n)), Isa::mask(n));
  }
}

}  // namespace
}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext
