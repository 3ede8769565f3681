// gemm_f64.cpp — float64 convolutions, all three passes, any layout: each pass as a GEMM whose
// operands are gathered ("im2col") a block at a time into packed panels, on a register-blocked
// float64 micro-kernel. The float64 path the issue allows to be simpler than float32's: one
// engine, strides read from the params (NCHW, NHWC, KCRS or channels_last filters alike), and
// two row kernels for NCHW (below), where the gathers cost the most.
//
//   forward          C[pixel (n,p,q)][k]   = sum_{l = taps (c,r,s)} x-gather[pixel][l] * w[k][l]
//   backward-input   C[pixel (n,h,w)][c]   = sum_{l = (k,r,s)} dy-gather[pixel][l] * w[k][c][r][s],
//                    per stride phase of (h, w): a phase takes only the taps (r, s) that land on it,
//                    so the zeros a stride inserts are never multiplied (a phase with no tap is 0)
//   backward-weight  C[k][j = taps (c,r,s)] = sum_{l = pixels (n,p,q)} dy[k][l] * x-gather[l][j]
// per group. The reduction order l is (r, s, c) when the gathered tensor has its channels
// innermost (NHWC: runs of Cg contiguous values), else (c, r, s) (NCHW: runs along a row).
//
// A gather reads one element per (row, l) through a table of per-l offsets and row/column
// shifts, with the bounds test skipped for rows whose whole window lies inside the image (and MR
// consecutive pixels of an NCHW row copied as vectors). The micro-kernel holds an MR x NR tile of
// C in registers — 1, 2 or 3 vectors wide, whichever pads the column count least (AVX-512: 24x8,
// 12x16, 8x24 doubles; AVX2: 12x4, 6x8, 4x12) — and runs KC = 128 steps of packed A ([l][MR]) and
// B ([l][NR], <= 24 KB: L1) at a time, adding into a per-task C buffer; the buffer goes to the
// output (bias added, any strides) at the end. Every output element is summed by one task in a
// fixed order: the same bits for any thread count.
//
// Tasks: forward and backward-input, blocks of <= 96 output pixels of one group (and phase) x
// blocks of panels of columns (Blocks), with B (the filter, [panel][L][NR]) packed a panel a
// task, kept across calls while the filter is unchanged (filter_cache.h); backward-weight, blocks
// of 4 panels of columns (filter taps) of one group, cut further where that alone makes fewer
// than 16 tasks: 1x1 layers with many filters on few pixels into blocks of row tiles (filters),
// the others into a fixed number of pixel chunks (partial sums added in chunk order). NCHW, its
// dy (A) is read in place by row pointers (a filter's pixels are a run), not packed.
//
// Channels_last (the gathered tensor's channels innermost), forward and backward-input read A in
// place where a tap's channels come in runs (8 or more a block on average): the tile takes MR row
// pointers per run (f64_tile_rows; a run outside the image reads kZeros), as simd.h's float32
// micro-kernel does, so nothing is gathered (was 54% of CIFAR's 16@32 forward samples, a scalar
// transpose). Backward-weight there packs dy pixel by pixel (whole runs of Kg), once up front for
// all the blocks of taps when there are several, and copies x's runs by vectors.
//
// Backward-input with fewer dx channels than a vector (the RGB stems) runs col2im instead: per dy
// pixel C[pixel][(c,r,s)] = sum_k dy[k] * w[k][(c,r,s)], each value added into its dx pixel.
//
// NCHW 1x1 layers at stride 1 with over 64 output channels (over 16 on planes under 16x16) run as
// a GEMM on the planes as they lie (gemm1x1_pass: output channels in the tile's rows, the pixels of
// all the images in its vectors, stored straight into the output planes; forward 128->512 @28
// 0.86x -> 0.94x torch). NCHW, where the gathers and packing cost the most, two kernels read the
// tensors as they lie, the pixels in the vector lanes (rows of the planes, zero-padded and split
// into stride phases once): row_conv for the other forwards (any stride) and backward-inputs
// with <= 64 output channels a group (strided: on dx's stride phases, 32 or fewer channels on
// planes over 32x32), and dot products along rows for backward-weight
// where 1/Kg + 1/J >= 1/128 (1/64 strided), but for 1x1 layers with few input channels, many
// filters and large planes (bw_whole_rows) (their notes below).
//
// Speed (2 threads, NCHW, batch 4; python -m conv_ext.bench --suite default --device cpu --dtype
// float64 --passes forward,all): the reference loops it replaces were 30-500x slower than torch;
// the gather form alone was geomean 1.00x torch (forward 1.06x), 0.44-0.97x on CIFAR's 3- and
// 16-channel layers; with the row kernels, the panel blocks and the cached filter 1.42x (forward
// 1.48x, all 1.36x): 1.0-3.3x on the CIFAR and depthwise layers, 2.3-2.9x on 64@56, still
// 0.74-0.87x on 1x1 layers and 0.86x on 512@7's forward (torch: im2col + MKL dgemm at 50-76% of
// the float64 peak, our GEMM a little below) and 0.67x on the strided depthwise 96@112 (strided
// passes run the gather form). Channels_last (--layout nhwc, 2026-12-05, Intel Xeon): 1.20x ->
// 1.39x (1.57x in a run of an earlier build of the same round) with A read in place and backward-weight's packing above (CIFAR's 16@32 forward and
// backward-input 1.8-1.9x, 256@14 backward-weight 1.6-1.8x, 2048->512 @7 1.7-2.0x, old/new by
// python benchmarks/ab.py OLD.so NEW.so SHAPE --layout nhwc --pass P --dtype float64); 1x1
// layers still 0.7-0.95x torch (MKL's dgemm on the tensor as it lies). Backward-weight's row
// blocks (2026-12-07): 512->1024 @14 1.16x / 1.21x (NCHW / channels_last), 0.72-0.73x -> 0.89-0.93x
// torch (python benchmarks/algos.py 4,512,14,14,1024,1 --pass backward_weight --dtype float64).
// NCHW suite after the 1x1 GEMM across the images and the row kernel's larger chunks (and
// conv2d_cpu.cpp's own stride copy; 2026-12-07): 1.55x -> 1.58x, CIFAR's 1x1/2 shortcut 0.70x ->
// 1.01x forward+backward, ResNet-50's 512->1024 @28/2 forward 0.76x -> 0.94x. NCHW backward-weight
// with dy read in place and all the taps a task on 1x1 layers of few input channels (bw_whole_rows)
// and the filter packs by vectors (2026-12-08): 1.58x -> 1.62x, 128->512 @28 backward-weight 0.75x
// -> 0.98x torch (python benchmarks/algos.py 4,128,28,28,512,1 --pass backward_weight --dtype
// float64), 512@7 3x3 forward+backward 0.92x -> 1.01x; with strided backward-input on row_conv's
// phases 1.71x (CIFAR's 16->32 3x3/2 forward+backward 0.91x -> 1.11x).
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "gemm_f64.cpp"
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// The GEMM's column count must fill a good part of a register tile (NR = 24 or 12 doubles) for
// this to beat the reference loops: forward's Kg, backward-input's Cg, backward-weight's Cg*R*S.
// Depthwise layers (1 channel a group) stay on the reference.
bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kDouble && simd_available() && p.Kg() >= 1;
}
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kDouble && simd_available() && p.Cg() >= 1;
}
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kDouble && simd_available() && p.Cg() * p.R * p.S >= 1;
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const double* bias = o.bias.defined() ? o.bias.const_data_ptr<double>() : nullptr;
  auto f = use_avx512() ? avx512::f64_forward : avx2::f64_forward;
  f(p, o.a.const_data_ptr<double>(), o.b.const_data_ptr<double>(), bias, o.out.mutable_data_ptr<double>(), o.filter);
}
void run_backward_input(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::f64_backward_input : avx2::f64_backward_input;
  f(p, o.a.const_data_ptr<double>(), o.b.const_data_ptr<double>(), o.out.mutable_data_ptr<double>(), o.filter);
}
void run_backward_weight(const Conv2dParams& p, Operands& o) {
  auto f = use_avx512() ? avx512::f64_backward_weight : avx2::f64_backward_weight;
  f(p, o.a.const_data_ptr<double>(), o.b.const_data_ptr<double>(), o.out.mutable_data_ptr<double>());
}

// Strides come from the params (any filter layout), so channels_last filters are read and
// written in place.
const bool registered =
    register_algorithm({"gemm_f64", Pass::Forward, 5, supports_forward, run_forward, true}) &&
    register_algorithm({"gemm_f64", Pass::BackwardInput, 5, supports_backward_input, run_backward_input, true}) &&
    register_algorithm({"gemm_f64", Pass::BackwardWeight, 5, supports_backward_weight, run_backward_weight, true});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA ----------------

namespace conv_ext {
namespace cpu {
namespace CONV_EXT_ISA_NS {
namespace {

#if CONV_EXT_ISA_BITS == 512
struct D {
  static constexpr int VL = 8;  // doubles per vector
  // tile rows for NV vectors of columns: MR*NV accumulators + NV B vectors + 1 broadcast <= 32
  static constexpr int mr(int nv) { return nv == 3 ? 8 : nv == 2 ? 12 : 24; }
  static constexpr int MK = 4, NJ = 6;  // dot_tile: MK*NJ accumulators + MK dy vectors + 1
  using V = __m512d;
  static inline V zero() { return _mm512_setzero_pd(); }
  static inline V load(const double* p) { return _mm512_loadu_pd(p); }
  static inline void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static inline V set1(double x) { return _mm512_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_pd(a, b); }
  using M = __mmask8;
  static inline M mask(int64_t n) { return static_cast<M>(n >= 8 ? 0xFF : (1u << n) - 1); }  // lanes [0, n)
  static inline V loadm(const double* p, M m) { return _mm512_maskz_loadu_pd(m, p); }  // 0 outside m, never read
  static inline V loadm(const double* p, int64_t n) { return loadm(p, mask(n)); }
  static inline void storem(double* p, V v, M m) { _mm512_mask_storeu_pd(p, m, v); }
  static inline double sum(V v) {  // (not _mm512_reduce_add_pd: its _mm512_undefined_pd, as below)
    const __m256d q =
        _mm256_add_pd(_mm512_maskz_extractf64x4_pd(0xF, v, 0), _mm512_maskz_extractf64x4_pd(0xF, v, 1));
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
  // (the maskz forms: the plain ones' _mm512_undefined_pd trips GCC 12's -Wmaybe-uninitialized)
  static inline void transpose(V* r) {  // 8x8: r[i][j] -> r[j][i]
    V t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm512_maskz_unpacklo_pd(0xFF, r[i], r[i + 1]);
      t[i + 1] = _mm512_maskz_unpackhi_pd(0xFF, r[i], r[i + 1]);
    }
    // t[2a] = (r[2a][0], r[2a+1][0], r[2a][2], r[2a+1][2], ...); t[2a+1] the odd columns
#pragma GCC unroll 2
    for (int a = 0; a < 2; ++a)
#pragma GCC unroll 2
      for (int b = 0; b < 2; ++b) {
        const V x = t[4 * a + b], y = t[4 * a + 2 + b];
        u[4 * a + b] = _mm512_maskz_shuffle_f64x2(0xFF, x, y, 0x88);      // 128-bit lanes 0, 2 of x, then of y
        u[4 * a + 2 + b] = _mm512_maskz_shuffle_f64x2(0xFF, x, y, 0xDD);  // lanes 1, 3
      }
#pragma GCC unroll 2
    for (int a = 0; a < 2; ++a)
#pragma GCC unroll 2
      for (int b = 0; b < 2; ++b) {
        const V x = u[2 * a + b], y = u[4 + 2 * a + b];
        r[2 * a + b] = _mm512_maskz_shuffle_f64x2(0xFF, x, y, 0x88);
        r[4 + 2 * a + b] = _mm512_maskz_shuffle_f64x2(0xFF, x, y, 0xDD);
      }
  }
};
#else
struct D {
  static constexpr int VL = 4;
  static constexpr int mr(int nv) { return nv == 3 ? 4 : nv == 2 ? 6 : 12; }  // 16 ymm
  static constexpr int MK = 2, NJ = 5;
  using V = __m256d;
  static inline V zero() { return _mm256_setzero_pd(); }
  static inline V load(const double* p) { return _mm256_loadu_pd(p); }
  static inline void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static inline V set1(double x) { return _mm256_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_pd(a, b); }
  using M = __m256i;
  static inline M mask(int64_t n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_set_epi64x(3, 2, 1, 0)); }
  static inline V loadm(const double* p, M m) { return _mm256_maskload_pd(p, m); }
  static inline V loadm(const double* p, int64_t n) { return loadm(p, mask(n)); }
  static inline void storem(double* p, V v, M m) { _mm256_maskstore_pd(p, m, v); }
  static inline double sum(V v) {
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
  static inline void transpose(V* r) {  // 4x4: r[i][j] -> r[j][i]
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20), r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31), r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};
#endif
constexpr int64_t KC = 128;       // reduction steps per packed block
constexpr int64_t kMaxRows = 96;  // output pixels per forward / backward-input task, at most

double* dscratch(int slot, int64_t n) { return reinterpret_cast<double*>(scratch(slot, 2 * n)); }
alignas(64) const double kZeros[KC] = {};  // a run of taps that lies outside the image

// The parts of a register tile of MR rows x NV vectors: its sums zeroed; one step of the
// reduction, acc[i] += a(i) * b[0, NV*VL) (a(i): row i's value of A, broadcast); and the sums
// stored into c[MR][NV*VL] (row stride ldc), added to what is there with accumulate.
template <int NV, int MR>
inline void tile_zero(D::V (&acc)[MR][NV]) {
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = D::zero();
}
template <int NV, int MR, class RowValue>
inline __attribute__((always_inline)) void tile_step(D::V (&acc)[MR][NV], const double* b, const RowValue& a) {
  D::V bv[NV];
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v) bv[v] = D::load(b + v * D::VL);
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) {
    const D::V av = D::set1(a(i));
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = D::fma(av, bv[v], acc[i][v]);
  }
}
template <int NV, int MR>
inline void tile_store(D::V (&acc)[MR][NV], double* c, int64_t ldc, bool accumulate) {
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      double* cp = c + i * ldc + v * D::VL;
      D::store(cp, accumulate ? D::add(acc[i][v], D::load(cp)) : acc[i][v]);
    }
}

