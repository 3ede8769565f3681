// ops.cpp — the op schemas: the one contract between Python, the dispatcher and every backend.
//
// Backends register implementations in cpu/conv2d_cpu.cpp and cuda/conv2d_cuda.cpp; the
// fake (shape-only) kernels and autograd live in conv_ext/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(conv_ext, m) {
  // y = conv2d(input, weight) + bias;  input (N,C,H,W), weight (K,C/groups,R,S) -> (N,K,P,Q)
  m.def("conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // dL/dinput from grad_output (N,K,P,Q) and weight; input_size = (N,C,H,W)
  m.def("conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // dL/dweight from grad_output (N,K,P,Q) and input; weight_size = (K,C/groups,R,S)
  m.def("conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // dL/dbias = grad_output summed over N, P, Q -> (K,)
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");
}
