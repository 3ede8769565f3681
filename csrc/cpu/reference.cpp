// reference.cpp — direct convolution, written for clarity: the CPU oracle of every other kernel.
//
// Each pass is the definition in conv_params.h with the loops in the plainest order and any
// strides (NCHW, NHWC or otherwise), so it handles every problem: stride, padding, dilation,
// groups, odd sizes. Sums run in float64 for float64 and in float32 for the other floating dtypes
// (at::opmath_type), in a fixed order, so results are the same bits on every run; the forward of
// the integer dtypes in uint64 (the dtype's wrap-around, below).
// Parallel over independent outputs; no output element is written by two threads.
//
//   forward          y[n,k,p,q]  = bias[k] + sum_{c,r,s} x[n,g*Cg+c,h,w] * w[k,c,r,s]
//   backward-input   dx[n,c,h,w] = sum_{k in group, r,s : h = p*sh - ph + r*dh, ...} dy[n,k,p,q] * w[k,c',r,s]
//   backward-weight  dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n,g*Cg+c,h,w]
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "algorithms.h"

namespace conv_ext {
namespace cpu {
namespace {

// Rough grain so that a task holds at least ~32k multiply-adds.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// Integer dtypes (forward only) sum in uint64, whose wrap-around keeps the low bits of every
// product and sum exact: the dtype's own wrap-around, as torch's integer convolution computes it.
template <typename T>
using Acc = std::conditional_t<std::is_integral_v<T>, uint64_t, at::opmath_type<T>>;

template <typename T>
void forward(const Conv2dParams& p, const T* x, const T* w, const T* bias, T* y) {
  using acc_t = Acc<T>;
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  // one task per (n, k) output plane
  at::parallel_for(0, p.N * p.K, grain_for(p.P * p.Q * Cg * p.R * p.S), [&](int64_t begin, int64_t end) {
    for (int64_t nk = begin; nk < end; ++nk) {
      const int64_t n = nk / p.K, k = nk % p.K, g = k / Kg;
      const T* xg = x + n * p.xs_n + g * Cg * p.xs_c;  // first input channel of this group
      const T* wk = w + k * p.ws_k;
      for (int64_t oh = 0; oh < p.P; ++oh)
        for (int64_t ow = 0; ow < p.Q; ++ow) {
          acc_t sum = bias ? static_cast<acc_t>(bias[k]) : acc_t(0);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < p.R; ++r) {
              const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h;
              if (ih < 0 || ih >= p.H) continue;  // zero padding
              for (int64_t s = 0; s < p.S; ++s) {
                const int64_t iw = ow * p.stride_w - p.pad_w + s * p.dil_w;
                if (iw < 0 || iw >= p.W) continue;
                sum += static_cast<acc_t>(xg[c * p.xs_c + ih * p.xs_h + iw * p.xs_w]) *
                       static_cast<acc_t>(wk[c * p.ws_c + r * p.ws_r + s * p.ws_s]);
              }
            }
          y[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q] = static_cast<T>(sum);
        }
    }
  });
}

template <typename T>
void backward_input(const Conv2dParams& p, const T* dy, const T* w, T* dx) {
  using acc_t = at::opmath_type<T>;
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  // one task per (n, c) input plane; gather form: each dx element sums the outputs it fed
  at::parallel_for(0, p.N * p.C, grain_for(p.H * p.W * Kg * p.R * p.S), [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / p.C, c = nc % p.C, g = c / Cg, cg = c % Cg;
      for (int64_t ih = 0; ih < p.H; ++ih)
        for (int64_t iw = 0; iw < p.W; ++iw) {
          acc_t sum = 0;
          for (int64_t k = g * Kg; k < (g + 1) * Kg; ++k)
            for (int64_t r = 0; r < p.R; ++r) {
              // input row ih was read by output row oh when oh*stride_h - pad_h + r*dil_h == ih
              const int64_t th = ih + p.pad_h - r * p.dil_h;
              if (th < 0 || th % p.stride_h != 0) continue;
              const int64_t oh = th / p.stride_h;
              if (oh >= p.P) continue;
              for (int64_t s = 0; s < p.S; ++s) {
                const int64_t tw = iw + p.pad_w - s * p.dil_w;
                if (tw < 0 || tw % p.stride_w != 0) continue;
                const int64_t ow = tw / p.stride_w;
                if (ow >= p.Q) continue;
                sum += static_cast<acc_t>(dy[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q]) *
                       static_cast<acc_t>(w[k * p.ws_k + cg * p.ws_c + r * p.ws_r + s * p.ws_s]);
              }
            }
          dx[n * p.xs_n + c * p.xs_c + ih * p.xs_h + iw * p.xs_w] = static_cast<T>(sum);
        }
    }
  });
}

template <typename T>
void backward_weight(const Conv2dParams& p, const T* dy, const T* x, T* dw) {
  using acc_t = at::opmath_type<T>;
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  // one task per weight element; each sums over the whole batch and output plane
  at::parallel_for(0, p.K * Cg * p.R * p.S, grain_for(p.N * p.P * p.Q), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i % p.S, r = (i / p.S) % p.R, c = (i / (p.S * p.R)) % Cg,
                    k = i / (p.S * p.R * Cg), g = k / Kg;
      acc_t sum = 0;
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t oh = 0; oh < p.P; ++oh) {
          const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h;
          if (ih < 0 || ih >= p.H) continue;
          for (int64_t ow = 0; ow < p.Q; ++ow) {
            const int64_t iw = ow * p.stride_w - p.pad_w + s * p.dil_w;
            if (iw < 0 || iw >= p.W) continue;
            sum += static_cast<acc_t>(dy[n * p.ys_n + k * p.ys_k + oh * p.ys_p + ow * p.ys_q]) *
                   static_cast<acc_t>(x[n * p.xs_n + (g * Cg + c) * p.xs_c + ih * p.xs_h + iw * p.xs_w]);
          }
        }
      dw[k * p.ws_k + c * p.ws_c + r * p.ws_r + s * p.ws_s] = static_cast<T>(sum);
    }
  });
}

bool supports_all(const Conv2dParams&, at::ScalarType) { return true; }

void run_forward(const Conv2dParams& p, Operands& o) {
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, o.out.scalar_type(), "reference_forward", [&] {
    forward<scalar_t>(p, o.a.const_data_ptr<scalar_t>(), o.b.const_data_ptr<scalar_t>(),
                      o.bias.defined() ? o.bias.const_data_ptr<scalar_t>() : nullptr,
                      o.out.mutable_data_ptr<scalar_t>());
  });
}

void run_backward_input(const Conv2dParams& p, Operands& o) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.out.scalar_type(), "reference_backward_input", [&] {
    backward_input<scalar_t>(p, o.a.const_data_ptr<scalar_t>(), o.b.const_data_ptr<scalar_t>(),
                             o.out.mutable_data_ptr<scalar_t>());
  });
}

void run_backward_weight(const Conv2dParams& p, Operands& o) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.out.scalar_type(), "reference_backward_weight", [&] {
    backward_weight<scalar_t>(p, o.a.const_data_ptr<scalar_t>(), o.b.const_data_ptr<scalar_t>(),
                              o.out.mutable_data_ptr<scalar_t>());
  });
}

const bool registered = register_algorithm({"reference", Pass::Forward, 0, supports_all, run_forward}) &&
                        register_algorithm({"reference", Pass::BackwardInput, 0, supports_all, run_backward_input}) &&
                        register_algorithm({"reference", Pass::BackwardWeight, 0, supports_all, run_backward_weight});

}  // namespace
}  // namespace cpu
}  // namespace conv_ext