// c[MR][NV*VL] (row stride ldc) = (accumulate ? c : 0) + sum_{l < kc} a[l][MR] * b[l][NV*VL]
template <int NV, int MR = D::mr(NV)>
void f64_tile(int64_t kc, const double* a, const double* b, double* c, int64_t ldc, bool accumulate) {
  D::V acc[MR][NV];
  tile_zero(acc);
  for (int64_t l = 0; l < kc; ++l, a += MR, b += NV * D::VL) tile_step(acc, b, [a](int i) { return a[i]; });
  tile_store(acc, c, ldc, accumulate);
}

// The same tile with A read in place (channels_last: no packing): the reduction in npiece
// pieces, piece u of len[u] steps reading row i at p[u * MRP + i][0..len[u]) (a tap's run of
// channels, or kZeros) against the next len[u] rows of b. MRP <= 12 rows, so that the row
// pointers stay in integer registers (the A loop of simd.h's float32 micro-kernel).
template <int NV, int MRP>
void f64_tile_rows(int npiece, const int64_t* len, const double* const* p, const double* b, double* c, int64_t ldc,
                   bool accumulate) {
  D::V acc[MRP][NV];
  tile_zero(acc);
  for (int u = 0; u < npiece; ++u, p += MRP) {
    const int64_t n = len[u];
    const double* ap[MRP];  // row i's end: A(i, l) = ap[i][l - n]
#pragma GCC unroll 12
    for (int i = 0; i < MRP; ++i) ap[i] = p[i] + n;
    for (int64_t l = -n; l < 0; ++l, b += NV * D::VL) tile_step(acc, b, [&ap, l](int i) { return ap[i][l]; });
  }
  tile_store(acc, c, ldc, accumulate);
}

// The register tile of a GEMM with nn columns: 1, 2 or 3 vectors wide, whichever leaves the
// fewest padded columns (the widest on a tie); rows as many as the registers allow.
struct Shape {
  int nv, mr, nr;
  explicit Shape(int64_t nn) {
    nv = nn <= D::VL ? 1 : nn <= 2 * D::VL ? 2 : round_up(nn, 2 * D::VL) < round_up(nn, 3 * D::VL) ? 2 : 3;
    mr = D::mr(nv), nr = nv * D::VL;
  }
  int64_t rows_per_task() const { return kMaxRows / mr * mr; }  // 96 = 4 x 24 = 8 x 12 = 12 x 8
  // The row stride of a C buffer of nn columns: whole panels, and a line more at multiples of
  // 2 KiB (256 doubles), where a tile's rows (and store_block's reads down a column) fell into
  // one or two L1 sets: 512 columns are 4 KiB a row.
  int64_t ld(int64_t nn) const {
    const int64_t l = round_up(nn, nr);
    return l % 256 == 0 ? l + D::VL : l;
  }
  void tile(int64_t kc, const double* a, const double* b, double* c, int64_t ldc, bool accumulate) const {
    if (nv == 3) f64_tile<3>(kc, a, b, c, ldc, accumulate);
    else if (nv == 2) f64_tile<2>(kc, a, b, c, ldc, accumulate);
    else f64_tile<1>(kc, a, b, c, ldc, accumulate);
  }
  // f64_tile_rows's rows a call: mr, or a half of it (24 -> 12) where mr > 12
  int mrp() const { return mr > 12 ? mr / 2 : mr; }
  // rows [0, mr) of a tile in place: p holds npiece x mrp() pointers per mrp() rows
  void tile_rows(int npiece, const int64_t* len, const double* const* p, const double* b, double* c, int64_t ldc,
                 bool accumulate) const {
    for (int h = 0; h < mr / mrp(); ++h, p += npiece * mrp(), c += mrp() * ldc) {
      if (nv == 3) f64_tile_rows<3, D::mr(3) <= 12 ? D::mr(3) : D::mr(3) / 2>(npiece, len, p, b, c, ldc, accumulate);
      else if (nv == 2) f64_tile_rows<2, D::mr(2) <= 12 ? D::mr(2) : D::mr(2) / 2>(npiece, len, p, b, c, ldc, accumulate);
      else f64_tile_rows<1, D::mr(1) <= 12 ? D::mr(1) : D::mr(1) / 2>(npiece, len, p, b, c, ldc, accumulate);
    }
  }
};

// The taps of a gather, one entry per reduction index l: the element at offset off[l] from a
// row's base, present when its shifted position (h0 + dh[l], w0 + dw[l]) lies in [0,Hb) x [0,Wb).
struct Taps {
  std::vector<int64_t> dh, dw, off;
  int64_t dh_min = 0, dh_max = 0, dw_min = 0, dw_max = 0;
  void add(int64_t h, int64_t w, int64_t o) { dh.push_back(h), dw.push_back(w), off.push_back(o); }
  std::vector<int64_t> run;  // run[l]: taps l, l+1, .. of one shift at consecutive offsets
  bool long_runs = false;    // 4 taps a run or more on average
  void finish() {
    const int64_t n = size();
    run.assign(static_cast<size_t>(n), 1);
    int64_t nrun = n > 0;
    for (int64_t l = n - 2; l >= 0; --l)
      if (off[l + 1] == off[l] + 1 && dh[l + 1] == dh[l] && dw[l + 1] == dw[l]) run[l] = run[l + 1] + 1;
      else ++nrun;
    long_runs = n >= 4 * nrun;
    if (dh.empty()) return;
    dh_min = *std::min_element(dh.begin(), dh.end()), dh_max = *std::max_element(dh.begin(), dh.end());
    dw_min = *std::min_element(dw.begin(), dw.end()), dw_max = *std::max_element(dw.begin(), dw.end());
  }
  int64_t size() const { return static_cast<int64_t>(off.size()); }
};

// One gathered row of a GEMM operand (a pixel): its base element and the (h0, w0) its taps shift.
struct Row {
  int64_t base, h0, w0;
};

inline bool inside(const Row& r, const Taps& t, int64_t Hb, int64_t Wb) {  // every tap of the row
  return r.h0 + t.dh_min >= 0 && r.h0 + t.dh_max < Hb && r.w0 + t.dw_min >= 0 && r.w0 + t.dw_max < Wb;
}

// d[0, n) = s[0, n), by vectors
inline void copy_run(const double* s, int64_t n, double* d) {
  int64_t j = 0;
  for (; j + D::VL <= n; j += D::VL) D::store(d + j, D::load(s + j));
  if (j < n) {
    const D::M m = D::mask(n - j);
    D::storem(d + j, D::loadm(s + j, m), m);
  }
}

// A VL x VL block through registers: vector k = load(k) for k < nk (zeros past), transposed,
// then store(i, vector i) for every i (the packs of f64_backward_weight's A and B)
template <class Load, class Store>
inline void transposed_block(int64_t nk, const Load& load, const Store& store) {
  D::V r[D::VL];
#pragma GCC unroll 8
  for (int k = 0; k < D::VL; ++k) r[k] = k < nk ? load(k) : D::zero();
  D::transpose(r);
#pragma GCC unroll 8
  for (int i = 0; i < D::VL; ++i) store(i, r[i]);
}

// dst[i * row_step + j * tap_step] = tap l0 + j of row i (0 outside the image), i < nrows, j < n.
// With the rows' pixels next to each other in memory (NCHW: pixels_inner) the loop runs over the
// rows inside, and MR rows of one image row read as one vector; else over the taps inside (NHWC:
// runs of channels).
void gather_block(const double* src, const Row* rows, int64_t nrows, const Taps& t, int64_t l0, int64_t n,
                  int64_t Hb, int64_t Wb, bool pixels_inner, double* dst, int64_t row_step, int64_t tap_step) {
  bool in[kMaxRows > KC ? kMaxRows : KC];
  const int64_t* off = t.off.data() + l0;
  const int64_t* dh = t.dh.data() + l0;
  const int64_t* dw = t.dw.data() + l0;
  bool all_inside = true;
  for (int64_t i = 0; i < nrows; ++i) all_inside &= (in[i] = inside(rows[i], t, Hb, Wb));
  const auto value = [&](int64_t i, int64_t j) {  // tap j of row i, 0 outside the image
    const int64_t h = rows[i].h0 + dh[j], w = rows[i].w0 + dw[j];
    return in[i] || (h >= 0 && h < Hb && w >= 0 && w < Wb) ? src[rows[i].base + off[j]] : 0.0;
  };
  if (pixels_inner) {
    // rows that are consecutive pixels of one image row, all inside: vector copies
    bool run = all_inside && row_step == 1 && nrows >= D::VL;
    for (int64_t i = 1; i < nrows && run; ++i)
      run = rows[i].base == rows[0].base + i && rows[i].h0 == rows[0].h0 && rows[i].w0 == rows[0].w0 + i;
    if (run) {
      const int64_t nvec = nrows / D::VL;
      for (int64_t j = 0; j < n; ++j) {
        const double* sp = src + rows[0].base + off[j];
        double* d = dst + j * tap_step;
        for (int64_t v = 0; v < nvec; ++v) D::store(d + v * D::VL, D::load(sp + v * D::VL));
        for (int64_t i = nvec * D::VL; i < nrows; ++i) d[i] = sp[i];
      }
      return;
    }
    // Rows of whole vectors of taps (backward-weight's B[l][NR]): VL rows at consecutive addresses,
    // all inside, go by VL x VL transposes (a tap's VL pixels are one load); other rows one value
    // at a time, as every row went before. NCHW, batch 4, 2 threads, old/new (python
    // benchmarks/ab.py OLD.so NEW.so SHAPE --layout nchw --pass backward_weight --dtype float64
    // --rounds 10): 3x3 256@14 1.12-1.13x, 1x1 2048->512 @7 1.02-1.04x, 512->2048 @7 1.02-1.03x
    // (the rest is the GEMM and the stores of dw: 8 MB at 2048->512).
    if (tap_step == 1 && row_step % D::VL == 0) {
      for (int64_t i0 = 0; i0 < nrows; i0 += D::VL) {
        const int64_t m = std::min<int64_t>(D::VL, nrows - i0);
        bool block = m == D::VL;
        for (int64_t i = 0; i < m && block; ++i) block = in[i0 + i] && rows[i0 + i].base == rows[i0].base + i;
        if (block) {
          for (int64_t j = 0; j < n; j += D::VL) {
            const int64_t nj = std::min<int64_t>(D::VL, n - j);
            transposed_block(
                nj, [&](int k) { return D::load(src + rows[i0].base + off[j + k]); },
                [&](int i, D::V v) {
                  double* d = dst + (i0 + i) * row_step + j;
                  if (nj == D::VL) D::store(d, v);
                  else D::storem(d, v, D::mask(nj));
                });
          }
          continue;
        }
        for (int64_t i = i0; i < i0 + m; ++i)
          for (int64_t j = 0; j < n; ++j) dst[i * row_step + j] = value(i, j);
      }
      return;
    }
    for (int64_t j = 0; j < n; ++j) {
      double* d = dst + j * tap_step;
      if (all_inside) {
        for (int64_t i = 0; i < nrows; ++i) d[i * row_step] = src[rows[i].base + off[j]];
        continue;
      }
      for (int64_t i = 0; i < nrows; ++i) d[i * row_step] = value(i, j);
    }
    return;
  }
  if (tap_step == 1 && t.long_runs) {  // runs of taps are runs of dst: vector copies (NHWC backward-weight's x)
    for (int64_t i = 0; i < nrows; ++i) {
      double* d = dst + i * row_step;
      const Row& r = rows[i];
      for (int64_t j = 0; j < n;) {
        const int64_t len = std::min(t.run[l0 + j], n - j);
        const int64_t h = r.h0 + dh[j], w = r.w0 + dw[j];
        if (in[i] || (h >= 0 && h < Hb && w >= 0 && w < Wb)) copy_run(src + r.base + off[j], len, d + j);
        else std::fill(d + j, d + j + len, 0.0);
        j += len;
      }
    }
    return;
  }
  for (int64_t i = 0; i < nrows; ++i) {
    double* d = dst + i * row_step;
    const Row& r = rows[i];
    if (in[i]) {
      for (int64_t j = 0; j < n; ++j) d[j * tap_step] = src[r.base + off[j]];
      continue;
    }
    for (int64_t j = 0; j < n; ++j) d[j * tap_step] = value(i, j);
  }
}

// One panel [l][NR] of a packed B, for l < L and its nn <= NR columns (the first at col_off):
// B(l, j) = w[col_off[j] + tap_off[l]], 0 past nn.
void pack_panel(const double* w, const std::vector<int64_t>& tap_off, const int64_t* col_off, int64_t nn, int64_t NR,
                double* d) {
  const int64_t L = static_cast<int64_t>(tap_off.size());
  for (int64_t l = 0; l < L;) {
    // VL taps at consecutive addresses (a KCRS filter's forward: all of them) for VL columns at a
    // time by a transpose in registers (VL divides NR); value by value before, on every call with
    // a new filter (a training step; 512->512 3x3's 2.4M values: level, its pack bound by memory)
    bool run = l + D::VL <= L;
    for (int t = 1; t < D::VL && run; ++t) run = tap_off[l + t] == tap_off[l] + t;
    if (run) {
      for (int64_t jb = 0; jb < NR; jb += D::VL)
        transposed_block(
            std::clamp<int64_t>(nn - jb, 0, D::VL), [&](int t) { return D::load(w + col_off[jb + t] + tap_off[l]); },
            [&](int i, D::V v) { D::store(d + i * NR + jb, v); });
      l += D::VL, d += D::VL * NR;
      continue;
    }
    for (int64_t j = 0; j < nn; ++j) d[j] = w[col_off[j] + tap_off[l]];
    for (int64_t j = nn; j < NR; ++j) d[j] = 0.0;
    ++l, d += NR;
  }
}

