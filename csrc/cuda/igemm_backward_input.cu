// igemm_backward_input.cu — backward-input (dx) as an implicit GEMM on tensor cores (NHWC),
// without multiplying the zeros that the stride inserts.
//
//   nvcc -std=c++17 -arch=sm_90 -I csrc -Xptxas -v -c csrc/cuda/igemm_backward_input.cu
//
// dx[n, ih, iw, g*Cg + c] = sum_{k, r, s} dy[n, oh, ow, g*Kg + k] * w[g*Kg + k, c, r, s]
//   over the (r, s) with ih + pad_h - r*dil_h = oh*stride_h (and the same along w).
// Written as a transposed convolution this reads a dy with stride-1 zeros between its rows
// and columns: most of the products would be with zeros. Instead the dx pixels are split by
// phase (ih mod stride_h, iw mod stride_w), one grid slice each (grid.z = groups x phases):
// within a phase the valid taps are the same for every pixel: r = r0, r0 + step, ... (the r
// with (ph + pad_h - r*dil_h) divisible by stride_h; step = stride_h / gcd(stride_h, dil_h)),
// and oh = ih/stride_h + (ph + pad_h - r*dil_h)/stride_h. So each phase is a dense implicit
// GEMM  M = N x (pixels of the phase),  N = Cg,  Kd = (valid taps) x Kg  over only real data.
// A phase with no valid tap (possible when stride > kernel extent) has Kd = 0: its dx is 0
// and the epilogue writes those zeros.
// A tile of A: 128 dx pixels x 32 (fp16/bf16; 16 fp32) output channels of dy, 16-byte cp.async
// from NHWC. B: the weights pre-arranged (into the workspace) as G x R x S x Cg x Kg, so that
// the reduction channels k are contiguous. Main loop: igemm_core.cuh.
// Supports: fp16, bf16, fp32; Kg a multiple of 8 (fp16/bf16) or 4 (fp32); groups x stride_h x
// stride_w <= 65535.
#include "igemm_core.cuh"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

template <typename T>
struct BinArgs {
  Conv2dParams p;
  const T* dy;  // N x P x Q x K
  const T* w2;  // G x R x S x Cg x Kg (the workspace)
  T* dx;        // N x H x W x C
  int kblocks;  // ceil(Kg / channels per stage)
};

__device__ __forceinline__ int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t t = a % b;
    a = b, b = t;
  }
  return a;
}

// The taps t in [0, T) of one axis that reach input positions of phase `ph`:
// t = first + j*step for j < count; out = in/stride + offset(t), offset(t) = (ph + pad - t*dil)/stride.
struct Taps {
  int first, step, count;
  __device__ void init(int64_t ph, int64_t pad, int64_t dil, int64_t stride, int64_t taps) {
    step = static_cast<int>(stride / gcd64(stride, dil));
    first = -1;
    for (int t = 0; t < step && t < taps; ++t)
      if ((ph + pad - t * dil) % stride == 0) {
        first = t;
        break;
      }
    count = first < 0 ? 0 : static_cast<int>((taps - 1 - first) / step + 1);
  }
};

template <typename T>
struct BinLoader {
  using Args = BinArgs<T>;
  static constexpr bool kAKMajor = true, kBKMajor = true;
  static constexpr int kEPC = 16 / int(sizeof(T));
  static constexpr int kCK = 64 / int(sizeof(T));

  int grp, ph, pw;
  int64_t hp, wp, M;  // the phase's dx rows and columns (ih = ph + stride_h*i), pixels N*hp*wp
  Taps tr, ts;
  int64_t m0;
  int n0, col;
  uint32_t a_off[2], b_off[2];
  int64_t a_base[2];  // n*ys_n + grp*Kg; -1: m >= M
  int a_i[2], a_j[2];
  int b_c[2];         // dx channel within the group; -1: >= Cg

