#ifndef CONV_EXT_ISA_NS
// integer.cpp — the convolution of integer tensors (uint8, int8, int16, int32, int64), which
// torch.nn.functional.conv2d takes on the CPU: forward only (an integer tensor cannot require a
// gradient), every product and sum wrapping modulo 2^bits of the dtype as torch's do (nine taps of
// 100 x 1 in int8 give 900 - 1024 = -124), so the result is exact and the order of the sums does
// not matter.
//
//   y[n,k,p,q] = bias[k] + sum_{c,r,s} x[n, g Cg + c, p sh - ph + r dh, q sw - pw + s dw] * w[k,c,r,s]
//
// Lanes: unsigned integers at least as wide as the dtype, whose wrap-around keeps the low bits
// exact (uint16 for the 8- and 16-bit types: 32 lanes of a 512-bit vector; uint32; uint64).
// Band: the input once per call in those lanes, zero-padded, each row split into its sw column
// phases, xb[n][c][hp][phase][Wq] (column j of phase f is padded column j sw + f): the taps of a
// row of output columns then read one contiguous run each, at any stride and dilation, with no
// widening and no bounds tests in the loop. Filter: [group][8-filter block][c][r][s][8].
// Blocking: a block is 2 vectors of output columns (one where a row fits in one) of an output row,
// or at stride 1 of the flat grid; for each block and 8 filters it keeps the 8 x 2 vectors of sums
// in registers over the whole reduction (c, r, s): per tap, two loads of the input run, eight
// broadcast filter values, 16 multiplies and adds. A task is a part of an image's blocks (one
// group) with every block of 8 filters in turn over it. GCC's vector extensions at the ISA's
// width (per_isa.h: AVX-512, AVX2; a CPU with neither runs the reference kernel).
//
// integer_pairs (below): the 8- and 16-bit types on AVX512-VNNI, the same band, blocking and tasks
// on 32-bit words of several channels: four channels' bytes for uint8 and int8, each step a
// VPDPBUSD (64 multiply-adds an instruction), two channels' int16 values for int16, a VPDPWSSD
// (32), where the uint16 lanes take a multiply and an add for 32. (VPDPBUSD reads one operand's
// bytes as unsigned and the other's as signed: modulo 2^8 every byte is both, and the int32 sum's
// low 8 bits are exact.)
//
// Speed (2 threads, Xeon, batch 4-8; python benchmarks/integer.py, benchmarks/results/integer-cpu.txt):
// uint8 / int8 (integer_pairs) 1.8-6.0x torch's own integer convolution (3x3 64@56 int8 1.3 ms vs
// 6.7), int16 1.4-4.8x, int32 1.8-4.7x (64@56 6.9-9.4 ms vs 18.7-26), int64 1.2-2.6x (VPMULLQ,
// three uops, bounds it).
#include <ATen/ATen.h>

#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "algorithms.h"
#include "kernel_util.h"
#include "output_cache.h"

