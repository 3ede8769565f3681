// output_cache.cpp — the caching allocator of output_cache.h.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/accumulate.h>
#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace conv_ext {
namespace cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;    // smaller outputs: at::empty
constexpr size_t kHuge = size_t(2) << 20;        // alignment, and the THP page size
constexpr size_t kClass = size_t(64) << 10;      // sizes are cached in 64 KiB classes

struct Block {
  void* ptr;
  size_t bytes;  // the size class
};

struct Cache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free;  // size class -> free blocks
  size_t held = 0;                                       // bytes in `free`
  size_t cap;
  Cache() {
    const char* env = std::getenv("CONV_EXT_CPU_CACHE_MB");
    cap = (env ? size_t(std::max(0L, std::atol(env))) : size_t(1024)) << 20;
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: outputs may be freed after static destruction
  return *c;
}

void* fresh(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (bytes >= kHuge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: ignore failure
#endif
  return p;
}

void release(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.held + b->bytes <= c.cap) {
      c.free[b->bytes].push_back(b->ptr);
      c.held += b->bytes;
      delete b;
      return;
    }
  }
  std::free(b->ptr);
  delete b;
}

struct OutputAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = std::max<size_t>(kClass, (n + kClass - 1) / kClass * kClass);
    void* p = nullptr;
    Cache& c = cache();
    {
      std::lock_guard<std::mutex> lock(c.mutex);
      auto it = c.free.find(bytes);
      if (it != c.free.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        c.held -= bytes;
      }
    }
    if (!p) p = fresh(bytes);
    return {p, new Block{p, bytes}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // the context is not the data
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

OutputAllocator& allocator() {
  static OutputAllocator* a = new OutputAllocator();
  return *a;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options, at::MemoryFormat fmt) {
  const size_t bytes = size_t(c10::multiply_integers(size)) * options.dtype().itemsize();
  if (bytes < kMinBytes || cache().cap == 0 || options.device().type() != c10::DeviceType::CPU)
    return at::empty(size, options.memory_format(fmt));
  return at::detail::empty_generic(size, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), fmt);
}

at::Tensor contiguous_cached(const at::Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  return empty_output(t.sizes(), t.options(), fmt).copy_(t);
}

void empty_cache() {
  Cache& c = cache();
  std::unordered_map<size_t, std::vector<void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    blocks.swap(c.free);
    c.held = 0;
  }
  for (auto& kv : blocks)
    for (void* p : kv.second) std::free(p);
}

int64_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.held);
}

}  // namespace cpu
}  // namespace conv_ext
