// conv2d_cuda.cpp — the CUDA implementations of the conv_ext ops (the twin of cpu/conv2d_cpu.cpp).
//
// Each op: check the arguments (checks.cpp), allocate the result in the layout torch would
// return (conv_memory_format), handle the empty cases, choose an algorithm, bring the operands
// into the layout that algorithm runs in (the tensor-core kernels run NHWC: NCHW operands are
// converted and the result copied back), then launch on the current stream of the operands'
// device and check the launch. Kernels live in *.cu and are reached through launch.cuh; this file
// is the only CUDA code that sees torch.
//
// float32 runs our own tensor-core kernels (igemm_*.cu; no vendor convolution or GEMM library is
// called anywhere) in TF32 when the user's torch setting allows TF32 for convolutions (a boolean
// read from at::globalContext(); on by default), and in 3xTF32 (float32 accuracy) when it does
// not, so a model sees the precision it asked torch for.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // the stream c10::cuda::getCurrentCUDAStream() returns (CUDAContext.h also pulls in cuSPARSE/cuBLAS headers)
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "../checks.h"
#include "../complex_conv.h"
#include "algorithms_cuda.h"
#include "launch.cuh"

namespace conv_ext {
namespace cuda {
namespace {

// torch's element types -> the CUDA types the kernels are instantiated for (same bits)
template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename S> const typename CudaType<S>::type* cptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const typename CudaType<S>::type*>(t.const_data_ptr<S>()) : nullptr;
}
template <typename S> typename CudaType<S>::type* mptr(at::Tensor& t) {
  return reinterpret_cast<typename CudaType<S>::type*>(t.mutable_data_ptr<S>());
}

enum class Algo : int { Igemm = 0, Depthwise = 1, Reference = 2 };
constexpr int kNumAlgos = 3;
const char* algo_name(Algo a) {
  switch (a) {
    case Algo::Igemm: return "igemm";
    case Algo::Depthwise: return "depthwise";
    case Algo::Reference: return "reference";
  }
  return "?";
}

// the algorithms of each pass, in the order automatic choice tries them
const std::vector<Algo>& algos_of(Pass pass) {
  static const std::vector<Algo> fwd = {Algo::Igemm, Algo::Depthwise, Algo::Reference};
  static const std::vector<Algo> bwd_input = {Algo::Igemm, Algo::Reference};
  static const std::vector<Algo> bwd_weight = {Algo::Igemm, Algo::Depthwise, Algo::Reference};
  return pass == Pass::Forward ? fwd : pass == Pass::BackwardInput ? bwd_input : bwd_weight;
}

int elem_size(at::ScalarType t) { return static_cast<int>(c10::elementSize(t)); }

bool tensor_core_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat;
}

// True when `a` computes this problem (geometry and dtype; the op supplies the layout).
bool supports(Algo a, Pass pass, const Conv2dParams& p, at::ScalarType dtype) {
  switch (a) {
    case Algo::Reference: return true;
    case Algo::Depthwise:
      return (pass == Pass::Forward && depthwise_supports(p)) ||
             (pass == Pass::BackwardWeight && depthwise_backward_weight_supports(p));
    case Algo::Igemm:
      if (!tensor_core_dtype(dtype) || !tensor_core_device()) return false;
      switch (pass) {
        case Pass::Forward: return igemm_forward_supports(p, elem_size(dtype));
        case Pass::BackwardInput: return igemm_backward_input_supports(p, elem_size(dtype));
        case Pass::BackwardWeight: return igemm_backward_weight_supports(p, elem_size(dtype));
      }
  }
  return false;
}

bool nhwc_only(Algo a) { return a == Algo::Igemm; }

std::atomic<int> forced[3] = {{-1}, {-1}, {-1}};  // Algo index per pass, -1 = automatic
thread_local int last_run[3] = {-1, -1, -1};

Algo choose_algo(Pass pass, const Conv2dParams& p, at::ScalarType dtype) {
  const int f = forced[static_cast<int>(pass)].load(std::memory_order_relaxed);
  Algo chosen = Algo::Reference;
  if (f >= 0) {
    chosen = static_cast<Algo>(f);
    TORCH_CHECK(supports(chosen, pass, p, dtype), "conv_ext: the forced CUDA ", cpu::pass_name(pass),
                " algorithm '", algo_name(chosen), "' does not support this problem (N=", p.N, " C=", p.C,
                " H=", p.H, " W=", p.W, " K=", p.K, " R=", p.R, " S=", p.S, " stride=(", p.stride_h, ", ",
                p.stride_w, ") groups=", p.groups, " dtype=", dtype, ")");
  } else {
    // CONV_EXT_CUDA_REFERENCE_ONLY=1: automatic choice takes the reference (a safety switch)
    static const bool reference_only = [] {
      const char* e = std::getenv("CONV_EXT_CUDA_REFERENCE_ONLY");
      return e != nullptr && std::string(e) == "1";
    }();
    for (Algo a : algos_of(pass))
      if (!reference_only && supports(a, pass, p, dtype)) {
        chosen = a;
        break;
      }
  }
  last_run[static_cast<int>(pass)] = static_cast<int>(chosen);
  return chosen;
}

bool fp32_tf32x3() { return !at::globalContext().allowTF32CuDNN(at::Float32Op::CONV); }

// scratch memory from torch's caching allocator (stream-ordered, CUDA-graph safe)
at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte).memory_format(at::MemoryFormat::Contiguous));
}
void* ptr_or_null(at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

// The tensor-core kernels read activations with 16-byte cp.async: a view whose data does not
// start on a 16-byte boundary (a storage offset) is copied to a fresh, aligned tensor first.
at::Tensor aligned16(const at::Tensor& t, at::MemoryFormat fmt) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : t.clone(fmt);
}

