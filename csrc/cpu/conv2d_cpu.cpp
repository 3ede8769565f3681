// conv2d_cpu.cpp — the CPU implementations of the conv_ext ops.
//
// Each op: check the arguments (checks.cpp), allocate the result in the layout torch would
// return, bring the operands into that layout (NCHW or NHWC, contiguous), handle the empty
// cases, then run the algorithm that algorithms.cpp chooses for the problem.
#include <ATen/Dispatch.h>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../complex_conv.h"
#include "algorithms.h"
#include "output_cache.h"

namespace conv_ext {
namespace cpu {
namespace {

// A strided 1x1 unpadded convolution only reads every stride-th pixel: it is the stride-1
// convolution of those pixels, which the 1x1 GEMM kernels run at full speed. Measured (ResNet's
// 512->1024 @28 stride-2 shortcut, batch 4, 2 threads): NCHW forward+backward 0.73x torch as a
// strided implicit GEMM -> 1.06x; NHWC backward-input 0.81x -> 1.01x, backward-weight 0.62x ->
// 0.88x. NHWC forward reads the strided pixels in place either way, and on small layers (CIFAR's
// 32->64 @16 shortcut) the copy costs more than it saves, so those keep the strided kernel.
bool strided_1x1(const Conv2dParams& p, at::MemoryFormat fmt, Pass pass, at::ScalarType dtype) {
  const bool geometry = p.R == 1 && p.S == 1 && p.pad_h == 0 && p.pad_w == 0 && (p.stride_h > 1 || p.stride_w > 1);
  // bfloat16 on AMX copies a strided input into its band whole (the copy reads every pixel): the
  // pixels it reads, copied first, are a quarter of that and then read in place. ResNet-50's
  // 256->512 @56 stride-2 shortcut, channels_last forward, batch 4: 1.46x faster (benchmarks/ab.py;
  // torch 0.49 ms, ours 0.69 before). With AMX tiles (not emulated: bf16_pairs runs there) its
  // channels_last forward reads them in place where the output rows fill its rows of tiles
  // (amx_bf16_strided_1x1_in_place): no copy at all.
  const bool amx = dtype == at::kBFloat16 && amx_bf16_available() &&
                   !(pass == Pass::Forward && !amx_bf16_emulated() &&
                     amx_bf16_strided_1x1_in_place(p, fmt == at::MemoryFormat::ChannelsLast));
  return geometry && (fmt == at::MemoryFormat::Contiguous || amx || (pass != Pass::Forward && p.macs() >= (int64_t(1) << 24)));
}
at::Tensor every_stride(const at::Tensor& t, const Conv2dParams& p) {  // t[:, :, ::sh, ::sw]
  return t.slice(2, 0, t.size(2), p.stride_h).slice(3, 0, t.size(3), p.stride_w);
}
// Between a contiguous NCHW tensor `full` (N, C, H, W) and `sub` = full[:, :, ::sh, ::sw] as a
// contiguous tensor: sub from full (gather), or full from sub with zeros at the pixels the stride
// skips (scatter, every value of full written once). A plane a task, elements as unsigned integers
// of their size (only copied); at sw = 2 an element and its right neighbour as one integer of twice
// the size (the element in its low half: little-endian), so that a row is one widening or
// narrowing loop. Against torch's copy_ of the strided view (and zero_, then copy_, for the
// scatter), NCHW, 2 threads (python benchmarks/ab.py OLD.so NEW.so SHAPE --pass P --dtype D): CIFAR's
// 32->64 1x1/2 shortcut (8,32,16,16) float64 forward 1.13x, backward-input 1.8x, float32
// backward-input 1.5x; ResNet-50's 256->512 @56/2 bfloat16 forward 1.10x, backward-input 1.23x,
// backward-weight 1.16-1.20x; 512->1024 @28/2 float32 level. (Per element with a division per
// row, the first try ran the bfloat16 backward-input 0.83x.)
template <class E> struct Pair { using T = void; };  // two elements as one integer
template <> struct Pair<uint8_t> { using T = uint16_t; };
template <> struct Pair<uint16_t> { using T = uint32_t; };
template <> struct Pair<uint32_t> { using T = uint64_t; };
template <class E>
void stride_row(E* row, E* s, int64_t W, int64_t Q, int64_t sw, bool gather) {
  using T = typename Pair<E>::T;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if constexpr (!std::is_void_v<T>) {
    if (sw == 2) {
      const int64_t pairs = W / 2;  // then, W odd, the last element alone
      for (int64_t q = 0; q < pairs; ++q) {
        T v;
        if (gather) {
          std::memcpy(&v, row + 2 * q, sizeof v);
          s[q] = static_cast<E>(v);
        } else {
          v = s[q];
          std::memcpy(row + 2 * q, &v, sizeof v);
        }
      }
      if (Q > pairs) {
        if (gather) s[pairs] = row[2 * pairs];
        else row[2 * pairs] = s[pairs];
      }
      return;
    }
  }
#endif
  if (gather) {
    for (int64_t q = 0; q < Q; ++q) s[q] = row[q * sw];
    return;
  }
  std::fill(row, row + W, E(0));
  for (int64_t q = 0; q < Q; ++q) row[q * sw] = s[q];
}
template <class E>
void stride_planes(E* full, E* sub, int64_t planes, int64_t H, int64_t W, int64_t sh, int64_t sw, bool gather) {
  const int64_t P = (H - 1) / sh + 1, Q = (W - 1) / sw + 1;
  at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / (H * W)), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      E* f = full + pl * H * W;
      E* s = sub + pl * P * Q;
      for (int64_t pp = 0; pp < P; ++pp, s += Q) {
        E* row = f + pp * sh * W;
        stride_row(row, s, W, Q, sw, gather);
        if (!gather) std::fill(row + W, f + std::min(H, (pp + 1) * sh) * W, E(0));  // the rows skipped
      }
    }
  });
}
void stride_planes(const at::Tensor& full, const at::Tensor& sub, const Conv2dParams& p, bool gather) {
  const auto run = [&](auto* type) {  // elements as unsigned integers of their size
    using E = std::remove_pointer_t<decltype(type)>;
    stride_planes(static_cast<E*>(full.data_ptr()), static_cast<E*>(sub.data_ptr()), full.size(0) * full.size(1),
                  full.size(2), full.size(3), p.stride_h, p.stride_w, gather);  // (gather: full only read)
  };
  switch (full.element_size()) {
    case 1: return run(static_cast<uint8_t*>(nullptr));
    case 2: return run(static_cast<uint16_t*>(nullptr));
    case 4: return run(static_cast<uint32_t*>(nullptr));
    case 8: return run(static_cast<uint64_t*>(nullptr));
    default: TORCH_CHECK(false, "conv_ext: no stride copy for elements of ", full.element_size(), " bytes");
  }
}
bool planes_copyable(const at::Tensor& t) {  // by stride_planes: contiguous NCHW of 1, 2, 4 or 8 bytes an element
  const int64_t e = t.element_size();
  return t.is_contiguous() && !t.is_complex() && (e == 1 || e == 2 || e == 4 || e == 8);
}
// t[:, :, ::sh, ::sw] as a contiguous tensor in `fmt`
at::Tensor every_stride_copy(const at::Tensor& t, const Conv2dParams& p, at::MemoryFormat fmt) {
  const at::Tensor view = every_stride(t, p);
  if (fmt != at::MemoryFormat::Contiguous || !planes_copyable(t)) return contiguous_cached(view, fmt);
  at::Tensor sub = empty_output(view.sizes(), t.options(), fmt);
  stride_planes(t, sub, p, /*gather=*/true);
  return sub;
}
constexpr int64_t kOne[2] = {1, 1};

