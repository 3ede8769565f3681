// igemm_forward.cu — forward convolution as an implicit GEMM on tensor cores (NHWC).
//
//   nvcc -std=c++17 -arch=sm_90 -I csrc -Xptxas -v -c csrc/cuda/igemm_forward.cu   (or: make cuda-check)
//
// Per group g (grid.z):  y[m, g*Kg + n] = bias + sum_{r, s, c} x[pixel(m) + tap(r, s), g*Cg + c] * w[n, c, r, s]
//   M  = N*P*Q output pixels (m -> n, oh, ow),  N = Kg output channels,  Kd = R*S*Cg,
//   iterated as (r, s, 64-byte block of channels): a tile of A is 128 output pixels x 32
//   channels (fp16/bf16; 16 for fp32) of the input shifted by tap (r, s), each row one 16-byte
//   cp.async per chunk straight from NHWC memory, zero-filled where the tap reads padding.
//   B is the same slice of the weights, pre-arranged (one small kernel, into the workspace) as
//   K x R x S x Cg so that its channels are contiguous too. 1x1 convolutions are this GEMM
//   with a single tap: a plain GEMM on the NHWC activations.
// The main loop (4-stage cp.async pipeline, ldmatrix, mma.sync) is igemm_core.cuh.
// Why faster than the reference: each loaded input element feeds 128 output channels and each
// weight 128 pixels from shared memory, and the multiply-adds run on tensor cores.
// Supports: fp16, bf16, fp32 (TF32 or 3xTF32); Cg a multiple of 8 (fp16/bf16) or 4 (fp32), so
// that every 16-byte chunk lies inside one pixel's channels of one group, or one group of fewer
// than 64 channels (the 7x7 stem's C = 3), which runs with x and w padded with zero channels
// (igemm_core.cuh, padded_params); 16-byte aligned x (conv2d_cuda.cpp makes sure); groups <= 65535.
#include "igemm_core.cuh"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

template <typename T>
struct FwdArgs {
  Conv2dParams p;
  const T* x;     // N x H x W x C
  const T* wt;    // K x R x S x Cg (the workspace)
  const T* bias;  // K or nullptr
  T* y;           // N x P x Q x K
  int64_t M;      // N*P*Q
  int cblocks;    // ceil(Cg / channels per stage)
};

template <typename T>
struct FwdLoader {
  using Args = FwdArgs<T>;
  static constexpr bool kAKMajor = true, kBKMajor = true;
  static constexpr int kEPC = 16 / int(sizeof(T));  // elements per 16-byte chunk
  static constexpr int kCK = 64 / int(sizeof(T));   // channels per stage

  int grp;               // group
  int64_t m0;            // first output pixel of the tile
  int n0;                // first output channel (within the group) of the tile
  int col;               // this thread's 16-byte column (same for its two chunks)
  uint32_t a_off[2], b_off[2];
  int64_t a_base[2];     // element offset of pixel n's first channel of the group; -1: m >= M
  int a_ih[2], a_iw[2];  // top-left input coordinate of the output pixel
  int64_t b_row[2];      // element offset of w[g*Kg + n, 0, 0, 0] in wt; -1: n >= Kg

  __device__ void init(const Args& a, int tid) {
    const Conv2dParams& p = a.p;
    grp = blockIdx.z;
    m0 = int64_t(blockIdx.x) * igemm::kBM;
    n0 = blockIdx.y * igemm::kBN;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const igemm::Chunk c = igemm::chunk_of<T, true>(tid, j);
      col = c.col;
      a_off[j] = b_off[j] = c.smem_off;
      const int64_t m = m0 + c.row;
      if (m < a.M) {
        const int64_t ow = m % p.Q, oh = (m / p.Q) % p.P, n = m / (p.Q * p.P);
        a_base[j] = n * p.xs_n + grp * p.Cg();
        a_ih[j] = static_cast<int>(oh * p.stride_h - p.pad_h);
        a_iw[j] = static_cast<int>(ow * p.stride_w - p.pad_w);
      } else {
        a_base[j] = -1, a_ih[j] = a_iw[j] = 0;
      }
      const int64_t k = n0 + c.row;
      b_row[j] = k < p.Kg() ? (grp * p.Kg() + k) * p.R * p.S * p.Cg() : -1;
    }
  }
  __device__ bool active(const Args& a) const { return m0 < a.M; }
  __device__ int k_begin(const Args&) const { return 0; }
  __device__ int k_end(const Args& a) const { return static_cast<int>(a.p.R * a.p.S) * a.cblocks; }

  __device__ void load(const Args& a, int it, uint32_t a_smem, uint32_t b_smem) const {
    const Conv2dParams& p = a.p;
    const int cb = it % a.cblocks, rs = it / a.cblocks;
    const int r = rs / static_cast<int>(p.S), s = rs % static_cast<int>(p.S);
    const int64_t c = int64_t(cb) * kCK + col * kEPC;  // first channel of this thread's chunk
    const bool c_ok = c < p.Cg();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t ih = a_ih[j] + r * p.dil_h, iw = a_iw[j] + s * p.dil_w;
      const bool ok = c_ok && a_base[j] >= 0 && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      const T* src = ok ? a.x + a_base[j] + ih * p.xs_h + iw * p.xs_w + c : a.x;
      cp_async_16(a_smem + a_off[j], src, ok);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const bool ok = c_ok && b_row[j] >= 0;
      const T* src = ok ? a.wt + b_row[j] + (r * p.S + s) * p.Cg() + c : a.wt;
      cp_async_16(b_smem + b_off[j], src, ok);
    }
  }

  __device__ void store(const Args& a, const float (&acc)[4][4][4], int warp_m, int warp_n, int lane) const {
    const Conv2dParams& p = a.p;
    const int64_t Kg = p.Kg();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + warp_m * 64 + i * 16 + (lane >> 2) + h * 8;
        if (m >= a.M) continue;
        T* yrow = a.y + m * p.K + grp * Kg;  // NHWC: pixel m's channels start at m*K
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t n = n0 + warp_n * 32 + j * 8 + 2 * (lane & 3) + e;
            if (n >= Kg) continue;
            float v = acc[i][j][2 * h + e];
            if (a.bias) v += to_acc<float>(a.bias[grp * Kg + n]);
            yrow[n] = from_acc<T>(v);
          }
      }
  }
};