// B[panel][l][NR] for l < L and columns j < NN (col_off's size): B(l, j) = w[col_off[j] + tap_off[l]].
void pack_filter(const double* w, const std::vector<int64_t>& tap_off, const std::vector<int64_t>& col_off,
                 int64_t NR, double* B) {
  const int64_t L = static_cast<int64_t>(tap_off.size()), NN = static_cast<int64_t>(col_off.size());
  for (int64_t jp = 0; jp < ceil_div(NN, NR); ++jp)
    pack_panel(w, tap_off, col_off.data() + jp * NR, std::min(NR, NN - jp * NR), NR, B + jp * L * NR);
}

// The packed filter of forward or backward-input (n doubles, pack(dst) writes it), kept across
// calls while the filter is unchanged (filter_cache.h), else in the calling thread's scratch.
// (Packed into a zero-initialised std::vector on the calling thread before: 18.9 MB at 512->512
// 3x3, 10% of its forward's samples between the zeroing and the serial pack, perf record.)
struct PackedB {
  PackedFilter held;
  const double* data() const { return reinterpret_cast<const double*>(held.data); }
};
PackedB packed_b(const at::Tensor* filter, const std::vector<int64_t>& tag, int64_t n,
                 const std::function<void(double*)>& pack) {
  const auto as_doubles = [&](float* dst) { pack(reinterpret_cast<double*>(dst)); };
  return {packed_filter(filter, tag, 2 * n, scratch(3, 2 * n), as_doubles)};
}

// Tasks of a forward or backward-input GEMM of M rows (pixels) by npan panels of columns, per
// group: blocks of mc rows (at most kMaxRows, evened out: 196 rows as 72 + 72 + 52, not 96 + 96
// + 4) x blocks of pb panels, the panels cut in halves while there are fewer than 2 tasks a
// thread (512->512 3x3 @7, batch 4: 3 tasks of rows before, one thread idle a third of the
// time). Each task gathers its rows' A again, which costs: 4 tasks a thread instead of 2 ran
// 512@7 forward 0.83-0.85x, backward-input 0.86x, 256@14 batch 1 0.78x, 2048->512 1x1 @7
// 0.88-0.94x; 1 a thread 0.96-1.04x (python benchmarks/ab.py ... --dtype float64, 2 threads).
// The sums' order is that of the whole reduction in every case: the same bits.
struct Blocks {
  int64_t mc, nib, pb, ncb;
  Blocks(const Shape& ts, int64_t M, int64_t G, int64_t npan) {
    const int64_t most = ts.rows_per_task();
    nib = ceil_div(M, most);
    mc = std::max<int64_t>(ts.mr, std::min(most, round_up(ceil_div(M, std::max<int64_t>(1, nib)), ts.mr)));
    nib = ceil_div(M, mc);
    pb = std::max<int64_t>(1, npan);
    while (pb > 1 && G * nib * ceil_div(npan, pb) < 2 * pool_threads()) pb = ceil_div(pb, 2);
    ncb = ceil_div(npan, pb);
    pb = ceil_div(npan, std::max<int64_t>(1, ncb));  // even blocks
    ncb = ceil_div(npan, pb);
  }
};

// C[i][j] for the `mr_all` gathered rows `rows` (A(i, l) = gather of taps `t`) against panels
// [jp0, jp1) of the packed B ([panel][L][NR]), into cbuf[round_up(mr_all, MR)][ldc] (column 0:
// panel jp0's first).
void rows_times_filter(const Shape& ts, const double* src, int64_t Hb, int64_t Wb, const Taps& t, const Row* rows,
                       int64_t mr_all, bool pixels_inner, const double* B, int64_t jp0, int64_t jp1, int64_t ldc,
                       double* cbuf) {
  const int64_t MR = ts.mr, NR = ts.nr;
  const int64_t L = t.size(), nir = ceil_div(mr_all, MR);
  if (L == 0) {
    std::fill(cbuf, cbuf + nir * MR * ldc, 0.0);
    return;
  }
  double* A = dscratch(0, nir * MR * KC);
  // Channels innermost (NHWC), A is read in place by row pointers where the taps come in runs (of
  // 8 or more a block), but packed for a 1x1 layer's (one shift: a plain transpose) against more
  // than 8 panels, where the tiles read A again for each panel (in place: 0.82-0.94x at 128->512
  // @28 (32 panels) and 2048->512 @7 forward, channels_last float64, batch 4; 8 panels, 128->512's
  // backward-input, 1.08-1.12x)
  const bool in_place = !pixels_inner && t.long_runs &&
                        !(t.dh_min == t.dh_max && t.dw_min == t.dw_max && jp1 - jp0 > 8);
  for (int64_t l0 = 0; l0 < L; l0 += KC) {
    const int64_t kc = std::min(KC, L - l0);
    if (in_place) {  // channels innermost: A in place where the taps come in runs of >= 8
      int64_t start[KC], len[KC];  // the block's pieces: Taps::run cut at the block's end
      int npiece = 0;
      for (int64_t l = l0; l < l0 + kc; l += len[npiece++])
        start[npiece] = l, len[npiece] = std::min(t.run[l], l0 + kc - l);
      if (npiece * 8 <= kc) {
        const int mrp = ts.mrp();
        const double** ptr = reinterpret_cast<const double**>(dscratch(6, nir * MR * npiece));
        for (int64_t ir = 0; ir < nir; ++ir)  // [ir][half][piece][row]
          for (int64_t i = 0; i < MR; ++i) {
            const int64_t ii = ir * MR + i;
            const double** d = ptr + (ir * MR + i / mrp * mrp) * npiece + i % mrp;
            for (int u = 0; u < npiece; ++u, d += mrp) {
              const int64_t l = start[u];
              bool ok = ii < mr_all;
              if (ok && !inside(rows[ii], t, Hb, Wb)) {
                const int64_t h = rows[ii].h0 + t.dh[l], w = rows[ii].w0 + t.dw[l];
                ok = h >= 0 && h < Hb && w >= 0 && w < Wb;
              }
              *d = ok ? src + rows[ii].base + t.off[l] : kZeros;
            }
          }
        for (int64_t jp = jp0; jp < jp1; ++jp)
          for (int64_t ir = 0; ir < nir; ++ir)
            ts.tile_rows(npiece, len, ptr + ir * MR * npiece, B + (jp * L + l0) * NR,
                         cbuf + ir * MR * ldc + (jp - jp0) * NR, ldc, l0 > 0);
        continue;
      }
    }
    for (int64_t ir = 0; ir < nir; ++ir) {  // A[ir][l][MR]
      double* d = A + ir * MR * kc;
      const int64_t nr = std::min<int64_t>(MR, mr_all - ir * MR);
      gather_block(src, rows + ir * MR, nr, t, l0, kc, Hb, Wb, pixels_inner, d, 1, MR);
      for (int64_t i = nr; i < MR; ++i)
        for (int64_t l = 0; l < kc; ++l) d[l * MR + i] = 0.0;
    }
    for (int64_t jp = jp0; jp < jp1; ++jp)
      for (int64_t ir = 0; ir < nir; ++ir)
        ts.tile(kc, A + ir * MR * kc, B + (jp * L + l0) * NR, cbuf + ir * MR * ldc + (jp - jp0) * NR, ldc, l0 > 0);
  }
}

// cbuf[i][j] (+ bias[j]) -> out[row_off[i] + j * col_step], i < m, j < nn: along the output's
// contiguous axis inside (the columns when col_step == 1, else the rows: NCHW's pixels)
void store_block(const double* cbuf, int64_t ldc, const int64_t* row_off, int64_t m, int64_t nn, int64_t col_step,
                 const double* bias, double* out) {
  if (col_step == 1) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < nn; ++j) out[row_off[i] + j] = bias ? cbuf[i * ldc + j] + bias[j] : cbuf[i * ldc + j];
    return;
  }
  // Blocks of VL columns: a row's VL values are one vector of cbuf, and runs of VL rows that are
  // consecutive pixels (row_off[i] + t) go out as VL vectors, transposed in registers; the rest
  // value by value. Column by column down cbuf before (reads a row stride apart, 4 KiB at 512
  // channels): 21% of 128->512 1x1 @28's NCHW forward samples, perf record.
  for (int64_t j0 = 0; j0 < nn; j0 += D::VL) {
    const int64_t jn = std::min<int64_t>(D::VL, nn - j0);
    int64_t i = 0;
    const auto run = [&](int64_t i0) {  // rows i0.. are VL consecutive pixels
      bool r = i0 + D::VL <= m;
      for (int t = 1; t < D::VL && r; ++t) r = row_off[i0 + t] == row_off[i0] + t;
      return r;
    };
    for (; jn == D::VL && run(i); i += D::VL) {
      D::V v[D::VL];
#pragma GCC unroll 8
      for (int t = 0; t < D::VL; ++t) v[t] = D::load(cbuf + (i + t) * ldc + j0);
      D::transpose(v);
#pragma GCC unroll 8
      for (int t = 0; t < D::VL; ++t)
        D::store(out + row_off[i] + (j0 + t) * col_step, bias ? D::add(v[t], D::set1(bias[j0 + t])) : v[t]);
    }
    for (; i < m; ++i) {
      const double* c = cbuf + i * ldc + j0;
      double* o = out + row_off[i] + j0 * col_step;
      for (int64_t j = 0; j < jn; ++j) o[j * col_step] = bias ? c[j] + bias[j0 + j] : c[j];
    }
  }
}

bool channels_inner(int64_t cs, int64_t ws) { return cs == 1 && ws != 1; }  // NHWC-like: (r, s, c) order

// The filter taps (c, r, s) of one group as a gather from x (offset and shift from the window's
// corner) and their offsets in w, in (r, s, c) order when x has its channels innermost (NHWC:
// runs of Cg contiguous values), else (c, r, s) (NCHW: runs along a row).
void filter_taps(const Conv2dParams& p, Taps& t, std::vector<int64_t>& woff) {
  auto tap = [&](int64_t c, int64_t r, int64_t s) {
    t.add(r * p.dil_h, s * p.dil_w, c * p.xs_c + r * p.dil_h * p.xs_h + s * p.dil_w * p.xs_w);
    woff.push_back(c * p.ws_c + r * p.ws_r + s * p.ws_s);
  };
  if (channels_inner(p.xs_c, p.xs_w)) {
    for (int64_t r = 0; r < p.R; ++r)
      for (int64_t s = 0; s < p.S; ++s)
        for (int64_t c = 0; c < p.Cg(); ++c) tap(c, r, s);
  } else {
    for (int64_t c = 0; c < p.Cg(); ++c)
      for (int64_t r = 0; r < p.R; ++r)
        for (int64_t s = 0; s < p.S; ++s) tap(c, r, s);
  }
  t.finish();
}

}  // namespace

// ------------------------------------------------------------------------------------------
// The row kernels below (NCHW) read rows of kRowPixels or so at a time, pixels in the vector
// lanes, from planes zero-padded and split into stride phases up front (Phased): every row they
// read is whole and contiguous.
constexpr int64_t kRowPixels = 256;

// The input of a convolution of stride (sh, sw) zero-padded by (pt, pl) and split into its
// sh x sw stride phases: plane (nc, a, b) holds xp[a + sh*hh][b + sw*ww] (hh < Hh, ww < Wh), so
// that every row the row kernels read is whole and contiguous: output pixels (p, q..) meet tap
// (r, s) at row p + r*dh/sh of phase (r*dh % sh, s*dw % sw), columns q + s*dw/sw.. (At stride 1
// one phase; without padding the input itself.)
struct Phased {
  int64_t sh, sw, Hh, Wh;
  int64_t per_channel() const { return sh * sw * Hh * Wh; }
  int64_t tap(int64_t c, int64_t rr, int64_t ss) const {  // rr = r*dh, ss = s*dw
    return ((c * sh + rr % sh) * sw + ss % sw) * Hh * Wh + rr / sh * Wh + ss / sw;
  }
};

// The phases of NC planes of H x W for an output of P x Q and taps reaching (R-1)*dh, (S-1)*dw:
// in itself where nothing needs padding or splitting, else a copy in the calling thread's scratch.
const double* phase_planes(const double* in, int64_t NC, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t sh,
                           int64_t sw, int64_t P, int64_t Q, int64_t reach_h, int64_t reach_w, Phased& ph) {
  const int64_t Hp = (P - 1) * sh + reach_h + 1, Wp = (Q - 1) * sw + reach_w + 1;
  ph = {sh, sw, ceil_div(Hp, sh), ceil_div(Wp, sw)};
  if (sh == 1 && sw == 1 && pt == 0 && pl == 0 && Hp == H && Wp == W) return in;
  double* dst = dscratch(4, NC * ph.per_channel());
  for_each_task(NC, NC * ph.per_channel(), [&](int64_t nc) {
    const double* src = in + nc * H * W;
    double* d = dst + nc * ph.per_channel();
    for (int64_t a = 0; a < sh; ++a)
      for (int64_t b = 0; b < sw; ++b)
        for (int64_t hh = 0; hh < ph.Hh; ++hh, d += ph.Wh) {
          const int64_t h = a + sh * hh - pt;
          if (h < 0 || h >= H) {
            std::fill(d, d + ph.Wh, 0.0);
            continue;
          }
          const double* row = src + h * W;
          if (sw == 1) {  // columns [w0, w1) from the row, zeros around
            const int64_t w0 = std::max<int64_t>(0, std::min(ph.Wh, pl)), w1 = std::max(w0, std::min(ph.Wh, pl + W));
            std::fill(d, d + w0, 0.0);
            std::copy(row + (w0 - pl), row + (w1 - pl), d + w0);
            std::fill(d + w1, d + ph.Wh, 0.0);
            continue;
          }
          for (int64_t ww = 0; ww < ph.Wh; ++ww) {
            const int64_t w = b + sw * ww - pl;
            d[ww] = w >= 0 && w < W ? row[w] : 0.0;
          }
        }
  });
  return dst;
}