// float16 and bfloat16 run the float32 algorithms on float32 copies of their operands, and the
// result is rounded to the half type once, at the end: every sum in float32 (as oneDNN's do),
// at the float32 kernels' speed plus a conversion of each operand. Through the reference
// kernel instead (its own loops in any dtype) they were 50-500x slower than torch: 64->64 3x3
// @56, batch 4, bfloat16 forward 1031 ms vs torch's 2.6. Algorithms that take a half type
// themselves run it natively (runs_half_natively): bfloat16's own kernels (amx_bf16, bf16_pairs,
// ...), float16's on the AMX tiles (amx_fp16: each value as two bfloat16 ones), depthwise's
// 16-bit passes (bfloat16 and float16) and implicit_gemm's channels_last float16 forward and
// stride-1 backward-input (float32 copies in, float16 out by its tiles).
// (is_half: algorithms.h)
at::Tensor to_float(const at::Tensor& t, at::MemoryFormat fmt) {
  return empty_output(t.sizes(), t.options().dtype(at::kFloat), fmt).copy_(t);
}
// A half-type problem runs natively when an algorithm for its dtype takes it (amx_bf16), or when
// the reference is forced (tests); else on float32 copies.
bool runs_half_natively(const Algorithm& a, Pass pass) {
  return a.name != "reference" || forced_algorithm(pass) == "reference";
}
at::Tensor filter_to_float(const at::Tensor& w) {  // keeps a channels_last filter channels_last
  const bool krsc = !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast);
  return w.to(at::kFloat, /*non_blocking=*/false, /*copy=*/false,
              krsc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// The algorithm for the pass, and the filter it reads (w). A channels_last filter (K x R x S x C
// in memory: what model.to(memory_format=torch.channels_last) gives) goes as it lies to the
// algorithms that read it (Algorithm::krsc_weights); the others get a KCRS copy, which
// costs 1 ms per call for a 512x512x3x3 filter. The choice itself is made on KCRS strides.
// Filter strides of a channels_last filter (K x R x S x Cg in memory: weight_is_krsc).
void set_krsc_weight_strides(Conv2dParams& p) {
  p.ws_k = p.R * p.S * p.Cg(), p.ws_c = 1, p.ws_r = p.S * p.Cg(), p.ws_s = p.Cg();
}

const Algorithm& choose_for_weight(Pass pass, Conv2dParams& p, const at::Tensor& weight, at::Tensor& w) {
  const bool krsc = !weight.is_contiguous() && weight.is_contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t Cg = p.Cg(), R = p.R, S = p.S;
  p.ws_k = Cg * R * S, p.ws_c = R * S, p.ws_r = S, p.ws_s = 1;
  const Algorithm& a = choose(pass, p, weight.scalar_type());
  if (krsc && a.krsc_weights) {
    set_krsc_weight_strides(p);
    w = weight;
  } else {
    w = contiguous_cached(weight, at::MemoryFormat::Contiguous);
  }
  return a;
}

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_forward_params(input, weight, bias_opt, stride, padding, dilation, groups);
  if (input.is_complex()) return complex_forward(&forward, input, weight, bias_opt, stride, padding, dilation, groups);
  const auto fmt = conv_memory_format(input, weight);
  at::Tensor y = empty_output({p.N, p.K, p.P, p.Q}, input.options(), fmt);
  if (y.numel() == 0) return y;
  const at::Tensor bias = bias_opt.has_value() && bias_opt->defined() ? bias_opt->contiguous() : at::Tensor();
  if (p.Cg() == 0) {  // no input channels: the output is the bias alone
    if (bias.defined()) y.copy_(bias.view({1, p.K, 1, 1}).expand_as(y));
    else y.zero_();
    return y;
  }
  if (strided_1x1(p, fmt, Pass::Forward, input.scalar_type()))
    return forward(every_stride_copy(input, p, fmt), weight, bias_opt, kOne, padding, dilation, groups);
  const at::Tensor x = contiguous_cached(input, fmt);
  set_strides(p, x, weight, y, fmt);
  at::Tensor w;
  const Algorithm& algo = choose_for_weight(Pass::Forward, p, weight, w);
  if (is_half(input.scalar_type()) && !runs_half_natively(algo, Pass::Forward)) {
    const std::optional<at::Tensor> bias32 =
        bias.defined() ? std::optional<at::Tensor>(bias.to(at::kFloat)) : std::nullopt;
    return y.copy_(forward(to_float(input, fmt), filter_to_float(weight), bias32, stride, padding, dilation, groups));
  }
  Operands o{x, w, bias, y, w.is_same(weight) ? &weight : nullptr};
  algo.run(p, o);
  return y;
}

