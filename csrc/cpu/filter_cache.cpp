// filter_cache.cpp — the packed-filter cache of filter_cache.h.
#include "filter_cache.h"

#include <ATen/Parallel.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "algorithms.h"
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
  int64_t nbytes = 0;  // of the forms (part of the key)
  int64_t version = -1;
  int sightings = 0;               // calls that made this (filter, version, tag)'s forms
  std::vector<at::Tensor> forms;   // the packed form (or forms), once cached
  size_t bytes = 0;                // held in forms
  uint64_t print = 0;              // fingerprint of the filter they were made from
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

// A 64-bit fingerprint of the filter's bytes: per lane of 8 interleaved 64-bit words a polynomial
// hash h = h*P + w (mod 2^64, P odd: a change of any one word always changes it), over chunks of
// 256 KiB in parallel, combined in chunk order. ~20 GB/s a core here, a third to a half of what
// repacking costs, and it catches what the version counter cannot see. With AVX-512, 64 lanes of
// 32-bit words (vpmulld: 64 bytes a multiply, not 8), the lanes then folded by r = (r ^ h) * P
// (one-to-one in each h, so a change of any one word still changes the result). The 1 MiB
// filter of a bfloat16 512->1024 1x1/2 was ~5% of its channels_last forward in inference (perf
// record); cached-filter forwards, batch 4, 2 threads (python benchmarks/ab.py OLD.so NEW.so
// SHAPE --pass forward): that layer 1.05x faster, 2048->512 @7 float32 NCHW (4 MiB) 1.12x; a
// 64 MiB filter (from memory) hashes about twice as fast. Which of the two a process uses is
// fixed (cpu_capability()).
constexpr uint64_t kP = 0x9E3779B97F4A7C15ull;

uint64_t chunk_words64(const unsigned char* bytes, int64_t lo, int64_t hi) {
  const int64_t words = (hi - lo) / 8;
  uint64_t h[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  int64_t i = 0;
  for (; i + 8 <= words; i += 8)
    for (int l = 0; l < 8; ++l) {
      uint64_t w;
      std::memcpy(&w, bytes + lo + (i + l) * 8, 8);
      h[l] = h[l] * kP + w;
    }
  for (int64_t j = lo + i * 8; j < hi; ++j) h[j % 8] = h[j % 8] * kP + bytes[j];  // the tail
  uint64_t r = 0;
  for (int l = 0; l < 8; ++l) r = (r ^ h[l]) * kP;
  return r;
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f")
uint64_t chunk_words32_avx512(const unsigned char* bytes, int64_t lo, int64_t hi) {
  constexpr int kAcc = 4;  // independent chains of 16 lanes (vpmulld's latency)
  const __m512i p = _mm512_set1_epi32(static_cast<int>(0x9E3779B1u));
  __m512i h[kAcc];
  for (int a = 0; a < kAcc; ++a) h[a] = _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                         _mm512_set1_epi32(16 * a + 1));
  int64_t j = lo;
  for (; j + 64 * kAcc <= hi; j += 64 * kAcc)
    for (int a = 0; a < kAcc; ++a)
      h[a] = _mm512_add_epi32(_mm512_mullo_epi32(h[a], p), _mm512_loadu_si512(bytes + j + 64 * a));
  alignas(64) uint32_t lanes[16 * kAcc];
  for (int a = 0; a < kAcc; ++a) _mm512_store_si512(lanes + 16 * a, h[a]);
  for (; j < hi; ++j) lanes[(j - lo) % (16 * kAcc)] = lanes[(j - lo) % (16 * kAcc)] * 0x9E3779B1u + bytes[j];  // the tail
  uint64_t r = 0;
  for (int l = 0; l < 16 * kAcc; ++l) r = (r ^ lanes[l]) * kP;
  return r;
}
#pragma GCC pop_options
#endif

uint64_t fingerprint(const at::Tensor& t) {
  const auto* bytes = static_cast<const unsigned char*>(t.const_data_ptr());
  const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
  constexpr int64_t kChunk = 256 << 10;
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#if defined(__x86_64__)
  static const bool wide = cpu_capability() == "avx512";
#else
  static const bool wide = false;
#endif
  std::vector<uint64_t> part(static_cast<size_t>(std::max<int64_t>(1, nchunk)), 0);
  at::parallel_for(0, nchunk, 4, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
#if defined(__x86_64__)
      part[c] = wide ? chunk_words32_avx512(bytes, lo, hi) : chunk_words64(bytes, lo, hi);
#else
      part[c] = chunk_words64(bytes, lo, hi);
#endif
    }
  });
  uint64_t r = static_cast<uint64_t>(n);
  for (uint64_t v : part) r = (r ^ v) * kP + 1;
  return r;
}

bool same_filter(const Entry& e, const at::Tensor& t, int64_t version, int64_t nbytes) {
  return e.version == version && e.nbytes == nbytes && e.storage_addr == t.storage().unsafeGetStorageImpl() &&
         !e.storage.expired() && e.data == t.const_data_ptr() && t.sizes().equals(e.sizes) && t.strides().equals(e.strides);
}

