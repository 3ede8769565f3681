// igemm_core.cuh — the tensor-core main loop shared by the three implicit-GEMM kernels
// (igemm_forward.cu, igemm_backward_input.cu, igemm_backward_weight.cu).
//
// Every pass is one GEMM  C(M x N) = A(M x Kd) * B(Kd x N)  whose operands are never formed:
// a pass-specific *loader* knows, for k-iteration `it`, which 16-byte pieces of the activation
// and weight tensors make up the A and B tiles, and copies them global->shared with cp.async
// (zero-filled where the convolution reads padding or the tile hangs over the edge). The
// loader also owns the epilogue (where C's elements go). This file owns what is the same for
// all passes:
//
//   CTA tile 128 (M) x 128 (N) x 64 bytes of Kd per stage (32 fp16/bf16 or 16 fp32 elements),
//   256 threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4 mma tiles;
//   kStages = 4 shared-memory stages in a cp.async pipeline (3 tiles in flight while one is
//   consumed: global latency hidden behind 3 tiles of mma work);
//   fragments by ldmatrix (.trans for operands stored M/N-major), mma.sync m16n8k16 (fp16,
//   bf16) or m16n8k8 tf32 (fp32; with kTf32x3 each product is hi*hi + hi*lo + lo*hi, the
//   3xTF32 scheme, which restores float32 accuracy), fp32 accumulators in registers.
//
// Shared-memory layouts (per stage and operand; both hold 2 mma k-steps):
//   K-major  (forward, backward-input: channels are the reduction, contiguous in NHWC):
//            128 rows (m or n) x 80 bytes (64 of data + 16 of padding). The padding makes
//            the 8 row addresses of each ldmatrix phase fall in 8 different 4-bank groups.
//   MN-major (backward-weight: the reduction runs over pixels, the tile is contiguous in m/n):
//            64/sizeof(T) rows (k) x 136*sizeof(T) bytes (128 elements + 8 of padding): row
//            stride = 4 (mod 32) words for 16-bit (ldmatrix.trans conflict-free) and 8 (mod 32)
//            words for fp32 (scalar fragment loads conflict-free).
//
// Loader interface (L is a struct of device functions; Args is the kernel's parameter):
//   static constexpr bool kAKMajor, kBKMajor;   the smem layout of each operand
//   __device__ void init(const Args&, int tid);  per-thread precomputation (uses blockIdx)
//   __device__ bool active(const Args&) const;   false: this CTA has no tile (uniform per CTA)
//   __device__ int k_begin(const Args&) const, k_end(const Args&) const;
//   __device__ void load(const Args&, int it, uint32_t a_smem, uint32_t b_smem);  cp.async only
//   __device__ void store(const Args&, const float (&acc)[4][4][4], int warp_m, int warp_n, int lane);
//     acc[i][j][e]: m = warp_m*64 + i*16 + lane/4 + (e/2)*8, n = warp_n*32 + j*8 + 2*(lane%4) + e%2
#pragma once
#include <cuda_runtime.h>

#include "../conv_params.h"
#include "common.cuh"

