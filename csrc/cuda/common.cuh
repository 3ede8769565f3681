// common.cuh — small device helpers shared by the CUDA kernels: accumulator types, conversions,
// the 64-bit grid-stride loop, and the inline-PTX wrappers (cp.async, ldmatrix, mma.sync).
//
// Included only by .cu files; includes only CUDA headers, so every .cu compiles with plain nvcc.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace conv_ext {
namespace cuda {

// Accumulator type: double for double, float for everything else.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename A, typename T> __device__ __forceinline__ A to_acc(T v) { return static_cast<A>(v); }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }

// Blocks for a grid-stride loop over `total` items: enough to fill any current GPU, never more
// than the items need. The loops index with int64_t, so `total` may exceed 2^31.
inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 16;  // 65536 blocks x 256 threads: >= 16 waves on an H100
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+). The .cu files that use them are compiled for sm_80 and sm_90 only.
// With CONV_EXT_EMULATE (host compiler only) each wrapper calls an emulation of its instruction
// instead: tests/cpp/igemm_emulate.cpp runs the real tensor-core kernels, a CTA at a time with
// one host thread per CUDA thread, to check their indexing where no GPU is available.
// ---------------------------------------------------------------------------------------------
#if defined(CONV_EXT_EMULATE)
namespace emu {
uint32_t smem_u32(const void* p);
void cp_async_16(uint32_t dst, const void* src, bool valid);
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans);
void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int kind);  // 0 fp16, 1 bf16, 2 tf32
uint32_t lds32(uint32_t addr);
uint32_t to_tf32(float x);
// the emulator runs a launch as host threads, CTA by CTA (defined in igemm_emulate.cpp)
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, const A&... args);
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);
cudaError_t last_error();
}  // namespace emu
#define CONV_EXT_EMU(call) call;
#else
#define CONV_EXT_EMU(call)
#endif

// Every kernel launch goes through these two macros (`kernel` must be a name without commas:
// alias template instances first), so the emulator can run the launchers unchanged.
#if defined(CONV_EXT_EMULATE)
#define CONV_EXT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::conv_ext::cuda::emu::launch(kernel, dim3(grid), dim3(block), __VA_ARGS__)
#define CONV_EXT_LAST_ERROR() ::conv_ext::cuda::emu::last_error()
#define CONV_EXT_SET_MAX_DYNAMIC_SMEM(kernel, bytes) ::conv_ext::cuda::emu::set_max_dynamic_smem((const void*)(kernel), bytes)
#else
#define CONV_EXT_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define CONV_EXT_LAST_ERROR() cudaGetLastError()
#define CONV_EXT_SET_MAX_DYNAMIC_SMEM(kernel, bytes) \
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
#endif
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
#if defined(CONV_EXT_EMULATE)
  return emu::smem_u32(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// 16-byte global->shared copy that bypasses registers; when !valid it writes 16 zero bytes
// (src-size 0: nothing is read, so `src` may be any mapped address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  CONV_EXT_EMU(emu::cp_async_16(dst, src, valid))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// wait until at most N committed groups of this thread are still in flight
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 matrices of 16-bit elements (rows of 16 bytes); lane l gives the address of row l%8
// of matrix l/8; register i receives matrix i, thread t holding row t/4, elements 2*(t%4)..+1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  CONV_EXT_EMU(emu::ldmatrix_x4(r, addr, false))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}
// The same, transposed: thread t holds column t/4, elements (rows) 2*(t%4)..+1.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  CONV_EXT_EMU(emu::ldmatrix_x4(r, addr, true))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}

// D = A(16x16) * B(16x8) + D, fp16 or bf16 operands, fp32 accumulators.
template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <> __device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CONV_EXT_EMU(emu::mma(d, a, b, 0))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CONV_EXT_EMU(emu::mma(d, a, b, 1))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// D = A(16x8) * B(8x8) + D, tf32 operands (32-bit registers holding tf32 values), fp32 accumulators.
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CONV_EXT_EMU(emu::mma(d, a, b, 2))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// float -> tf32 (round to nearest, ties away), returned in a 32-bit register
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r = 0;
  CONV_EXT_EMU(r = emu::to_tf32(x))
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#endif
  return r;
}

}  // namespace cuda
}  // namespace conv_ext
