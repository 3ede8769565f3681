// filter_cache.h — packed filters kept across calls while the filter tensor is unchanged.
//
// implicit_gemm and winograd repack the filter on every call: into [out-block][c][r][s][NVL]
// panels, or into Winograd's U = G g G^T. For weight-heavy layers that is 15-20% of a forward
// (2048->512 1x1 @7, 512->512 3x3 @7; perf record -e cpu-clock). In an inference loop, or for a
// frozen layer during fine-tuning, the filter does not change between calls, so the packed form
// can be reused -- the issue's "packed weights cached per weight tensor, keyed on its version
// counter, so an optimizer step invalidates it". Used by implicit_gemm (forward and
// backward-input panels), winograd (U when it is <= 1 MiB; a larger U read back from memory
// cost more than computing it again) and gemm_f64 (its forward and backward-input panels).
//
// A packed form is reused only while the filter is the same: the same tensor (held by a weak
// reference, so its address cannot be taken by another tensor), the same storage (weak reference
// too) and data pointer, sizes and strides, the same value of its version counter, which every
// in-place change through PyTorch bumps (optimizer steps, nn.init, load_state_dict,
// `with torch.no_grad(): w.copy_(...)`) -- and the same bytes: writes that bypass the version
// counter (through `w.data`, a NumPy view, a collective writing into the storage) are caught by a
// 64-bit fingerprint of the filter (a polynomial hash of its words, vectorised with AVX-512), checked on
// every reuse. Inference tensors (created under torch.inference_mode) have no version counter and
// are never cached.
//
// Caching starts at the second call that packs the same (filter, version, layout): a training
// step sees each version of a filter once per layout, so it packs into per-thread scratch as
// before and keeps nothing. At most CONV_EXT_CPU_FILTER_CACHE_MB MiB are kept (default 512; 0
// turns the cache off), least recently used first out; conv_ext.empty_cache() empties it.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace conv_ext {
namespace cpu {

struct PackedFilter {
  at::Tensor owner;            // holds a cached buffer while the call reads it (undefined: scratch)
  const float* data = nullptr;
};

// The packed form of `filter` (the user's filter tensor as the kernel reads it, or null when the
// kernel reads a temporary copy) under `tag` (the kernel and every parameter of its layout),
// `floats` long: from the cache, or written by pack(dst) into a new cached buffer or into
// `scratch` (which must hold `floats`) -- or, scratch null, data null where it would have gone
// there: the kernel then packs it piece by piece as its tasks need it.
PackedFilter packed_filter(const at::Tensor* filter, const std::vector<int64_t>& tag, int64_t floats,
                           float* scratch, const std::function<void(float*)>& pack);

void clear_filter_cache();
int64_t filter_cache_bytes();  // bytes of packed filters held now
// The same cache for forms that are tensors (complex filters' real forms, complex_conv.cpp): the
// forms `make()` returns for `filter` under `tag`, `bytes` in all, kept by the rules above -- the
// cached ones, or make()'s where this call caches them; empty where this call keeps nothing (the
// caller makes its own: a first sighting, an inference tensor, over the limit).
std::vector<at::Tensor> kept_forms(const at::Tensor& filter, const std::vector<int64_t>& tag, int64_t bytes,
                                   const std::function<std::vector<at::Tensor>()>& make);

}  // namespace cpu
}  // namespace conv_ext