  __device__ void init(const Args& a, int tid) {
    const Conv2dParams& p = a.p;
    const int phases = static_cast<int>(p.stride_h * p.stride_w);
    grp = blockIdx.z / phases;
    const int phase = blockIdx.z % phases;
    ph = phase / static_cast<int>(p.stride_w), pw = phase % static_cast<int>(p.stride_w);
    hp = ph < p.H ? (p.H - ph + p.stride_h - 1) / p.stride_h : 0;
    wp = pw < p.W ? (p.W - pw + p.stride_w - 1) / p.stride_w : 0;
    M = p.N * hp * wp;
    tr.init(ph, p.pad_h, p.dil_h, p.stride_h, p.R);
    ts.init(pw, p.pad_w, p.dil_w, p.stride_w, p.S);
    m0 = int64_t(blockIdx.x) * igemm::kBM;
    n0 = blockIdx.y * igemm::kBN;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const igemm::Chunk c = igemm::chunk_of<T, true>(tid, j);
      col = c.col;
      a_off[j] = b_off[j] = c.smem_off;
      const int64_t m = m0 + c.row;
      if (m < M) {
        a_j[j] = static_cast<int>(m % wp);
        a_i[j] = static_cast<int>((m / wp) % hp);
        a_base[j] = (m / (wp * hp)) * p.ys_n + grp * p.Kg();
      } else {
        a_base[j] = -1, a_i[j] = a_j[j] = 0;
      }
      const int64_t ch = n0 + c.row;
      b_c[j] = ch < p.Cg() ? static_cast<int>(ch) : -1;
    }
  }
  __device__ bool active(const Args&) const { return m0 < M; }
  __device__ int k_begin(const Args&) const { return 0; }
  __device__ int k_end(const Args& a) const { return tr.count * ts.count * a.kblocks; }

  __device__ void load(const Args& a, int it, uint32_t a_smem, uint32_t b_smem) const {
    const Conv2dParams& p = a.p;
    const int kb = it % a.kblocks, rs = it / a.kblocks;
    const int r = tr.first + (rs / ts.count) * tr.step, s = ts.first + (rs % ts.count) * ts.step;
    const int64_t off_h = (ph + p.pad_h - r * p.dil_h) / p.stride_h;  // exact division
    const int64_t off_w = (pw + p.pad_w - s * p.dil_w) / p.stride_w;
    const int64_t k = int64_t(kb) * kCK + col * kEPC;  // first output channel of the chunk
    const bool k_ok = k < p.Kg();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t oh = a_i[j] + off_h, ow = a_j[j] + off_w;
      const bool ok = k_ok && a_base[j] >= 0 && oh >= 0 && oh < p.P && ow >= 0 && ow < p.Q;
      const T* src = ok ? a.dy + a_base[j] + oh * p.ys_p + ow * p.ys_q + k : a.dy;
      cp_async_16(a_smem + a_off[j], src, ok);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const bool ok = k_ok && b_c[j] >= 0;
      const T* src = ok ? a.w2 + (((grp * p.R + r) * p.S + s) * p.Cg() + b_c[j]) * p.Kg() + k : a.w2;
      cp_async_16(b_smem + b_off[j], src, ok);
    }
  }

  __device__ void store(const Args& a, const float (&acc)[4][4][4], int warp_m, int warp_n, int lane) const {
    const Conv2dParams& p = a.p;
    const int64_t Cg = p.Cg();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + warp_m * 64 + i * 16 + (lane >> 2) + h * 8;
        if (m >= M) continue;
        const int64_t jj = m % wp, ii = (m / wp) % hp, n = m / (wp * hp);
        const int64_t ih = ph + ii * p.stride_h, iw = pw + jj * p.stride_w;
        T* row = a.dx + n * p.xs_n + ih * p.xs_h + iw * p.xs_w + grp * Cg;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t c = n0 + warp_n * 32 + j * 8 + 2 * (lane & 3) + e;
            if (c < Cg) row[c] = from_acc<T>(acc[i][j][2 * h + e]);
          }
      }
  }
};

// w2[g, r, s, c, k] = w[g*Kg + k, c, r, s]
template <typename T>
__global__ void weight_to_grsck(Conv2dParams p, const T* __restrict__ w, T* __restrict__ w2) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), total = p.K * p.R * p.S * Cg;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % Kg, c = (i / Kg) % Cg, s = (i / (Kg * Cg)) % p.S, r = (i / (Kg * Cg * p.S)) % p.R,
                  g = i / (Kg * Cg * p.S * p.R);
    w2[i] = w[(g * Kg + k) * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s];
  }
}

}  // namespace

bool igemm_backward_input_supports(const Conv2dParams& p, int elem_size) {
  if (elem_size != 2 && elem_size != 4) return false;
  const int64_t epc = 16 / elem_size;
  const int64_t hp = ceil_div(p.H, p.stride_h), wp = ceil_div(p.W, p.stride_w);
  return p.Kg() > 0 && p.Kg() % epc == 0 && p.Cg() > 0 && p.groups * p.stride_h * p.stride_w <= 65535 &&
         ceil_div(p.Cg(), igemm::kBN) <= 65535 && ceil_div(p.N * hp * wp, igemm::kBM) < (int64_t(1) << 31) &&
         p.R * p.S * ceil_div(p.Kg(), 64 / elem_size) < (int64_t(1) << 31) && p.P < (int64_t(1) << 30) &&
         p.Q < (int64_t(1) << 30);
}

size_t igemm_backward_input_workspace(const Conv2dParams& p, int elem_size) {
  return static_cast<size_t>(p.K * p.R * p.S * p.Cg()) * elem_size;
}

template <typename T>
cudaError_t igemm_backward_input(const Conv2dParams& p, const T* dy, const T* w, T* dx, void* workspace,
                                 bool tf32x3, cudaStream_t stream) {
  if (p.N * p.H * p.W * p.C == 0) return cudaSuccess;
  BinArgs<T> a{p, dy, static_cast<const T*>(workspace), dx, static_cast<int>(ceil_div(p.Kg(), 64 / int(sizeof(T))))};
  const int64_t wn = p.K * p.R * p.S * p.Cg();
  auto* transform = weight_to_grsck<T>;
  CONV_EXT_LAUNCH(transform, grid_for(wn, 256), 256, 0, stream, p, w, static_cast<T*>(workspace));
  cudaError_t err = CONV_EXT_LAST_ERROR();
  if (err != cudaSuccess) return err;
  // grid.x covers the largest phase (phase 0); smaller phases leave their last CTAs idle
  const int64_t m_max = p.N * ceil_div(p.H, p.stride_h) * ceil_div(p.W, p.stride_w);
  const dim3 grid(static_cast<unsigned>(ceil_div(m_max, igemm::kBM)), static_cast<unsigned>(ceil_div(p.Cg(), igemm::kBN)),
                  static_cast<unsigned>(p.groups * p.stride_h * p.stride_w));
  return igemm::launch<T, BinLoader>(a, grid, tf32x3, stream);
}

template cudaError_t igemm_backward_input<float>(const Conv2dParams&, const float*, const float*, float*, void*, bool, cudaStream_t);
template cudaError_t igemm_backward_input<__half>(const Conv2dParams&, const __half*, const __half*, __half*, void*, bool, cudaStream_t);
template cudaError_t igemm_backward_input<__nv_bfloat16>(const Conv2dParams&, const __nv_bfloat16*, const __nv_bfloat16*,
                                                         __nv_bfloat16*, void*, bool, cudaStream_t);

}  // namespace cuda
}  // namespace conv_ext