at::Tensor backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          at::IntArrayRef input_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_backward_input_params(grad_output, weight, input_size, stride, padding, dilation, groups);
  if (grad_output.is_complex())
    return complex_backward_input(&backward_input, grad_output, weight, input_size, stride, padding, dilation, groups);
  const auto fmt = conv_memory_format(grad_output, weight);
  at::Tensor dx = empty_output(input_size, grad_output.options(), fmt);
  if (dx.numel() == 0) return dx;
  if (p.Kg() == 0) return dx.zero_();  // no output channels read this input
  if (strided_1x1(p, fmt, Pass::BackwardInput, grad_output.scalar_type())) {  // the pixels the stride skips get no gradient
    const at::Tensor sub = backward_input(grad_output, weight, every_stride(dx, p).sizes(), kOne, padding, dilation, groups);
    if (fmt == at::MemoryFormat::Contiguous && planes_copyable(dx) && sub.is_contiguous()) {
      stride_planes(dx, sub, p, /*gather=*/false);
    } else {
      dx.zero_();
      every_stride(dx, p).copy_(sub);
    }
    return dx;
  }
  const at::Tensor dy = contiguous_cached(grad_output, fmt);
  set_strides(p, dx, weight, dy, fmt);
  at::Tensor w;
  const Algorithm& algo = choose_for_weight(Pass::BackwardInput, p, weight, w);
  if (is_half(grad_output.scalar_type()) && !runs_half_natively(algo, Pass::BackwardInput))
    return dx.copy_(backward_input(to_float(grad_output, fmt), filter_to_float(weight), input_size, stride, padding,
                                   dilation, groups));
  Operands o{dy, w, at::Tensor(), dx, w.is_same(weight) ? &weight : nullptr};
  algo.run(p, o);
  return dx;
}