// out[n, g*Ko + k, p, q] = bias[g*Ko + k] + sum over j = (c, r, s) of
//     wt[g][j][k] * inp[n, g*Ci + c, p*sh + r*dh, q*sw + s*dw]     (inp: `in` zero-padded by pt, pl)
// for p < P, q < Q, with the output pixels in the vector lanes (on the input's phases, Phased). A tile is
// MK filters x NV vectors of output pixels (pieces of rows: a row of 14 is 8 + 6 lanes, of 7 one
// masked vector; AVX-512: 6 x 4, 24 sums); each step j loads NV input vectors and broadcasts MK
// weights. Every output is summed over j in order by one tile: the same bits for any thread count.
struct RowConv {
  int64_t N, Ci, H, W, Ko, G, R, S, sh, sw, dh, dw, pt, pl, P, Q;
};
constexpr int kRowMK = CONV_EXT_ISA_BITS == 512 ? 6 : 3, kRowNV = 4;

template <bool MASKED>
void row_conv_tile(const double* xp, const int64_t* xs, const int64_t* ns, int nv, const int64_t* joff, int64_t J,
                   const double* wt, int64_t ldw, const double* bias, double* out, const int64_t* ys, int64_t plane,
                   int mk) {
  D::V a[kRowMK][kRowNV];
#pragma GCC unroll 6
  for (int m = 0; m < kRowMK; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < kRowNV; ++v) a[m][v] = D::set1(bias && m < mk ? bias[m] : 0.0);
  D::M mv[kRowNV];
  const double* xv0[kRowNV];
#pragma GCC unroll 4
  for (int v = 0; v < kRowNV; ++v) mv[v] = D::mask(v < nv ? ns[v] : 0), xv0[v] = xp + xs[v < nv ? v : 0];
  for (int64_t j = 0; j < J; ++j, wt += ldw) {
    D::V xv[kRowNV];
#pragma GCC unroll 4
    for (int v = 0; v < kRowNV; ++v) xv[v] = MASKED ? D::loadm(xv0[v] + joff[j], mv[v]) : D::load(xv0[v] + joff[j]);
#pragma GCC unroll 6
    for (int m = 0; m < kRowMK; ++m) {
      const D::V wv = D::set1(wt[m]);
#pragma GCC unroll 4
      for (int v = 0; v < kRowNV; ++v) a[m][v] = D::fma(wv, xv[v], a[m][v]);
    }
  }
  // (loops of constant bounds, unrolled: a[m][v] indexed at run time kept the sums on the stack,
  // stored there on every step j)
#pragma GCC unroll 6
  for (int m = 0; m < kRowMK; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < kRowNV; ++v) {
      if (m >= mk || v >= nv) continue;
      double* o = out + m * plane + ys[v];
      if (!MASKED || ns[v] == D::VL) D::store(o, a[m][v]);
      else D::storem(o, a[m][v], mv[v]);
    }
}

// wt: [G][J = Ci*R*S][Kop] (Kop = Ko rounded up to kRowMK, zeros past Ko)
void row_conv(const RowConv& c, const double* in, const double* wt, int64_t Kop, const double* bias, double* out) {
  const int64_t J = c.Ci * c.R * c.S;
  Phased ph;
  const double* xp = phase_planes(in, c.N * c.G * c.Ci, c.H, c.W, c.pt, c.pl, c.sh, c.sw, c.P, c.Q, (c.R - 1) * c.dh,
                                  (c.S - 1) * c.dw, ph);
  std::vector<int64_t> joff(static_cast<size_t>(J));
  for (int64_t j = 0; j < J; ++j) joff[j] = ph.tap(j / (c.R * c.S), j / c.S % c.R * c.dh, j % c.S * c.dw);
  // pieces of output rows: (image, row, first column, lanes), NV to a tile; blocks of rows a task
  const int64_t vpr = ceil_div(c.Q, D::VL);  // vectors a row
  const int64_t rows = c.N * c.P, rb = std::max<int64_t>(1, kRowPixels / (vpr * D::VL));
  const int64_t nrb = ceil_div(rows, rb), nkt = Kop / kRowMK;
  for_each_task(c.G * nrb * nkt, c.N * c.P * c.Q * c.Ko * J, [&](int64_t task) {
    const int64_t g = task / (nrb * nkt), r0 = task / nkt % nrb * rb, kt = task % nkt;
    const int64_t r1 = std::min(rows, r0 + rb), k0 = kt * kRowMK, mk = std::min<int64_t>(kRowMK, c.Ko - k0);
    const int64_t nseg = (r1 - r0) * vpr;
    int64_t xs[kRowNV], ys[kRowNV], ns[kRowNV];
    for (int64_t s0 = 0; s0 < nseg; s0 += kRowNV) {
      const int nv = static_cast<int>(std::min<int64_t>(kRowNV, nseg - s0));
      bool masked = false;
      for (int v = 0; v < nv; ++v) {
        const int64_t sg = s0 + v, row = r0 + sg / vpr, q0 = sg % vpr * D::VL, n = row / c.P, pp = row % c.P;
        xs[v] = (n * c.G + g) * c.Ci * ph.per_channel() + pp * ph.Wh + q0;
        ys[v] = ((n * c.G + g) * c.Ko + k0) * c.P * c.Q + pp * c.Q + q0;
        ns[v] = std::min<int64_t>(D::VL, c.Q - q0);
        masked |= ns[v] < D::VL;
      }
      const double* w0 = wt + (g * J) * Kop + k0;
      const double* b0 = bias ? bias + g * c.Ko + k0 : nullptr;
      const int m = static_cast<int>(mk);
      if (masked) row_conv_tile<true>(xp, xs, ns, nv, joff.data(), J, w0, Kop, b0, out, ys, c.P * c.Q, m);
      else row_conv_tile<false>(xp, xs, ns, nv, joff.data(), J, w0, Kop, b0, out, ys, c.P * c.Q, m);
    }
  });
}

bool nchw_planes(const Conv2dParams& p) {  // x and dy (y, dx) as contiguous NCHW tensors
  const bool x_planes = p.xs_w == 1 && p.xs_h == p.W && p.xs_c == p.H * p.W && p.xs_n == p.C * p.H * p.W;
  const bool y_planes = p.ys_q == 1 && p.ys_p == p.Q && p.ys_k == p.P * p.Q && p.ys_n == p.K * p.P * p.Q;
  return x_planes && y_planes;
}

// Forward (flip false) or backward-input (true: the forward convolution of dy with the filter
// transposed and flipped, padded by (R-1)*dil - pad; stride 1 only) by row_conv: NCHW, with at
// most 64 output channels a group, where the gather form's packing of A (a gather per pixel and
// tap for as few columns) cost the most. Batch 8 unless said, 2 threads, gather / rows (python
// benchmarks/ab.py ... --dtype float64, best mins): forward CIFAR's 3->16 @32 2.25x, 16@32
// 1.98x, 32@16 1.70x, 64@8 1.39x, depthwise 96@16 3.46x; batch 4: 64@56 1.12x, 64@14 1.16x,
// 5x5 24->40 @27 1.17x, 256->64 1x1 @56 1.04x; backward-input likewise (3->16 1.96x, 64@56
// 1.15x). At 128 channels the gather form's GEMM is faster: 128@28 0.88x. Strided forwards (on
// the phases): depthwise 96@112/2 1.68x / 1.75x, the 7x7/2 stem 1.13x / 1.26x, 5x5/2 24->40 @27
// 1.27x / 1.11x, 3x3/2 16->32 @32 0.93x / 0.95x.
bool row_conv_shape(const Conv2dParams& p, bool flip) {
  const int64_t out_ch = flip ? p.Cg() : p.Kg();
  const bool stride1 = p.stride_h == 1 && p.stride_w == 1;
  const bool fits = !flip || (stride1 && p.pad_h <= (p.R - 1) * p.dil_h && p.pad_w <= (p.S - 1) * p.dil_w);
  return nchw_planes(p) && fits && out_ch <= 64;
}

void row_conv_pass(const Conv2dParams& p, const double* in, const double* w, const double* bias, double* out,
                   bool flip) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S;
  const int64_t Ci = flip ? Kg : Cg, Ko = flip ? Cg : Kg, J = Ci * R * S, Kop = round_up(Ko, kRowMK);
  // wt[g][j = (ci, r, s)][ko]: forward w[g*Kg + ko][ci][r][s]; backward-input w[g*Kg + ci][ko][R-1-r][S-1-s]
  double* wt = dscratch(5, G * J * Kop);
  for_each_task(G, G * J * Kop, [&](int64_t g) {
    for (int64_t j = 0; j < J; ++j) {
      const int64_t ci = j / (R * S), r = j / S % R, s = j % S;
      double* d = wt + (g * J + j) * Kop;
      for (int64_t ko = 0; ko < Kop; ++ko) {
        if (ko >= Ko) {
          d[ko] = 0.0;
          continue;
        }
        d[ko] = flip ? w[(g * Kg + ci) * p.ws_k + ko * p.ws_c + (R - 1 - r) * p.ws_r + (S - 1 - s) * p.ws_s]
                     : w[(g * Kg + ko) * p.ws_k + ci * p.ws_c + r * p.ws_r + s * p.ws_s];
      }
    }
  });
  RowConv c;
  if (!flip)
    c = {p.N, Cg, p.H, p.W, Kg, G, R, S, p.stride_h, p.stride_w, p.dil_h, p.dil_w, p.pad_h, p.pad_w, p.P, p.Q};
  else
    c = {p.N, Kg, p.P, p.Q, Cg, G, R, S, 1, 1, p.dil_h, p.dil_w, (R - 1) * p.dil_h - p.pad_h,
         (S - 1) * p.dil_w - p.pad_w, p.H, p.W};
  row_conv(c, in, wt, Kop, bias, out);
}

// Strided backward-input by row_conv, NCHW, <= 64 dx channels a group, undilated: dx's stride
// phase (a, b) (rows a + sh*hh, columns b + sw*ww) takes the taps r = r0 + sh*t (r0 = (a + pad_h)
// mod sh) of every column tap likewise, and with e = (a + pad_h - r0) / sh
//     dx[a + sh*hh] = sum over t < T of dy[hh + e - t] * w[r0 + sh*t]
// (per axis): a stride-1 convolution of dy, zero-padded by T - 1 - e, with the sub-filter of those
// taps flipped; each phase by row_conv into a buffer of its planes, then woven into dx (a phase
// without taps is zeros). The gather form ran these, a gather per pixel and tap for as few columns,
// dx stored value by value a stride apart. 2 threads, gather form / this (python benchmarks/ab.py
// OLD.so NEW.so SHAPE --layout nchw --pass backward_input --dtype float64 --rounds 3): CIFAR's
// 16->32 3x3/2 @32 (batch 8) 1.33-1.40x, batch 1 1.25-1.31x, 32->64 @32 1.47x, 5x5/2 24->40 @27
// 1.53x, 32@56 1.25x, 48@28 1.06-1.12x, 64@16 1.09x; 64@56 0.95-0.97x, so 64 channels only on planes
// up to 32x32.
struct PhaseAxis {
  int64_t r0, T, pad, n;  // first tap, taps, dy's padding, dx rows (or columns) of the phase
};
PhaseAxis phase_axis(int64_t a, int64_t stride, int64_t pad, int64_t R, int64_t X) {
  PhaseAxis t;
  t.r0 = (a + pad) % stride;
  t.T = t.r0 < R ? ceil_div(R - t.r0, stride) : 0;
  t.pad = t.T - 1 - (a + pad - t.r0) / stride;
  t.n = X > a ? ceil_div(X - a, stride) : 0;
  return t;
}

bool row_phases_shape(const Conv2dParams& p) {
  if (!nchw_planes(p) || p.Cg() > 64 || (p.Cg() > 32 && p.H * p.W > 32 * 32) || (p.stride_h == 1 && p.stride_w == 1) ||
      p.dil_h != 1 || p.dil_w != 1)
    return false;
  const auto padded = [](int64_t stride, int64_t pad, int64_t R, int64_t X) {  // dy's padding >= 0 in every phase with taps
    for (int64_t a = 0; a < stride; ++a) {
      const PhaseAxis t = phase_axis(a, stride, pad, R, X);
      if (t.T > 0 && t.pad < 0) return false;
    }
    return true;
  };
  return padded(p.stride_h, p.pad_h, p.R, p.H) && padded(p.stride_w, p.pad_w, p.S, p.W);
}

