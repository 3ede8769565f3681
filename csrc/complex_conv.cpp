// complex_conv.cpp — complex convolution as a real one on (re, im) pairs, or as Gauss's three real
// ones on planes (see complex_conv.h).
#include "complex_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "checks.h"
#include "cpu/filter_cache.h"
#include "cpu/output_cache.h"

namespace conv_ext {
namespace {

// a new tensor; on CPU from the cache of large outputs (a fresh mapping pays a fault per page)
at::Tensor empty(at::IntArrayRef size, const at::TensorOptions& options, at::MemoryFormat fmt) {
  return options.device().is_cpu() ? cpu::empty_output(size, options, fmt) : at::empty(size, options.memory_format(fmt));
}

// the (re, im) parts of a complex tensor as a real tensor with one more dimension, of size 2
at::Tensor parts(const at::Tensor& t) { return at::view_as_real(t.resolve_conj().resolve_neg()); }

// complex (N, C, H, W) -> real (N, 2C, H, W), channel 2c+q = part q of channel c. A view when the
// parts of a pixel's channels lie in a row (channels_last), else one copy, in `fmt`.
at::Tensor pairs(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  const at::Tensor v = parts(t).permute({0, 1, 4, 2, 3});  // (N, C, 2, H, W)
  if (fmt == at::MemoryFormat::ChannelsLast && v.stride(1) == 2) return v.view({N, 2 * C, H, W});
  at::Tensor out = empty({N, 2 * C, H, W}, v.options(), fmt);
  out.view({N, C, 2, H, W}).copy_(v);
  return out;
}

// real (N, 2K, P, Q) pairs -> complex (N, K, P, Q) with the strides of `fmt`: a view of y when
// its pairs already lie that way (channels_last), else a copy.
at::Tensor unpairs(const at::Tensor& y, at::MemoryFormat fmt) {
  const int64_t N = y.size(0), K = y.size(1) / 2, P = y.size(2), Q = y.size(3);
  const at::Tensor v = y.view({N, K, 2, P, Q}).permute({0, 1, 3, 4, 2});  // (N, K, P, Q, 2)
  const std::vector<int64_t> sizes = {N, K, P, Q};
  std::vector<int64_t> want = c10::get_channels_last_strides_2d(sizes);
  if (fmt != at::MemoryFormat::ChannelsLast) {
    const auto c = c10::contiguous_strides(sizes);
    want.assign(c.begin(), c.end());
  }
  for (int64_t& s : want) s *= 2;
  want.push_back(1);
  if (v.strides() == at::IntArrayRef(want) && v.storage_offset() % 2 == 0) return at::view_as_complex(v);
  at::Tensor out = empty(sizes, y.options().dtype(c10::toComplexType(y.scalar_type())), fmt);
  at::view_as_real(out).copy_(v);
  return out;
}

// complex filter (K, Cg, R, S) -> real (2K, 2Cg, R, S): the block [[c, -d], [d, c]] per tap c + i*d.
// Four times the filter's values, written in one pass: for a weight-heavy layer (512 -> 512 3x3 at
// 7x7, batch 4, complex64) this pass is a quarter of the forward; through four strided at::copy_
// calls it took as long as the convolution.
at::Tensor block_filter(const at::Tensor& w) {
  const int64_t K = w.size(0), Cg = w.size(1), R = w.size(2), S = w.size(3), RS = R * S;
  const at::Tensor src = parts(w);  // (K, Cg, R, S, 2), read with its own strides (a channels_last
                                    // filter as it lies: a reordering copy of it cost 6 ms at 512@7)
  at::Tensor out = empty({2 * K, 2 * Cg, R, S}, src.options(), at::MemoryFormat::Contiguous);
  if (!src.is_cpu()) {  // on the GPU: the four blocks as four strided copies (the CPU loop below
                        // reads host memory)
    const at::Tensor blocks = out.view({K, 2, Cg, 2, R, S});
    const at::Tensor c = src.select(-1, 0), d = src.select(-1, 1);
    blocks.select(1, 0).select(2, 0).copy_(c);
    blocks.select(1, 0).select(2, 1).copy_(d.neg());
    blocks.select(1, 1).select(2, 0).copy_(d);
    blocks.select(1, 1).select(2, 1).copy_(c);
    return out;
  }
  const int64_t sk = src.stride(0), sc = src.stride(1), sr = src.stride(2), ss = src.stride(3), si = src.stride(4);
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "conv_ext_block_filter", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t c = 0; c < Cg; ++c) {
          scalar_t* row0 = o + ((2 * k) * 2 * Cg + 2 * c) * RS;  // output channel 2k (re), input 2c
          scalar_t* row1 = row0 + 2 * Cg * RS;                   // output channel 2k+1 (im)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t t = 0; t < S; ++t) {
              const scalar_t* tap = in + k * sk + c * sc + r * sr + t * ss;
              const scalar_t re = tap[0], im = tap[si];
              const int64_t j = r * S + t;
              row0[j] = re, row0[RS + j] = -im;
              row1[j] = im, row1[RS + j] = re;
            }
        }
    });
  });
  return out;
}

