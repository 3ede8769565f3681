// winograd.cpp — 3x3, stride-1, undilated fp32 convolutions by Winograd F(2x2, 3x3): forward,
// backward-input (the same convolution of dy with the filter transposed and flipped) and
// backward-weight (winograd_backward_weight, at the end: its own blocking, described there).
// NCHW and NHWC, groups, padding 0..2 per axis.
//
// What it computes. The output is cut into 2x2 tiles; tile (n, i, j) reads the 4x4 input patch
// d at rows 2i - pad_h .. +3 and columns 2j - pad_w .. +3 (zeros outside the image), and
//     y(2x2) = A^T [ sum_c (G g_kc G^T) (.) (B^T d_c B) ] A          ((.) = elementwise, 4x4)
// with
//     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//     A^T = [1 1 1 0; 0 1 -1 -1]
// So the 9 multiplies per output pixel and channel pair of a direct 3x3 become 4 (16 per 2x2
// tile): the sum over c is 16 independent GEMMs, one per position xi of the 4x4 tile,
//     M_xi[tile][k] = sum_c V_xi[tile][c] * U_xi[c][k],   V = B^T d B,  U = G g G^T.
// F(2x2,3x3) is the only Winograd size we use: measured on random data (sizes of ResNet layers),
// its float32 error is 1.0-1.7x that of torch's direct convolution, inside the 4x bound the
// tests hold every default algorithm to; F(3x3,3x3) and F(4x4,3x3) were 7-45x.
//
// Blocking. U (16 x Cg x Kg, padded to whole vectors) is computed once per call, in parallel
// over blocks of filters, from 16x16 vector transposes of w. A task is a block of tiles (whole
// tile rows, or a piece of one long tile row) sized so that its V and M (16 x tiles x channels
// each) stay in L2/L3. The task
//   1. copies the 4 input rows of each tile row into a band [4][cols][C] (zero padding built in;
//      NHWC rows are memcpy'd, NCHW rows vector-transposed) and transforms every tile, 16
//      channels per vector, into V[xi][tile][c];
//   2. runs the 16 GEMMs on the register-blocked micro-kernel of simd.h (tiles are the
//      broadcast rows, output channels the vectors): M[xi][tile][k];
//   3. transforms M back to 2x2 output pixels, adds the bias and stores them (NHWC directly,
//      masked at the channel tail; NCHW through a [pixel][k] row buffer and transpose_rows).
// Every output element is written by one task in a fixed order: the same bits for any thread count.
//
// Speed (2 cores Zen 4, 2 threads, float32; ratio = torch time / ours, interleaved medians).
// ResNet-50 3x3 layers, batch 8 (PYTHONPATH=. python benchmarks/cpu_kernels.py --cases "r50 3x3";
// quiet machine, before the channels_last-filter change): forward 1.46-1.66x at 56/28/14, 1.17x
// (NCHW) / 1.36x (NHWC) at 7x7, 250-370 direct-convolution GFLOP/s; backward-input the same
// within a few %; backward-weight 1.55-2.09x at 56/28/14, 1.29-1.92x at 7x7 (implicit_gemm before:
// 0.73-0.96x). Batch 4 in the default suite: README. These layers lean on the L3 cache (V, M
// and the pieces of U), so on a busy machine they lose more than torch's direct kernel does:
// the same rows have read 1.0-1.1x forward during other tenants' load.
#ifndef CONV_EXT_ISA_NS
#define CONV_EXT_PER_ISA_FILE "winograd.cpp"
#include "per_isa.h"