at::Tensor backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           at::IntArrayRef weight_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Conv2dParams p = make_backward_weight_params(grad_output, input, weight_size, stride, padding, dilation, groups);
  if (grad_output.is_complex())
    return complex_backward_weight(&backward_weight, grad_output, input, weight_size, stride, padding, dilation, groups);
  const auto fmt = conv_memory_format(grad_output, input);
  WeightGrad g(weight_size, grad_output.options(), fmt);  // dw in the convolution's layout
  if (g.out.numel() == 0) return g.out;
  if (p.N == 0) return g.out.zero_();  // an empty batch contributes nothing
  if (strided_1x1(p, fmt, Pass::BackwardWeight, grad_output.scalar_type()))
    return backward_weight(grad_output, every_stride_copy(input, p, fmt), weight_size, kOne, padding, dilation, groups);
  const at::Tensor dy = contiguous_cached(grad_output, fmt), x = contiguous_cached(input, fmt);
  set_strides(p, x, g.kcrs, dy, fmt);
  const Algorithm& a = choose(Pass::BackwardWeight, p, g.kcrs.scalar_type());
  if (is_half(grad_output.scalar_type()) && !runs_half_natively(a, Pass::BackwardWeight))
    return g.out.copy_(backward_weight(to_float(grad_output, fmt), to_float(input, fmt), weight_size, stride, padding,
                                       dilation, groups));
  if (!g.kcrs.is_alias_of(g.out) && a.krsc_weights) {  // writes the channels_last dw itself: no reorder
    set_krsc_weight_strides(p);
    g.kcrs = g.out;
  }
  Operands o{dy, x, at::Tensor(), g.kcrs};
  a.run(p, o);
  return g.finish();
}