void row_phases_backward_input(const Conv2dParams& p, const double* dy, const double* w, double* dx) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), sh = p.stride_h, sw = p.stride_w, Kop = round_up(Cg, kRowMK);
  const int64_t planes = p.N * G * Cg;
  std::vector<PhaseAxis> ah, aw;
  for (int64_t a = 0; a < sh; ++a) ah.push_back(phase_axis(a, sh, p.pad_h, p.R, p.H));
  for (int64_t b = 0; b < sw; ++b) aw.push_back(phase_axis(b, sw, p.pad_w, p.S, p.W));
  std::vector<int64_t> off(static_cast<size_t>(sh * sw + 1), 0);  // phase (a, b)'s planes in buf
  for (int64_t ph = 0; ph < sh * sw; ++ph) off[ph + 1] = off[ph] + planes * ah[ph / sw].n * aw[ph % sw].n;
  double* buf = dscratch(9, off[sh * sw]);
  // wt of phase ph at woff[ph]: [g][j = (k, u, v)][c] = w[g*Kg + k][c][r0 + sh*(T-1-u)][s0 + sw*(T'-1-v)]
  // (0 past Cg)
  std::vector<int64_t> woff(static_cast<size_t>(sh * sw + 1), 0);
  for (int64_t ph = 0; ph < sh * sw; ++ph) woff[ph + 1] = woff[ph] + G * Kg * ah[ph / sw].T * aw[ph % sw].T * Kop;
  double* wts = dscratch(10, woff[sh * sw]);
  for (int64_t ph = 0; ph < sh * sw; ++ph) {
    const PhaseAxis &th = ah[ph / sw], &tw = aw[ph % sw];
    const int64_t J = Kg * th.T * tw.T;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < J; ++j) {
        const int64_t k = j / (th.T * tw.T), u = j / tw.T % th.T, v = j % tw.T;
        const double* src = w + (g * Kg + k) * p.ws_k + (th.r0 + sh * (th.T - 1 - u)) * p.ws_r +
                            (tw.r0 + sw * (tw.T - 1 - v)) * p.ws_s;
        double* d = wts + woff[ph] + (g * J + j) * Kop;
        for (int64_t c = 0; c < Kop; ++c) d[c] = c < Cg ? src[c * p.ws_c] : 0.0;
      }
  }
  // a task per phase and image (row_conv runs inside it on one thread): a call of row_conv per
  // phase, each a parallel region of its own with its own padded copy of dy, left the threads
  // waiting on each other a fifth of the time (16->32 3x3/2 @32, perf record)
  for_each_task(sh * sw * p.N, p.macs(), [&](int64_t task) {
    const int64_t ph = task / p.N, n = task % p.N;
    const PhaseAxis &th = ah[ph / sw], &tw = aw[ph % sw];
    if (th.T == 0 || tw.T == 0 || th.n == 0 || tw.n == 0) return;  // zeros (woven below)
    const RowConv c = {1, Kg, p.P, p.Q, Cg, G, th.T, tw.T, 1, 1, 1, 1, th.pad, tw.pad, th.n, tw.n};
    row_conv(c, dy + n * p.ys_n, wts + woff[ph], Kop, nullptr, buf + off[ph] + n * G * Cg * th.n * tw.n);
  });
  // dx[plane][a + sh*hh][b + sw*ww] = phase (a, b)'s [plane][hh][ww]
  for_each_task(planes, planes * p.H * p.W, [&](int64_t pl) {
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t a = h % sh, hh = h / sh;
      double* d = dx + (pl * p.H + h) * p.W;
      for (int64_t b = 0; b < sw; ++b) {
        const int64_t ph = a * sw + b, nw = aw[b].n;
        const bool zero = ah[a].T == 0 || aw[b].T == 0;
        const double* s = buf + off[ph] + (pl * ah[a].n + hh) * nw;
        for (int64_t ww = 0; ww < nw; ++ww) d[b + sw * ww] = zero ? 0.0 : s[ww];
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// NCHW 1x1 layers at stride 1 without padding, forward and backward-input, as the GEMM of each
// group on the planes as they lie:
//   forward         Y[k][pix] = bias[k] + sum_c W[k][c] X[c][pix]
//   backward-input  dX[c][pix] = sum_k W[k][c] dY[k][pix]
// The tile's rows are output channels (their filter values broadcast from A, the filter packed
// as [tile of MR outputs][reduction][MR], kept across calls while it is unchanged), its vectors
// pixels: B is KC rows of NR pixels of the input planes, copied into a contiguous panel once per
// task and read by every tile of output channels of the task, and the tile is stored straight into
// the output planes (row stride H*W). The pixels of all the images form one row of panels: a panel
// that runs on from one image into the next (or holds several small planes) is copied and stored
// in runs, one per image, its tile through a small buffer, as a tile past the last pixel or the
// last output channel is. The gather form packed A by gathering the planes' pixels across channels
// and stored C through a transpose. A task is (group, block of pixel panels, block of output
// tiles), each output summed over the reduction in order by one task: the same bits for any
// thread count.
// Where: over 64 output channels a group, or over 16 on planes under 16x16 (row_conv's below
// otherwise). 2 threads, batch 4, gather form / this, per image (python benchmarks/ab.py OLD.so
// NEW.so N,C,H,W,K,1 --layout nchw --pass P --dtype float64, best mins / median of the pairs):
// forward 128->512 @28 1.17 / 1.18x, 256->512 @28 1.11 / 1.09x, 64->256 @56 1.33 / 1.27x;
// backward-input 512->128 @28 1.13 / 1.11x, 64->256 @56 (256 dx channels) 1.34 / 1.34x. Per image
// it lost on small planes (2048->512 @7 0.87x and 0.79x: a 49-pixel plane is 4 panels of 16
// lanes); across the images, with the tasks below (2026-12-07): ResNet-50's 512->1024 @28 stride-2
// shortcut (14x14 planes once its pixels are copied) forward 1.08-1.14x, backward-input
// 1.02-1.13x; 7x7 and 14x14 layers of 256-2048 channels 0.94-1.03x (level); small planes:
// 8,64,8,8->128 1.37x / 1.12x (forward / backward-input), 8,32,8,8->64 1.18x / 1.17x against
// row_conv, 8,64,4,4->32 1.86x / 1.57x, CIFAR's 32->64 1x1/2 shortcut forward 1.13x. row_conv
// against this at 64 output channels: 256->64 @56 forward 0.82x, 64@56 0.84x / 0.83x, 32->64 @16
// 1.07x / 0.92x; at 16 output channels (8,16,8,8) 0.77x.
bool gemm1x1_shape(const Conv2dParams& p, bool transposed) {
  const int64_t outputs = transposed ? p.Cg() : p.Kg();
  return nchw_planes(p) && is_pointwise(p) && (outputs > 64 || (outputs > 16 && p.H * p.W < 16 * 16));
}

void gemm1x1_pass(const Conv2dParams& p, const double* in, const double* w, const double* bias, double* out,
                  bool transposed, const at::Tensor* filter) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, M = p.N * HW;
  const int64_t Ci = transposed ? Kg : Cg, Co = transposed ? Cg : Kg;  // reduction, outputs (a group)
  const Shape ts(M);
  const int MR = ts.mr;
  const int64_t NR = ts.nr, nkt = ceil_div(Co, int64_t(MR)), npan = ceil_div(M, NR);
  // A[g][kt][ci][MR]: the filter value of output kt*MR + i and reduction index ci (0 past Co)
  const PackedB A = packed_b(filter, {210, CONV_EXT_ISA_BITS, G, Kg, Cg, MR, transposed}, G * nkt * Ci * MR,
                             [&](double* dst) {
    for_each_task(G * nkt, G * nkt * Ci * MR, [&](int64_t gk) {
      const int64_t g = gk / nkt, o0 = gk % nkt * MR;
      double* d = dst + gk * Ci * MR;
      // From a KCRS filter: forward (a filter's Ci values consecutive), VL outputs x VL reduction
      // indices by a transpose in registers; backward-input (an index's Co outputs consecutive),
      // a run a row. The rest (channels_last filters, the last indices) value by value, as all
      // went before: 13% of 2048->512 @7's forward samples with a new filter every call (a
      // training step; perf record).
      int64_t ci_vec = 0;
      if (transposed && p.ws_c == 1) {
        ci_vec = Ci;
        const int64_t nk = std::clamp<int64_t>(Co - o0, 0, MR);
        for (int64_t ci = 0; ci < Ci; ++ci) {
          copy_run(w + (g * Kg + ci) * p.ws_k + o0, nk, d + ci * MR);
          std::fill(d + ci * MR + nk, d + (ci + 1) * MR, 0.0);
        }
      }
      if (!transposed && p.ws_c == 1) {
        ci_vec = Ci / D::VL * D::VL;
        for (int64_t kb = 0; kb < MR; kb += D::VL) {
          const int64_t nlane = std::min<int64_t>(D::VL, MR - kb);
          const int64_t nk = std::clamp<int64_t>(Co - o0 - kb, 0, nlane);  // outputs past Co: zeros
          const double* wr = w + (g * Kg + o0 + kb) * p.ws_k;
          const D::M m = D::mask(nlane);
          for (int64_t c0 = 0; c0 < ci_vec; c0 += D::VL)
            transposed_block(
                nk, [&](int t) { return D::load(wr + t * p.ws_k + c0); },
                [&](int i, D::V v) { D::storem(d + (c0 + i) * MR + kb, v, m); });
        }
      }
      for (int64_t ci = ci_vec; ci < Ci; ++ci)
        for (int i = 0; i < MR; ++i) {
          const int64_t o = o0 + i;
          d[ci * MR + i] = o >= Co ? 0.0
                           : transposed ? w[(g * Kg + ci) * p.ws_k + o * p.ws_c]
                                        : w[(g * Kg + o) * p.ws_k + ci * p.ws_c];
        }
    });
  });
  // Tasks: blocks of pixel panels x blocks of output tiles (blocks of even sizes), 4 or more a
  // thread, a whole number a thread. Each block of panels reads all of A (the filter) and each
  // block of tiles copies all of B (the input's pixels): the split that moves the least, a value of
  // B counted as 3 of A (copied from rows of H*W values, lines read in part; A is read as packed),
  // with <= 16 panels a block (B's panels of a reduction block <= 256 KiB, in L2). Per image with 4
  // panels a task, a 2048->512 @7 layer read its 8 MiB filter 13 times a call.
  const int64_t want = 4 * pool_threads();
  int64_t npb = 0, nkb = 0;
  double best = 0;
  for (int64_t nk = 1;; nk = std::min(nkt, 2 * nk)) {
    const int64_t np = std::min(npan, std::max(ceil_div(npan, 16), ceil_div(want, G * nk)));
    const double cost = double(np) * Co + 3.0 * double(nk) * M;
    if (npb == 0 || cost < best) best = cost, npb = np, nkb = nk;
    if (nk == nkt) break;
  }
  const int64_t ppt = ceil_div(npan, npb);
  npb = ceil_div(npan, ppt);
  while (nkb < nkt && G * npb * nkb % pool_threads() != 0) ++nkb;  // a whole number of tasks a thread
  // the order of a block's tiles: panels inner (a tile of A stays in L1 for them, B's panels come
  // from L2) where A's rows of a reduction block take 512 KiB or more, else output tiles inner (a
  // panel of B stays in L1, A from L2)
  const bool a_outer = Co * KC * int64_t(sizeof(double)) >= (512 << 10);
  // A run: the pixels [q, q + len) of image n, at lanes [u, u + len) of a panel
  struct Run {
    int64_t n, q, len, u;
  };
  for_each_task(G * npb * nkb, p.macs(), [&](int64_t task) {
    const int64_t g = task / (npb * nkb), pb = task / nkb % npb, kb = task % nkb;
    const int64_t j0 = npan * pb / npb, j1 = npan * (pb + 1) / npb;
    const int64_t kt0 = nkt * kb / nkb, kt1 = nkt * (kb + 1) / nkb;
    // each panel's runs (a panel of one image: one run); panel j's are runs[first[j - j0], first[j - j0 + 1])
    std::vector<Run> runs;
    int64_t first[17] = {0};
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t m = j * NR, end = std::min(M, m + NR); m < end;) {
        const int64_t n = m / HW, q = m % HW, len = std::min(end - m, HW - q);
        runs.push_back({n, q, len, m - j * NR});
        m += len;
      }
      first[j - j0 + 1] = static_cast<int64_t>(runs.size());
    }
    double* bpan = dscratch(1, (j1 - j0) * KC * NR);
    double edge[24 * 24];  // a tile of several runs, past the last pixel or the last output channel
    for (int64_t c0 = 0; c0 < Ci; c0 += KC) {
      const int64_t kc = std::min(KC, Ci - c0);
      for (int64_t j = j0; j < j1; ++j) {  // B: panel j's pixels of the rows c0 .. c0+kc
        double* b = bpan + (j - j0) * KC * NR;
        const int64_t r0 = first[j - j0], r1 = first[j - j0 + 1];
        if (r1 - r0 == 1) {  // vectors from one plane
          const Run& r = runs[r0];
          const double* row = in + ((r.n * G + g) * Ci + c0) * HW + r.q;
          for (int64_t c = 0; c < kc; ++c, b += NR, row += HW)
            for (int64_t v = 0; v < NR; v += D::VL) D::store(b + v, v < r.len ? D::loadm(row + v, r.len - v) : D::zero());
          continue;
        }
        for (int64_t c = 0; c < kc; ++c, b += NR) {
          for (int64_t v = 0; v < NR; v += D::VL) D::store(b + v, D::zero());
          for (int64_t k = r0; k < r1; ++k) {
            const Run& r = runs[k];
            const double* row = in + ((r.n * G + g) * Ci + c0 + c) * HW + r.q;
            for (int64_t i = 0; i < r.len; ++i) b[r.u + i] = row[i];
          }
        }
      }
      for (int64_t jk = 0; jk < (j1 - j0) * (kt1 - kt0); ++jk) {
        const int64_t j = j0 + (a_outer ? jk % (j1 - j0) : jk / (kt1 - kt0));
        const int64_t kt = kt0 + (a_outer ? jk / (j1 - j0) : jk % (kt1 - kt0));
        const double* b = bpan + (j - j0) * KC * NR;
        const int64_t r0 = first[j - j0], r1 = first[j - j0 + 1];
        const double* a = A.data() + ((g * nkt + kt) * Ci + c0) * MR;
        const int64_t o0 = kt * MR, no = std::min<int64_t>(MR, Co - o0);
        if (r1 - r0 == 1 && runs[r0].len == NR && no == MR) {
          const Run& r = runs[r0];
          ts.tile(kc, a, b, out + ((r.n * G + g) * Co + o0) * HW + r.q, HW, c0 > 0);
          continue;
        }
        ts.tile(kc, a, b, edge, NR, false);
        for (int64_t k = r0; k < r1; ++k) {
          const Run& r = runs[k];
          double* c = out + ((r.n * G + g) * Co + o0) * HW + r.q;
          const double* e = edge + r.u;
          for (int64_t i = 0; i < no; ++i)
            for (int64_t q = 0; q < r.len; ++q) c[i * HW + q] = (c0 > 0 ? c[i * HW + q] : 0.0) + e[i * NR + q];
        }
      }
    }
    if (bias) {
      for (const Run& r : runs)
        for (int64_t o = kt0 * MR; o < std::min(Co, kt1 * MR); ++o) {
          double* row = out + ((r.n * G + g) * Co + o) * HW + r.q;
          const double bv = bias[g * Co + o];
          for (int64_t q = 0; q < r.len; ++q) row[q] += bv;
        }
    }
  });
}