namespace conv_ext {
namespace cpu {
namespace {

// A 3x3 stride-1 problem in forward form: input (N, C, H, W) -> output (N, K, P, Q).
bool wino_shape(const Conv2dParams& p, at::ScalarType dtype) {
  return dtype == at::kFloat && simd_available() && (is_nchw(p) || is_nhwc(p)) && weight_is_kcrs(p) &&
         p.R == 3 && p.S == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dil_h == 1 && p.dil_w == 1 &&
         p.pad_h <= 2 && p.pad_w <= 2;
}

// The transforms cost about 4 * (Cg + Kg) vector operations per tile against Cg * Kg FMAs of the
// GEMMs: with few channels per group the direct kernel (implicit_gemm) is faster. Measured
// against it (batch 8, 2 threads, forced with --algo): 16->16 @32 0.65x, 32->32 @16 1.0-1.15x
// (backward-weight 0.84 -> 0.95x torch), 64->64 @8 1.6x; groups of 16 channels 0.6-0.7x.
bool worth_it(const Conv2dParams& p) { return std::min(p.Cg(), p.Kg()) >= 32 && p.Cg() * p.Kg() >= 1024; }

bool supports(const Conv2dParams& p, at::ScalarType dtype) { return wino_shape(p, dtype) && worth_it(p); }

// Forward and backward-input also want 48 or more channels per group on their output side (Kg
// for forward; Cg for backward-input, a convolution from K to C channels): with 32 there, the
// output transform is not paid back. Forced, 2 threads, winograd vs implicit_gemm ms (NCHW/NHWC):
// 32->32 @16 batch 8 fwd 0.122/0.113 vs 0.101/0.089; 64->32 @16 fwd 0.214/0.198 vs 0.191/0.173,
// its backward-input (output 64) 0.171/0.157 vs 0.191/0.176; 48->48 @16 fwd 0.181/0.169 vs
// 0.202/0.186. Backward-weight wants 64 or more on both sides since implicit_gemm's chunk sums
// became vector adds (sum_chunks): 32->32 @16 winograd 0.18/0.17 vs 0.116/0.102 ms, 64->64 @32
// batch 8 1.64/1.44 vs 1.46/1.41, 64->64 @56 batch 4 2.74/1.67 vs 2.30/2.08 (a split decision),
// 128->128 @28 1.43/1.35 vs 2.21/2.17. NCHW wants more than 64: timed as in a training step
// (python benchmarks/algos.py SHAPE --pass backward_weight --step, before this rule; 2 threads,
// ms winograd vs implicit_gemm, sixteenth round) 64->64 @56 batch 4 3.79 vs 3.14,
// batch 8 6.96 vs 6.46, @32 batch 8 2.52 vs 2.12; channels_last 3.05 vs 3.04, 5.82 vs 6.09, 2.24
// vs 2.11; 96->96 @28 1.72 vs 1.80 (NCHW), 128->128 @28 2.55 vs 3.21.
bool supports_forward(const Conv2dParams& p, at::ScalarType dtype) { return supports(p, dtype) && p.Kg() >= 48; }
bool supports_backward_input(const Conv2dParams& p, at::ScalarType dtype) {
  return supports(p, dtype) && p.Cg() >= 48;
}
bool supports_backward_weight(const Conv2dParams& p, at::ScalarType dtype) {
  return supports(p, dtype) && std::min(p.Cg(), p.Kg()) >= (is_nchw(p) ? 65 : 64);
}

auto isa() { return use_avx512() ? avx512::winograd_conv : avx2::winograd_conv; }

void run_forward(const Conv2dParams& p, Operands& o) {
  const WinoShape s{p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w, p.groups, is_nhwc(p)};
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  isa()(s, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), false, weight_is_krsc(p), bias,
        o.out.mutable_data_ptr<float>(), p.macs(), o.filter);
}

// dx = conv(dy, w'), w'[c][k][r][s] = w[k][c][2-r][2-s], padding 2 - pad: dy is the input.
void run_backward_input(const Conv2dParams& p, Operands& o) {
  const WinoShape s{p.N, p.K, p.P, p.Q, p.C, p.H, p.W, 2 - p.pad_h, 2 - p.pad_w, p.groups, is_nhwc(p)};
  isa()(s, o.a.const_data_ptr<float>(), o.b.const_data_ptr<float>(), true, weight_is_krsc(p), nullptr,
        o.out.mutable_data_ptr<float>(), p.macs(), o.filter);
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  const WinoShape s{p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w, p.groups, is_nhwc(p)};
  auto f = use_avx512() ? avx512::winograd_backward_weight : avx2::winograd_backward_weight;
  f(s, o.b.const_data_ptr<float>(), o.a.const_data_ptr<float>(), o.out.mutable_data_ptr<float>(), weight_is_krsc(p),
    p.macs());
}

const bool registered = register_algorithm({"winograd", Pass::Forward, 40, supports_forward, run_forward, true}) &&
                        register_algorithm({"winograd", Pass::BackwardInput, 40, supports_backward_input, run_backward_input, true}) &&
                        register_algorithm({"winograd", Pass::BackwardWeight, 40, supports_backward_weight, run_backward_weight, true});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext

#else  // ---------------- compiled once per ISA (namespace CONV_EXT_ISA_NS) ----------------

namespace conv_ext {
namespace cpu {

#ifndef CONV_EXT_WINO_SHAPE
#define CONV_EXT_WINO_SHAPE
struct WinoShape {
  int64_t N, C, H, W, K, P, Q, ph, pw, G;
  bool nhwc;
};
#endif

namespace CONV_EXT_ISA_NS {
namespace {

// U = G g G^T for VL filters at once: g[r*3+s] -> u[i*4+j].
inline void weight_tile(const V* g, V* u) {
  const V h = Isa::set1(0.5f);
  V t[4][3];
  for (int s = 0; s < 3; ++s) {
    const V g0 = g[s], g1 = g[3 + s], g2 = g[6 + s], e = Isa::add(g0, g2);
    t[0][s] = g0, t[1][s] = Isa::mul(h, Isa::add(e, g1)), t[2][s] = Isa::mul(h, Isa::sub(e, g1)), t[3][s] = g2;
  }
  for (int i = 0; i < 4; ++i) {
    const V e = Isa::add(t[i][0], t[i][2]);
    u[i * 4 + 0] = t[i][0];
    u[i * 4 + 1] = Isa::mul(h, Isa::add(e, t[i][1]));
    u[i * 4 + 2] = Isa::mul(h, Isa::sub(e, t[i][1]));
    u[i * 4 + 3] = t[i][2];
  }
}

// V = B^T d B: d[a][b] (rows a of the patch) -> v[i*4+j].
inline void input_tile(const V (*d)[4], V* v) {
  V t[4][4];
  for (int b = 0; b < 4; ++b) {
    t[0][b] = Isa::sub(d[0][b], d[2][b]);
    t[1][b] = Isa::add(d[1][b], d[2][b]);
    t[2][b] = Isa::sub(d[2][b], d[1][b]);
    t[3][b] = Isa::sub(d[1][b], d[3][b]);
  }
  for (int i = 0; i < 4; ++i) {
    v[i * 4 + 0] = Isa::sub(t[i][0], t[i][2]);
    v[i * 4 + 1] = Isa::add(t[i][1], t[i][2]);
    v[i * 4 + 2] = Isa::sub(t[i][2], t[i][1]);
    v[i * 4 + 3] = Isa::sub(t[i][1], t[i][3]);
  }
}

// y = A^T m A + bias: m[i*4+j] -> y[a*2+b].
inline void output_tile(const V* m, V bias, V* y) {
  V s[2][4];
  for (int j = 0; j < 4; ++j) {
    const V m1 = m[4 + j], m2 = m[8 + j];
    s[0][j] = Isa::add(Isa::add(m[j], m1), m2);
    s[1][j] = Isa::sub(Isa::sub(m1, m2), m[12 + j]);
  }
  for (int a = 0; a < 2; ++a) {
    y[a * 2 + 0] = Isa::add(Isa::add(Isa::add(s[a][0], s[a][1]), s[a][2]), bias);
    y[a * 2 + 1] = Isa::add(Isa::sub(Isa::sub(s[a][1], s[a][2]), s[a][3]), bias);
  }
}

// E = A e A^T: the 2x2 output gradient e[a][b] -> E[i*4+j] (A = (A^T)^T, 4x2).
inline void dy_tile(const V (*e)[2], V* E) {
  const V z = Isa::zero();
  V f[4][2];
  for (int b = 0; b < 2; ++b) {
    f[0][b] = e[0][b], f[1][b] = Isa::add(e[0][b], e[1][b]);
    f[2][b] = Isa::sub(e[0][b], e[1][b]), f[3][b] = Isa::sub(z, e[1][b]);
  }
  for (int i = 0; i < 4; ++i) {
    E[i * 4 + 0] = f[i][0];
    E[i * 4 + 1] = Isa::add(f[i][0], f[i][1]);
    E[i * 4 + 2] = Isa::sub(f[i][0], f[i][1]);
    E[i * 4 + 3] = Isa::sub(z, f[i][1]);
  }
}

// dw = G^T dU G: u[i*4+j] -> o[r*3+s] (the transpose of weight_tile).
inline void weight_grad_tile(const V* u, V* o) {
  const V h = Isa::set1(0.5f);
  V z[3][4];
  for (int j = 0; j < 4; ++j) {
    const V p = Isa::mul(h, Isa::add(u[4 + j], u[8 + j]));
    z[0][j] = Isa::add(u[j], p), z[1][j] = Isa::mul(h, Isa::sub(u[4 + j], u[8 + j])), z[2][j] = Isa::add(p, u[12 + j]);
  }
  for (int r = 0; r < 3; ++r) {
    const V p = Isa::mul(h, Isa::add(z[r][1], z[r][2]));
    o[r * 3 + 0] = Isa::add(z[r][0], p);
    o[r * 3 + 1] = Isa::mul(h, Isa::sub(z[r][1], z[r][2]));
    o[r * 3 + 2] = Isa::add(p, z[r][3]);
  }
}

// Rows [r0, r0+nr) x columns [c0, c0+ncp) (ncp a multiple of VL) of group g's U, for a w of
// shape (G*Kg, Cg, 3, 3), written to out[xi*xs + row*ld + col]:
//   forward (flip = false):       row = c, col = k, from w[g*Kg+k][c]
//   backward-input (flip = true): row = k, col = c, from w[g*Kg+k][c] rotated by 180 degrees
// Columns past Kg (Cg) are zero. w is KCRS, or KRSC (krsc: a channels_last filter). The taps of
// VL filters are brought side by side by transpose_rows (KRSC backward: they already are).
void weight_panel(const float* w, int64_t g, int64_t Kg, int64_t Cg, bool flip, bool krsc, int64_t r0, int64_t nr,
                  int64_t c0, int64_t ncp, float* out, int64_t xs, int64_t ld) {
  V taps[9], u[16];
  if (!flip) {
    float* tmp = scratch(3, nr * 9 * VL);  // tap (c, rs) of the VL filters at tmp + at(c, rs)*VL
    const auto at = [&](int64_t c, int rs) { return krsc ? rs * nr + c : c * 9 + rs; };
    for (int64_t kb = 0; kb < ncp; kb += VL) {
      const int64_t k0 = c0 + kb, kn = std::max<int64_t>(0, std::min<int64_t>(VL, Kg - k0));
      const float* wk = w + (g * Kg + k0) * Cg * 9;
      if (krsc) {
        for (int rs = 0; rs < 9; ++rs) transpose_rows(wk + rs * Cg + r0, Cg * 9, kn, nr, VL, tmp + rs * nr * VL);
      } else {
        transpose_rows(wk + r0 * 9, Cg * 9, kn, nr * 9, VL, tmp);
      }
      for (int64_t r = 0; r < nr; ++r) {
        for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::load(tmp + at(r, rs) * VL);
        weight_tile(taps, u);
        for (int xi = 0; xi < 16; ++xi) Isa::store(out + xi * xs + r * ld + kb, u[xi]);
      }
    }
  } else {
    alignas(64) float tmp[9 * VL];
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t cb = 0; cb < ncp; cb += VL) {
        const int64_t cc = c0 + cb, cn = std::max<int64_t>(0, std::min<int64_t>(VL, Cg - cc));
        const float* wk = w + (g * Kg + r0 + r) * Cg * 9;
        if (krsc) {
          const M m = Isa::mask(cn);
          for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::loadm(wk + (8 - rs) * Cg + cc, m);
        } else {
          transpose_rows(wk + cc * 9, 9, cn, 9, VL, tmp);
          for (int rs = 0; rs < 9; ++rs) taps[rs] = Isa::load(tmp + (8 - rs) * VL);
        }
        weight_tile(taps, u);
        for (int xi = 0; xi < 16; ++xi) Isa::store(out + xi * xs + r * ld + cb, u[xi]);
      }
  }
}

// The stride of V's, M's and E's tile rows for n floats of channels. Backward-weight reads V and
// E down their columns (a step of the reduction = the next tile row); at 512 channels (2 KiB) the
// 64 steps of a reduction fell into 2 L1 sets for V and 8 for E, so E (re-read by every tile of
// channels) never stayed in L1. A line more at multiples of 1 KiB, 2 threads, batch 4 (ab.py):
// 512@7 backward-weight 1.01x channels_last / 1.05x NCHW, forward 1.04x / 1.02x; 256@14 forward
// 1.03x, backward-input 1.02x. Not below: padded, 64@56's backward-weight (streaming V and E,
// 25% more of them) ran 0.93x, 128@28 0.98x.
inline int64_t row_stride(int64_t n) { return n % 256 ? n : n + 16; }

// Geometry shared by the steps below. Tiles are numbered t = (n*th + i)*tw + j ("tile row"
// gr = n*th + i); a block is tile rows [gr0, gr1) x tile columns [tj0, tj1).
struct Geo {
  int64_t Cg, Kg, Cs, Kgp, Ks, th, tw, rows;
  int64_t Vr, Mr;  // row (tile) strides of V, and of M and E: Cs, Ks, a line more at multiples of 1 KiB
  Geo(const WinoShape& s)
      : Cg(s.C / s.G), Kg(s.K / s.G), Cs(round_up(s.C, VL)), Kgp(round_up(s.K / s.G, VL)), Ks(s.G * Kgp),
        th(ceil_div(s.P, 2)), tw(ceil_div(s.Q, 2)), rows(s.N * th), Vr(row_stride(Cs)), Mr(row_stride(Ks)) {}
};

// The 16 planes (xi) of V, M and E (and of the large-U weight panel) hold vt rows (tiles;
// channels for the panel) of `width` floats each, and a line more: at exactly vt x width apart
// (often a multiple of 4 KiB: 64 tiles x 512 channels) a tile's 16 stores (input, dy transforms)
// or loads (output transform) all fell into one L1 set.
inline int64_t plane(int64_t vt, int64_t width) { return vt * width + 16; }

// V[xi][t][c] (planes of plane(vt, Vr) floats, rows Vr apart) = B^T d B for the tiles of the block,
// t = (gr - gr0)*(tj1 - tj0) + j + t0.
void input_transform(const WinoShape& s, const Geo& e, const float* x, int64_t gr0, int64_t gr1, int64_t tj0,
                     int64_t tj1, float* Vb, int64_t vt, int64_t t0) {
  const int64_t C = s.C, H = s.H, W = s.W, Cs = e.Cs, nc = tj1 - tj0, Wb = 2 * nc + 2, w0 = 2 * tj0 - s.pw;
  float* band = scratch(2, 4 * Wb * Cs);  // the 4 input rows of a tile row, [row][col][Cs]
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, h0 = 2 * (gr % e.th) - s.ph;
    for (int64_t a = 0; a < 4; ++a) {
      float* row = band + a * Wb * Cs;
      const int64_t h = h0 + a, wlo = std::max<int64_t>(0, w0), whi = std::min(W, w0 + Wb);
      if (h < 0 || h >= H || whi <= wlo) {
        std::memset(row, 0, sizeof(float) * Wb * Cs);
        continue;
      }
      std::memset(row, 0, sizeof(float) * (wlo - w0) * Cs);
      std::memset(row + (whi - w0) * Cs, 0, sizeof(float) * (w0 + Wb - whi) * Cs);
      float* dst = row + (wlo - w0) * Cs;
      if (!s.nhwc) {
        transpose_rows(x + (n * C * H + h) * W + wlo, H * W, C, whi - wlo, Cs, dst, Cs);
      } else if (C == Cs) {
        std::memcpy(dst, x + ((n * H + h) * W + wlo) * C, sizeof(float) * (whi - wlo) * C);
      } else {
        for (int64_t w = wlo; w < whi; ++w, dst += Cs) {
          std::memcpy(dst, x + ((n * H + h) * W + w) * C, sizeof(float) * C);
          std::memset(dst + C, 0, sizeof(float) * (Cs - C));
        }
      }
    }
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t t = t0 + (gr - gr0) * nc + j;
      for (int64_t c0 = 0; c0 < Cs; c0 += VL) {
        V d[4][4], v[16];
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) d[a][b] = Isa::load(band + (a * Wb + 2 * j + b) * Cs + c0);
        input_tile(d, v);
        for (int xi = 0; xi < 16; ++xi) Isa::store(Vb + xi * plane(vt, e.Vr) + t * e.Vr + c0, v[xi]);
      }
    }
  }
}

// M_xi[t][k0 + ..] (+)= sum_{c < len} V_xi[t][c] * U_xi[c][..] for tiles [0, nt), columns
// [k0, k0 + ncp) of M, on the micro-kernel (tiles = broadcast rows, output channels = vectors).
void gemms(const float* Vb, int64_t vt, int64_t Vr, int64_t nt, int64_t len, const float* U, int64_t uxs,
           int64_t uld, float* Mb, int64_t mt, int64_t Mr, int64_t k0, int64_t ncp, bool accumulate) {
  static const int64_t zero = 0;
  for (int xi = 0; xi < 16; ++xi)
    for (int64_t kb = 0; kb < ncp; kb += Isa::kMaxNV * VL) {
      const int nv = static_cast<int>(std::min<int64_t>(Isa::kMaxNV, (ncp - kb) / VL));
      const int64_t MR = Isa::mr(nv);
      for (int64_t t0 = 0; t0 < nt; t0 += MR) {
        Tile tl;
        tl.a = Vb + xi * plane(vt, Vr) + t0 * Vr, tl.a_is = Vr, tl.a_ls = 1;
        tl.b = U + xi * uxs + kb, tl.b_ls = uld;
        tl.a_off = &zero, tl.b_off = &zero, tl.nseg = 1, tl.len = len;
        tl.mr = static_cast<int>(std::min(MR, nt - t0));
        tl.c = Mb + xi * plane(mt, Mr) + t0 * Mr + k0 + kb, tl.ldc = Mr, tl.accumulate = accumulate;
        run_tile<false>(nv, tl);
      }
    }
}

// y = A^T M A + bias for the tiles of the block (M[xi][t][Ks], planes of plane(mt, Mr) floats,
// t as in input_transform).
void output_transform(const WinoShape& s, const Geo& e, const float* Mb, int64_t mt, int64_t t0, int64_t gr0,
                      int64_t gr1, int64_t tj0, int64_t tj1, const float* bp, float* y) {
  const int64_t K = s.K, P = s.P, Q = s.Q, Kg = e.Kg, Kgp = e.Kgp, Ks = e.Ks, nc = tj1 - tj0;
  float* obuf = s.nhwc ? nullptr : scratch(3, 2 * 2 * nc * Ks);  // [2 rows][2*nc pixels][Ks]
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, ti = gr % e.th;
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t t = t0 + (gr - gr0) * nc + j, q = 2 * (tj0 + j);
      for (int64_t g = 0; g < s.G; ++g)
        for (int64_t k0 = 0; k0 < Kgp; k0 += VL) {
          V m[16], out[4];
          const int64_t kc = g * Kgp + k0;
          for (int xi = 0; xi < 16; ++xi) m[xi] = Isa::load(Mb + xi * plane(mt, e.Mr) + t * e.Mr + kc);
          output_tile(m, Isa::load(bp + kc), out);
          if (s.nhwc) {
            const M km = Isa::mask(Kg - k0);
            for (int a = 0; a < 2; ++a)
              for (int b = 0; b < 2; ++b)
                if (2 * ti + a < P && q + b < Q)
                  Isa::storem(y + ((n * P + 2 * ti + a) * Q + q + b) * K + g * Kg + k0, out[a * 2 + b], km);
          } else {
            for (int a = 0; a < 2; ++a)
              for (int b = 0; b < 2; ++b) Isa::store(obuf + (a * 2 * nc + 2 * j + b) * Ks + kc, out[a * 2 + b]);
          }
        }
    }
    if (!s.nhwc) {
      const int64_t q0 = 2 * tj0, nq = std::min(Q, 2 * tj1) - q0;
      for (int64_t a = 0; a < 2 && 2 * ti + a < P; ++a)
        for (int64_t g = 0; g < s.G; ++g)
          transpose_rows(obuf + a * 2 * nc * Ks + g * Kgp, Ks, nq, Kg, P * Q,
                         y + ((n * K + g * Kg) * P + 2 * ti + a) * Q + q0, nq);
    }
  }
}

