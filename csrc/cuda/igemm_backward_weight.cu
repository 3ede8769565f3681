// igemm_backward_weight.cu — backward-weight (dw) as an implicit GEMM on tensor cores (NHWC),
// with a deterministic split-K reduction.
//
//   nvcc -std=c++17 -arch=sm_90 -I csrc -Xptxas -v -c csrc/cuda/igemm_backward_weight.cu
//
// Per group g:  dw[g*Kg + k, c, r, s] = sum_{n, oh, ow} dy[n, oh, ow, g*Kg + k] * x[n, ih, iw, g*Cg + c]
//   with ih = oh*stride_h - pad_h + r*dil_h (and the same along w), x = 0 outside the image.
//   GEMM: M = Kg, N = R*S*Cg (column (r, s, c), c fastest), Kd = N*P*Q output pixels.
// The reduction is long (N*P*Q: 100k for ResNet layers at batch 32) and the output small, so
// the Kd range is split over grid.z (split-K) to fill the GPU. Each split writes its fp32
// partial tile to the workspace; a second kernel sums the splits for each dw element in split
// order 0, 1, 2, ... and converts. No atomics, so the result is the same bits on every run
// (the split count depends only on the problem and the device's SM count).
// Both operands are contiguous along M/N in NHWC and along nothing in Kd, so they are staged
// MN-major (rows = pixels) and their fragments read with ldmatrix.trans (fp16/bf16) or
// scalar shared loads (fp32); main loop: igemm_core.cuh.
// Supports: fp16, bf16, fp32; Kg and Cg multiples of 8 (fp16/bf16) or 4 (fp32), or, for Cg, one
// group of fewer than 64 channels (the stem's C = 3), run with x padded with zero channels.
#include <algorithm>

#include "igemm_core.cuh"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

template <typename T>
struct BwArgs {
  Conv2dParams p;
  const T* dy;  // N x P x Q x K
  const T* x;   // N x H x W x C
  float* part;  // splits x K x (R*S*Cg) fp32 partial sums (the workspace)
  int64_t npq;  // N*P*Q, the reduction length
  int64_t rsc;  // R*S*Cg, the GEMM's N
  int kiters;   // ceil(npq / rows per stage)
  int per_split, splits;
};

template <typename T>
struct BwLoader {
  using Args = BwArgs<T>;
  static constexpr bool kAKMajor = false, kBKMajor = false;
  static constexpr int kEPC = 16 / int(sizeof(T));
  static constexpr int kRows = igemm::mn_major_rows<T>();  // pixels per stage

  int grp, split;
  int m0;
  int64_t n0;
  uint32_t a_off[2], b_off[2];
  int row[2];
  bool a_ok, b_ok;  // this thread's column of A (output channels) / B (r, s, c) is inside
  int64_t a_col;    // grp*Kg + m0 + col*EPC
  int64_t b_c;      // grp*Cg + c
  int64_t b_dh, b_dw;  // r*dil_h - pad_h, s*dil_w - pad_w