namespace conv_ext {
namespace cuda {
namespace igemm {

constexpr int kBM = 128, kBN = 128, kThreads = 256, kStages = 4;
constexpr int kStageKBytes = 64;  // bytes of the reduction dimension per stage
constexpr int kKMajorRowBytes = kStageKBytes + 16;
constexpr int kKMajorBytes = 128 * kKMajorRowBytes;  // 10240
template <typename T> constexpr int mn_major_row_bytes() { return 136 * int(sizeof(T)); }
template <typename T> constexpr int mn_major_rows() { return kStageKBytes / int(sizeof(T)); }
template <typename T> constexpr int mn_major_bytes() { return mn_major_rows<T>() * mn_major_row_bytes<T>(); }  // 8704
template <typename T, bool kKMajor> constexpr int operand_bytes() { return kKMajor ? kKMajorBytes : mn_major_bytes<T>(); }
template <typename T, bool kAK, bool kBK> constexpr int smem_bytes() {
  return kStages * (operand_bytes<T, kAK>() + operand_bytes<T, kBK>());
}

// Where thread `tid`'s j-th 16-byte chunk (j = 0, 1) of a 512-chunk operand tile goes:
//   K-major: row = tile row (m or n), col = 16-byte column 0..3 of the 64 data bytes;
//   MN-major: row = k row, col = 16-byte column along m/n (8*sizeof(T) of them).
struct Chunk { int row, col; uint32_t smem_off; };
template <typename T, bool kKMajor>
__device__ __forceinline__ Chunk chunk_of(int tid, int j) {
  const int id = tid + kThreads * j;
  if (kKMajor) return {id >> 2, id & 3, static_cast<uint32_t>((id >> 2) * kKMajorRowBytes + (id & 3) * 16)};
  constexpr int cpr = 8 * int(sizeof(T));  // chunks per row
  return {id / cpr, id % cpr, static_cast<uint32_t>((id / cpr) * mn_major_row_bytes<T>() + (id % cpr) * 16)};
}

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
#if defined(CONV_EXT_EMULATE)
  return emu::lds32(addr);
#else
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
#endif
}

// Fragments of one mma k-step `kk` (0 or 1) of a stage.
// A: the 16 x kstep tile at rows m_off..m_off+15 -> a[4] (mma A-fragment order).
// B: two n8 tiles at n_off and n_off+8 -> b0[2], b1[2].
template <typename T, bool kKMajor> struct Frag;

template <typename T> struct Frag<T, true> {  // K-major: identical bytes for 16- and 32-bit types
  static __device__ __forceinline__ void a(uint32_t (&r)[4], uint32_t base, int m_off, int kk, int lane) {
    ldmatrix_x4(r, base + (m_off + (lane & 15)) * kKMajorRowBytes + kk * 32 + (lane >> 4) * 16);
  }
  static __device__ __forceinline__ void b(uint32_t (&b0)[2], uint32_t (&b1)[2], uint32_t base, int n_off, int kk, int lane) {
    uint32_t r[4];
    ldmatrix_x4(r, base + (n_off + ((lane >> 4) << 3) + (lane & 7)) * kKMajorRowBytes + kk * 32 + ((lane >> 3) & 1) * 16);
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
  }
};

template <typename T> struct FragMN16 {  // MN-major, 16-bit: ldmatrix.trans
  static constexpr int kRB = mn_major_row_bytes<T>();
  static __device__ __forceinline__ void a(uint32_t (&r)[4], uint32_t base, int m_off, int kk, int lane) {
    const int q = lane >> 3, krow = (lane & 7) + (q >> 1) * 8, moff = (q & 1) * 8;
    ldmatrix_x4_trans(r, base + (kk * 16 + krow) * kRB + (m_off + moff) * 2);
  }
  static __device__ __forceinline__ void b(uint32_t (&b0)[2], uint32_t (&b1)[2], uint32_t base, int n_off, int kk, int lane) {
    const int q = lane >> 3, krow = (lane & 7) + (q & 1) * 8, noff = (q >> 1) * 8;
    uint32_t r[4];
    ldmatrix_x4_trans(r, base + (kk * 16 + krow) * kRB + (n_off + noff) * 2);
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
  }
};
template <> struct Frag<__half, false> : FragMN16<__half> {};
template <> struct Frag<__nv_bfloat16, false> : FragMN16<__nv_bfloat16> {};

template <> struct Frag<float, false> {  // MN-major, fp32: no transposing ldmatrix for 32 bits
  static constexpr int kRB = mn_major_row_bytes<float>();
  static __device__ __forceinline__ void a(uint32_t (&r)[4], uint32_t base, int m_off, int kk, int lane) {
    const int g = lane >> 2, k = kk * 8 + (lane & 3);
    r[0] = lds32(base + k * kRB + (m_off + g) * 4);
    r[1] = lds32(base + k * kRB + (m_off + g + 8) * 4);
    r[2] = lds32(base + (k + 4) * kRB + (m_off + g) * 4);
    r[3] = lds32(base + (k + 4) * kRB + (m_off + g + 8) * 4);
  }
  static __device__ __forceinline__ void b(uint32_t (&b0)[2], uint32_t (&b1)[2], uint32_t base, int n_off, int kk, int lane) {
    const int g = lane >> 2, k = kk * 8 + (lane & 3);
    b0[0] = lds32(base + k * kRB + (n_off + g) * 4);
    b0[1] = lds32(base + (k + 4) * kRB + (n_off + g) * 4);
    b1[0] = lds32(base + k * kRB + (n_off + 8 + g) * 4);
    b1[1] = lds32(base + (k + 4) * kRB + (n_off + 8 + g) * 4);
  }
};

// float bits -> tf32 (hi) and the tf32 of the remainder (lo)
__device__ __forceinline__ void split_tf32(uint32_t bits, uint32_t& hi, uint32_t& lo) {
  const float x = __uint_as_float(bits);
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

// acc += A-stage * B-stage for the warp's 64 x 32 tile
template <typename T, bool kTf32x3, bool kAK, bool kBK>
__device__ __forceinline__ void mma_stage(float (&acc)[4][4][4], uint32_t a_base, uint32_t b_base,
                                          int warp_m, int warp_n, int lane) {
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    uint32_t a[4][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) Frag<T, kAK>::a(a[i], a_base, warp_m * 64 + i * 16, kk, lane);
#pragma unroll
    for (int j = 0; j < 2; ++j) Frag<T, kBK>::b(b[2 * j], b[2 * j + 1], b_base, warp_n * 32 + j * 16, kk, lane);
    if constexpr (sizeof(T) == 2) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_16816<T>(acc[i][j], a[i], b[j]);
    } else if constexpr (!kTf32x3) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) a[i][e] = to_tf32(__uint_as_float(a[i][e]));
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) b[j][e] = to_tf32(__uint_as_float(b[j][e]));
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_1688_tf32(acc[i][j], a[i], b[j]);
    } else {
      uint32_t a_lo[4][4], b_lo[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) split_tf32(a[i][e], a[i][e], a_lo[i][e]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) split_tf32(b[j][e], b[j][e], b_lo[j][e]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // small terms first
          mma_1688_tf32(acc[i][j], a_lo[i], b[j]);
          mma_1688_tf32(acc[i][j], a[i], b_lo[j]);
          mma_1688_tf32(acc[i][j], a[i], b[j]);
        }
    }
  }
}