// E[xi][t][Ks] (planes of plane(et, Mr) floats) = A e A^T for the tiles of tile rows [gr0, gr1)
// (all tile columns), e = the 2x2 block of dy the tile produced (zeros past P, Q), t as in
// input_transform.
void dy_transform(const WinoShape& s, const Geo& e, const float* dy, int64_t gr0, int64_t gr1, float* E, int64_t et,
                  int64_t t0) {
  const int64_t K = s.K, P = s.P, Q = s.Q, Kg = e.Kg, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, Qb = 2 * tw;
  float* band = s.nhwc ? nullptr : scratch(3, 2 * Qb * Ks);  // NCHW: the 2 dy rows, [row][q][Ks]
  for (int64_t gr = gr0; gr < gr1; ++gr) {
    const int64_t n = gr / e.th, ti = gr % e.th;
    if (!s.nhwc)
      for (int64_t a = 0; a < 2; ++a) {
        float* row = band + a * Qb * Ks;
        const int64_t p = 2 * ti + a;
        if (p >= P) {
          std::memset(row, 0, sizeof(float) * Qb * Ks);
          continue;
        }
        if (Qb > Q) std::memset(row + Q * Ks, 0, sizeof(float) * (Qb - Q) * Ks);
        for (int64_t g = 0; g < s.G; ++g)
          transpose_rows(dy + ((n * K + g * Kg) * P + p) * Q, P * Q, Kg, Q, Ks, row + g * Kgp, Kgp);
      }
    for (int64_t j = 0; j < tw; ++j) {
      const int64_t t = t0 + (gr - gr0) * tw + j;
      for (int64_t g = 0; g < s.G; ++g)
        for (int64_t k0 = 0; k0 < Kgp; k0 += VL) {
          const int64_t kc = g * Kgp + k0;
          V ev[2][2], E16[16];
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) {
              const int64_t p = 2 * ti + a, q = 2 * j + b;
              if (!s.nhwc) ev[a][b] = Isa::load(band + (a * Qb + q) * Ks + kc);
              else if (p < P && q < Q) ev[a][b] = Isa::loadm(dy + ((n * P + p) * Q + q) * K + g * Kg + k0, Isa::mask(Kg - k0));
              else ev[a][b] = Isa::zero();
            }
          dy_tile(ev, E16);
          for (int xi = 0; xi < 16; ++xi) Isa::store(E + xi * plane(et, e.Mr) + t * e.Mr + kc, E16[xi]);
        }
    }
  }
}

}  // namespace

