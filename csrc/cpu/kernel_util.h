// kernel_util.h — small helpers shared by the fast CPU kernels (no SIMD here).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <unistd.h>

#include "algorithms.h"

namespace conv_ext {
namespace cpu {

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Per-thread scratch that only grows: after the first calls a kernel allocates nothing.
// `slot` separates buffers that are live at the same time. The pointer is 64-byte aligned (a
// cache line; malloc gives 16), so the packed panels' vectors never straddle two lines.
inline float* scratch(int slot, int64_t n) {
  thread_local std::vector<float> buffers[12];
  auto& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n + 16) b.resize(static_cast<size_t>(n) + 64);
  const auto p = reinterpret_cast<std::uintptr_t>(b.data());
  return reinterpret_cast<float*>((p + 63) & ~std::uintptr_t(63));
}

// The L1 data cache of a core in bytes (sysconf; 32 KiB where the system does not say), read once.
inline int64_t l1d_bytes() {
  static const int64_t bytes = [] {
#ifdef _SC_LEVEL1_DCACHE_SIZE  // (glibc)
    const long b = sysconf(_SC_LEVEL1_DCACHE_SIZE);
#else
    const long b = 0;
#endif
    return b > 0 ? int64_t(b) : int64_t(32) << 10;
  }();
  return bytes;
}

// Problems below this many multiply-adds run on the calling thread: starting the pool costs
// more than it saves (the (1,3,8,8)->16 layer is 28k MACs).
constexpr int64_t kSerialMacs = 1 << 18;

// Outputs of at least this many floats (2 MB: one core's L2) are written with streaming
// (non-temporal) stores where a kernel writes whole, aligned vectors that nothing adds into later:
// no read-for-ownership of lines that are about to be overwritten whole. At 512K (1M before):
// MobileNetV2's 32->16 1x1 @112 channels_last forward, batch 4 (0.8M floats out), 2 threads,
// 1.06x (python benchmarks/ab.py OLD.so NEW.so 4,32,112,112,16,1,1,0 --layout nhwc --pass
// forward; torch 0.29 ms, ours 0.311 -> 0.293; one thread it was 0.66 vs torch's 0.45 ms: the
// read-for-ownership of 3.2 MB); whole MobileNetV2 and ResNet-50 (--models ... --passes
// inference,train_step, the two builds alternated) 1.00-1.01x channels_last, NCHW within noise
// (0.90-1.04x for ResNet-50 inference across runs, torch's own time moving as much). The
// threshold was 2M floats; at 1M, 128->512 1x1 @28 batch 4 forward (1.6M floats out), 2 threads,
// ms streamed / not (the bench's tensors, random order, median of 60): NCHW gemm_1x1 1.87 / 2.67
// and 1.96 / 2.31, channels_last implicit_gemm 2.12 / 2.35 and 1.69 / 1.94. Whole ResNet-50
// (the next layer reads the output from memory, not L3), batch 4, channels_last, three runs each:
// inference 1.07 / 1.18 / 1.05x torch streamed vs 1.09 / 1.10 / 1.07x not: no loss seen in noise.
constexpr int64_t kStreamFloats = int64_t(1) << 19;

// Rows per block when `rows` rows are cut into blocks of at most `rb`: halved while fewer than
// `want` tasks come out (`per` tasks a block), then evened out (56 rows in 40 + 16 -> 28 + 28);
// ceil_div(rows, result) is the number of blocks.
inline int64_t even_row_blocks(int64_t rows, int64_t rb, int64_t per, int64_t want) {
  rb = std::max<int64_t>(1, std::min(rb, rows));
  while (rb > 1 && per * ceil_div(rows, rb) < want) rb = ceil_div(rb, 2);
  return ceil_div(rows, ceil_div(rows, rb));
}

// Threads for_each_task spreads tasks over (1 inside a parallel region), and how much a count
// of equal tasks costs relative to perfect balance: a last, partial round leaves threads idle
// (11 tasks on 2 threads: 12/11). Task-shape choices weigh their costs with it.
inline int64_t pool_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }
inline double round_factor(int64_t tasks) {
  const int64_t t = pool_threads();
  return double((tasks + t - 1) / t * t) / double(tasks);
}