template <typename T, bool kTf32x3, class L>
__global__ void __launch_bounds__(kThreads, 1) igemm_kernel(const typename L::Args args) {
  extern __shared__ __align__(128) unsigned char smem[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // built without an sm_80+ target: the PTX wrappers are empty; fail loudly, never silently
#endif
  constexpr int kABytes = operand_bytes<T, L::kAKMajor>(), kBBytes = operand_bytes<T, L::kBKMajor>();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 1, warp_n = warp >> 1;
  L ld;
  ld.init(args, tid);
  if (!ld.active(args)) return;  // uniform per CTA: before any barrier
  const uint32_t s0 = smem_u32(smem);
  const int kb = ld.k_begin(args), n = ld.k_end(args) - kb;

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // prologue: tiles 0 .. kStages-2 in flight (one commit group each, empty past the end)
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n) ld.load(args, kb + s, s0 + s * (kABytes + kBBytes), s0 + s * (kABytes + kBBytes) + kABytes);
    cp_async_commit();
  }
  for (int it = 0; it < n; ++it) {
    cp_async_wait<kStages - 2>();  // tile `it` has landed (this thread's part) ...
    __syncthreads();               // ... everyone's part; and stage (it-1) is no longer being read
    const int next = it + kStages - 1;
    if (next < n) {
      const uint32_t st = s0 + (next % kStages) * (kABytes + kBBytes);
      ld.load(args, kb + next, st, st + kABytes);
    }
    cp_async_commit();
    const uint32_t cur = s0 + (it % kStages) * (kABytes + kBBytes);
    mma_stage<T, kTf32x3, L::kAKMajor, L::kBKMajor>(acc, cur, cur + kABytes, warp_m, warp_n, lane);
  }
  cp_async_wait<0>();  // only empty groups can remain; drain them before the CTA exits
  ld.store(args, acc, warp_m, warp_n, lane);
}