namespace conv_ext {
namespace cpu {
namespace integer {

constexpr int64_t kFilters = 8;  // filters a register block

// The lanes of a dtype: wide enough, unsigned (wrap-around), 16 bits at least.
template <typename T>
using Lane = std::conditional_t<sizeof(T) <= 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

// One call's operands as the kernels read them: lanes A (Lane<T>; for integer_pairs uint32 words
// of two channels' int16 values or four channels' bytes).
template <typename T, typename A = Lane<T>>
struct Job {
  const A* xb;            // band: planes of [hp][phase][Wq], plane apart, Cp a group: [n][g][cp]
  const A* wp;            // filter [g][kb][cp][r][s][8]
  const int64_t* tap_off; // [cp][r][s]: a tap's run from its block's first band column
  const T* bias;          // null: none
  T* y;
  Conv2dParams p;
  int64_t plane, Wq, nkb, Cp;
  bool flat;              // stride 1: grid pixel m is output pixel (m / Wq, m % Wq), band column m
  int64_t parts, grid_blocks;  // an image's grid blocks in `parts` parts, one a task
};

// What the blocks of image n, group g and filter block kb read and write: the filter block's
// bias as lanes, its packed filter, the group's band and the filter block's first output plane.
template <typename T, typename A>
struct Slice {
  A bias[kFilters] = {};
  const A* w;
  const A* x;
  T* y;
  int64_t kn;  // filters in the block
};
template <typename T, typename A>
Slice<T, A> slice(const Job<T, A>& jb, int64_t n, int64_t g, int64_t kb) {
  const Conv2dParams& p = jb.p;
  const int64_t Kg = p.Kg(), taps = jb.Cp * p.R * p.S;
  Slice<T, A> sl;
  sl.kn = std::min(kFilters, Kg - kb * kFilters);
  for (int64_t j = 0; j < sl.kn && jb.bias; ++j) sl.bias[j] = static_cast<A>(jb.bias[g * Kg + kb * kFilters + j]);
  sl.w = jb.wp + (g * jb.nkb + kb) * taps * kFilters;
  sl.x = jb.xb + (n * p.groups + g) * jb.Cp * jb.plane;
  sl.y = jb.y + n * p.ys_n + (g * Kg + kb * kFilters) * p.ys_k;
  return sl;
}

// A block's first grid pixel: output pixel (pp, q0) and band column m0 (cols columns a block).
template <typename J>
inline void block_start(const J& jb, int64_t b, int64_t cols, int64_t& pp, int64_t& q0, int64_t& m0) {
  if (jb.flat) {
    m0 = b * cols, pp = m0 / jb.Wq, q0 = m0 % jb.Wq;
  } else {
    pp = b / ceil_div(jb.p.Q, cols), q0 = b % ceil_div(jb.p.Q, cols) * cols;
    m0 = pp * jb.p.stride_h * jb.p.stride_w * jb.Wq + q0;
  }
}

// Stores one filter's sums of a block, narrowed to T (their low bits: vals, cols of them from grid
// pixel (pp, q0)), into its output plane `out`: a run of columns of one output row at a time.
template <typename T, typename J>
inline void store_block(const J& jb, T* out, int64_t pp, int64_t q0, const T* vals, int64_t cols) {
  const Conv2dParams& p = jb.p;
  for (int64_t i = 0, row = pp, q = q0; i < cols && row < p.P;) {
    const int64_t len = std::min(cols - i, (jb.flat ? jb.Wq : p.Q) - q);  // the lanes left in this grid row
    const int64_t nq = std::max<int64_t>(0, std::min(len, p.Q - q));     // of them, output columns
    T* o = out + row * p.ys_p + q * p.ys_q;
    if (p.ys_q == 1) std::memcpy(o, vals + i, sizeof(T) * nq);
    else
      for (int64_t e = 0; e < nq; ++e) o[e * p.ys_q] = vals[i + e];
    if (!jb.flat) break;
    i += len, q = 0, ++row;
  }
}

// The tasks of a call (parts of an image's grid blocks, one group): blocks(one, n, g, kb, b0, b1)
// for every filter block kb in turn over a task's blocks [b0, b1); one: a block is one vector of
// `lanes` columns (a row of Q columns fits in one: 7x7 planes, 16 int32 lanes), else two.
template <typename J, typename F>
void for_each_part(const J& jb, int64_t lanes, const F& blocks) {
  const Conv2dParams& p = jb.p;
  const bool one = !jb.flat && p.Q <= lanes;
  for_each_task(p.N * p.groups * jb.parts, p.macs(), [&](int64_t t) {
    const int64_t part = t % jb.parts, g = t / jb.parts % p.groups, n = t / (jb.parts * p.groups);
    const int64_t b0 = part * jb.grid_blocks / jb.parts, b1 = (part + 1) * jb.grid_blocks / jb.parts;
    for (int64_t kb = 0; kb < jb.nkb; ++kb) blocks(one, n, g, kb, b0, b1);  // (a row a block either way)
  });
}

}  // namespace integer
}  // namespace cpu
}  // namespace conv_ext

#define CONV_EXT_PER_ISA_FILE "integer.cpp"
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

using integer::Job;
using integer::kFilters;
using integer::Lane;

bool supports(const Conv2dParams&, at::ScalarType dtype) {
  return at::isIntegralType(dtype, /*includeBool=*/false) && simd_available();
}

// The band, the packed filter and the tasks of a call, in lanes A. kPer > 1 (integer_pairs): A is
// a uint32 word of kPer channels' values, int16 (kPer 2) or bytes (kPer 4), channel kPer cp + i
// in part i (zeros past a group's last channel), and so is a filter value (the kPer channels'
// weights of a tap).
template <typename T, typename A, int kPer>
struct Prepared {
  at::Tensor band_t, wp_t;
  std::vector<int64_t> tap_off;
  Job<T, A> job;
};