std::array<int64_t, 4> doubled_channels(at::IntArrayRef s) { return {s[0], 2 * s[1], s[2], s[3]}; }

// ---- Gauss's three products -------------------------------------------------------------
// The planes re, im and re + sign*im of a complex tensor, as real tensors in `fmt`.
struct Planes {
  at::Tensor re, im, sum;
};
Planes planes(const at::Tensor& t, double sign, at::MemoryFormat fmt) {
  const at::Tensor p = parts(t);
  Planes out;
  out.re = empty(t.sizes(), p.options(), fmt).copy_(p.select(-1, 0));
  out.im = empty(t.sizes(), p.options(), fmt).copy_(p.select(-1, 1));
  out.sum = empty(t.sizes(), p.options(), fmt);
  at::add_out(out.sum, out.re, out.im, sign);
  return out;
}

// A complex filter's real forms -- the block filter (the pairs), or its planes for Gauss's form
// (re, im, re + sign*im) -- are kept across calls while the filter is unchanged, in the
// packed-filter cache (cpu/filter_cache.h: the same tensor, version, bytes by fingerprint, ...;
// from the second call with a version, so a training step keeps nothing). Being the same tensors
// each call, the real kernels' packed forms of them are kept too. Complex64 512@7 3x3 forward,
// Gauss's form, perf record: 16% of the time copying the filter's planes, 11% in Winograd's
// transform of them, both on every call before.
std::vector<at::Tensor> filter_form(const at::Tensor& w, int kind, int64_t copies,
                                    const std::function<std::vector<at::Tensor>()>& make) {
  const int64_t bytes = copies * w.numel() * static_cast<int64_t>(c10::elementSize(c10::toRealValueType(w.scalar_type())));
  auto kept = cpu::kept_forms(w, {300, kind, w.is_conj()}, bytes, make);  // (300: complex forms)
  return kept.empty() ? make() : kept;
}

Planes weight_planes(const at::Tensor& w, double sign) {
  const auto t = filter_form(w, sign > 0 ? 1 : 2, 3, [&] {
    const Planes p = planes(w, sign, at::MemoryFormat::Contiguous);
    return std::vector<at::Tensor>{p.re, p.im, p.sum};
  });
  return {t[0], t[1], t[2]};
}
at::Tensor weight_blocks(const at::Tensor& w) {
  return filter_form(w, 0, 4, [&] { return std::vector<at::Tensor>{block_filter(w)}; })[0];
}

// u * v' with v' = v (sign +1) or conj(v) (sign -1), for an op B real-bilinear in (u, v), from
// t1 = B(u.re, v.re), t2 = B(u.im, v.im), t3 = B(u.re + u.im, v.re + sign*v.im) (v's planes made
// with that sign): re = t1 - sign*t2, im = t3 - t1 - sign*t2. A complex tensor in `fmt`.
// op(a, b, i) is B(a, b) for product i = 1, 2, 3.
template <class Op>
at::Tensor gauss(const Planes& u, const Planes& v, double sign, at::MemoryFormat fmt, const Op& op) {
  const at::Tensor t1 = op(u.re, v.re, 1), t2 = op(u.im, v.im, 2), t3 = op(u.sum, v.sum, 3);
  at::Tensor out = empty(t1.sizes(), t1.options().dtype(c10::toComplexType(t1.scalar_type())), fmt);
  const at::Tensor o = at::view_as_real(out);
  at::Tensor re = o.select(-1, 0), im = o.select(-1, 1);
  at::sub_out(re, t1, t2, sign);
  at::sub_out(im, t3, t1);
  im.sub_(t2, sign);
  return out;
}

