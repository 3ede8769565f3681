// checks.cpp — the one place conv_ext validates its arguments (see checks.h).
#include "checks.h"

#include "cpu/output_cache.h"

#include <c10/util/strides.h>

#include <array>
#include <sstream>

namespace conv_ext {
namespace {

std::string sizes_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, op, ": expected ", name, " to have 2 values (height, width), got ",
              v.size(), " values ", sizes_str(v));
  TORCH_CHECK(v[0] >= min_value && v[1] >= min_value, op, ": expected ", name,
              min_value == 0 ? " to be non-negative" : " to be positive", ", got ", name, "=",
              sizes_str(v));
}

// The dtypes the backward ops take; the forward op (integers: true) also takes the integer ones
// F.conv2d takes on the CPU (uint8, int8, int16, int32, int64; csrc/cpu/integer.cpp), not on
// CUDA, where torch's convolution refuses them too.
void check_dtype(const char* op, const char* name, const at::Tensor& t, bool integers = false) {
  const auto dt = t.scalar_type();
  const bool integer =
      integers && (dt == at::kByte || dt == at::kChar || dt == at::kShort || dt == at::kInt || dt == at::kLong);
  TORCH_CHECK(integer || dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16 ||
                  dt == at::kComplexFloat || dt == at::kComplexDouble,
              op, ": expected ", name, " to be float32, float64, float16, bfloat16, complex64",
              integers ? ", complex128 or an integer type (uint8, int8, int16, int32, int64)" : " or complex128",
              ", got ", dt);
  TORCH_CHECK(!integer || !t.is_cuda(), op, ": integer tensors run on the CPU only (as torch's convolution), got ",
              name, " of dtype ", dt, " on ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": expected ", name, " to be a dense (strided) tensor, got layout ",
              t.layout());
}

void check_same(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", a_name, " and ", b_name,
              " to have the same dtype, got ", a_name, " ", a.scalar_type(), " and ", b_name, " ",
              b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", a_name, " and ", b_name,
              " to be on the same device, got ", a_name, " on ", a.device(), " and ", b_name,
              " on ", b.device());
}

void check_4d(const char* op, const char* name, const at::Tensor& t, const char* layout) {
  TORCH_CHECK(t.dim() == 4, op, ": expected ", name, " to be 4-D ", layout, ", got ", t.dim(),
              "-D ", name, " of size ", sizes_str(t.sizes()));
}

// Fills the geometry of p and checks it: the part every op shares.
void fill_geometry(const char* op, Conv2dParams& p, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups > 0, op, ": expected groups to be positive, got groups=", groups);
  TORCH_CHECK(p.R > 0 && p.S > 0, op, ": expected a positive kernel size, got weight of kernel size (",
              p.R, ", ", p.S, ")");
  p.stride_h = stride[0], p.stride_w = stride[1];
  p.pad_h = padding[0], p.pad_w = padding[1];
  p.dil_h = dilation[0], p.dil_w = dilation[1];
  p.groups = groups;
  TORCH_CHECK(p.K % groups == 0, op, ": expected out_channels (weight.size(0)=", p.K,
              ") to be divisible by groups=", groups);
  const int64_t span_h = p.dil_h * (p.R - 1) + 1, span_w = p.dil_w * (p.S - 1) + 1;
  TORCH_CHECK(p.H + 2 * p.pad_h >= span_h && p.W + 2 * p.pad_w >= span_w, op,
              ": kernel size (", span_h, ", ", span_w, ") (dilation included) is larger than the "
              "padded input size (", p.H + 2 * p.pad_h, ", ", p.W + 2 * p.pad_w, ")");
  p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.dil_h);
  p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.dil_w);
}

void check_in_channels(const char* op, const Conv2dParams& p, int64_t weight_c, const char* input_name) {
  TORCH_CHECK(p.C == p.groups * weight_c, op, ": expected ", input_name, " to have ",
              p.groups * weight_c, " channels (groups=", p.groups, " x weight.size(1)=", weight_c,
              "), got ", p.C);
}

void check_grad_output(const char* op, const Conv2dParams& p, const at::Tensor& grad_output) {
  check_4d(op, "grad_output", grad_output, "(N, K, P, Q)");
  const std::vector<int64_t> want = {p.N, p.K, p.P, p.Q};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(want), op,
              ": expected grad_output of size ", sizes_str(want), ", got ",
              sizes_str(grad_output.sizes()));
}

}  // namespace