// y = conv3x3(w, x) + bias for the forward-form problem s; flip: w is the forward filter of
// a backward-input problem (use its 180-degree rotation with k and c exchanged); krsc: w is a
// channels_last filter. bias may be null.
//
// Two schedules:
//  * small U (16 x C x K floats <= 1 MiB: few channels, typically large planes): U is computed
//    once; a task is a block of tiles that it transforms, multiplies and transforms back on its
//    own, so V and M never leave the core's caches.
//  * large U (many channels, typically 14x14 and 7x7 planes): re-reading a 4-16 MiB U per block
//    of tiles would be bound by memory, so the steps are separate parallel loops over a chunk of
//    tiles: transform all of them, then a task per block of output channels computes its piece
//    of U (pieces of <= 1 MiB of the reduction, so each stays in L2) and multiplies every tile
//    by it, then transform back. U is never written to memory.
void winograd_conv(const WinoShape& s, const float* x, const float* w, bool flip, bool krsc, const float* bias,
                   float* y, int64_t macs, const at::Tensor* filter) {
  const Geo e(s);
  const int64_t G = s.G, Cg = e.Cg, Kg = e.Kg, Cs = e.Cs, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, rows = e.rows;
  // in forward form the filter of group g is Kg x Cg; w itself is (wK x wC) per group
  const int64_t wK = flip ? Cg : Kg, wC = flip ? Kg : Cg;
  float* bp = scratch(5, Ks);  // bias padded per group to whole vectors
  std::memset(bp, 0, sizeof(float) * Ks);
  if (bias)  // (not a test of bias inside the loop: a masked load from a null pointer is slow)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t k = 0; k < Kg; ++k) bp[g * Kgp + k] = bias[g * Kg + k];
  const int64_t nthreads = pool_threads();
  constexpr int64_t kChunkFloats = 2 * 1024 * 1024;  // V + M of a chunk (large-U schedule): 8 MiB

  const bool large_u = 16 * G * Cg * Kgp > 256 * 1024 && 16 * tw * (Cs + Ks) <= kChunkFloats;
  if (!large_u) {
    // U, kept across calls while the filter is unchanged (filter_cache.h). Not the large U of the
    // other schedule: read back from memory (16 MiB for 512x512) it cost more than computing its
    // pieces in the tasks (512@7 NCHW forward, ms fresh / cached: 4.76 / 5.01).
    const std::initializer_list<int64_t> tag = {4, CONV_EXT_ISA_BITS, G, Kg, Cg, Kgp, flip, krsc};
    const int64_t ncb = Kgp / VL;
    const PackedFilter packed = packed_filter(filter, tag, G * 16 * Cg * Kgp, scratch(4, G * 16 * Cg * Kgp), [&](float* U) {
      for_each_task(G * ncb, macs, [&](int64_t task) {
        const int64_t g = task / ncb, k0 = (task % ncb) * VL;
        weight_panel(w, g, wK, wC, flip, krsc, 0, Cg, k0, VL, U + g * 16 * Cg * Kgp + k0, Cg * Kgp, Kgp);
      });
    });
    const float* U = packed.data;
    // Tiles per task: V and M of a task within ~512 KiB (so that they and U stay in L2), and at
    // least one task per thread. Was ~2 MiB; 2 threads, batch 4 (8 at 64@32), ms at 2 MiB / 1 /
    // 512 KiB (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass P for the final choice):
    // 64@56 channels_last forward 1.50 / 1.35 / 1.34, 128@28 NCHW forward 1.62 / 1.46 / 1.35,
    // 64@56 NCHW backward-input 1.84 / 1.62 / 1.61, 64@32 channels_last forward 0.95 / 0.87 / 0.85.
    const int64_t T = rows * tw;
    const int64_t tb_max = std::max<int64_t>(8, 128 * 1024 / (16 * (Cs + Ks)));
    const int64_t tb = std::max<int64_t>(1, std::min(tb_max, ceil_div(T, nthreads)));
    int64_t rb, cb;  // tile rows x tile columns per task
    if (tw <= tb) {
      cb = tw, rb = std::max<int64_t>(1, tb / tw);
      rb = ceil_div(rows, ceil_div(rows, rb));  // even row blocks
    } else {
      rb = 1, cb = ceil_div(tw, ceil_div(tw, tb));
    }
    const int64_t nrb = ceil_div(rows, rb), ncb_t = ceil_div(tw, cb);
    for_each_task(nrb * ncb_t, macs, [&](int64_t task) {
      const int64_t gr0 = (task / ncb_t) * rb, gr1 = std::min(rows, gr0 + rb);
      const int64_t tj0 = (task % ncb_t) * cb, tj1 = std::min(tw, tj0 + cb);
      const int64_t nt = (gr1 - gr0) * (tj1 - tj0);
      float* Vb = scratch(0, 16 * plane(nt, e.Vr));
      float* Mb = scratch(1, 16 * plane(nt, e.Mr));
      input_transform(s, e, x, gr0, gr1, tj0, tj1, Vb, nt, 0);
      for (int64_t g = 0; g < G; ++g)
        gemms(Vb + g * Cg, nt, e.Vr, nt, Cg, U + g * 16 * Cg * Kgp, Cg * Kgp, Kgp, Mb, nt, e.Mr, g * Kgp, Kgp, false);
      output_transform(s, e, Mb, nt, 0, gr0, gr1, tj0, tj1, bp, y);
    });
    return;
  }

  const int64_t rpc = std::max<int64_t>(1, kChunkFloats / (16 * tw * (Cs + Ks)));  // tile rows per chunk
  const int64_t nchunks = ceil_div(rows, rpc), rows_c = ceil_div(rows, nchunks);
  const int64_t T = rows_c * tw;
  float* Vall = scratch(4, 16 * plane(T, e.Vr));
  float* Mall = scratch(7, 16 * plane(T, e.Mr));
  // output-channel blocks: as wide as the micro-kernel, narrower if that leaves a thread idle
  int64_t kbw = Isa::kMaxNV * VL;
  while (kbw > VL && G * ceil_div(Kgp, kbw) < 2 * nthreads) kbw -= VL;
  const int64_t nkb = ceil_div(Kgp, kbw);
  // Pieces of U of up to 1 MiB (16 x 256 x 64 floats), the reduction split evenly. Each piece
  // after the first adds into M, read back from L2/L3 (a task's M is 16 x tiles x its filters:
  // 0.8 MiB at 256@14 batch 4), so fewer, larger pieces, as long as one stays in L2 (2 MiB here).
  // Pieces of 128 channels before; 2 threads, batch 4, ms before/after (python benchmarks/ab.py
  // OLD.so NEW.so SHAPE --pass P): 256@14 forward NHWC and backward-input NCHW 1.19x faster,
  // 512@7 forward 1.06-1.07x, backward-input 1.06x, batch 8 1.17x; 2 MiB pieces (512@7 in one)
  // were slower than 1 MiB.
  constexpr int64_t kPanelFloats = 256 * 1024;
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t R0 = ch * rows_c, R1 = std::min(rows, R0 + rows_c), nt = (R1 - R0) * tw;
    for_each_task(R1 - R0, macs, [&](int64_t i) {
      input_transform(s, e, x, R0 + i, R0 + i + 1, 0, tw, Vall, T, i * tw);
    });
    for_each_task(G * nkb, macs, [&](int64_t task) {
      const int64_t g = task / nkb, k0 = (task % nkb) * kbw, ncp = std::min(kbw, Kgp - k0);
      const int64_t npiece = ceil_div(Cg, std::max<int64_t>(1, kPanelFloats / (16 * ncp)));
      const int64_t pr = ceil_div(Cg, npiece);  // channels a piece
      // the panel's 16 planes a line more than nr x ncp floats apart (plane()): at exactly that
      // (32 KiB for 128 x 64) weight_panel's 16 stores of a channel all fell into one L1 set
      // (512@7 forward and backward-input, 2 threads: 1.04-1.07x faster padded, 1.03x at 256@14)
      float* panel = scratch(6, 16 * plane(pr, ncp));
      for (int64_t c0 = 0; c0 < Cg; c0 += pr) {
        const int64_t nr = std::min(pr, Cg - c0);
        weight_panel(w, g, wK, wC, flip, krsc, c0, nr, k0, ncp, panel, plane(nr, ncp), ncp);
        gemms(Vall + g * Cg + c0, T, e.Vr, nt, nr, panel, plane(nr, ncp), ncp, Mall, T, e.Mr, g * Kgp + k0, ncp, c0 > 0);
      }
    });
    for_each_task(R1 - R0, macs, [&](int64_t i) {
      output_transform(s, e, Mall, T, i * tw, R0 + i, R0 + i + 1, 0, tw, bp, y);
    });
  }
}

