// winograd.cpp — 3x3, stride-1, undilated fp32 convolutions by Winograd F(2x2, 3x3): forward,
// and backward-input (the same convolution of dy with the filter transposed and flipped).
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
// Speed: see the table in the README (python -m conv_ext.bench --suite default --device cpu).
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
// GEMMs: with few channels per group the direct kernel (implicit_gemm) is faster.
bool worth_it(const Conv2dParams& p) { return p.Cg() >= 16 && p.Kg() >= 16; }

bool supports(const Conv2dParams& p, at::ScalarType dtype) { return wino_shape(p, dtype) && worth_it(p); }

struct Dispatch {
  decltype(&avx512::winograd_weights) weights;
  decltype(&avx512::winograd_conv) conv;
};
Dispatch isa() {
  if (use_avx512()) return {avx512::winograd_weights, avx512::winograd_conv};
  return {avx2::winograd_weights, avx2::winograd_conv};
}

void run_forward(const Conv2dParams& p, Operands& o) {
  const Dispatch f = isa();
  const WinoShape s{p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w, p.groups, is_nhwc(p)};
  const float* U = f.weights(o.b.const_data_ptr<float>(), p.groups, p.Kg(), p.Cg(), false, p.macs());
  const float* bias = o.bias.defined() ? o.bias.const_data_ptr<float>() : nullptr;
  f.conv(s, o.a.const_data_ptr<float>(), U, bias, o.out.mutable_data_ptr<float>(), p.macs());
}

// dx = conv(dy, w'), w'[c][k][r][s] = w[k][c][2-r][2-s], padding 2 - pad: dy is the input.
void run_backward_input(const Conv2dParams& p, Operands& o) {
  const Dispatch f = isa();
  const WinoShape s{p.N, p.K, p.P, p.Q, p.C, p.H, p.W, 2 - p.pad_h, 2 - p.pad_w, p.groups, is_nhwc(p)};
  const float* U = f.weights(o.b.const_data_ptr<float>(), p.groups, p.Kg(), p.Cg(), true, p.macs());
  f.conv(s, o.a.const_data_ptr<float>(), U, nullptr, o.out.mutable_data_ptr<float>(), p.macs());
}

const bool registered = register_algorithm({"winograd", Pass::Forward, 40, supports, run_forward}) &&
                        register_algorithm({"winograd", Pass::BackwardInput, 40, supports, run_backward_input});

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

}  // namespace

// U[g][xi][row][col] for a w of shape (G*Kg, Cg, 3, 3):
//   forward (flip = false):       row = c < Cg, col = k < round_up(Kg, VL),  from w[g*Kg+k][c]
//   backward-input (flip = true): row = k < Kg, col = c < round_up(Cg, VL),  from w[g*Kg+k][c]
//                                 rotated by 180 degrees
// Columns past Kg (Cg) are zero. Returns the calling thread's scratch (slot 4).
const float* winograd_weights(const float* w, int64_t G, int64_t Kg, int64_t Cg, bool flip, int64_t macs) {
  const int64_t rows = flip ? Kg : Cg, cols = flip ? Cg : Kg, colp = round_up(cols, VL);
  float* U = scratch(4, G * 16 * rows * colp);
  const int64_t ncb = colp / VL;
  // forward: a task is VL filters (k) of a group; their C*9 taps are transposed to [c*9+rs][VL]
  // backward: a task is one filter k; blocks of VL channels c (9 taps each) are transposed
  const int64_t ntask = flip ? G * Kg : G * ncb;
  for_each_task(ntask, macs, [&](int64_t task) {
    V g[9], u[16];
    if (!flip) {
      const int64_t grp = task / ncb, k0 = (task % ncb) * VL;
      float* tmp = scratch(3, Cg * 9 * VL);
      transpose_rows(w + (grp * Kg + k0) * Cg * 9, Cg * 9, std::min<int64_t>(VL, Kg - k0), Cg * 9, VL, tmp);
      for (int64_t c = 0; c < Cg; ++c) {
        for (int rs = 0; rs < 9; ++rs) g[rs] = Isa::load(tmp + (c * 9 + rs) * VL);
        weight_tile(g, u);
        for (int xi = 0; xi < 16; ++xi) Isa::store(U + ((grp * 16 + xi) * Cg + c) * colp + k0, u[xi]);
      }
    } else {
      const int64_t grp = task / Kg, k = task % Kg;
      alignas(64) float tmp[9 * VL];
      for (int64_t c0 = 0; c0 < colp; c0 += VL) {
        transpose_rows(w + ((grp * Kg + k) * Cg + c0) * 9, 9, std::min<int64_t>(VL, Cg - c0), 9, VL, tmp);
        for (int rs = 0; rs < 9; ++rs) g[rs] = Isa::load(tmp + (8 - rs) * VL);
        weight_tile(g, u);
        for (int xi = 0; xi < 16; ++xi) Isa::store(U + ((grp * 16 + xi) * Kg + k) * colp + c0, u[xi]);
      }
    }
  });
  return U;
}