std::atomic<int> g_strategy{0};  // ComplexStrategy, set by tests and benchmarks

// Gauss's three real convolutions (C -> K channels) do 3/4 of the pairs' multiply-adds (one
// 2C -> 2K) but pass over the activations more often: three planes written from the input, three
// results read back into the output. They pay when there are many multiply-adds per activation
// value: Cg*R*S per output value and Kg*R*S/stride^2 per input value. In channels_last the pairs
// read and write the complex tensors in place, so Gauss needs more work per value to pay there.
// Measured (`PYTHONPATH=. python benchmarks/complex_strategy.py`: the default suite, batch 4, 2
// threads, complex64 / complex128, forward+backward, the pairs' time over Gauss's): NCHW 256@14
// 1.24x / 1.21x, 512@7 1.23x / 1.23x, 2048->512 1x1 @7 1.44x / 1.27x, 64@56 1.01x / 1.25x;
// channels_last 256@14 1.19x / 1.32x, 2048->512 1x1 @7 1.26x / 1.27x, 64@56 0.95x / 1.03x; but
// CIFAR's 32@16 0.94x / 1.00x (channels_last 0.63x / 0.98x), 128->512 1x1 @28 channels_last
// 0.80x / 0.96x, depthwise 0.36-0.66x. Hence the thresholds: 256 multiply-adds a value (NCHW),
// 512 (channels_last). The default suite against torch with this choice: complex64 NCHW 1.48x ->
// 1.57x, channels_last 1.85x -> 1.86x; complex128 1.90x -> 1.98x, 2.06x -> 2.13x.
}  // namespace

bool complex_uses_gauss(int64_t Cg, int64_t Kg, int64_t R, int64_t S, at::IntArrayRef stride, at::MemoryFormat fmt,
                        int64_t in_plane, bool cpu_complex64) {
  const int s = g_strategy.load(std::memory_order_relaxed);
  if (s != static_cast<int>(ComplexStrategy::Auto)) return s == static_cast<int>(ComplexStrategy::Gauss);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  // Depthwise complex64 on the CPU, small planes: the pairs are a grouped convolution of 2 -> 2
  // channels a group, while each of Gauss's three is a float32 depthwise one (depthwise.cpp), whose
  // extra passes over the planes cost little while they are small. Pairs' time / Gauss's, forward
  // and forward+backward (PYTHONPATH=. python benchmarks/complex_strategy.py --cases mobilenet,dw16
  // --dtypes complex64; 2 threads, Intel Xeon, batch 4 or 8): NCHW 960@7 2.00 / 1.87, 576@14/2
  // 1.66 / 1.47, 96@16 1.21 / 1.26, but 96@112/2 0.81 / 0.76; channels_last 960@7 1.61 / 1.63,
  // 576@14/2 1.49 / 1.23, 96@16 0.67 / 0.78. complex128 (gemm_f64 or the reference) 0.4-0.7x.
  if (cpu_complex64 && Cg == 1 && Kg == 1) return in_plane <= (cl ? 14 * 14 : 16 * 16);
  const int64_t per_output = Cg * R * S, per_input = Kg * R * S / (stride[0] * stride[1]);
  return std::min(per_output, per_input) >= (cl ? 512 : 256);
}

namespace {
bool cpu_complex64(const at::Tensor& t) { return t.is_cpu() && t.scalar_type() == at::kComplexFloat; }
}  // namespace

void set_complex_strategy(ComplexStrategy s) { g_strategy.store(static_cast<int>(s)); }
ComplexStrategy complex_strategy() { return static_cast<ComplexStrategy>(g_strategy.load()); }

