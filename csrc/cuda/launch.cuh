// launch.cuh — the host-side entry points of the CUDA kernels: what conv2d_cuda.cpp calls.
//
// Plain C++ plus CUDA runtime types, so it is included both by the .cu files (nvcc) and by the
// torch-facing conv2d_cuda.cpp (host compiler). Every launcher enqueues its kernels on
// `stream` and returns cudaGetLastError() after the launch (the caller turns it into an
// exception); none synchronises, allocates or copies to the host, so all of them can be
// captured in a CUDA graph. T is float, double, __half or __nv_bfloat16.
//
// Operands, in the layout the pass runs in (see Conv2dParams for the strides):
//   forward          x (N,C,H,W), w (K,Cg,R,S), bias (K) or nullptr  -> y  (N,K,P,Q)
//   backward-input   dy (N,K,P,Q), w (K,Cg,R,S)                      -> dx (N,C,H,W)
//   backward-weight  dy (N,K,P,Q), x (N,C,H,W)                       -> dw (K,Cg,R,S)
// Outputs are written completely (no need to zero them first).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../conv_params.h"

namespace conv_ext {
namespace cuda {

// ---- reference.cu: direct kernels, any strides, any dtype; the GPU oracle --------------------
template <typename T>
cudaError_t reference_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                              cudaStream_t stream);
template <typename T>
cudaError_t reference_backward_input(const Conv2dParams& p, const T* dy, const T* w, T* dx,
                                     cudaStream_t stream);
// one block per dw element, fixed-order tree reduction: deterministic
template <typename T>
cudaError_t reference_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw,
                                      cudaStream_t stream);
// db[k] = sum_{n,i} dy[n*s_n + k*s_k + i*s_i] for i < PQ (the output plane flattened: s_i = 1
// for contiguous NCHW, s_i = K for channels_last); one block per k, deterministic.
template <typename T>
cudaError_t backward_bias(const T* dy, int64_t N, int64_t K, int64_t PQ, int64_t s_n, int64_t s_k,
                          int64_t s_i, T* db, cudaStream_t stream);

// ---- depthwise.cu: Cg == 1 (groups == C), any dtype ---------------------------------------
bool depthwise_supports(const Conv2dParams& p);
template <typename T>
cudaError_t depthwise_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                              cudaStream_t stream);
// backward-weight, 3x3 / 5x5 / 7x7 taps, any strides (coalesced for channels_last); pixel slices
// summed in a fixed order through the workspace: deterministic
bool depthwise_backward_weight_supports(const Conv2dParams& p);
size_t depthwise_backward_weight_workspace(const Conv2dParams& p, int elem_size);
template <typename T>
cudaError_t depthwise_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw, void* workspace,
                                      cudaStream_t stream);

// ---- implicit GEMM on tensor cores (igemm_*.cu): contiguous NHWC activations, KCRS weights ---
// elem_size: 2 (fp16/bf16: mma m16n8k16) or 4 (float32: mma m16n8k8 tf32). For float32,
// `tf32x3` selects the error-compensated 3xTF32 scheme (a = hi + lo, a*b ~ hi*hi + hi*lo + lo*hi),
// accurate to float32 rounding: used when torch disallows TF32 for convolutions.
// Each `*_workspace` is the size in bytes of the scratch buffer the launcher needs (0: none);
// pass a device buffer of at least that many bytes, 16-byte aligned.
// True when the current device has the sm_80+ instructions the igemm kernels use (cp.async,
// ldmatrix, bf16/tf32 mma.sync); conv2d_cuda.cpp falls back to the reference otherwise.
bool tensor_core_device();
bool igemm_forward_supports(const Conv2dParams& p, int elem_size);
size_t igemm_forward_workspace(const Conv2dParams& p, int elem_size);
template <typename T>
cudaError_t igemm_forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y,
                          void* workspace, bool tf32x3, cudaStream_t stream);

bool igemm_backward_input_supports(const Conv2dParams& p, int elem_size);
size_t igemm_backward_input_workspace(const Conv2dParams& p, int elem_size);
template <typename T>
cudaError_t igemm_backward_input(const Conv2dParams& p, const T* dy, const T* w, T* dx,
                                 void* workspace, bool tf32x3, cudaStream_t stream);

bool igemm_backward_weight_supports(const Conv2dParams& p, int elem_size);
size_t igemm_backward_weight_workspace(const Conv2dParams& p, int elem_size);
template <typename T>
cudaError_t igemm_backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw,
                                  void* workspace, bool tf32x3, cudaStream_t stream);

}  // namespace cuda
}  // namespace conv_ext