// dw = the weight gradient of the forward-form problem s (x input, dy output gradient):
//     dU_xi[c][k] = sum_tiles V_xi[tile][c] * E_xi[tile][k],   dw[k][c] = G^T dU[c][k] G
// (the exact gradient of y = A^T [U (.) V] A, which equals the direct convolution). Tiles are
// taken in chunks of whole tile rows whose V and E fit in ~8 MiB (a function of the shape only);
// per chunk, every tile is transformed, then a task per (group, xi, block of output channels)
// adds the chunk's tiles into its part of dU on the micro-kernel (input channels are the
// broadcast rows, read down V's columns; the whole chunk is one reduction in registers). Each
// dU element is summed in the same order whatever the thread count: deterministic. With one
// chunk and a dU of over 4 MiB, a task takes a block of channels and filters instead (below).
void winograd_backward_weight(const WinoShape& s, const float* x, const float* dy, float* dw, bool krsc, int64_t macs) {
  const Geo e(s);
  const int64_t G = s.G, Cg = e.Cg, Kg = e.Kg, Cs = e.Cs, Kgp = e.Kgp, Ks = e.Ks, tw = e.tw, rows = e.rows;
  constexpr int64_t kChunkFloats = 2 * 1024 * 1024, kSumTiles = 64;
  constexpr int64_t kFusedFloats = 1024 * 1024, kFusedChannels = 64;  // dU over 4 MiB; 256 KiB a task
  const int64_t rpc = std::max<int64_t>(1, kChunkFloats / (16 * tw * (Cs + Ks)));
  const int64_t nchunks = ceil_div(rows, rpc), rows_c = ceil_div(rows, nchunks), T = rows_c * tw;
  float* Vall = scratch(4, 16 * plane(T, e.Vr));
  float* Eall = scratch(7, 16 * plane(T, e.Mr));
  const int64_t kbw = Isa::kMaxNV * VL, nkb = ceil_div(Kgp, kbw);
  // dU[.][xi][c][k0..k0+kbw) += V_xi[tiles of l0..][c0..]^T E_xi[tiles][k0..] into dU (row stride
  // ldu), the tiles summed in pieces of kSumTiles in registers (shorter float32 sums than one run
  // over the chunk: the error grows with the length of a sum).
  const auto add_products = [&](int64_t g, int64_t xi, int64_t c0, int64_t c1, int64_t k0, int64_t nt, float* dUx,
                                int64_t ldu, bool accumulate) {
    static const int64_t zero = 0;
    const int nv = static_cast<int>(std::min(kbw, Kgp - k0) / VL);
    const int64_t MR = Isa::mr(nv);
    for (int64_t c = c0; c < c1; c += MR)
      for (int64_t l0 = 0; l0 < nt; l0 += kSumTiles) {
        Tile tl;
        tl.a = Vall + xi * plane(T, e.Vr) + l0 * e.Vr + g * Cg + c, tl.a_is = 1, tl.a_ls = e.Vr;
        tl.b = Eall + xi * plane(T, e.Mr) + l0 * e.Mr + g * Kgp + k0, tl.b_ls = e.Mr;
        tl.a_off = &zero, tl.b_off = &zero, tl.nseg = 1, tl.len = std::min(kSumTiles, nt - l0);
        tl.mr = static_cast<int>(std::min(MR, c1 - c));
        tl.c = dUx + (c - c0) * ldu, tl.ldc = ldu, tl.accumulate = accumulate || l0 > 0;
        run_tile<false>(nv, tl);
      }
  };
  // dw[g*Kg + k0 + j][c0..c1) = G^T dU[xi][c][j] G for the nk <= VL filters at k0 (dU's xi
  // planes xs apart, row stride ldu, filter j in lane j), transposed back to (K, Cg, 3, 3), or to
  // (K, 3, 3, Cg) for a channels_last filter (krsc)
  // A large channels_last dw, written in runs of a block of channels (nine 256-byte runs a filter
  // in the fused schedule below), goes out by streaming stores (whole lines, no read for
  // ownership): 512@7 channels_last backward-weight 1.08-1.09x (ab.py); the NCHW dw's long rows
  // 0.99x streamed, so not there.
  const bool stream_dw = krsc && G * Kg * Cg * 9 >= kStreamFloats;
  const auto finish = [&](int64_t g, int64_t c0, int64_t c1, int64_t k0, const float* dUk, int64_t xs, int64_t ldu) {
    const int64_t nc = c1 - c0, nk = std::min<int64_t>(VL, Kg - k0);
    if (nk <= 0) return;
    float* tmp = scratch(3, nc * 9 * VL);
    V u[16], o[9];
    for (int64_t c = 0; c < nc; ++c) {
      for (int xi = 0; xi < 16; ++xi) u[xi] = Isa::load(dUk + xi * xs + c * ldu);
      weight_grad_tile(u, o);
      for (int rs = 0; rs < 9; ++rs) Isa::store(tmp + (krsc ? rs * nc + c : c * 9 + rs) * VL, o[rs]);
    }
    float* out = dw + (g * Kg + k0) * Cg * 9;
    if (krsc && nc < Cg)  // a block of channels: 9 runs of nc a filter
      for (int rs = 0; rs < 9; ++rs)
        transpose_rows(tmp + rs * nc * VL, VL, nc, nk, Cg * 9, out + rs * Cg + c0, nc, stream_dw);
    else
      transpose_rows(tmp, VL, nc * 9, nk, Cg * 9, out + c0 * 9, nc * 9);
    if (stream_dw) _mm_sfence();
  };
  if (nchunks == 1 && 16 * G * Cg * Kgp > kFusedFloats) {
    // Many channels and few tiles (512 @7): dU would be over 4 MiB (16 MiB for 512x512), written
    // to memory and read back; and where other passes run between two backward-weights (a
    // training step) it is not in L3 either. A task takes a block of filters and one of channels
    // instead, sums its 16 x cb x kbw piece of dU in L2 and turns it into dw at once. 512 @7,
    // batch 4, 2 threads, ms (python benchmarks/ab.py ... 4,512,7,7,512,3,1,1 --pass
    // backward_weight): 3.49 -> 3.07 NCHW, 3.32 -> 3.14 channels_last; called between a forward
    // and a backward-input, as in a training step: 6.2-6.6 -> 3.5-3.6; 384 @7 2.8-3.2 -> 2.1.
    // Not at 256 @14 (dU of 4 MiB, 196 tiles): 2.24-2.45 -> 2.42-2.72 ms. Blocks of 64 channels
    // (were 128: a task's 512 KiB of dU, with the V and E it reads, filled L2 and finish read dU
    // back from L3): 512@7 1.02x channels_last, 1.03x NCHW; batch 8 and 384@7 level; 32 slower.
    const int64_t cb = ceil_div(Cg, ceil_div(Cg, kFusedChannels)), ncb = ceil_div(Cg, cb);
    for_each_task(rows, macs, [&](int64_t i) {
      input_transform(s, e, x, i, i + 1, 0, tw, Vall, T, i * tw);
      dy_transform(s, e, dy, i, i + 1, Eall, T, i * tw);
    });
    for_each_task(G * ncb * nkb, macs, [&](int64_t task) {
      const int64_t g = task / (ncb * nkb), c0 = (task / nkb) % ncb * cb, c1 = std::min(Cg, c0 + cb);
      const int64_t k0 = (task % nkb) * kbw;
      // [xi][c - c0][k - k0], planes a line more than cb x kbw apart (plane()): at exactly that
      // (32 KiB), finish's 16 loads of a channel fell into one L1 set
      const int64_t xs = plane(cb, kbw);
      float* dUl = scratch(8, 16 * xs);
      for (int64_t xi = 0; xi < 16; ++xi) add_products(g, xi, c0, c1, k0, rows * tw, dUl + xi * xs, kbw, false);
      for (int64_t k = k0; k < std::min(Kgp, k0 + kbw); k += VL) finish(g, c0, c1, k, dUl + (k - k0), xs, kbw);
    });
    return;
  }
  float* dU = scratch(8, G * 16 * Cg * Kgp);  // [g][xi][c][k]
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t R0 = ch * rows_c, R1 = std::min(rows, R0 + rows_c), nt = (R1 - R0) * tw;
    for_each_task(R1 - R0, macs, [&](int64_t i) {
      input_transform(s, e, x, R0 + i, R0 + i + 1, 0, tw, Vall, T, i * tw);
      dy_transform(s, e, dy, R0 + i, R0 + i + 1, Eall, T, i * tw);
    });
    for_each_task(G * 16 * nkb, macs, [&](int64_t task) {
      const int64_t g = task / (16 * nkb), xi = (task / nkb) % 16, k0 = (task % nkb) * kbw;
      add_products(g, xi, 0, Cg, k0, nt, dU + ((g * 16 + xi) * Cg) * Kgp + k0, Kgp, ch > 0);
    });
  }
  const int64_t nkv = Kgp / VL;
  for_each_task(G * nkv, macs, [&](int64_t task) {
    const int64_t g = task / nkv, k0 = (task % nkv) * VL;
    finish(g, 0, Cg, k0, dU + g * 16 * Cg * Kgp + k0, Cg * Kgp, Kgp);
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