// How many tasks a backward-weight's fixed chunks of rows are cut for: the machine's hardware
// threads (at least 2), at most `cap`. Not the pool's size: torch.set_num_threads does not change
// the chunks, so the bits are the same for any thread count on a machine (the test runs 1 and 2
// threads); another machine may cut them otherwise, as it may run other kernels (AVX2, AVX-512).
// Each chunk adds a buffer of partial sums the size of dw, written cold and summed at the end.
// Chunks for 2 tasks instead of 8 (implicit_gemm) or 16 (gemm_1x1) on this 2-core machine,
// 2 threads, batch 4, in-process A/B in random order, median of 30: 3x3/2 backward-weight 128@56
// 1.06-1.11x (channels_last and NCHW), 256@28 1.06-1.14x, 512@14 0.98-1.06x; 1x1 1.00-1.06x
// (64->256 @56, 256->64 @56, 128->512 @28, 512->1024 @28/2, 2048->512 @7); the 7x7/2 stem, 3x3
// 64@56, g4 and CIFAR layers within 2%. 4 tasks (2 a thread, which the pool could rebalance when
// one core runs slow) gained about half as much.
inline int64_t weight_tasks(int64_t cap) {
  static const int64_t hw = std::max<int64_t>(2, std::thread::hardware_concurrency());
  return std::min(cap, hw);
}

// How many chunks the `rows` (units) of a backward-weight's reduction are cut into: a function of
// the shape and the machine only (determinism): at most max_chunks and one per row, few enough
// that the partial sums (`part` floats a chunk) stay within 64 MiB, about 4M multiply-adds a chunk
// but at least 2 (implicit_gemm, gemm_1x1).
inline int64_t weight_chunks(int64_t max_chunks, int64_t rows, int64_t part, int64_t macs) {
  const int64_t n = std::min<int64_t>({max_chunks, rows, std::max<int64_t>(1, (int64_t(16) << 20) / part),
                                       std::max<int64_t>(2, macs / (int64_t(4) << 20))});
  return std::max<int64_t>(1, n);
}

// The number of chunks, from `lo` up to `hi`, whose `blocks` tasks each spread best over the
// weight_tasks(cap) threads (a function of the machine, not the pool: the same bits for any
// thread count): the fewest whose last, partial round leaves at most `max_idle` of the threads'
// time idle (0.1: 11 tasks on 2 threads, 1/12), else the best up to `lo` times the threads. Each
// chunk adds a buffer of partial sums, so the caller weighs idle time against them: 3 tasks on
// 2 threads ran 2 + 1, the second thread idle a third of the time (gemm_1x1.cpp).
inline int64_t balanced_chunks(int64_t lo, int64_t hi, int64_t blocks, int64_t cap, double max_idle) {
  const int64_t hw = weight_tasks(cap);
  auto idle = [&](int64_t c) { return 1.0 - double(c * blocks) / double((c * blocks + hw - 1) / hw * hw); };
  int64_t best = lo;
  for (int64_t c = lo; c <= std::min(hi, lo * hw); ++c) {
    if (idle(c) <= max_idle + 1e-9) return c;
    if (idle(c) < idle(best)) best = c;
  }
  return best;
}