// wt[k, r, s, c] = w[k, c, r, s] for c < Cg, 0 for Cg <= c < cpad (padded channels)
template <typename T>
__global__ void weight_to_krsc(Conv2dParams p, int64_t cpad, const T* __restrict__ w, T* __restrict__ wt) {
  const int64_t Cg = p.Cg(), total = p.K * p.R * p.S * cpad;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % cpad, s = (i / cpad) % p.S, r = (i / (cpad * p.S)) % p.R, k = i / (cpad * p.S * p.R);
    wt[i] = c < Cg ? w[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s] : from_acc<T>(0.f);
  }
}

}  // namespace

bool tensor_core_device() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 8;
}

bool igemm_forward_supports(const Conv2dParams& p, int elem_size) {
  if (elem_size != 2 && elem_size != 4) return false;
  return p.Cg() > 0 && igemm::channels_paddable(p, elem_size) && p.Kg() > 0 && p.groups <= 65535 &&
         ceil_div(p.Kg(), igemm::kBN) <= 65535 && ceil_div(p.N * p.P * p.Q, igemm::kBM) < (int64_t(1) << 31) &&
         p.R * p.S * ceil_div(p.Cg(), 64 / elem_size) < (int64_t(1) << 31) && p.H < (int64_t(1) << 30) &&
         p.W < (int64_t(1) << 30);
}

// [wt: K x R x S x Cg' weights][x padded to Cg' channels, when Cg' != Cg]
size_t igemm_forward_workspace(const Conv2dParams& p, int elem_size) {
  const Conv2dParams q = igemm::padded_params(p, elem_size);
  return igemm::round_up_256(static_cast<size_t>(q.K * q.R * q.S * q.Cg()) * elem_size) +
         igemm::padded_input_bytes(p, elem_size);
}

template <typename T>
cudaError_t igemm_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                          void* workspace, bool tf32x3, cudaStream_t stream) {
  constexpr int es = sizeof(T);
  const Conv2dParams q = igemm::padded_params(p, es);  // == p unless channels are padded
  if (q.N * q.P * q.Q == 0 || q.K == 0) return cudaSuccess;
  T* wt = static_cast<T*>(workspace);
  const int64_t wn = q.K * q.R * q.S * q.Cg();
  auto* transform = weight_to_krsc<T>;
  CONV_EXT_LAUNCH(transform, grid_for(wn, 256), 256, 0, stream, p, q.Cg(), w, wt);
  cudaError_t err = CONV_EXT_LAST_ERROR();
  if (err != cudaSuccess) return err;
  const T* xk = x;
  if (q.C != p.C) {  // stage x with zero channels appended
    T* xp = reinterpret_cast<T*>(static_cast<char*>(workspace) + igemm::round_up_256(static_cast<size_t>(wn) * es));
    auto* pad = igemm::pad_channels<T>;
    CONV_EXT_LAUNCH(pad, grid_for(q.N * q.H * q.W * q.C, 256), 256, 0, stream, p, q.C, x, xp);
    err = CONV_EXT_LAST_ERROR();
    if (err != cudaSuccess) return err;
    xk = xp;
  }
  FwdArgs<T> a{q, xk, wt, bias, y, q.N * q.P * q.Q, static_cast<int>(ceil_div(q.Cg(), 64 / es))};
  const dim3 grid(static_cast<unsigned>(ceil_div(a.M, igemm::kBM)), static_cast<unsigned>(ceil_div(q.Kg(), igemm::kBN)),
                  static_cast<unsigned>(q.groups));
  return igemm::launch<T, FwdLoader>(a, grid, tf32x3, stream);
}

template cudaError_t igemm_forward<float>(const Conv2dParams&, const float*, const float*, const float*, float*, void*, bool, cudaStream_t);
template cudaError_t igemm_forward<__half>(const Conv2dParams&, const __half*, const __half*, const __half*, __half*, void*, bool, cudaStream_t);
template cudaError_t igemm_forward<__nv_bfloat16>(const Conv2dParams&, const __nv_bfloat16*, const __nv_bfloat16*,
                                                  const __nv_bfloat16*, __nv_bfloat16*, void*, bool, cudaStream_t);

}  // namespace cuda
}  // namespace conv_ext