template <typename T, typename A, int kPer>
void prepare(const Conv2dParams& p, const Operands& o, int64_t block, Prepared<T, A, kPer>& pr) {
  const int64_t N = p.N, H = p.H, W = p.W, R = p.R, S = p.S, P = p.P, Q = p.Q, G = p.groups;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), sh = p.stride_h, sw = p.stride_w, pw = p.pad_w;
  const int64_t Cp = ceil_div(Cg, int64_t(kPer));  // band planes a group
  // channel i of a word's value v: the dtype's low bits (sign-extended: kPer 1), or the low 16 or 8
  // bits of v in part i of the word
  auto part = [](T v, int64_t i) -> A {
    if constexpr (kPer == 1) {
      return static_cast<A>(v);
    } else {
      constexpr int bits = 32 / kPer;
      return static_cast<A>((static_cast<uint32_t>(v) & ((uint32_t(1) << bits) - 1)) << (bits * i));
    }
  };
  // The band. Stride 1: a flat grid (rows of Wq: the blocks run on from a row into the next, the
  // columns past Q computed and dropped), each plane followed by zeros for the last block's taps.
  // Else rows of output columns, each phase's row long enough for its last block's last tap.
  const bool flat = sh == 1 && sw == 1;
  const int64_t Hp = std::max(H + 2 * p.pad_h, (P - 1) * sh + (R - 1) * p.dil_h + 1);
  const int64_t Wq = flat ? std::max(W + 2 * pw, Q + (S - 1) * p.dil_w) : round_up(Q, block) + (S - 1) * p.dil_w / sw + 1;
  const int64_t plane = Hp * sw * Wq + (flat ? block + (S - 1) * p.dil_w : 0);
  const T* x = o.a.const_data_ptr<T>();
  const auto bytes = o.a.options().dtype(at::kByte);  // (the output cache's blocks: no fresh pages a call)
  pr.band_t = empty_output({N * G * Cp * plane * int64_t(sizeof(A))}, bytes, at::MemoryFormat::Contiguous);
  A* xb = reinterpret_cast<A*>(pr.band_t.mutable_data_ptr());
  for_each_task(N * G * Cp, N * G * Cp * plane, [&](int64_t t) {
    A* d = xb + t * plane;
    std::memset(d, 0, sizeof(A) * plane);
    const int64_t n = t / (G * Cp), c = t / Cp % G * Cg + kPer * (t % Cp), count = Cg - kPer * (t % Cp);
    // a channel at a time, its values or'ed into their part of the words (a loop over the
    // word's channels inside took int16's band 1.7x as long)
    for (int64_t i = 0; i < std::min<int64_t>(count, kPer); ++i) {
      const T* src = x + n * p.xs_n + (c + i) * p.xs_c;
      for (int64_t h = 0; h < H; ++h) {
        A* row = d + (h + p.pad_h) * sw * Wq;
        const T* in = src + h * p.xs_h;
        if (sw == 1) {
          for (int64_t w = 0; w < W; ++w) row[pw + w] |= part(in[w * p.xs_w], i);
          continue;
        }
        for (int64_t f = 0; f < sw; ++f) {  // phase f: padded columns f, f + sw, ...
          const int64_t w0 = floor_mod(f - pw, sw);  // its first input column
          A* o = row + f * Wq + (w0 + pw) / sw;
          for (int64_t w = w0; w < W; w += sw) *o++ |= part(in[w * p.xs_w], i);
        }
      }
    }
  });
  // the filter, blocks of 8 filters (zeros past a group's last)
  const T* w = o.b.const_data_ptr<T>();
  const int64_t nkb = ceil_div(Kg, kFilters), taps = Cp * R * S;
  pr.wp_t = empty_output({G * nkb * taps * kFilters * int64_t(sizeof(A))}, bytes, at::MemoryFormat::Contiguous);
  A* wp = reinterpret_cast<A*>(pr.wp_t.mutable_data_ptr());
  for (int64_t g = 0; g < G; ++g)
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int64_t cp = 0; cp < Cp; ++cp)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s)
            for (int64_t j = 0; j < kFilters; ++j) {
              const int64_t k = kb * kFilters + j, c = kPer * cp;
              A* d = wp + ((((g * nkb + kb) * Cp + cp) * R + r) * S + s) * kFilters + j;
              *d = 0;
              for (int64_t i = 0; k < Kg && i < std::min<int64_t>(Cg - c, kPer); ++i)
                *d |= part(w[(g * Kg + k) * p.ws_k + (c + i) * p.ws_c + r * p.ws_r + s * p.ws_s], i);
            }
  // each tap's run from a block's first band column (plane cp of the group, row r, phase and
  // column of tap s)
  pr.tap_off.resize(static_cast<size_t>(taps));
  for (int64_t cp = 0, i = 0; cp < Cp; ++cp)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s, ++i) {
        const int64_t t = s * p.dil_w;
        pr.tap_off[i] = cp * plane + r * p.dil_h * sw * Wq + t % sw * Wq + t / sw;
      }
  pr.job = {xb, wp, pr.tap_off.data(), o.bias.defined() ? o.bias.const_data_ptr<T>() : nullptr,
            o.out.mutable_data_ptr<T>(), p, plane, Wq, nkb, Cp, flat, 0, 0};
  // A task: a part of an image's grid blocks for a group, every filter block in turn over the
  // part (its band rows read again from L2); as many parts as leave 4 tasks a thread and keep a
  // part's band under 512 KiB. (Filter blocks outer, a task an image each, read an image's band
  // from L3 for each filter block: 128->128 3x3/2 @56 int64 took 1.4x as long.)
  const int64_t grid_blocks = flat ? ceil_div(P * Wq, block) : P * ceil_div(Q, block);
  const int64_t group_band = Cp * plane * int64_t(sizeof(A));
  pr.job.parts = std::min(grid_blocks,
                          std::max(ceil_div(4 * at::get_num_threads(), N * G), ceil_div(group_band, int64_t(512) << 10)));
  pr.job.grid_blocks = grid_blocks;
}

