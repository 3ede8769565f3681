// algorithms_cuda.h — the CUDA algorithms of each pass, and the switches tests and benchmarks
// use to force one (the CUDA twin of cpu/algorithms.h; implemented in conv2d_cuda.cpp).
//
//   forward          igemm (tensor cores, NHWC), depthwise, reference
//   backward_input   igemm (tensor cores, NHWC, stride phases), reference
//   backward_weight  igemm (tensor cores, NHWC, deterministic split-K), depthwise, reference
// Automatic choice takes the first algorithm of that list that supports the problem; the
// reference supports everything. A forced algorithm that does not support a problem is an error.
#pragma once
#include <string>
#include <vector>

#include "../cpu/algorithms.h"  // Pass, pass_from_name

namespace conv_ext {
namespace cuda {

using cpu::Pass;
std::vector<std::string> algorithm_names(Pass pass);
void force_algorithm(Pass pass, const std::string& name);  // "auto" restores automatic choice
std::string forced_algorithm(Pass pass);
std::string last_algorithm(Pass pass);  // the last one run by this thread, "" if none

}  // namespace cuda
}  // namespace conv_ext