at::Tensor op_forward(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_forward_params(input, weight, bias_opt, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  if (input.is_complex()) return complex_forward(&op_forward, input, weight, bias_opt, stride, padding, dilation, groups);
  const auto fmt = conv_memory_format(input, weight);
  at::Tensor y = at::empty({p.N, p.K, p.P, p.Q}, input.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const at::Tensor bias = bias_opt.has_value() && bias_opt->defined() ? bias_opt->contiguous() : at::Tensor();
  if (p.Cg() == 0) {  // no input channels: the output is the bias alone
    if (bias.defined()) y.copy_(bias.view({1, p.K, 1, 1}).expand_as(y));
    else y.zero_();
    return y;
  }
  const Algo algo = choose_algo(Pass::Forward, p, y.scalar_type());
  const auto run_fmt = nhwc_only(algo) ? at::MemoryFormat::ChannelsLast : fmt;
  at::Tensor x = input.contiguous(run_fmt);
  if (algo == Algo::Igemm) x = aligned16(x, run_fmt);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = run_fmt == fmt ? y : at::empty(y.sizes(), y.options().memory_format(run_fmt));
  set_strides(p, x, w, out, run_fmt);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  if (algo == Algo::Igemm) ws = workspace(igemm_forward_workspace(p, elem_size(y.scalar_type())), y);
  const bool x3 = fp32_tf32x3();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_ext_cuda_forward", [&] {
    cudaError_t err = cudaSuccess;
    switch (algo) {
      case Algo::Reference:
        err = reference_forward(p, cptr<scalar_t>(x), cptr<scalar_t>(w), cptr<scalar_t>(bias), mptr<scalar_t>(out), stream);
        break;
      case Algo::Depthwise:
        err = depthwise_forward(p, cptr<scalar_t>(x), cptr<scalar_t>(w), cptr<scalar_t>(bias), mptr<scalar_t>(out), stream);
        break;
      case Algo::Igemm:
        if constexpr (!std::is_same_v<scalar_t, double>)
          err = igemm_forward(p, cptr<scalar_t>(x), cptr<scalar_t>(w), cptr<scalar_t>(bias), mptr<scalar_t>(out),
                              ptr_or_null(ws), x3, stream);
        break;
    }
    C10_CUDA_CHECK(err);
  });
  if (!out.is_same(y)) y.copy_(out);
  return y;
}

at::Tensor op_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          at::IntArrayRef input_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_backward_input_params(grad_output, weight, input_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  if (grad_output.is_complex())
    return complex_backward_input(&op_backward_input, grad_output, weight, input_size, stride, padding, dilation, groups);
  const auto fmt = conv_memory_format(grad_output, weight);
  at::Tensor dx = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  if (p.Kg() == 0 || p.N * p.K * p.P * p.Q == 0) return dx.zero_();  // nothing read this input
  const Algo algo = choose_algo(Pass::BackwardInput, p, dx.scalar_type());
  const auto run_fmt = nhwc_only(algo) ? at::MemoryFormat::ChannelsLast : fmt;
  at::Tensor dy = grad_output.contiguous(run_fmt);
  if (algo == Algo::Igemm) dy = aligned16(dy, run_fmt);
  const at::Tensor w = weight.contiguous();
  at::Tensor out = run_fmt == fmt ? dx : at::empty(dx.sizes(), dx.options().memory_format(run_fmt));
  set_strides(p, out, w, dy, run_fmt);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  if (algo == Algo::Igemm) ws = workspace(igemm_backward_input_workspace(p, elem_size(dx.scalar_type())), dx);
  const bool x3 = fp32_tf32x3();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "conv_ext_cuda_backward_input", [&] {
    cudaError_t err = cudaSuccess;
    switch (algo) {
      case Algo::Igemm:
        if constexpr (!std::is_same_v<scalar_t, double>)
          err = igemm_backward_input(p, cptr<scalar_t>(dy), cptr<scalar_t>(w), mptr<scalar_t>(out), ptr_or_null(ws), x3, stream);
        break;
      default:
        err = reference_backward_input(p, cptr<scalar_t>(dy), cptr<scalar_t>(w), mptr<scalar_t>(out), stream);
        break;
    }
    C10_CUDA_CHECK(err);
  });
  if (!out.is_same(dx)) dx.copy_(out);
  return dx;
}