// ------------------------------------------------------------------------------------------
void f64_forward(const Conv2dParams& p, const double* x, const double* w, const double* bias, double* y,
                 const at::Tensor* filter) {
  if (gemm1x1_shape(p, false)) return gemm1x1_pass(p, x, w, bias, y, false, filter);
  if (row_conv_shape(p, false)) return row_conv_pass(p, x, w, bias, y, false);
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), P = p.P, Q = p.Q;
  Taps t;  // l over the filter taps: the x element and its shift from the window's corner
  std::vector<int64_t> wtap;  // the same taps in w
  filter_taps(p, t, wtap);
  const Shape ts(Kg);
  const int64_t NR = ts.nr, L = t.size(), npan = ceil_div(Kg, NR);
  const bool pixels_inner = !channels_inner(p.xs_c, p.xs_w);
  std::vector<int64_t> col(static_cast<size_t>(G * Kg));
  for (int64_t k = 0; k < G * Kg; ++k) col[k] = k * p.ws_k;
  const PackedB B = packed_b(filter, {200, CONV_EXT_ISA_BITS, G, Kg, Cg, p.R, p.S, NR, pixels_inner},
                             G * npan * L * NR, [&](double* dst) {
    for_each_task(G * npan, G * npan * L * NR, [&](int64_t gp) {  // a panel a task
      const int64_t g = gp / npan, j0 = (gp % npan) * NR;
      pack_panel(w, wtap, col.data() + g * Kg + j0, std::min(NR, Kg - j0), NR, dst + gp * L * NR);
    });
  });
  const int64_t M = p.N * P * Q;
  const Blocks bl(ts, M, G, npan);
  for_each_task(G * bl.nib * bl.ncb, p.macs(), [&](int64_t task) {
    const int64_t g = task / (bl.nib * bl.ncb), i0 = (task / bl.ncb % bl.nib) * bl.mc, mr_all = std::min(bl.mc, M - i0);
    const int64_t jp0 = task % bl.ncb * bl.pb, jp1 = std::min(npan, jp0 + bl.pb);
    const int64_t j0 = jp0 * NR, nn = std::min(Kg, jp1 * NR) - j0, ldc = ts.ld(nn);
    Row rows[kMaxRows];
    int64_t yoff[kMaxRows];
    for (int64_t i = 0; i < mr_all; ++i) {
      const int64_t pix = i0 + i, n = pix / (P * Q), pp = (pix / Q) % P, q = pix % Q;
      const int64_t h0 = pp * p.stride_h - p.pad_h, w0 = q * p.stride_w - p.pad_w;
      rows[i] = {n * p.xs_n + g * Cg * p.xs_c + h0 * p.xs_h + w0 * p.xs_w, h0, w0};
      yoff[i] = n * p.ys_n + (g * Kg + j0) * p.ys_k + pp * p.ys_p + q * p.ys_q;
    }
    double* cbuf = dscratch(1, round_up(mr_all, ts.mr) * ldc);
    rows_times_filter(ts, x, p.H, p.W, t, rows, mr_all, pixels_inner, B.data() + g * npan * L * NR, jp0, jp1, ldc,
                      cbuf);
    store_block(cbuf, ldc, yoff, mr_all, nn, p.ys_k, bias ? bias + g * Kg + j0 : nullptr, y);
  });
}

// ------------------------------------------------------------------------------------------
// dx[n, c, h, w] = sum over (k, r, s) with h = p*sh - ph + r*dh, w = q*sw - pw + s*dw of
// dy[n, k, p, q] * w[k, c, r, s]. For the dx pixels h = a + sh*hh, w = b + sw*ww of phase (a, b)
// the taps that land are the r with (a + ph - r*dh) divisible by sh (then p = hh + (a + ph -
// r*dh)/sh), and likewise s: a gather from dy like forward's, shifted by those quotients.
// Backward-input with few dx channels (Cg below a vector, Kg at least one: the RGB stems): the
// gather form above would fill Cg of a tile's columns and gather Kg*taps values per dx pixel for
// Cg*Kg*taps multiply-adds. Instead col2im: per dy pixel, C[pixel][j = (c, r, s)] = sum_k dy[k] *
// w[k][j] (dy read as it lies), then each value added into the dx pixel its tap lands on. A task is
// an image and group and adds in pixel order: the same bits for any thread count.
void f64_backward_input_col2im(const Conv2dParams& p, const double* dy, const double* w, double* dx) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  const int64_t J = Cg * R * S;
  const Shape ts(J);
  const int64_t NR = ts.nr, MC = ts.rows_per_task(), npan = ceil_div(J, NR), ldc = ts.ld(J);
  Taps t;  // the reduction runs over k: no shifts, every tap present
  std::vector<int64_t> wk(static_cast<size_t>(Kg));
  for (int64_t k = 0; k < Kg; ++k) t.add(0, 0, k * p.ys_k), wk[k] = k * p.ws_k;
  t.finish();
  std::vector<int64_t> jh(J), jw(J), jx(J);  // tap j = (c, r, s): its dx shift and offset
  std::vector<double> B(static_cast<size_t>(G * npan * Kg * NR));
  for (int64_t g = 0; g < G; ++g) {
    std::vector<int64_t> col(static_cast<size_t>(J));
    for (int64_t c = 0, j = 0; c < Cg; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s, ++j) {
          col[j] = g * Kg * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s;
          jh[j] = r * p.dil_h, jw[j] = s * p.dil_w, jx[j] = c * p.xs_c + r * p.dil_h * p.xs_h + s * p.dil_w * p.xs_w;
        }
    pack_filter(w, wk, col, NR, B.data() + g * npan * Kg * NR);
  }
  const bool pixels_inner = !channels_inner(p.ys_k, p.ys_q);
  for_each_task(p.N * G, p.macs(), [&](int64_t task) {
    const int64_t n = task / G, g = task % G;
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t ww = 0; ww < p.W; ++ww) dx[n * p.xs_n + (g * Cg + c) * p.xs_c + h * p.xs_h + ww * p.xs_w] = 0.0;
    double* cbuf = dscratch(1, round_up(MC, ts.mr) * ldc);
    Row rows[kMaxRows];
    for (int64_t i0 = 0; i0 < P * Q; i0 += MC) {
      const int64_t m = std::min(MC, P * Q - i0);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t pp = (i0 + i) / Q, q = (i0 + i) % Q;
        rows[i] = {n * p.ys_n + g * Kg * p.ys_k + pp * p.ys_p + q * p.ys_q, pp, q};
      }
      rows_times_filter(ts, dy, P, Q, t, rows, m, pixels_inner, B.data() + g * npan * Kg * NR, 0, npan, ldc, cbuf);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t h0 = rows[i].h0 * p.stride_h - p.pad_h, w0 = rows[i].w0 * p.stride_w - p.pad_w;
        const int64_t xo = n * p.xs_n + g * Cg * p.xs_c + h0 * p.xs_h + w0 * p.xs_w;  // the window's corner
        const double* c = cbuf + i * ldc;
        for (int64_t j = 0; j < J; ++j) {
          const int64_t h = h0 + jh[j], ww = w0 + jw[j];
          if (h >= 0 && h < p.H && ww >= 0 && ww < p.W) dx[xo + jx[j]] += c[j];
        }
      }
    }
  });
}

void f64_backward_input(const Conv2dParams& p, const double* dy, const double* w, double* dx,
                        const at::Tensor* filter) {
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q;
  if (gemm1x1_shape(p, true)) return gemm1x1_pass(p, dy, w, nullptr, dx, true, filter);
  if (row_conv_shape(p, true)) return row_conv_pass(p, dy, w, nullptr, dx, true);
  if (Cg < D::VL && Kg >= D::VL) return f64_backward_input_col2im(p, dy, w, dx);
  if (row_phases_shape(p)) return row_phases_backward_input(p, dy, w, dx);
  const int64_t sh = p.stride_h, sw = p.stride_w, nph = sh * sw;
  const bool kin = channels_inner(p.ys_k, p.ys_q);
  const Shape ts(Cg);
  const int64_t NR = ts.nr, npan = ceil_div(Cg, NR);
  std::vector<Taps> taps(static_cast<size_t>(nph));
  std::vector<std::vector<int64_t>> wtaps(static_cast<size_t>(nph));
  std::vector<int64_t> nh(nph), nw(nph), boff(nph + 1, 0), first(nph + 1, 0);
  std::vector<Blocks> bl;
  for (int64_t ph = 0; ph < nph; ++ph) {
    const int64_t a = ph / sw, b = ph % sw;
    nh[ph] = a < p.H ? ceil_div(p.H - a, sh) : 0, nw[ph] = b < p.W ? ceil_div(p.W - b, sw) : 0;
    std::vector<int64_t> rs, ss;  // the taps of this phase and their quotients
    for (int64_t r = 0; r < R; ++r)
      if (floor_mod(a + p.pad_h - r * p.dil_h, sh) == 0) rs.push_back(r);
    for (int64_t s = 0; s < S; ++s)
      if (floor_mod(b + p.pad_w - s * p.dil_w, sw) == 0) ss.push_back(s);
    Taps& t = taps[ph];
    std::vector<int64_t>& wtap = wtaps[ph];
    auto tap = [&](int64_t k, int64_t r, int64_t s) {
      const int64_t tp = (a + p.pad_h - r * p.dil_h) / sh, tq = (b + p.pad_w - s * p.dil_w) / sw;  // exact
      t.add(tp, tq, k * p.ys_k + tp * p.ys_p + tq * p.ys_q);
      wtap.push_back(k * p.ws_k + r * p.ws_r + s * p.ws_s);
    };
    if (kin) {
      for (int64_t r : rs)
        for (int64_t s : ss)
          for (int64_t k = 0; k < Kg; ++k) tap(k, r, s);
    } else {
      for (int64_t k = 0; k < Kg; ++k)
        for (int64_t r : rs)
          for (int64_t s : ss) tap(k, r, s);
    }
    t.finish();
    boff[ph + 1] = boff[ph] + G * npan * t.size() * NR;  // B of phase ph: [g][panel][L][NR]
    bl.emplace_back(ts, p.N * nh[ph] * nw[ph], G, npan);
    first[ph + 1] = first[ph] + G * bl[ph].nib * bl[ph].ncb;
  }
  std::vector<int64_t> col(static_cast<size_t>(G * Cg));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t c = 0; c < Cg; ++c) col[g * Cg + c] = g * Kg * p.ws_k + c * p.ws_c;
  const PackedB B = packed_b(filter, {201, CONV_EXT_ISA_BITS, G, Kg, Cg, R, S, NR, kin, sh, sw, p.pad_h, p.pad_w,
                                      p.dil_h, p.dil_w}, boff[nph], [&](double* dst) {
    for_each_task(nph * G * npan, boff[nph], [&](int64_t task) {  // a panel a task
      const int64_t ph = task / (G * npan), g = task / npan % G, j0 = task % npan * NR, L = taps[ph].size();
      pack_panel(w, wtaps[ph], col.data() + g * Cg + j0, std::min(NR, Cg - j0), NR,
                 dst + boff[ph] + (g * npan + j0 / NR) * L * NR);
    });
  });
  for_each_task(first[nph], p.macs(), [&](int64_t task) {
    int64_t ph = 0;
    while (task >= first[ph + 1]) ++ph;
    const Blocks& b = bl[ph];
    const int64_t pa = ph / sw, pb = ph % sw, hw = nh[ph] * nw[ph], M = p.N * hw, L = taps[ph].size();
    const int64_t tk = task - first[ph], g = tk / (b.nib * b.ncb), i0 = (tk / b.ncb % b.nib) * b.mc;
    const int64_t mr_all = std::min(b.mc, M - i0);
    const int64_t jp0 = tk % b.ncb * b.pb, jp1 = std::min(npan, jp0 + b.pb);
    const int64_t j0 = jp0 * NR, nn = std::min(Cg, jp1 * NR) - j0, ldc = ts.ld(nn);
    Row rows[kMaxRows];
    int64_t xoff[kMaxRows];
    for (int64_t i = 0; i < mr_all; ++i) {
      const int64_t pix = i0 + i, n = pix / hw, hh = (pix / nw[ph]) % nh[ph], ww = pix % nw[ph];
      rows[i] = {n * p.ys_n + g * Kg * p.ys_k + hh * p.ys_p + ww * p.ys_q, hh, ww};
      xoff[i] = n * p.xs_n + (g * Cg + j0) * p.xs_c + (pa + sh * hh) * p.xs_h + (pb + sw * ww) * p.xs_w;
    }
    double* cbuf = dscratch(1, round_up(mr_all, ts.mr) * ldc);
    rows_times_filter(ts, dy, P, Q, taps[ph], rows, mr_all, !kin, B.data() + boff[ph] + g * npan * L * NR, jp0, jp1,
                      ldc, cbuf);
    store_block(cbuf, ldc, xoff, mr_all, nn, p.xs_c, nullptr, dx);
  });
}

