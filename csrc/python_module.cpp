// python_module.cpp — the conv_ext._C Python module: loading it registers the ops
// (TORCH_LIBRARY in ops.cpp and the backends); these functions expose build facts and the
// CPU algorithm registry and the complex strategy to conv_ext.info() and to the tests and
// benchmarks, and conv_ext.conv2d's eager path: the common call parsed and run in C++
// (conv2d_eager), the others through a direct binding of the forward op (conv2d_forward).
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include "complex_conv.h"
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

// An int (not a bool) or a tuple/list of two, as (h, w); false for any other form, which
// conv_ext.conv2d's Python path parses (and names in its errors).
bool int_value(PyObject* o, int64_t& out) {
  if (!PyLong_CheckExact(o)) return false;
  out = PyLong_AsLongLong(o);
  if (!PyErr_Occurred()) return true;
  PyErr_Clear();  // too large for int64: the Python path says so
  return false;
}
bool int_pair(PyObject* o, int64_t (&out)[2]) {
  if (int_value(o, out[0])) {
    out[1] = out[0];
    return true;
  }
  if ((PyTuple_CheckExact(o) || PyList_CheckExact(o)) && PySequence_Fast_GET_SIZE(o) == 2) {
    PyObject** items = PySequence_Fast_ITEMS(o);
    return int_value(items[0], out[0]) && int_value(items[1], out[1]);
  }
  return false;
}

// conv_ext.conv2d's eager path for the common call, all of it in C++: plain tensors (or
// Parameters), (N, C, H, W) or unbatched (C, H, W) input, int or pair geometry, no autocast and no
// torch-function mode -- then the same op as conv2d_forward above. Anything else returns None and
// conv2d's Python path takes the call ('same'/'valid', other argument forms, subclasses, errors).
// The (1,3,8,8)->16 layer's forward: ~1.4 us of Python argument handling before this.
pybind11::object conv2d_eager(pybind11::handle input, pybind11::handle weight, pybind11::handle bias,
                              pybind11::handle stride, pybind11::handle padding, pybind11::handle dilation,
                              pybind11::handle groups) {
  const pybind11::object none = pybind11::none();
  int64_t st[2], pad[2], dil[2], g;
  const bool has_bias = !bias.is_none();
  if (!THPVariable_CheckExact(input.ptr()) || !THPVariable_CheckExact(weight.ptr()) ||
      (has_bias && !THPVariable_CheckExact(bias.ptr())) || !int_value(groups.ptr(), g) ||
      !int_pair(stride.ptr(), st) || !int_pair(padding.ptr(), pad) || !int_pair(dilation.ptr(), dil) ||
      at::impl::torch_function_mode_enabled())
    return none;
  const at::Tensor& x = THPVariable_Unpack(input.ptr());
  const at::Tensor& w = THPVariable_Unpack(weight.ptr());
  const auto device = x.device().type();
  if ((x.dim() != 4 && x.dim() != 3) ||
      ((device == at::kCPU || device == at::kCUDA) && at::autocast::is_autocast_enabled(device)))
    return none;
  const std::optional<at::Tensor> b = has_bias ? std::optional<at::Tensor>(THPVariable_Unpack(bias.ptr())) : std::nullopt;
  const bool unbatched = x.dim() == 3;
  at::Tensor y = conv2d_forward(unbatched ? x.unsqueeze(0) : x, w, b, st, pad, dil, g);
  return pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(unbatched ? y.squeeze(0) : std::move(y)));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "conv_ext compiled kernels (ops are registered under torch.ops.conv_ext)";
  m.def("conv2d_forward", &conv2d_forward,
        "torch.ops.conv_ext.conv2d_forward(input, weight, bias, stride, padding, dilation, groups), "
        "called through the dispatcher from C++");
  m.def("conv2d_eager", &conv2d_eager,
        "conv_ext.conv2d's eager path for plain tensors and int/pair geometry, or None for any other call");
  m.def("set_complex_strategy", [](const std::string& name) {
    using S = conv_ext::ComplexStrategy;
    TORCH_CHECK(name == "auto" || name == "pairs" || name == "gauss",
                "conv_ext: expected a complex strategy of 'auto', 'pairs' or 'gauss', got '", name, "'");
    conv_ext::set_complex_strategy(name == "pairs" ? S::Pairs : name == "gauss" ? S::Gauss : S::Auto);
  }, "how complex convolutions run: 'pairs' (one real convolution of (re, im) pairs), 'gauss' (three of planes) or 'auto'");
  m.def("complex_uses_gauss", [](std::vector<int64_t> weight_size, int64_t groups, std::vector<int64_t> stride,
                                 bool channels_last, int64_t in_plane, bool cpu_complex64) {
    TORCH_CHECK(weight_size.size() == 4 && stride.size() == 2 && groups > 0 && stride[0] > 0 && stride[1] > 0,
                "conv_ext.complex_uses_gauss: expected a 4-D weight size, 2 positive strides and positive groups");
    return conv_ext::complex_uses_gauss(weight_size[1], weight_size[0] / groups, weight_size[2], weight_size[3], stride,
                                        channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous,
                                        in_plane, cpu_complex64);
  }, "whether a complex convolution with this filter size, groups, stride, layout, input plane (H*W) and "
     "device/dtype (complex64 on the CPU or not) runs as Gauss's three");
  m.def("complex_strategy", [] {
    const auto s = conv_ext::complex_strategy();
    return std::string(s == conv_ext::ComplexStrategy::Pairs ? "pairs" : s == conv_ext::ComplexStrategy::Gauss ? "gauss" : "auto");
  });
  m.def("empty_cache", [] {
    cc::clear_filter_cache();  // first: its buffers go back to the output cache
    cc::empty_cache();
  }, "Free the packed filters and the blocks conv_ext's CPU caches hold");
  m.def("cpu_cached_bytes", &cc::cached_bytes, "Bytes held in conv_ext's CPU output cache");
  m.def("cpu_filter_cache_bytes", &cc::filter_cache_bytes,
        "Bytes of packed filters conv_ext's CPU kernels keep (complex filters' real forms included)");
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