// Run f(task) for task in [0, n), in parallel unless the whole problem is small. Every output
// element is written by exactly one task, so the result does not depend on the thread count or
// on which thread runs a task.
// Each thread owns a contiguous range of tasks (as a static split would give it) and takes them
// in order through an atomic counter; a thread that finishes its range goes on taking tasks from
// the others' ranges. On this VM the two cores do not run at the same speed (perf: the calling
// thread spent 24% more samples in the same kernel than the pool thread, which then waited), so a
// static split made every call as slow as the slower core. Default suite, channels_last, 2
// threads, two runs each of python -m conv_ext.bench --suite default --layout nhwc --passes
// forward,all: geomean 1.23x / 1.25x static -> 1.30x / 1.28x.
// Tasks are taken kChunksPerThread-th of a range at a time: a locked fetch_add waits for the
// task's stores to drain, which cost as much as a task of one 7x7 plane (960@7 depthwise NCHW
// forward, 3840 planes, batch 4, 2 threads: 10% of the samples on the instruction after it).
constexpr int64_t kChunksPerThread = 32;
template <typename F>
void for_each_task(int64_t n, int64_t macs, const F& f) {
  const int64_t nt = std::min<int64_t>(n, at::get_num_threads());
  if (n == 1 || macs < kSerialMacs || nt <= 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  struct alignas(64) Range {
    std::atomic<int64_t> next;
    int64_t end;
  };
  std::vector<Range> ranges(static_cast<size_t>(nt));
  for (int64_t i = 0; i < nt; ++i) ranges[i].next.store(n * i / nt), ranges[i].end = n * (i + 1) / nt;
  const int64_t chunk = std::max<int64_t>(1, n / (nt * kChunksPerThread));
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      for (int64_t j = 0; j < nt; ++j) {  // own range first, then the others' in turn
        Range& r = ranges[(i + j) % nt];
        for (int64_t t; (t = r.next.fetch_add(chunk, std::memory_order_relaxed)) < r.end;)
          for (const int64_t te = std::min(t + chunk, r.end); t < te; ++t) f(t);
      }
  });
}

// Adds partial buffers 1..nchunk-1 (chunk ch at partial + ch*part, `part` floats each) into
// buffer 0, every element in chunk order: the same bits as `sum = p0; sum += p1; ...` per
// element, but in contiguous blocks (vectorised, in parallel) instead of one element at a time
// across buffers megabytes apart. The backward-weight kernels then read their result from
// buffer 0. (3x3/2 128@56 NCHW backward-weight: the element-wise loop was ~45% of its time.)
inline void sum_chunks(float* partial, int64_t nchunk, int64_t part) {
  if (nchunk <= 1) return;
  constexpr int64_t kBlock = 4096;
  for_each_task((part + kBlock - 1) / kBlock, nchunk * part, [&](int64_t b) {
    const int64_t i0 = b * kBlock, n = std::min(part, i0 + kBlock) - i0;
    float* dst = partial + i0;
    for (int64_t ch = 1; ch < nchunk; ++ch) {
      const float* src = partial + ch * part + i0;
      for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
    }
  });
}

inline bool simd_available() { return cpu_capability() != "portable"; }
inline bool use_avx512() { return cpu_capability() == "avx512"; }

// Stride-1 backward-input is the forward convolution of dy with the filter transposed (k <-> c)
// and turned round (r -> R-1-r, s -> S-1-s), at padding dil*(R-1) - pad: where that is >= 0
// (every padding nn.Conv2d takes with a stride-1 "same" or smaller).
inline bool turns_round(const Conv2dParams& p) {
  return p.stride_h == 1 && p.stride_w == 1 && p.pad_h <= p.dil_h * (p.R - 1) && p.pad_w <= p.dil_w * (p.S - 1);
}
// That forward's sizes and padding: dy (N, K, P, Q) in, dx (N, C, H, W) out. The operands' and the
// filter's strides are left as they are (for the caller to turn, or to read through its own).
inline Conv2dParams turned_problem(const Conv2dParams& p) {
  Conv2dParams f = p;
  f.C = p.K, f.H = p.P, f.W = p.Q, f.K = p.C, f.P = p.H, f.Q = p.W;
  f.pad_h = p.dil_h * (p.R - 1) - p.pad_h, f.pad_w = p.dil_w * (p.S - 1) - p.pad_w;
  return f;
}

}  // namespace cpu
}  // namespace conv_ext

namespace conv_ext {
namespace cpu {

// Per-thread 64-bit index scratch (segment offsets of the micro-kernel).
inline int64_t* scratch_i64(int slot, int64_t n) {
  thread_local std::vector<int64_t> buffers[4];
  auto& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n) + 16);
  return b.data();
}

// Per-thread row-pointer scratch: T = const float, the micro-kernel's per-row A pointers
// (Tile::arow); T = float, its C rows where they are not evenly spaced (Tile::crow).
template <class T>
inline T** scratch_ptrs(int64_t n) {
  thread_local std::vector<T*> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n) + 16);
  return buffer.data();
}
inline const float** scratch_rows(int64_t n) { return scratch_ptrs<const float>(n); }

}  // namespace cpu
}  // namespace conv_ext