// db[k] = sum_{n,p,q} dy[n,k,p,q], in an order fixed by the shape (the same bits for any thread
// count), summed in float64 for every dtype and rounded once: a float32 sum of a few hundred
// values in one chain was 10x torch's error (whose sums are pairwise), e.g. the 276 pixels of one
// channel: 8.3e-6 vs 7.5e-7. Channels_last: the N*P*Q pixel rows in a fixed number of chunks,
// each summing its rows into K partial sums (a contiguous, vectorised inner loop), the chunks
// then added in chunk order. NCHW: a task per block of channels, each a sum along its planes. 2
// threads, us per call before -> after (a task per block of 64 channels; one chain of dependent
// adds a plane): channels_last 576@7 batch 4 6.7 -> 6.0, 96@56 134 -> 70, 64@32 batch 8 46 -> 14,
// 64@56 98 -> 23; NCHW 96@56 382 -> 100, 64@32 234 -> 43, 64@56 379 -> 99 (576@7 13, unchanged).
// The float64 sums of float32 run as AVX-512 / AVX2 clones of the two loops (this file is built
// for the baseline ISA, whose 2-wide float64 adds made them 1.7-2.5x slower).

// acc[k] += src[i * K + k] for the rows i in [i0, i1) and k < kn <= kB (the sums in registers
// over the rows)
constexpr int64_t kB = 64;
template <typename T>
inline __attribute__((always_inline)) void sum_rows(const T* src, int64_t K, int64_t i0, int64_t i1, int64_t kn, double* acc) {
  double a[kB] = {};
  if (kn == kB) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t k = 0; k < kB; ++k) a[k] += static_cast<double>(src[i * K + k]);
  } else {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t k = 0; k < kn; ++k) a[k] += static_cast<double>(src[i * K + k]);
  }
  for (int64_t k = 0; k < kn; ++k) acc[k] += a[k];
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void sum_rows(const float* src, int64_t K, int64_t i0,
                                                                            int64_t i1, int64_t kn, double* acc) {
  sum_rows<float>(src, K, i0, i1, kn, acc);
}
// A plane of n >= 256 values: kL running sums, added pairwise at the end (independent adds,
// vectorised; one sum was a chain of dependent adds: 96@56 batch 4 took 0.38 ms, now 0.1).
constexpr int64_t kL = 32;
template <typename T, int64_t kL = kL>
inline __attribute__((always_inline)) double sum_plane(const T* plane, int64_t n) {
  double lane[kL] = {};
  int64_t i = 0;
  for (; i + kL <= n; i += kL)
    for (int64_t j = 0; j < kL; ++j) lane[j] += static_cast<double>(plane[i + j]);
  for (int64_t j = 0; i + j < n; ++j) lane[j] += static_cast<double>(plane[i + j]);
  for (int64_t half = kL / 2; half >= 1; half /= 2)  // the lanes added pairwise
    for (int64_t j = 0; j < half; ++j) lane[j] += lane[j + half];
  return lane[0];
}
__attribute__((target_clones("avx512f", "avx2", "default"))) double sum_plane(const float* plane, int64_t n) {
  return sum_plane<float>(plane, n);
}
// a plane of fewer than 256 values: 8 sums
__attribute__((target_clones("avx512f", "avx2", "default"))) double sum_small_plane(const float* plane, int64_t n) {
  return sum_plane<float, 8>(plane, n);
}