  __device__ void init(const Args& a, int tid) {
    const Conv2dParams& p = a.p;
    grp = blockIdx.z / a.splits, split = blockIdx.z % a.splits;
    m0 = blockIdx.x * igemm::kBM;
    n0 = int64_t(blockIdx.y) * igemm::kBN;
    int col = 0;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const igemm::Chunk c = igemm::chunk_of<T, false>(tid, j);
      row[j] = c.row, col = c.col;  // the column is the same for both chunks
      a_off[j] = b_off[j] = c.smem_off;
    }
    const int64_t m = m0 + col * kEPC;
    a_ok = m < p.Kg();
    a_col = grp * p.Kg() + m;
    const int64_t nc = n0 + col * kEPC;
    b_ok = nc < a.rsc;
    const int64_t c = nc % p.Cg(), rs = nc / p.Cg();
    b_c = grp * p.Cg() + c;
    b_dh = (rs / p.S) * p.dil_h - p.pad_h;
    b_dw = (rs % p.S) * p.dil_w - p.pad_w;
  }
  __device__ bool active(const Args&) const { return true; }
  __device__ int k_begin(const Args& a) const { return split * a.per_split; }
  __device__ int k_end(const Args& a) const { return min(a.kiters, (split + 1) * a.per_split); }

  __device__ void load(const Args& a, int it, uint32_t a_smem, uint32_t b_smem) const {
    const Conv2dParams& p = a.p;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t q = int64_t(it) * kRows + row[j];  // output pixel (n, oh, ow)
      const bool in = q < a.npq;
      const bool aok = in && a_ok;
      cp_async_16(a_smem + a_off[j], aok ? a.dy + q * p.K + a_col : a.dy, aok);
      const int64_t ow = q % p.Q, oh = (q / p.Q) % p.P, n = q / (p.Q * p.P);
      const int64_t ih = oh * p.stride_h + b_dh, iw = ow * p.stride_w + b_dw;
      const bool bok = in && b_ok && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
      cp_async_16(b_smem + b_off[j], bok ? a.x + n * p.xs_n + ih * p.xs_h + iw * p.xs_w + b_c : a.x, bok);
    }
  }

  __device__ void store(const Args& a, const float (&acc)[4][4][4], int warp_m, int warp_n, int lane) const {
    const int64_t Kg = a.p.Kg();
    float* out = a.part + (int64_t(split) * a.p.K + grp * Kg) * a.rsc;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + warp_m * 64 + i * 16 + (lane >> 2) + h * 8;
        if (m >= Kg) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t n = n0 + warp_n * 32 + j * 8 + 2 * (lane & 3) + e;
            if (n < a.rsc) out[m * a.rsc + n] = acc[i][j][2 * h + e];
          }
      }
  }
};

// dw[k, c, r, s] = sum over splits, in split order, of part[split, k, (r*S + s)*cpad + c]
// (cpad: the channels the GEMM ran with, >= Cg when they were padded)
template <typename T>
__global__ void reduce_splits(Conv2dParams p, const float* __restrict__ part, int splits, int64_t cpad, T* __restrict__ dw) {
  const int64_t Cg = p.Cg(), total = p.K * Cg * p.R * p.S, split_stride = p.K * p.R * p.S * cpad;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = i % p.S, r = (i / p.S) % p.R, c = (i / (p.S * p.R)) % Cg, k = i / (p.S * p.R * Cg);
    const float* src = part + (k * p.R * p.S + r * p.S + s) * cpad + c;
    float sum = 0.f;
    for (int z = 0; z < splits; ++z) sum += src[int64_t(z) * split_stride];
    dw[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s] = from_acc<T>(sum);
  }
}

struct Split { int kiters, per_split, splits; };

// How many slices the reduction is cut into: enough CTAs for ~2 waves, >= 4 k-iterations each.
Split plan(const Conv2dParams& p, int elem_size) {
  const int64_t rows = 64 / elem_size;
  const int64_t kiters = ceil_div(p.N * p.P * p.Q, rows);
  const int64_t tiles = ceil_div(p.Kg(), igemm::kBM) * ceil_div(p.R * p.S * p.Cg(), igemm::kBN) * p.groups;
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  (void)cudaGetLastError();  // a failed query only changes the plan, not the result's correctness
  int64_t splits = ceil_div(2 * int64_t(sms), tiles);
  splits = std::min<int64_t>(splits, 64);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, kiters / 4));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, 65535 / p.groups));
  splits = std::max<int64_t>(splits, 1);
  const int64_t per = ceil_div(kiters, splits);
  return {static_cast<int>(kiters), static_cast<int>(per), static_cast<int>(ceil_div(kiters, per))};
}

}  // namespace