template <typename T>
void run_typed(const Conv2dParams& p, Operands& o) {
  using A = Lane<T>;
  const int64_t block = 2 * (cpu_capability() == "avx512" ? 64 : 32) / int64_t(sizeof(A));  // columns a block
  Prepared<T, A, 1> pr;
  prepare(p, o, block, pr);
  if (cpu_capability() == "avx512") avx512::integer_forward(pr.job);
  else avx2::integer_forward(pr.job);
}

void run(const Conv2dParams& p, Operands& o) {
  switch (o.out.scalar_type()) {
    case at::kByte: return run_typed<uint8_t>(p, o);
    case at::kChar: return run_typed<int8_t>(p, o);
    case at::kShort: return run_typed<int16_t>(p, o);
    case at::kInt: return run_typed<int32_t>(p, o);
    case at::kLong: return run_typed<int64_t>(p, o);
    default: TORCH_CHECK(false, "conv_ext: the integer kernel got ", o.out.scalar_type());
  }
}

// integer_pairs: the 8- and 16-bit types on AVX512-VNNI (see the top). A lane's int32 sum wraps
// modulo 2^32, a multiple of 2^16 and 2^8: its low bits are the dtype's exact result.
bool pairs_here() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
  }();
  return ok && cpu_capability() == "avx512";
}
bool supports_pairs(const Conv2dParams&, at::ScalarType dtype) {
  return (dtype == at::kByte || dtype == at::kChar || dtype == at::kShort) && pairs_here();
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")

// Grid blocks [b0, b1) of image n, group g, filter block kb: NV vectors of 16 columns a block;
// words of kPer channels (2: int16, VPDPWSSD; 4: bytes, VPDPBUSD).
template <typename T, int kPer, int NV>
void pair_blocks(const Job<T, uint32_t>& jb, int64_t n, int64_t g, int64_t kb, int64_t b0, int64_t b1) {
  constexpr int64_t kLanes = 16, kCols = NV * kLanes;
  const Conv2dParams& p = jb.p;
  const int64_t taps = jb.Cp * p.R * p.S;
  const auto sl = integer::slice(jb, n, g, kb);
  for (int64_t b = b0; b < b1; ++b) {
    int64_t pp, q0, m0;
    integer::block_start(jb, b, kCols, pp, q0, m0);
    __m512i acc[kFilters][NV];
    for (int64_t j = 0; j < kFilters; ++j)
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_set1_epi32(static_cast<int>(sl.bias[j]));
    const uint32_t* xm = sl.x + m0;
    const uint32_t* wt = sl.w;
    for (int64_t i = 0; i < taps; ++i, wt += kFilters) {
      const uint32_t* run = xm + jb.tap_off[i];
      __m512i xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_si512(run + v * kLanes);
      for (int64_t j = 0; j < kFilters; ++j) {
        const __m512i wv = _mm512_set1_epi32(static_cast<int>(wt[j]));
        for (int v = 0; v < NV; ++v)
          acc[j][v] = kPer == 2 ? _mm512_dpwssd_epi32(acc[j][v], xv[v], wv) : _mm512_dpbusd_epi32(acc[j][v], xv[v], wv);
      }
    }
    for (int64_t j = 0; j < sl.kn; ++j) {
      alignas(64) int32_t sums[kCols];
      for (int v = 0; v < NV; ++v) _mm512_store_si512(sums + v * kLanes, acc[j][v]);
      T vals[kCols];
      for (int64_t i = 0; i < kCols; ++i) vals[i] = static_cast<T>(sums[i]);
      integer::store_block(jb, sl.y + j * p.ys_k, pp, q0, vals, kCols);
    }
  }
}

template <typename T, int kPer>
void run_pairs_typed(const Conv2dParams& p, Operands& o) {
  Prepared<T, uint32_t, kPer> pr;
  prepare(p, o, 32, pr);
  integer::for_each_part(pr.job, 16, [&](bool one, int64_t n, int64_t g, int64_t kb, int64_t b0, int64_t b1) {
    if (one) pair_blocks<T, kPer, 1>(pr.job, n, g, kb, b0, b1);
    else pair_blocks<T, kPer, 2>(pr.job, n, g, kb, b0, b1);
  });
}

#pragma GCC pop_options

void run_pairs(const Conv2dParams& p, Operands& o) {
  switch (o.out.scalar_type()) {
    case at::kByte: return run_pairs_typed<uint8_t, 4>(p, o);
    case at::kChar: return run_pairs_typed<int8_t, 4>(p, o);
    case at::kShort: return run_pairs_typed<int16_t, 2>(p, o);
    default: TORCH_CHECK(false, "conv_ext: the integer_pairs kernel got ", o.out.scalar_type());
  }
}

const bool registered = register_algorithm({"integer_pairs", Pass::Forward, 2, supports_pairs, run_pairs}) &&
                        register_algorithm({"integer", Pass::Forward, 1, supports, run});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // the kernel, once per SIMD level (per_isa.h)

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {

// Grid blocks [b0, b1) of image n, group g, filter block kb; NV vectors of columns a block.
template <typename T, int NV>
void integer_blocks(const integer::Job<T>& jb, int64_t n, int64_t g, int64_t kb, int64_t b0, int64_t b1) {
  using A = integer::Lane<T>;
  constexpr int64_t kBytes = CONV_EXT_ISA_BITS / 8, kLanes = kBytes / sizeof(A), kF = integer::kFilters;
  constexpr int64_t kCols = NV * kLanes;
  typedef A Vec __attribute__((vector_size(kBytes)));
  const Conv2dParams& p = jb.p;
  const int64_t taps = jb.Cp * p.R * p.S;
  const auto sl = integer::slice(jb, n, g, kb);
  for (int64_t b = b0; b < b1; ++b) {
    int64_t pp, q0, m0;
    integer::block_start(jb, b, kCols, pp, q0, m0);
    Vec acc[kF][NV];
    for (int64_t j = 0; j < kF; ++j)
      for (int v = 0; v < NV; ++v) acc[j][v] = Vec{} + sl.bias[j];
    const A* xm = sl.x + m0;
    const A* wt = sl.w;
    for (int64_t i = 0; i < taps; ++i, wt += kF) {
      const A* run = xm + jb.tap_off[i];
      Vec xv[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&xv[v], run + v * kLanes, kBytes);
      for (int64_t j = 0; j < kF; ++j)
        for (int v = 0; v < NV; ++v) acc[j][v] += xv[v] * wt[j];
    }
    for (int64_t j = 0; j < sl.kn; ++j) {
      A sums[kCols];
      std::memcpy(sums, acc[j], sizeof(sums));
      T vals[kCols];
      for (int64_t i = 0; i < kCols; ++i) vals[i] = static_cast<T>(sums[i]);
      integer::store_block(jb, sl.y + j * p.ys_k, pp, q0, vals, kCols);
    }
  }
}

template <typename T>
void integer_forward(const integer::Job<T>& jb) {
  const int64_t lanes = CONV_EXT_ISA_BITS / 8 / int64_t(sizeof(integer::Lane<T>));
  integer::for_each_part(jb, lanes, [&](bool one, int64_t n, int64_t g, int64_t kb, int64_t b0, int64_t b1) {
    if (one) integer_blocks<T, 1>(jb, n, g, kb, b0, b1);
    else integer_blocks<T, 2>(jb, n, g, kb, b0, b1);
  });
}

// (instantiated here, under this ISA's target)
template void integer_forward<uint8_t>(const integer::Job<uint8_t>&);
template void integer_forward<int8_t>(const integer::Job<int8_t>&);
template void integer_forward<int16_t>(const integer::Job<int16_t>&);
template void integer_forward<int32_t>(const integer::Job<int32_t>&);
template void integer_forward<int64_t>(const integer::Job<int64_t>&);

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