at::Tensor complex_forward(ForwardFn real, const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  const auto fmt = conv_memory_format(input, weight);
  const bool has_bias = bias.has_value() && bias->defined();
  if (complex_uses_gauss(weight.size(1), weight.size(0) / groups, weight.size(2), weight.size(3), stride, fmt,
                         input.size(2) * input.size(3), cpu_complex64(input))) {
    const Planes x = planes(input, 1, fmt), w = weight_planes(weight, 1);
    std::optional<at::Tensor> b1, b3;  // t1 gets bias.re, t3 bias.re + bias.im: re = t1 - t2 and
                                       // im = t3 - t1 - t2 then hold bias.re and bias.im
    if (has_bias) {
      const at::Tensor b = parts(*bias);
      b1 = b.select(-1, 0).contiguous(), b3 = b.select(-1, 0) + b.select(-1, 1);
    }
    return gauss(x, w, 1, fmt, [&](const at::Tensor& a, const at::Tensor& b, int i) {
      return real(a, b, i == 1 ? b1 : i == 3 ? b3 : std::nullopt, stride, padding, dilation, groups);
    });
  }
  std::optional<at::Tensor> b;
  if (has_bias) b = parts(*bias).reshape({2 * bias->size(0)});
  return unpairs(real(pairs(input, fmt), weight_blocks(weight), b, stride, padding, dilation, groups), fmt);
}

at::Tensor complex_backward_input(BackwardFn real, const at::Tensor& grad_output, const at::Tensor& weight,
                                  at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  const auto fmt = conv_memory_format(grad_output, weight);
  if (complex_uses_gauss(weight.size(1), weight.size(0) / groups, weight.size(2), weight.size(3), stride, fmt,
                         input_size[2] * input_size[3], cpu_complex64(grad_output))) {  // conj(w)^T dy
    const Planes dy = planes(grad_output, 1, fmt), w = weight_planes(weight, -1);
    return gauss(dy, w, -1, fmt, [&](const at::Tensor& a, const at::Tensor& b, int) {
      return real(a, b, input_size, stride, padding, dilation, groups);
    });
  }
  const auto size = doubled_channels(input_size);
  return unpairs(real(pairs(grad_output, fmt), weight_blocks(weight), size, stride, padding, dilation, groups), fmt);
}

at::Tensor complex_backward_weight(BackwardFn real, const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups) {
  const auto fmt = conv_memory_format(grad_output, input);
  const int64_t K = weight_size[0], Cg = weight_size[1], R = weight_size[2], S = weight_size[3];
  if (complex_uses_gauss(Cg, K / groups, R, S, stride, fmt, input.size(2) * input.size(3), cpu_complex64(input))) {  // dy conj(x)
    const Planes dy = planes(grad_output, 1, fmt), x = planes(input, -1, fmt);
    return gauss(dy, x, -1, fmt, [&](const at::Tensor& a, const at::Tensor& b, int) {
      return real(a, b, weight_size, stride, padding, dilation, groups);
    });
  }
  const std::array<int64_t, 4> size = {2 * K, 2 * Cg, R, S};
  const at::Tensor G = real(pairs(grad_output, fmt), pairs(input, fmt), size, stride, padding, dilation, groups)
                           .view({K, 2, Cg, 2, R, S});
  auto block = [&](int64_t p, int64_t q) { return G.select(1, p).select(2, q); };  // (K, Cg, R, S)
  at::Tensor dw = empty(weight_size, grad_output.options(), fmt);
  const at::Tensor dw_parts = at::view_as_real(dw);
  at::Tensor re = dw_parts.select(-1, 0), im = dw_parts.select(-1, 1);
  at::add_out(re, block(0, 0), block(1, 1));
  at::sub_out(im, block(1, 0), block(0, 1));
  return dw;
}

at::Tensor complex_backward_bias(BiasFn real, const at::Tensor& grad_output) {
  const int64_t K = grad_output.size(1);
  return at::view_as_complex(real(pairs(grad_output, grad_output.suggest_memory_format())).view({K, 2}));
}

}  // namespace conv_ext