// ---- channel padding: the stem's C = 3 (or any single-group C that is not a multiple of the
// 16-byte chunk, up to kMaxPaddedChannels) runs as a convolution of C rounded up, the extra
// channels zero: one copy of x into the workspace instead of a 16x slower direct kernel.
constexpr int64_t kMaxPaddedChannels = 64;

inline bool channels_fit(const Conv2dParams& p, int elem_size) { return p.Cg() % (16 / elem_size) == 0; }
inline bool channels_paddable(const Conv2dParams& p, int elem_size) {
  if (channels_fit(p, elem_size)) return true;
  const int64_t epc = 16 / elem_size, cpad = (p.C + epc - 1) / epc * epc;
  // one group, few channels, and a padded copy of x of at most 1 GiB
  return p.groups == 1 && p.C < kMaxPaddedChannels && p.N * p.H * p.W * cpad * elem_size <= (int64_t(1) << 30);
}
// the problem the kernel sees: p itself, or C rounded up to the chunk with x NHWC-contiguous
inline Conv2dParams padded_params(const Conv2dParams& p, int elem_size) {
  if (channels_fit(p, elem_size)) return p;
  const int64_t epc = 16 / elem_size;
  Conv2dParams q = p;
  q.C = (p.C + epc - 1) / epc * epc;
  q.xs_n = p.H * p.W * q.C, q.xs_c = 1, q.xs_h = p.W * q.C, q.xs_w = q.C;
  return q;
}
inline size_t padded_input_bytes(const Conv2dParams& p, int elem_size) {
  return channels_fit(p, elem_size) ? 0 : static_cast<size_t>(p.N * p.H * p.W * padded_params(p, elem_size).C) * elem_size;
}
inline size_t round_up_256(size_t b) { return (b + 255) / 256 * 256; }

// xp[n, h, w, c] = x[n, c, h, w] for c < C, 0 for C <= c < q.C (x in any strides)
template <typename T>
__global__ void pad_channels(Conv2dParams p, int64_t cpad, const T* __restrict__ x, T* __restrict__ xp) {
  const int64_t total = p.N * p.H * p.W * cpad;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % cpad, pix = i / cpad;
    const int64_t w = pix % p.W, h = (pix / p.W) % p.H, n = pix / (p.W * p.H);
    xp[i] = c < p.C ? x[n * p.xs_n + c * p.xs_c + h * p.xs_h + w * p.xs_w] : from_acc<T>(0.f);
  }
}

// Launches igemm_kernel<T, kTf32x3, L> (T = float picks TF32 or 3xTF32 at run time).
template <typename T, template <typename> class L>
cudaError_t launch(const typename L<T>::Args& args, dim3 grid, bool tf32x3, cudaStream_t stream) {
  constexpr int smem = smem_bytes<T, L<T>::kAKMajor, L<T>::kBKMajor>();
  auto run = [&](auto kernel) {
    cudaError_t err = CONV_EXT_SET_MAX_DYNAMIC_SMEM(kernel, smem);
    if (err != cudaSuccess) return err;
    CONV_EXT_LAUNCH(kernel, grid, kThreads, smem, stream, args);
    return CONV_EXT_LAST_ERROR();
  };
  if constexpr (sizeof(T) == 4) {
    if (tf32x3) return run(igemm_kernel<T, true, L<T>>);
  }
  return run(igemm_kernel<T, false, L<T>>);
}

}  // namespace igemm
}  // namespace cuda
}  // namespace conv_ext
