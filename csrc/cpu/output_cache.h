// output_cache.h — where the CPU ops' large outputs (y, dx, dw) and operand copies come from:
// a caching allocator.
//
// A fresh output of several MiB is a fresh mmap: every 4 KiB page faults on first touch, and in
// this VM a fault costs ~2.4 us (python: torch.empty(4,64,112,112).fill_(1) 7.5 ms with 3136
// faults, 2.0 ms without). The 7x7/2 stem's 12.8 MB output paid ~5 ms of faults per call, more
// than its arithmetic on one core. Outputs of >= 1 MiB therefore come from a cache of freed
// blocks of the same size (a training loop asks for the same sizes every step); a block not in
// the cache is allocated 2 MiB-aligned with MADV_HUGEPAGE (512x fewer faults where THP is
// "madvise"). The cache holds at most CONV_EXT_CPU_CACHE_MB MiB (default 1024; 0 turns it off);
// conv_ext.empty_cache() returns what it holds to the system. Outputs are ordinary CPU tensors
// (resizable: a resize allocates through the same allocator).
#pragma once
#include <ATen/ATen.h>

namespace conv_ext {
namespace cpu {

// at::empty(size, options.memory_format(fmt)), from the cache when it is large
at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options, at::MemoryFormat fmt);

// t.contiguous(fmt), a copy (when one is needed) from the cache: the ops' operand copies (strided
// 1x1 inputs, a grad_output in the other layout, a KCRS copy of a filter) are large too
at::Tensor contiguous_cached(const at::Tensor& t, at::MemoryFormat fmt);

void empty_cache();         // free every cached block
int64_t cached_bytes();     // bytes held in the cache now

}  // namespace cpu
}  // namespace conv_ext