// y = conv3x3(x, U) + bias for the forward-form problem s (U from winograd_weights, bias may be null).
void winograd_conv(const WinoShape& s, const float* x, const float* U, const float* bias, float* y, int64_t macs) {
  const int64_t N = s.N, C = s.C, H = s.H, W = s.W, K = s.K, P = s.P, Q = s.Q, G = s.G;
  const int64_t Cg = C / G, Kg = K / G, Cs = round_up(C, VL), Kgp = round_up(Kg, VL), Ks = G * Kgp;
  const int64_t th = ceil_div(P, 2), tw = ceil_div(Q, 2), rows = N * th, T = rows * tw;
  const bool nhwc = s.nhwc;

  float* bp = scratch(5, Ks);  // bias padded per group to whole vectors
  for (int64_t g = 0; g < G; ++g)
    for (int64_t k = 0; k < Kgp; ++k) bp[g * Kgp + k] = bias && k < Kg ? bias[g * Kg + k] : 0.f;

  // Tiles per task: V and M of a task (16 floats per tile and channel) within ~2 MiB, and at
  // least one task per thread.
  constexpr int64_t kBudgetFloats = 512 * 1024;
  const int64_t tb_max = std::max<int64_t>(8, kBudgetFloats / (16 * (Cs + Ks)));
  const int64_t nthreads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t tb = std::max<int64_t>(1, std::min(tb_max, ceil_div(T, nthreads)));
  int64_t rb, cb;  // tile rows x tile columns per task
  if (tw <= tb) {
    cb = tw, rb = std::max<int64_t>(1, tb / tw);
    rb = ceil_div(rows, ceil_div(rows, rb));  // even row blocks
  } else {
    rb = 1, cb = ceil_div(tw, ceil_div(tw, tb));
  }
  const int64_t nrb = ceil_div(rows, rb), ncb = ceil_div(tw, cb);

  for_each_task(nrb * ncb, macs, [&](int64_t task) {
    const int64_t gr0 = (task / ncb) * rb, gr1 = std::min(rows, gr0 + rb);
    const int64_t tj0 = (task % ncb) * cb, tj1 = std::min(tw, tj0 + cb), nc = tj1 - tj0;
    const int64_t nt = (gr1 - gr0) * nc, Wb = 2 * nc + 2, w0 = 2 * tj0 - s.pw;
    float* Vb = scratch(0, 16 * nt * Cs);
    float* Mb = scratch(1, 16 * nt * Ks);
    float* band = scratch(2, 4 * Wb * Cs);

    // 1. input transform
    for (int64_t gr = gr0; gr < gr1; ++gr) {
      const int64_t n = gr / th, ti = gr % th, h0 = 2 * ti - s.ph;
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
        if (!nhwc) {
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
        const int64_t t = (gr - gr0) * nc + j;
        for (int64_t c0 = 0; c0 < Cs; c0 += VL) {
          V d[4][4], v[16];
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) d[a][b] = Isa::load(band + (a * Wb + 2 * j + b) * Cs + c0);
          input_tile(d, v);
          for (int xi = 0; xi < 16; ++xi) Isa::store(Vb + (xi * nt + t) * Cs + c0, v[xi]);
        }
      }
    }

    // 2. the 16 GEMMs per group: M_xi[t][k] = sum_c V_xi[t][c] U_xi[c][k]
    static const int64_t zero = 0;
    for (int64_t g = 0; g < G; ++g)
      for (int xi = 0; xi < 16; ++xi)
        for (int64_t k0 = 0; k0 < Kgp; k0 += Isa::kMaxNV * VL) {
          const int nv = static_cast<int>(std::min<int64_t>(Isa::kMaxNV, (Kgp - k0) / VL));
          const int64_t MR = Isa::mr(nv);
          for (int64_t t0 = 0; t0 < nt; t0 += MR) {
            Tile tl;
            tl.a = Vb + (xi * nt + t0) * Cs + g * Cg, tl.a_is = Cs, tl.a_ls = 1;
            tl.b = U + (g * 16 + xi) * Cg * Kgp + k0, tl.b_ls = Kgp;
            tl.a_off = &zero, tl.b_off = &zero, tl.nseg = 1, tl.len = Cg;
            tl.mr = static_cast<int>(std::min(MR, nt - t0));
            tl.c = Mb + (xi * nt + t0) * Ks + g * Kgp + k0, tl.ldc = Ks;
            run_tile<false>(nv, tl);
          }
        }

    // 3. output transform
    float* obuf = nhwc ? nullptr : scratch(3, 2 * 2 * nc * Ks);  // [2 rows][2*nc pixels][Ks]
    for (int64_t gr = gr0; gr < gr1; ++gr) {
      const int64_t n = gr / th, ti = gr % th;
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t t = (gr - gr0) * nc + j, q = 2 * (tj0 + j);
        for (int64_t g = 0; g < G; ++g)
          for (int64_t k0 = 0; k0 < Kgp; k0 += VL) {
            V m[16], out[4];
            const int64_t kc = g * Kgp + k0;
            for (int xi = 0; xi < 16; ++xi) m[xi] = Isa::load(Mb + (xi * nt + t) * Ks + kc);
            output_tile(m, Isa::load(bp + kc), out);
            if (nhwc) {
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
      if (!nhwc) {
        const int64_t q0 = 2 * tj0, nq = std::min(Q, 2 * tj1) - q0;
        for (int64_t a = 0; a < 2 && 2 * ti + a < P; ++a)
          for (int64_t g = 0; g < G; ++g)
            transpose_rows(obuf + a * 2 * nc * Ks + g * Kgp, Ks, nq, Kg, P * Q,
                           y + ((n * K + g * Kg) * P + 2 * ti + a) * Q + q0, nq);
      }
    }
  });
}

}  // namespace CONV_EXT_ISA_NS
}  // namespace cpu
}  // namespace conv_ext

#endif