// ------------------------------------------------------------------------------------------
// NCHW backward-weight by dot products along rows: with j = (c, r, s),
//     dw[k][j] = sum over n and output rows p of  dy[n, k, p, 0..Q) . xp[n, c, p*sh + r*dh, s*dw + sw*(0..Q)]
// where xp is x zero-padded by (pad_h, pad_w), read on its stride phases (Phased: a copy, so that
// every row is whole and contiguous; a 1x1 layer at stride 1 without padding reads x itself, a
// plane as one row). Both operands are read as they lie, the
// pixels in the vector lanes: nothing is transposed or packed. The gather form (below) packed
// dy and the gathered x into panels for every block of pixels -- transposes of NCHW planes, as
// long as the multiply-adds on a 1x1 layer (perf record: 128->512 1x1 @28, batch 4, 47% of the
// samples in the packing, 53% in f64_tile).
//
// A tile is MK filters x NJ taps (AVX-512: 4 x 6 = 24 vectors of sums), run over a block of rows
// of about kRowPixels pixels (its 10 rows stay in L1); a task is a block of filters x a block of
// taps of one group (their rows, kRowPixels wide, in L2) over a fixed chunk of the rows, its
// tiles' sums kept in a buffer between blocks of rows. Each sum runs lane by lane in row order and
// is added across lanes once at the end (chunks in order, as the gather form): the same bits for
// any thread count.
// dw[k][wout[j]] = part[chunk 0][k][j] + part[chunk 1][k][j] + ... (in chunk order)
void sum_chunks(const Conv2dParams& p, const std::vector<double>& part, int64_t nchunk, int64_t J,
                const std::vector<int64_t>& wout, double* dwt) {
  for_each_task(p.K, p.K * J * nchunk, [&](int64_t k) {
    double* wo = dwt + k * p.ws_k;
    for (int64_t j = 0; j < J; ++j) {
      double sum = part[k * J + j];
      for (int64_t ch = 1; ch < nchunk; ++ch) sum += part[(ch * p.K + k) * J + j];
      wo[wout[j]] = sum;
    }
  });
}

// NCHW 1x1 layers at stride 1 with few input channels (Cg <= 128) and at least twice as many
// filters, whose dy and x outgrow the two cores' L2 (4 MiB): the gather form with dy read in
// place and each task's filters against all the taps at once (f64_backward_weight), so that dy,
// the larger operand, is read once. The dot products below read each row of a tile from L2 or
// beyond again for every tile: 2 threads, batch 4, old/new (python benchmarks/ab.py OLD.so NEW.so
// SHAPE --pass backward_weight --dtype float64 --layout nchw --rounds 3): 128->512 @28 1.31x,
// 128->256 @28 1.16-1.21x, 64->256 @56 1.18x, 64->128 @56 0.97-1.04x; on CIFAR's 32->64 @16 and
// 64->128 @8 (batch 8, 1.5 and 0.8 MiB) the dot products stay ahead (0.82-0.91x).
bool bw_whole_rows(const Conv2dParams& p) {
  const int64_t J = p.Cg(), Kg = p.Kg(), L = p.N * p.P * p.Q;
  return is_pointwise(p) && nchw_planes(p) && J <= 128 && Kg >= 2 * J &&
         L * (J + Kg) * int64_t(sizeof(double)) > (int64_t(4) << 20);
}

bool bw_rows_shape(const Conv2dParams& p) {
  // Where the gather form's packing is a small share (1/Kg + 1/J of the multiply-adds, Kg filters
  // and J taps) its GEMM is faster: with 1/Kg + 1/J under 1/128, batch 4, 2 threads, old/new
  // (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass backward_weight --dtype float64): 3x3
  // 256@14 0.72x, 512@7 0.48x, 1x1 2048->512 @7 0.60x, 1024->256 @14 0.98x. Above it: 1x1 128->512
  // @28 1.30x, 256->64 @56 2.10x, 3x3 64@56 1.51x, 128@28 0.98x; batch 8: CIFAR's 3->16 @32 2.94x,
  // 16@32 2.96x, 32@16 1.56x, 64@8 1.15x, depthwise 96@16 8.5x; 5x5 24->40 @27 1.35x.
  // Strided, on the input's phases (a copy): 1/Kg + 1/J from 1/64 (3x3/2 128@56, 1/1152 + 1/128,
  // ran 0.86-0.93x; the 7x7/2 stem 1.89x / 2.08x, 5x5/2 24->40 @27 1.36x, depthwise 96@112/2 3.4x).
  const int64_t J = p.Cg() * p.R * p.S, Kg = p.Kg();
  const int64_t share = p.stride_h == 1 && p.stride_w == 1 ? 128 : 64;
  return nchw_planes(p) && J * Kg <= share * (J + Kg) && !bw_whole_rows(p);
}

// acc[m][j] += sum over the rows u < nrows of dy[dyr[u] + koff[m] + q] * x[xr[u] + joff[j] + q], q < len
template <int MK, int NJ>
void dot_tile(const double* dy, const int64_t* dyr, const int64_t* koff, const double* x, const int64_t* xr,
              const int64_t* joff, int64_t nrows, int64_t len, D::V* acc) {
  D::V a[MK][NJ];
#pragma GCC unroll 4
  for (int m = 0; m < MK; ++m)
#pragma GCC unroll 6
    for (int j = 0; j < NJ; ++j) a[m][j] = acc[m * NJ + j];
  const int64_t full = len / D::VL * D::VL;
  for (int64_t u = 0; u < nrows; ++u) {
    const double* dp[MK];
    const double* xp[NJ];
#pragma GCC unroll 4
    for (int m = 0; m < MK; ++m) dp[m] = dy + dyr[u] + koff[m];
#pragma GCC unroll 6
    for (int j = 0; j < NJ; ++j) xp[j] = x + xr[u] + joff[j];
    const auto step = [&](int64_t q, int64_t n) {  // n < VL: the row's last, partial vector
      D::V d[MK];
#pragma GCC unroll 4
      for (int m = 0; m < MK; ++m) d[m] = n < D::VL ? D::loadm(dp[m] + q, n) : D::load(dp[m] + q);
#pragma GCC unroll 6
      for (int j = 0; j < NJ; ++j) {
        const D::V xv = n < D::VL ? D::loadm(xp[j] + q, n) : D::load(xp[j] + q);
#pragma GCC unroll 4
        for (int m = 0; m < MK; ++m) a[m][j] = D::fma(d[m], xv, a[m][j]);
      }
    };
    for (int64_t q = 0; q < full; q += D::VL) step(q, D::VL);
    if (full < len) step(full, len - full);
  }
#pragma GCC unroll 4
  for (int m = 0; m < MK; ++m)
#pragma GCC unroll 6
    for (int j = 0; j < NJ; ++j) acc[m * NJ + j] = a[m][j];
}

void f64_backward_weight_rows(const Conv2dParams& p, const double* dy, const double* x, double* dwt) {
  constexpr int MK = D::MK, NJ = D::NJ;
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), R = p.R, S = p.S, P = p.P, Q = p.Q, N = p.N;
  const int64_t J = Cg * R * S, ph = p.pad_h, pw = p.pad_w;
  const bool one_run = is_pointwise(p);  // P == H, Q == W
  // rows: a unit is an output row (Q pixels), or for one_run a piece of a plane (kRowPixels)
  const int64_t upn = one_run ? ceil_div(P * Q, kRowPixels) : P;  // units an image
  const int64_t ub = std::max<int64_t>(1, kRowPixels / (one_run ? std::min(P * Q, kRowPixels) : Q));  // units a block
  Phased phs;
  const double* xs = one_run ? x
                             : phase_planes(x, N * p.C, p.H, p.W, ph, pw, p.stride_h, p.stride_w, P, Q,
                                            (R - 1) * p.dil_h, (S - 1) * p.dil_w, phs);
  std::vector<int64_t> koff(static_cast<size_t>(round_up(Kg, MK))), joff(static_cast<size_t>(round_up(J, NJ)));
  for (int64_t k = 0; k < static_cast<int64_t>(koff.size()); ++k)
    koff[k] = std::min(k, Kg - 1) * P * Q;  // past Kg: the last again (computed, not stored)
  std::vector<int64_t> wout(static_cast<size_t>(J));  // where dw[., j] goes
  for (int64_t j = 0; j < static_cast<int64_t>(joff.size()); ++j) {
    const int64_t jj = std::min(j, J - 1), c = jj / (R * S), r = jj / S % R, s = jj % S;
    joff[j] = one_run ? c * P * Q : phs.tap(c, r * p.dil_h, s * p.dil_w);
    wout[jj] = c * p.ws_c + r * p.ws_r + s * p.ws_s;
  }
  const int64_t KB = 8 * MK, JB = 8 * NJ;  // filters and taps a task
  const int64_t nkb = ceil_div(Kg, KB), njb = ceil_div(J, JB), units = N * upn;
  // chunks of the rows, summed at the end: enough for 16 tasks, each of 4096 pixels or more (a
  // chunk ends in a sum across the lanes and a store per filter and tap: ~10 cycles, against
  // pixels / 16 a vector of sums takes; CIFAR's 32->64 1x1 shortcut, 512 pixels, was 8 chunks:
  // 2.2x slower), their partial sums 32 MiB at most
  const int64_t nchunk = std::max<int64_t>(1, std::min({ceil_div(16, G * nkb * njb), units,
                                                        (int64_t(4) << 20) / std::max<int64_t>(1, p.K * J),
                                                        N * P * Q / 4096}));
  std::vector<double> part(nchunk > 1 ? static_cast<size_t>(nchunk * p.K * J) : 0);
  for_each_task(nchunk * G * nkb * njb, p.macs(), [&](int64_t task) {
    const int64_t chunk = task / (G * nkb * njb), g = task / (nkb * njb) % G;
    const int64_t k0 = task / njb % nkb * KB, j0 = task % njb * JB;
    const int64_t nk = std::min(KB, Kg - k0), nj = std::min(JB, J - j0);
    const int64_t ntk = ceil_div(nk, MK), ntj = ceil_div(nj, NJ);
    const int64_t ua = units * chunk / nchunk, uz = units * (chunk + 1) / nchunk;
    D::V* acc = reinterpret_cast<D::V*>(dscratch(0, ntk * ntj * MK * NJ * D::VL));  // (64-byte aligned)
    for (int64_t i = 0; i < ntk * ntj * MK * NJ; ++i) acc[i] = D::zero();
    int64_t dyr[kRowPixels], xr[kRowPixels];
    for (int64_t u0 = ua; u0 < uz; u0 += ub) {
      const int64_t nu = std::min(ub, uz - u0);
      int64_t len = Q;
      for (int64_t i = 0; i < nu; ++i) {
        const int64_t n = (u0 + i) / upn, r = (u0 + i) % upn;
        if (one_run) {
          dyr[i] = (n * p.K + g * Kg) * P * Q + r * kRowPixels;
          xr[i] = (n * p.C + g * Cg) * P * Q + r * kRowPixels;
          len = std::min(kRowPixels, P * Q - r * kRowPixels);
        } else {
          dyr[i] = ((n * p.K + g * Kg) * P + r) * Q;
          xr[i] = (n * p.C + g * Cg) * phs.per_channel() + r * phs.Wh;
        }
      }
      for (int64_t tk = 0; tk < ntk; ++tk)
        for (int64_t tj = 0; tj < ntj; ++tj)
          dot_tile<MK, NJ>(dy, dyr, koff.data() + k0 + tk * MK, xs, xr, joff.data() + j0 + tj * NJ, nu, len,
                           acc + (tk * ntj + tj) * MK * NJ);
    }
    for (int64_t tk = 0; tk < ntk; ++tk)
      for (int64_t tj = 0; tj < ntj; ++tj)
        for (int m = 0; m < MK; ++m)
          for (int j = 0; j < NJ; ++j) {
            const int64_t k = k0 + tk * MK + m, jj = j0 + tj * NJ + j;
            if (k >= k0 + nk || jj >= j0 + nj) continue;
            const double v = uz > ua ? D::sum(acc[(tk * ntj + tj) * MK * NJ + m * NJ + j]) : 0.0;
            if (nchunk > 1) part[(chunk * p.K + g * Kg + k) * J + jj] = v;
            else dwt[(g * Kg + k) * p.ws_k + wout[jj]] = v;
          }
  });
  if (nchunk > 1) sum_chunks(p, part, nchunk, J, wout, dwt);
}