Conv2dParams make_forward_params(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "conv_ext.conv2d";
  TORCH_CHECK(input.dim() == 4, op, ": expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got ",
              input.dim(), "-D input of size ", sizes_str(input.sizes()));
  check_4d(op, "weight", weight, "(out_channels, in_channels/groups, kH, kW)");
  check_dtype(op, "input", input, /*integers=*/true);
  check_dtype(op, "weight", weight, /*integers=*/true);
  check_same(op, "input", input, "weight", weight);
  Conv2dParams p;
  p.N = input.size(0), p.C = input.size(1), p.H = input.size(2), p.W = input.size(3);
  p.K = weight.size(0), p.R = weight.size(2), p.S = weight.size(3);
  if (bias.has_value() && bias->defined()) {
    check_dtype(op, "bias", *bias, /*integers=*/true);
    check_same(op, "input", input, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == p.K, op,
                ": expected bias of size [", p.K, "] (weight.size(0)), got ", sizes_str(bias->sizes()));
  }
  fill_geometry(op, p, stride, padding, dilation, groups);
  check_in_channels(op, p, weight.size(1), "input");
  return p;
}

Conv2dParams make_backward_input_params(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  const char* op = "conv_ext.conv2d_backward_input";
  TORCH_CHECK(input_size.size() == 4, op, ": expected input_size to have 4 values (N, C, H, W), got ",
              sizes_str(input_size));
  check_4d(op, "weight", weight, "(out_channels, in_channels/groups, kH, kW)");
  check_dtype(op, "grad_output", grad_output);
  check_dtype(op, "weight", weight);
  check_same(op, "grad_output", grad_output, "weight", weight);
  Conv2dParams p;
  p.N = input_size[0], p.C = input_size[1], p.H = input_size[2], p.W = input_size[3];
  p.K = weight.size(0), p.R = weight.size(2), p.S = weight.size(3);
  fill_geometry(op, p, stride, padding, dilation, groups);
  check_in_channels(op, p, weight.size(1), "input_size[1]");
  check_grad_output(op, p, grad_output);
  return p;
}

Conv2dParams make_backward_weight_params(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef weight_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation,
                                         int64_t groups) {
  const char* op = "conv_ext.conv2d_backward_weight";
  TORCH_CHECK(weight_size.size() == 4, op,
              ": expected weight_size to have 4 values (K, C/groups, R, S), got ", sizes_str(weight_size));
  check_4d(op, "input", input, "(N, C, H, W)");
  check_dtype(op, "grad_output", grad_output);
  check_dtype(op, "input", input);
  check_same(op, "grad_output", grad_output, "input", input);
  Conv2dParams p;
  p.N = input.size(0), p.C = input.size(1), p.H = input.size(2), p.W = input.size(3);
  p.K = weight_size[0], p.R = weight_size[2], p.S = weight_size[3];
  fill_geometry(op, p, stride, padding, dilation, groups);
  check_in_channels(op, p, weight_size[1], "input");
  check_grad_output(op, p, grad_output);
  return p;
}

void check_backward_bias(const at::Tensor& grad_output) {
  const char* op = "conv_ext.conv2d_backward_bias";
  check_4d(op, "grad_output", grad_output, "(N, K, P, Q)");
  check_dtype(op, "grad_output", grad_output);
}

at::MemoryFormat conv_memory_format(const at::Tensor& a, const at::Tensor& b) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  return (a.suggest_memory_format() == cl || b.suggest_memory_format() == cl)
             ? cl
             : at::MemoryFormat::Contiguous;
}

WeightGrad::WeightGrad(at::IntArrayRef weight_size, const at::TensorOptions& options, at::MemoryFormat fmt) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  out = cpu::empty_output(weight_size, options, cl ? fmt : at::MemoryFormat::Contiguous);
  const bool same_bytes = weight_size[1] == 1 || weight_size[2] * weight_size[3] == 1;
  kcrs = !cl ? out : same_bytes ? out.as_strided(weight_size, c10::contiguous_strides(weight_size)) : cpu::empty_output(weight_size, options, at::MemoryFormat::Contiguous);
}

namespace {
// strides of a 4-D tensor, canonical when it is contiguous in fmt
std::array<int64_t, 4> strides4(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t n = t.size(0), c = t.size(1), h = t.size(2), w = t.size(3);
  (void)n;
  if (fmt == at::MemoryFormat::ChannelsLast && t.is_contiguous(fmt)) return {h * w * c, 1, w * c, c};
  if (fmt == at::MemoryFormat::Contiguous && t.is_contiguous()) return {c * h * w, h * w, w, 1};
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}
}  // namespace

void set_strides(Conv2dParams& p, const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                 at::MemoryFormat fmt) {
  const auto xs = strides4(x, fmt), ws = strides4(w, at::MemoryFormat::Contiguous),
             ys = strides4(y, fmt);
  p.xs_n = xs[0], p.xs_c = xs[1], p.xs_h = xs[2], p.xs_w = xs[3];
  p.ws_k = ws[0], p.ws_c = ws[1], p.ws_r = ws[2], p.ws_s = ws[3];
  p.ys_n = ys[0], p.ys_k = ys[1], p.ys_p = ys[2], p.ys_q = ys[3];
}

}  // namespace conv_ext