void describe(Entry& e, const at::Tensor& t, int64_t version, int64_t nbytes) {
  e.tensor_addr = t.unsafeGetTensorImpl();
  e.storage = t.storage().getWeakStorageImpl();
  e.storage_addr = t.storage().unsafeGetStorageImpl();
  e.data = t.const_data_ptr();
  e.sizes = t.sizes().vec(), e.strides = t.strides().vec();
  e.version = version, e.nbytes = nbytes, e.sightings = 1;
}

Entry* find(Cache& c, const at::Tensor& t, const std::vector<int64_t>& tag) {
  for (auto& e : c.entries)
    if (e.tensor_addr == t.unsafeGetTensorImpl() && e.tag == tag && !e.tensor.expired()) return &e;
  return nullptr;
}

// The entry's forms forgotten: their buffers moved to `dead` (freed after the lock).
void drop(Cache& c, Entry& e, std::vector<at::Tensor>& dead) {
  c.bytes -= e.bytes, e.bytes = 0;
  for (auto& f : e.forms) dead.push_back(std::move(f));
  e.forms.clear();
}

// Entries whose filter is gone, their forms dropped.
void purge(Cache& c, std::vector<at::Tensor>& dead) {
  for (auto& e : c.entries)
    if (e.tensor.expired() || e.storage.expired()) drop(c, e, dead);
  c.entries.erase(std::remove_if(c.entries.begin(), c.entries.end(),
                                 [](const Entry& e) { return e.tensor.expired() || e.storage.expired(); }),
                  c.entries.end());
}

}  // namespace

std::vector<at::Tensor> kept_forms(const at::Tensor& t, const std::vector<int64_t>& tag, int64_t bytes,
                                   const std::function<std::vector<at::Tensor>()>& make) {
  Cache& c = cache();
  if (!t.defined() || t.is_inference() || !t.is_cpu() || size_t(bytes) > c.cap ||
      !(t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast)))
    return {};
  const int64_t version = t._version();
  const std::vector<int64_t>& key = tag;
  std::vector<at::Tensor> dead;  // buffers to free once the lock is released
  bool cache_it = false;
  std::vector<at::Tensor> hit;
  uint64_t hit_print = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    purge(c, dead);
    Entry* e = find(c, t, key);
    if (e && same_filter(*e, t, version, bytes)) {
      if (!e->forms.empty()) {
        e->last_use = ++c.clock;
        hit = e->forms, hit_print = e->print;
      } else {
        cache_it = ++e->sightings >= 2;
      }
    } else if (e) {  // the filter changed: forget its forms
      drop(c, *e, dead);
      describe(*e, t, version, bytes);
    } else {
      c.entries.emplace_back(t, key);
      describe(c.entries.back(), t, version, bytes);
    }
  }
  dead.clear();
  if (!hit.empty()) {
    // the version counter says unchanged; the bytes must agree (writes through w.data, NumPy or
    // a collective do not bump it). A mismatch drops the entry's forms and makes them afresh.
    if (fingerprint(t) == hit_print) return hit;
    std::lock_guard<std::mutex> lock(c.mutex);
    Entry* e = find(c, t, key);
    if (e && !e->forms.empty() && e->forms[0].is_same(hit[0])) {
      drop(c, *e, dead);
      e->sightings = 1;
    }
    cache_it = true;
  }
  if (!cache_it) return {};
  const uint64_t print = fingerprint(t);
  std::vector<at::Tensor> made = make();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    Entry* e = find(c, t, key);
    if (e && same_filter(*e, t, version, bytes) && e->forms.empty()) {
      e->forms = made;
      e->print = print;
      e->last_use = ++c.clock;
      e->bytes = 0;
      for (const auto& f : made) e->bytes += f.nbytes();
      c.bytes += e->bytes;
      while (c.bytes > c.cap) {  // evict the least recently used other forms
        Entry* lru = nullptr;
        for (auto& o : c.entries)
          if (&o != e && !o.forms.empty() && (!lru || o.last_use < lru->last_use)) lru = &o;
        if (!lru) break;
        drop(c, *lru, dead);
      }
    }
  }
  return made;
}

PackedFilter packed_filter(const at::Tensor* filter, const std::vector<int64_t>& tag, int64_t floats,
                           float* scratch, const std::function<void(float*)>& pack) {
  if (filter != nullptr) {
    const auto kept = kept_forms(*filter, tag, floats * int64_t(sizeof(float)), [&] {
      at::Tensor buf = empty_output({floats}, at::TensorOptions().dtype(at::kFloat), at::MemoryFormat::Contiguous);
      pack(buf.mutable_data_ptr<float>());
      return std::vector<at::Tensor>{buf};
    });
    if (!kept.empty()) return {kept[0], kept[0].const_data_ptr<float>()};
  }
  if (scratch == nullptr) return {};  // the caller packs it as it goes
  pack(scratch);
  return {at::Tensor(), scratch};
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
