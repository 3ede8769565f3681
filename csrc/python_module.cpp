// python_module.cpp — the conv_ext._C Python module: loading it registers the ops
// (TORCH_LIBRARY in ops.cpp and the backends); these functions expose build facts and the
// CPU algorithm registry to conv_ext.info() and to the tests and benchmarks, and a direct
// binding of the forward op for conv_ext.conv2d's eager path.
#include <torch/extension.h>

#include "op_handles.h"

#include "cpu/algorithms.h"
#include "cpu/filter_cache.h"
#include "cpu/output_cache.h"
#ifdef CONV_EXT_WITH_CUDA
#include "cuda/algorithms_cuda.h"
#endif

namespace cc = conv_ext::cpu;

namespace {

// torch.ops.conv_ext.conv2d_forward through the dispatcher (so autograd, autocast, dispatch
// modes and every backend apply), without torch.ops' Python-side argument handling: about
// 1 us of the (1,3,8,8)->16 layer's 6-7 us. conv_ext.conv2d uses it for plain tensors outside
// torch.compile; torch.compile and tensor subclasses go through torch.ops.
at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  pybind11::gil_scoped_release no_gil;  // as torch's own bindings do
  return conv_ext::forward_op(input, weight, bias, stride, padding, dilation, groups);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "conv_ext compiled kernels (ops are registered under torch.ops.conv_ext)";
  m.def("conv2d_forward", &conv2d_forward,
        "torch.ops.conv_ext.conv2d_forward(input, weight, bias, stride, padding, dilation, groups), "
        "called through the dispatcher from C++");
  m.def("empty_cache", [] {
    cc::clear_filter_cache();  // first: its buffers go back to the output cache
    cc::empty_cache();
  }, "Free the packed filters and the blocks conv_ext's CPU caches hold");
  m.def("cpu_cached_bytes", &cc::cached_bytes, "Bytes held in conv_ext's CPU output cache");
  m.def("cpu_filter_cache_bytes", &cc::filter_cache_bytes, "Bytes of packed filters conv_ext's CPU kernels keep");
  m.def("cpu_capability", &cc::cpu_capability, "SIMD level the CPU kernels use: avx512, avx2 or portable");
  m.def("cpu_fma_peak_gflops", &cc::fma_peak_gflops, pybind11::arg("float64") = false, pybind11::arg("seconds") = 0.5,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "GFLOP/s of a register-only FMA loop on torch's threads (the benchmark's peak); 0 without SIMD");
  m.def("cpu_thread_round_trip_ns", &cc::thread_round_trip_ns, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "ns for a cache line to go from torch's first thread to its second and back (-1: fewer than 2 threads)");
  m.def("cpu_amx_bf16", &cc::amx_bf16_available,
        "True when bfloat16 runs the amx_bf16 kernels (on the AMX tile units, or emulated by AVX512-BF16)");
  m.def("cpu_amx_bf16_emulated", &cc::amx_bf16_emulated,
        "True when amx_bf16's tiles are emulated by AVX512-BF16 dot products (no AMX on this CPU)");
  m.def("cuda_compiled", [] {
#ifdef CONV_EXT_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled in");
  m.def("cpu_algorithms", [](const std::string& pass) { return cc::algorithm_names(cc::pass_from_name(pass)); },
        "names of the CPU algorithms of a pass, highest priority first");
  m.def("force_cpu_algorithm", [](const std::string& pass, const std::string& name) {
    cc::force_algorithm(cc::pass_from_name(pass), name);
  }, "run every CPU call of this pass with the named algorithm ('auto' to choose again)");
  m.def("forced_cpu_algorithm", [](const std::string& pass) { return cc::forced_algorithm(cc::pass_from_name(pass)); });
  m.def("last_cpu_algorithm", [](const std::string& pass) { return cc::last_algorithm(cc::pass_from_name(pass)); },
        "the CPU algorithm this thread ran last for this pass");
#ifdef CONV_EXT_WITH_CUDA
  namespace cu = conv_ext::cuda;
  m.def("cuda_algorithms", [](const std::string& pass) { return cu::algorithm_names(cc::pass_from_name(pass)); },
        "names of the CUDA algorithms of a pass, in the order automatic choice tries them");
  m.def("force_cuda_algorithm", [](const std::string& pass, const std::string& name) {
    cu::force_algorithm(cc::pass_from_name(pass), name);
  }, "run every CUDA call of this pass with the named algorithm ('auto' to choose again)");
  m.def("forced_cuda_algorithm", [](const std::string& pass) { return cu::forced_algorithm(cc::pass_from_name(pass)); });
  m.def("last_cuda_algorithm", [](const std::string& pass) { return cu::last_algorithm(cc::pass_from_name(pass)); },
        "the CUDA algorithm this thread ran last for this pass");
#endif
}