at::Tensor backward_bias(const at::Tensor& grad_output) {
  check_backward_bias(grad_output);
  if (grad_output.is_complex()) return complex_backward_bias(&backward_bias, grad_output);
  const int64_t N = grad_output.size(0), K = grad_output.size(1),
                PQ = grad_output.size(2) * grad_output.size(3);
  at::Tensor db = at::empty({K}, grad_output.options());
  if (K == 0) return db;
  const bool nhwc = grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor dy = grad_output.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "backward_bias", [&] {
    const scalar_t* src = dy.const_data_ptr<scalar_t>();
    scalar_t* out = db.mutable_data_ptr<scalar_t>();
    if (nhwc) {
      const int64_t rows = N * PQ;
      // chunks of >= 64 rows and >= 16K elements, at most 16, an even count (two threads share
      // them evenly): a function of the shape only
      const int64_t most = std::min<int64_t>({16, rows / 64, rows * K / 16384});
      const int64_t nchunk = most >= 2 ? most / 2 * 2 : 1;
      std::vector<double> partial(static_cast<size_t>(nchunk * K), 0.0);
      at::parallel_for(0, nchunk, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t k0 = 0; k0 < K; k0 += kB)
            sum_rows(src + k0, K, rows * c / nchunk, rows * (c + 1) / nchunk, std::min(kB, K - k0),
                     partial.data() + c * K + k0);
        }
      });
      for (int64_t k = 0; k < K; ++k) {
        double s = partial[k];
        for (int64_t c = 1; c < nchunk; ++c) s += partial[c * K + k];
        out[k] = static_cast<scalar_t>(s);
      }
      return;
    }
    constexpr int64_t kBlock = 64;  // channels per task
    at::parallel_for(0, (K + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t k0 = b * kBlock, k1 = std::min(K, k0 + kBlock);
        double acc[kBlock] = {};
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = k0; k < k1; ++k) {
            // Small planes keep one sum each: the out-of-order core runs several planes' chains
            // at once, and the lanes cost more than they gain (576@7: 13 -> 25 us).
            const scalar_t* plane = src + (n * K + k) * PQ;
            if (PQ >= 256) acc[k - k0] += sum_plane(plane, PQ);
            else if (std::is_same_v<scalar_t, float>) acc[k - k0] += sum_small_plane(reinterpret_cast<const float*>(plane), PQ);
            else acc[k - k0] += sum_plane<scalar_t, 1>(plane, PQ);  // one chain
          }
        for (int64_t k = k0; k < k1; ++k) out[k] = static_cast<scalar_t>(acc[k - k0]);
      }
    });
  });
  return db;
}

}  // namespace

void run_as_float32(Pass pass, const Conv2dParams& p, Operands& o) {
  // float32 copies in the same layouts (so p's strides hold), but the filter (or dw) KCRS when the
  // float32 algorithm does not read channels_last filters
  const bool weight_operand = pass != Pass::BackwardWeight;
  const at::Tensor& w = weight_operand ? o.b : o.out;
  const bool krsc = !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast);
  Conv2dParams q = p;
  q.ws_k = q.Cg() * q.R * q.S, q.ws_c = q.R * q.S, q.ws_r = q.S, q.ws_s = 1;
  const Algorithm& a = choose_automatic(pass, q, at::kFloat);
  const bool filter_as_is = krsc && a.krsc_weights;  // else KCRS
  if (filter_as_is) q = p;
  auto as_float = [](const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; };
  const at::Tensor a32 = as_float(o.a), bias32 = as_float(o.bias);
  const at::Tensor b32 = weight_operand && !filter_as_is ? as_float(o.b).contiguous() : as_float(o.b);
  const auto opts = o.out.options().dtype(at::kFloat);
  at::Tensor out32 = weight_operand || filter_as_is ? at::empty_like(o.out, opts) : at::empty(o.out.sizes(), opts);
  Operands f{a32, b32, bias32, out32};
  a.run(q, f);
  o.out.copy_(out32);
}

TORCH_LIBRARY_IMPL(conv_ext, CPU, m) {
  m.impl("conv2d_forward", &forward);
  m.impl("conv2d_backward_input", &backward_input);
  m.impl("conv2d_backward_weight", &backward_weight);
  m.impl("conv2d_backward_bias", &backward_bias);
}

}  // namespace cpu
}  // namespace conv_ext