// ------------------------------------------------------------------------------------------
// dw[k, j] = sum over pixels l = (n, p, q) of dy[n, k, p, q] * x-gather[l][j], j = taps (c, r, s).
// A task is a block of NC taps and of row tiles (filters) of one group and runs the whole
// reduction: A (dy, Kg x KC) and B (gathered x, KC x NC) packed a block of pixels at a time.
void f64_backward_weight(const Conv2dParams& p, const double* dy, const double* x, double* dwt) {
  if (bw_rows_shape(p)) return f64_backward_weight_rows(p, dy, x, dwt);
  const int64_t G = p.groups, Cg = p.Cg(), Kg = p.Kg(), P = p.P, Q = p.Q;
  Taps t;  // j over the filter taps, as x offsets and shifts
  std::vector<int64_t> wout;  // where dw[., j] goes
  filter_taps(p, t, wout);
  const Shape ts(t.size());
  const bool whole = bw_whole_rows(p);  // all the taps a task (its note)
  const int64_t MR = ts.mr, NR = ts.nr, NC = whole ? round_up(t.size(), NR) : 4 * NR;
  const int64_t J = t.size(), njb = ceil_div(J, NC), L = p.N * P * Q, nir = ceil_div(Kg, MR);
  const bool pixels_inner = !channels_inner(p.xs_c, p.xs_w);
  const int64_t apix = nir * MR, bpix = ceil_div(J, NR) * NR;  // packed doubles a pixel: A's, B's
  // Where the groups and tap blocks alone make fewer than 16 tasks, the filters are cut into
  // blocks of row tiles (4 or more tiles a block), each task then running the whole reduction for
  // its rows, with x gathered once for all of them (B, packed up front: a 1x1 layer at stride 1
  // without padding, where the gather is x itself, with at most 8M values). What is still short of
  // 16 tasks cuts the pixels into a fixed number of chunks (a function of the shape only: the same
  // bits for any thread count); each chunk's sums go to its own buffer, added in chunk order at
  // the end. Row blocks instead of chunks (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass
  // backward_weight --dtype float64 --layout L, batch 4, 2 threads, old/new NCHW / channels_last):
  // 512->1024 @14 (the stride-2 shortcut's, after its copy) 1.16x / 1.21x; at 128->512 @28 (7
  // chunks; 3136 pixels) they ran 0.91x channels_last, so the rule below keeps chunks there.
  const auto chunks = [&](int64_t tasks) {
    return std::max<int64_t>(1, std::min({ceil_div(16, tasks), ceil_div(L, 4 * KC),
                                          (int64_t(4) << 20) / std::max<int64_t>(1, p.K * J)}));
  };
  // Row blocks where the chunks' sums (nchunk K J values written and read again) would move more
  // than x's packed panels (L J, written and read again) twice over.
  const bool fits = G * L * std::max(apix, bpix) <= (int64_t(8) << 20);  // (and so both are packed up front)
  // (bw_whole_rows: 4 blocks of rows a group and chunks, which read x's panels 4 times; 16 blocks
  // and no chunks (a 3.7 MiB buffer of sums less) read them 10 times: 1.27x -> 0.97x at 128->512 @28)
  const int64_t nrb = is_pointwise(p) && fits && (whole || chunks(G * njb) * Kg > 2 * L)
                          ? std::max<int64_t>(1, std::min(ceil_div(whole ? 4 : 16, G * njb), nir / 4))
                          : 1;
  const int64_t irb = ceil_div(nir, nrb);  // row tiles a block
  const int64_t nchunk = chunks(G * njb * nrb);
  std::vector<double> part(nchunk > 1 ? static_cast<size_t>(nchunk * p.K * J) : 0);
  // pixels l0.. of group g: their rows of x (rows, if not null) and offsets in dy
  const auto pixels = [&](int64_t g, int64_t l0, int64_t kc, Row* rows, int64_t* dyoff) {
    int64_t n = l0 / (P * Q), pp = l0 / Q % P, q = l0 % Q;  // (divisions once: 15% of depthwise 576@14/2's time)
    for (int64_t l = 0; l < kc; ++l) {
      const int64_t h0 = pp * p.stride_h - p.pad_h, w0 = q * p.stride_w - p.pad_w;
      if (rows) rows[l] = {n * p.xs_n + g * Cg * p.xs_c + h0 * p.xs_h + w0 * p.xs_w, h0, w0};
      dyoff[l] = n * p.ys_n + g * Kg * p.ys_k + pp * p.ys_p + q * p.ys_q;
      if (++q == Q) q = 0, pp = pp + 1 == P ? (++n, 0) : pp + 1;
    }
  };
  // A[ir][l][MR] = dy[k = ir*MR + i][pixel l] (at dyoff[l]), l < kc. Channels innermost (NHWC)
  // and Kg >= VL/2, a pixel's Kg values are a run, read whole pixel by pixel (before: MR values of
  // each pixel in turn, 4 KiB apart at 512 filters, through a memmove call; 128->512 1x1 @28
  // channels_last 1.12x / 1.22x with vectors so); else (NCHW, or few filters: depthwise) value by
  // value along each filter's pixels.
  const auto pack_dy = [&](const int64_t* dyoff, int64_t kc, double* A) {
    const bool runs = p.ys_k == 1 && Kg >= D::VL / 2;
    for (int64_t l = 0; l < kc && runs; ++l)
      for (int64_t ir = 0; ir < nir; ++ir) {
        const int64_t nk = std::min<int64_t>(MR, Kg - ir * MR);
        double* d = A + (ir * kc + l) * MR;
        copy_run(dy + dyoff[l] + ir * MR, nk, d);
        std::fill(d + nk, d + MR, 0.0);
      }
    // Else VL filters x VL pixels at consecutive addresses (NCHW) by a VL x VL transpose, other
    // pixels value by value, as all went before: NCHW 512->2048 1x1 @7 1.02-1.03x, 128->512 @28
    // in this form (forced; the dot products below run it) 1.08-1.12x, where the pack is then
    // bound by reading dy from memory (12.8 MB; the dot products read it in place).
    for (int64_t ir = 0; ir < nir && !runs; ++ir)
      for (int64_t kb = 0; kb < MR; kb += D::VL) {
        const int64_t k0 = ir * MR + kb, nlane = std::min<int64_t>(D::VL, MR - kb);
        const int64_t nk = std::clamp<int64_t>(Kg - k0, 0, nlane);  // filters past Kg: zeros
        const D::M m = D::mask(nlane);
        for (int64_t l0 = 0; l0 < kc; l0 += D::VL) {
          double* d = A + (ir * kc + l0) * MR + kb;
          bool block = l0 + D::VL <= kc;
          for (int i = 1; i < D::VL && block; ++i) block = dyoff[l0 + i] == dyoff[l0] + i;
          if (block) {
            transposed_block(
                nk, [&](int t) { return D::load(dy + dyoff[l0] + (k0 + t) * p.ys_k); },
                [&](int i, D::V v) { D::storem(d + i * MR, v, m); });
            continue;
          }
          for (int64_t l = l0; l < std::min(kc, l0 + D::VL); ++l)
            for (int64_t t = 0; t < nlane; ++t) d[(l - l0) * MR + t] = t < nk ? dy[dyoff[l] + (k0 + t) * p.ys_k] : 0.0;
        }
      }
  };
  // With several blocks of taps or of rows (tasks) a group, dy is packed once, up front, a block
  // of pixels (the chunks' blocks of KC) a task, at (g * L + l0) * nir * MR (at most 8M doubles);
  // each task packed all of it before: channels_last 128->512 1x1 @28 (2 blocks of taps) 1.05x,
  // 2048->512 @7 (32) 1.20x / 1.24x; NCHW 512@7 1.19x, 2048->512 @7 1.20-1.31x (batch 4, 2
  // threads).
  // B[jp][l][NR] for the pixels l0 <= l < l0 + kc of group g, panels j0 / NR <= jp < (j0 + nc) / NR
  const auto pack_x = [&](int64_t g, int64_t l0, int64_t kc, const Row* rows, int64_t j0, int64_t nc, double* B) {
    for (int64_t jp = 0; jp < ceil_div(nc, NR); ++jp) {  // B[jp][l][NR]: x gathered, pixels l x taps j
      double* d = B + jp * kc * NR;
      const int64_t nj = std::min<int64_t>(NR, nc - jp * NR);
      gather_block(x, rows, kc, t, j0 + jp * NR, nj, p.H, p.W, pixels_inner, d, NR, 1);
      if (nj < NR)
        for (int64_t l = 0; l < kc; ++l) std::fill(d + l * NR + nj, d + (l + 1) * NR, 0.0);
    }
  };
  // dy's pixels consecutive (NCHW planes): A read in place by row pointers (a filter's run of
  // pixels in one plane a piece, as rows_times_filter's channels_last A), not packed.
  const bool dy_rows = p.ys_q == 1 && p.ys_p == Q && P * Q >= 16;
  const bool prepack = !dy_rows && (njb > 1 || nrb > 1) && G * L * apix <= (int64_t(8) << 20), prepack_x = nrb > 1;
  double* Aall = prepack ? dscratch(7, G * L * apix) : nullptr;
  double* Ball = prepack_x ? dscratch(6, G * L * bpix) : nullptr;
  if (prepack || prepack_x) {
    std::vector<int64_t> blk;  // the blocks' first pixels, chunk by chunk
    for (int64_t chunk = 0; chunk < nchunk; ++chunk)
      for (int64_t l0 = L * chunk / nchunk; l0 < L * (chunk + 1) / nchunk; l0 += KC) blk.push_back(l0);
    const int64_t nblk = static_cast<int64_t>(blk.size());
    blk.push_back(L);
    for_each_task(G * nblk, G * L * (apix + (prepack_x ? bpix : 0)), [&](int64_t task) {
      const int64_t g = task / nblk, b = task % nblk, l0 = blk[b];  // (the next block: KC on or the next chunk)
      const int64_t kc = std::min(KC, blk[b + 1] - l0);
      Row rows[KC];
      int64_t dyoff[KC];
      pixels(g, l0, kc, prepack_x ? rows : nullptr, dyoff);
      if (prepack) pack_dy(dyoff, kc, Aall + (g * L + l0) * apix);
      if (prepack_x) pack_x(g, l0, kc, rows, 0, J, Ball + (g * L + l0) * bpix);
    });
  }
  for_each_task(nchunk * G * nrb * njb, p.macs(), [&](int64_t task) {
    const int64_t chunk = task / (G * nrb * njb), g = task / (nrb * njb) % G, j0 = (task % njb) * NC;
    const int64_t ir0 = task / njb % nrb * irb, ir1 = std::min(nir, ir0 + irb);  // the task's row tiles
    const int64_t nc = std::min(NC, J - j0), npan = ceil_div(nc, NR), ldc = ts.ld(nc);
    const int64_t la = L * chunk / nchunk, lb = L * (chunk + 1) / nchunk;
    double* cbuf = dscratch(1, (ir1 - ir0) * MR * ldc);
    double* Abuf = prepack ? nullptr : dscratch(0, nir * MR * KC);
    double* Bbuf = prepack_x ? nullptr : dscratch(2, npan * KC * NR);
    for (int64_t l0 = la; l0 < lb; l0 += KC) {
      const int64_t kc = std::min(KC, lb - l0);
      Row rows[KC];
      int64_t dyoff[KC];
      if (!prepack_x || dy_rows) pixels(g, l0, kc, prepack_x ? nullptr : rows, dyoff);  // (x packed up front)
      if (!prepack_x) pack_x(g, l0, kc, rows, j0, nc, Bbuf);
      const double* B = prepack_x ? Ball + (g * L + l0) * bpix + j0 * kc : Bbuf;  // (panel j0 / NR of the block)
      if (dy_rows) {  // A in place: pieces of consecutive pixels, 8 or more a piece on average
        int64_t start[KC], len[KC];
        int npiece = 0;
        for (int64_t l = 0; l < kc; ++l)
          if (l == 0 || dyoff[l] != dyoff[l - 1] + 1) start[npiece] = l, len[npiece++] = 1;
          else ++len[npiece - 1];
        if (npiece * 8 <= kc) {
          const int mrp = ts.mrp();
          const double** ptr = reinterpret_cast<const double**>(dscratch(8, (ir1 - ir0) * MR * npiece));
          for (int64_t ir = ir0; ir < ir1; ++ir)  // [ir][half][piece][row]
            for (int64_t i = 0; i < MR; ++i) {
              const int64_t k = ir * MR + i;
              const double** d = ptr + ((ir - ir0) * MR + i / mrp * mrp) * npiece + i % mrp;
              for (int u = 0; u < npiece; ++u, d += mrp) *d = k < Kg ? dy + dyoff[start[u]] + k * p.ys_k : kZeros;
            }
          for (int64_t jp = 0; jp < npan; ++jp)
            for (int64_t ir = ir0; ir < ir1; ++ir)
              ts.tile_rows(npiece, len, ptr + (ir - ir0) * MR * npiece, B + jp * kc * NR,
                           cbuf + (ir - ir0) * MR * ldc + jp * NR, ldc, l0 > la);
          continue;
        }
      }
      const double* A = prepack ? Aall + (g * L + l0) * apix : Abuf;
      if (!prepack) pack_dy(dyoff, kc, Abuf);
      for (int64_t jp = 0; jp < npan; ++jp)
        for (int64_t ir = ir0; ir < ir1; ++ir)
          ts.tile(kc, A + ir * kc * MR, B + jp * kc * NR, cbuf + (ir - ir0) * MR * ldc + jp * NR, ldc, l0 > la);
    }
    const bool empty = lb <= la;  // no pixels: a zero gradient
    for (int64_t k = ir0 * MR; k < std::min(Kg, ir1 * MR); ++k) {
      const double* c = cbuf + (k - ir0 * MR) * ldc;
      if (nchunk > 1) {
        double* o = part.data() + (chunk * p.K + g * Kg + k) * J + j0;
        for (int64_t jj = 0; jj < nc; ++jj) o[jj] = empty ? 0.0 : c[jj];
        continue;
      }
      double* wo = dwt + (g * Kg + k) * p.ws_k;
      for (int64_t jj = 0; jj < nc; ++jj) wo[wout[j0 + jj]] = empty ? 0.0 : c[jj];
    }
  });
  if (nchunk > 1) sum_chunks(p, part, nchunk, J, wout, dwt);
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