at::Tensor op_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           at::IntArrayRef weight_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_backward_weight_params(grad_output, input, weight_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  if (grad_output.is_complex())
    return complex_backward_weight(&op_backward_weight, grad_output, input, weight_size, stride, padding, dilation,
                                   groups);
  const auto fmt = conv_memory_format(grad_output, input);
  WeightGrad g(weight_size, grad_output.options(), fmt);  // dw in the convolution's layout
  if (g.out.numel() == 0) return g.out;
  if (p.N == 0) return g.out.zero_();  // an empty batch contributes nothing
  at::Tensor dw = g.kcrs;  // what the kernels write
  const Algo algo = choose_algo(Pass::BackwardWeight, p, dw.scalar_type());
  const auto run_fmt = nhwc_only(algo) ? at::MemoryFormat::ChannelsLast : fmt;
  at::Tensor dy = grad_output.contiguous(run_fmt), x = input.contiguous(run_fmt);
  if (algo == Algo::Igemm) dy = aligned16(dy, run_fmt), x = aligned16(x, run_fmt);
  set_strides(p, x, dw, dy, run_fmt);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ws;
  if (algo == Algo::Igemm) ws = workspace(igemm_backward_weight_workspace(p, elem_size(dw.scalar_type())), dw);
  if (algo == Algo::Depthwise) ws = workspace(depthwise_backward_weight_workspace(p, elem_size(dw.scalar_type())), dw);
  const bool x3 = fp32_tf32x3();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dw.scalar_type(), "conv_ext_cuda_backward_weight", [&] {
    cudaError_t err = cudaSuccess;
    switch (algo) {
      case Algo::Igemm:
        if constexpr (!std::is_same_v<scalar_t, double>)
          err = igemm_backward_weight(p, cptr<scalar_t>(dy), cptr<scalar_t>(x), mptr<scalar_t>(dw), ptr_or_null(ws), x3, stream);
        break;
      case Algo::Depthwise:
        err = depthwise_backward_weight(p, cptr<scalar_t>(dy), cptr<scalar_t>(x), mptr<scalar_t>(dw), ptr_or_null(ws), stream);
        break;
      default:
        err = reference_backward_weight(p, cptr<scalar_t>(dy), cptr<scalar_t>(x), mptr<scalar_t>(dw), stream);
        break;
    }
    C10_CUDA_CHECK(err);
  });
  return g.finish();
}

// db[k] = sum_{n,p,q} dy[n,k,p,q]: one block per channel, fixed-order reduction (deterministic)
at::Tensor op_backward_bias(const at::Tensor& grad_output) {
  check_backward_bias(grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  if (grad_output.is_complex()) return complex_backward_bias(&op_backward_bias, grad_output);
  const int64_t N = grad_output.size(0), K = grad_output.size(1),
                PQ = grad_output.size(2) * grad_output.size(3);
  at::Tensor db = at::empty({K}, grad_output.options());
  if (K == 0) return db;
  if (N * PQ == 0) return db.zero_();
  const bool nhwc = grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor dy = grad_output.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const int64_t s_n = K * PQ, s_k = nhwc ? 1 : PQ, s_i = nhwc ? K : 1;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "conv_ext_cuda_backward_bias", [&] {
    C10_CUDA_CHECK(cuda::backward_bias(cptr<scalar_t>(dy), N, K, PQ, s_n, s_k, s_i, mptr<scalar_t>(db), stream));
  });
  return db;
}

}  // namespace

std::vector<std::string> algorithm_names(Pass pass) {
  std::vector<std::string> names;
  for (Algo a : algos_of(pass)) names.push_back(algo_name(a));
  return names;
}

void force_algorithm(Pass pass, const std::string& name) {
  int index = -1;
  if (name != "auto") {
    for (Algo a : algos_of(pass))
      if (name == algo_name(a)) index = static_cast<int>(a);
    TORCH_CHECK(index >= 0, "conv_ext: unknown CUDA ", cpu::pass_name(pass), " algorithm '", name,
                "'; known: ", c10::Join(", ", cuda::algorithm_names(pass)), ", auto");
  }
  forced[static_cast<int>(pass)].store(index);
}

std::string forced_algorithm(Pass pass) {
  const int i = forced[static_cast<int>(pass)].load();
  return i < 0 ? "auto" : algo_name(static_cast<Algo>(i));
}

std::string last_algorithm(Pass pass) {
  const int i = last_run[static_cast<int>(pass)];
  return i < 0 ? "" : algo_name(static_cast<Algo>(i));
}

TORCH_LIBRARY_IMPL(conv_ext, CUDA, m) {
  m.impl("conv2d_forward", &op_forward);
  m.impl("conv2d_backward_input", &op_backward_input);
  m.impl("conv2d_backward_weight", &op_backward_weight);
  m.impl("conv2d_backward_bias", &op_backward_bias);
}

}  // namespace cuda
}  // namespace conv_ext