bool igemm_backward_weight_supports(const Conv2dParams& p, int elem_size) {
  if (elem_size != 2 && elem_size != 4) return false;
  const int64_t epc = 16 / elem_size;
  return p.Kg() > 0 && p.Cg() > 0 && p.Kg() % epc == 0 && igemm::channels_paddable(p, elem_size) && p.groups <= 65535 &&
         ceil_div(p.Kg(), igemm::kBM) < (int64_t(1) << 31) && ceil_div(p.R * p.S * p.Cg(), igemm::kBN) <= 65535 &&
         ceil_div(p.N * p.P * p.Q, 64 / elem_size) < (int64_t(1) << 30);
}

// [fp32 partials: splits x K x R*S*Cg'][x padded to Cg' channels, when Cg' != Cg]
size_t igemm_backward_weight_workspace(const Conv2dParams& p, int elem_size) {
  if (p.N * p.P * p.Q == 0) return 0;
  const Conv2dParams q = igemm::padded_params(p, elem_size);
  return igemm::round_up_256(static_cast<size_t>(plan(q, elem_size).splits) * static_cast<size_t>(q.K * q.R * q.S * q.Cg()) *
                             sizeof(float)) +
         igemm::padded_input_bytes(p, elem_size);
}

template <typename T>
cudaError_t igemm_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw, void* workspace,
                                  bool tf32x3, cudaStream_t stream) {
  if (p.N * p.P * p.Q == 0 || p.K * p.Cg() * p.R * p.S == 0) return cudaSuccess;  // the op zeroes dw for N == 0
  constexpr int es = sizeof(T);
  const Conv2dParams q = igemm::padded_params(p, es);  // == p unless channels are padded
  const Split sp = plan(q, es);
  float* part = static_cast<float*>(workspace);
  const T* xk = x;
  cudaError_t err = cudaSuccess;
  if (q.C != p.C) {  // stage x with zero channels appended
    const size_t part_bytes = igemm::round_up_256(static_cast<size_t>(sp.splits) * q.K * q.R * q.S * q.Cg() * sizeof(float));
    T* xp = reinterpret_cast<T*>(static_cast<char*>(workspace) + part_bytes);
    auto* pad = igemm::pad_channels<T>;
    CONV_EXT_LAUNCH(pad, grid_for(q.N * q.H * q.W * q.C, 256), 256, 0, stream, p, q.C, x, xp);
    err = CONV_EXT_LAST_ERROR();
    if (err != cudaSuccess) return err;
    xk = xp;
  }
  BwArgs<T> a{q, dy, xk, part, q.N * q.P * q.Q, q.R * q.S * q.Cg(), sp.kiters, sp.per_split, sp.splits};
  const dim3 grid(static_cast<unsigned>(ceil_div(q.Kg(), igemm::kBM)), static_cast<unsigned>(ceil_div(a.rsc, igemm::kBN)),
                  static_cast<unsigned>(q.groups * sp.splits));
  err = igemm::launch<T, BwLoader>(a, grid, tf32x3, stream);
  if (err != cudaSuccess) return err;
  const int64_t total = p.K * p.Cg() * p.R * p.S;
  auto* reduce = reduce_splits<T>;
  CONV_EXT_LAUNCH(reduce, grid_for(total, 256), 256, 0, stream, p, static_cast<const float*>(part), sp.splits, q.Cg(), dw);
  return CONV_EXT_LAST_ERROR();
}

template cudaError_t igemm_backward_weight<float>(const Conv2dParams&, const float*, const float*, float*, void*, bool, cudaStream_t);
template cudaError_t igemm_backward_weight<__half>(const Conv2dParams&, const __half*, const __half*, __half*, void*, bool, cudaStream_t);
template cudaError_t igemm_backward_weight<__nv_bfloat16>(const Conv2dParams&, const __nv_bfloat16*, const __nv_bfloat16*,
                                                          __nv_bfloat16*, void*, bool, cudaStream_t);

}  // namespace cuda
}  // namespace conv_ext
