// filter_cache.cpp — the packed-filter cache of filter_cache.h.
#include "filter_cache.h"

#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "output_cache.h"

namespace conv_ext {
namespace cpu {
namespace {

using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// One (filter, tag) pair. The weak references keep the TensorImpl and StorageImpl objects (not
// their data) from being freed, so no other tensor or storage can appear at the same addresses
// while the entry exists; an expired one means the filter is gone and the entry is dropped.
struct Entry {
  Entry(const at::Tensor& t, std::vector<int64_t> key)
      : tensor(t.getIntrusivePtr()), storage(t.storage().getWeakStorageImpl()), tag(std::move(key)) {}
  WeakTensor tensor;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* tensor_addr = nullptr;
  const void* storage_addr = nullptr;
  const void* data = nullptr;
  std::vector<int64_t> tag;
  std::vector<int64_t> sizes, strides;
  int64_t floats = 0;
  int64_t version = -1;
  int sightings = 0;   // calls that packed this (filter, version, tag)
  at::Tensor packed;   // the packed form, once cached
  uint64_t last_use = 0;
};

struct Cache {
  std::mutex mutex;
  std::vector<Entry> entries;
  size_t bytes = 0;  // held in entries' packed buffers
  size_t cap;
  uint64_t clock = 0;
  Cache() {
    const char* env = std::getenv("CONV_EXT_CPU_FILTER_CACHE_MB");
    cap = (env ? size_t(std::max(0L, std::atol(env))) : size_t(512)) << 20;
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: kernels may run during static destruction
  return *c;
}

bool same_filter(const Entry& e, const at::Tensor& t, int64_t version, int64_t floats) {
  return e.version == version && e.floats == floats && e.storage_addr == t.storage().unsafeGetStorageImpl() &&
         !e.storage.expired() && e.data == t.const_data_ptr() && t.sizes().equals(e.sizes) && t.strides().equals(e.strides);
}

void describe(Entry& e, const at::Tensor& t, int64_t version, int64_t floats) {
  e.tensor_addr = t.unsafeGetTensorImpl();
  e.storage = t.storage().getWeakStorageImpl();
  e.storage_addr = t.storage().unsafeGetStorageImpl();
  e.data = t.const_data_ptr();
  e.sizes = t.sizes().vec(), e.strides = t.strides().vec();
  e.version = version, e.floats = floats, e.sightings = 1;
}

Entry* find(Cache& c, const at::Tensor& t, const std::vector<int64_t>& tag) {
  for (auto& e : c.entries)
    if (e.tensor_addr == t.unsafeGetTensorImpl() && e.tag == tag && !e.tensor.expired()) return &e;
  return nullptr;
}

// Entries whose filter is gone; their buffers are moved to `dead` (freed after the lock).
void purge(Cache& c, std::vector<at::Tensor>& dead) {
  for (auto& e : c.entries)
    if ((e.tensor.expired() || e.storage.expired()) && e.packed.defined())
      c.bytes -= e.packed.nbytes(), dead.push_back(std::move(e.packed));
  c.entries.erase(std::remove_if(c.entries.begin(), c.entries.end(),
                                 [](const Entry& e) { return e.tensor.expired() || e.storage.expired(); }),
                  c.entries.end());
}

}  // namespace

PackedFilter packed_filter(const at::Tensor* filter, std::initializer_list<int64_t> tag, int64_t floats,
                           float* scratch, const std::function<void(float*)>& pack) {
  Cache& c = cache();
  const size_t bytes = size_t(floats) * sizeof(float);
  const auto uncached = [&]() -> PackedFilter {
    if (scratch) pack(scratch);
    return {at::Tensor(), scratch};
  };
  if (filter == nullptr || !filter->defined() || filter->is_inference() || bytes > c.cap) return uncached();
  const at::Tensor& t = *filter;
  const int64_t version = t._version();
  const std::vector<int64_t> key(tag);
  std::vector<at::Tensor> dead;  // buffers to free once the lock is released
  bool cache_it = false;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    purge(c, dead);
    Entry* e = find(c, t, key);
    if (e && same_filter(*e, t, version, floats)) {
      if (e->packed.defined()) {
        e->last_use = ++c.clock;
        return {e->packed, e->packed.const_data_ptr<float>()};
      }
      cache_it = ++e->sightings >= 2;
    } else if (e) {  // the filter changed: forget its packed form
      if (e->packed.defined()) c.bytes -= e->packed.nbytes(), dead.push_back(std::move(e->packed));
      e->packed = at::Tensor();
      describe(*e, t, version, floats);
    } else {
      c.entries.emplace_back(t, key);
      describe(c.entries.back(), t, version, floats);
    }
  }
  dead.clear();
  if (!cache_it) return uncached();
  at::Tensor buf = empty_output({floats}, at::TensorOptions().dtype(at::kFloat), at::MemoryFormat::Contiguous);
  pack(buf.mutable_data_ptr<float>());
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    Entry* e = find(c, t, key);
    if (e && same_filter(*e, t, version, floats) && !e->packed.defined()) {
      e->packed = buf;
      e->last_use = ++c.clock;
      c.bytes += buf.nbytes();
      while (c.bytes > c.cap) {  // evict the least recently used other packed forms
        Entry* lru = nullptr;
        for (auto& o : c.entries)
          if (&o != e && o.packed.defined() && (!lru || o.last_use < lru->last_use)) lru = &o;
        if (!lru) break;
        c.bytes -= lru->packed.nbytes();
        dead.push_back(std::move(lru->packed));
        lru->packed = at::Tensor();
      }
    }
  }
  return {buf, buf.const_data_ptr<float>()};
}

void clear_filter_cache() {
  Cache& c = cache();
  std::vector<Entry> entries;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    entries.swap(c.entries);
    c.bytes = 0;
  }
}

int64_t filter_cache_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.bytes);
}

}  // namespace cpu
}  // namespace conv_ext
