// complex_conv.h — complex64 / complex128 convolution, every pass, through the real kernels.
//
// A complex number is a pair of reals (re, im), and multiplying it by a filter tap w = c + i*d is
// the real 2x2 matrix [[c, -d], [d, c]] acting on the pair. So a complex convolution with C input
// and K output channels is a real one with 2C and 2K channels:
//   - real input channel 2c+q is part q (0: re, 1: im) of complex channel c -- in channels_last
//     memory that is the complex tensor itself, read in place; NCHW interleaves the parts inside
//     each pixel, so it is copied once into (N, 2C, H, W);
//   - the real filter (2K, 2C/groups, R, S) holds the block [[c, -d], [d, c]] at rows 2k, 2k+1
//     and columns 2c, 2c+1 (a group's channels stay a contiguous range, so groups carry over);
//   - the real bias is (re, im) of each complex bias value, in order.
// The real output channel 2k+p is part p of complex output channel k.
//
// The backward passes use the same pairs. The real gradients of a real loss with respect to the
// pairs are PyTorch's complex gradients (grad = dL/d(re) + i dL/d(im)), so:
//   backward_input(dy, w)  = the real backward-input of the pairs with the same block filter,
//                            which is conj(w)^T applied to dy;
//   backward_weight(dy, x) = the real (2K, 2C/groups) filter gradient G folded back: the block
//                            rows and columns (p, q) give re = G00 + G11, im = G10 - G01, which is
//                            dy times conj(x);
//   backward_bias(dy)      = the real sums of the pairs.
// The autograd formulas (autograd.cpp) then hold for complex tensors unchanged, double backward
// included.
//
// The pairs do four real multiply-adds per complex one. Gauss's trick does three: with u = a + ib
// the activation argument and v = c + id the other (v conjugated for the backward passes, sign
// s = -1; s = +1 forward), t1 = B(a, c), t2 = B(b, d), t3 = B(a + b, c + s*d) for the real op B,
// and u*v = (t1 - s*t2) + i (t3 - t1 - s*t2): three real convolutions with C -> K channels of the
// planes re, im, re + im (as torch computes complex convolutions), at the price of more passes
// over the activations. complex_uses_gauss chooses by the multiply-adds each activation value meets
// (and, for complex64 depthwise layers on the CPU, by the plane's size).
#pragma once
#include <ATen/ATen.h>

namespace conv_ext {

// the backends' real ops, called directly (we are already below autograd)
using ForwardFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
using BackwardFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                  at::IntArrayRef, at::IntArrayRef, int64_t);
using BiasFn = at::Tensor (*)(const at::Tensor&);

// Each runs one pass of a complex convolution with `real` (the backend's own op for real
// tensors); the arguments are those of the op, already checked (make_*_params).
at::Tensor complex_forward(ForwardFn real, const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups);
at::Tensor complex_backward_input(BackwardFn real, const at::Tensor& grad_output, const at::Tensor& weight,
                                  at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups);
at::Tensor complex_backward_weight(BackwardFn real, const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups);
at::Tensor complex_backward_bias(BiasFn real, const at::Tensor& grad_output);

// Which form runs: the pairs above, or Gauss's three real convolutions of the planes (re, im,
// re + im) with C -> K channels (3/4 of the pairs' multiply-adds); Auto chooses by the shape.
enum class ComplexStrategy { Auto = 0, Pairs = 1, Gauss = 2 };
void set_complex_strategy(ComplexStrategy s);  // for tests and benchmarks
ComplexStrategy complex_strategy();
// whether a complex convolution with this filter (Cg inputs and Kg outputs a group, R x S),
// stride, layout and input plane (H*W) runs as Gauss's three convolutions under the current
// strategy; cpu_complex64: complex64 tensors on the CPU (float32's depthwise kernels)
bool complex_uses_gauss(int64_t Cg, int64_t Kg, int64_t R, int64_t S, at::IntArrayRef stride, at::MemoryFormat fmt,
                        int64_t in_plane, bool cpu_complex64);

}  // namespace conv_ext
