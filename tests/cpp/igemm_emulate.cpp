// igemm_emulate.cpp — runs the real tensor-core implicit-GEMM kernels on the host, to check their
// indexing (loaders, shared-memory layouts, fragment maps, epilogues, split-K) without a GPU.
//
//   make cuda-emulate       (g++ -std=c++20 -DCONV_EXT_EMULATE ..., needs only CUDA's headers)
//
// The kernel bodies of igemm_*.cu compile as plain host functions; one CTA at a time runs as
// 256 host threads. __syncthreads is a 256-thread barrier; the warp-wide instructions (ldmatrix,
// mma.sync) are emulated warp-synchronously from the PTX ISA's fragment layouts: each lane posts
// its operands, a 32-thread barrier, each lane computes its own result. cp.async copies at once
// (so this cannot find pipeline races: compute-sanitizer on a GPU does that) but checks that every
// source is 16-byte aligned and inside a tensor. tf32 operands are checked to be tf32 (low 13
// mantissa bits zero). Outputs start as NaN, so an element the kernel never writes fails.
// Each case is compared with a float64 direct convolution.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

// ---- the CUDA built-ins the kernels use, for the host ----------------------------------------
#define __launch_bounds__(...)
thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim, gridDim;
void emu_syncthreads();
#define __syncthreads() emu_syncthreads()
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline int min(int a, int b) { return a < b ? a : b; }

#include "../../csrc/cuda/igemm_forward.cu"
#include "../../csrc/cuda/igemm_backward_input.cu"
#include "../../csrc/cuda/igemm_backward_weight.cu"
// the direct kernels: their __shared__ arrays become function statics (one CTA runs at a time)
#undef __shared__
#define __shared__ static
template <typename T> static T __ldg(const T* p) { return *p; }
#include "../../csrc/cuda/reference.cu"
#include "../../csrc/cuda/depthwise.cu"

namespace conv_ext { namespace cuda { namespace igemm {
alignas(128) unsigned char smem[256 * 1024];  // the dynamic shared memory of the running CTA
}}}

using namespace conv_ext;
using namespace conv_ext::cuda;

// ---- emulated CTA ----------------------------------------------------------------------------
static std::unique_ptr<std::barrier<>> cta_barrier;
struct Warp {
  std::barrier<> bar{32};
  uint32_t addr[32];
  uint32_t a[32][4], b[32][2];
};
static Warp warps[8];
static std::atomic<long> errors{0};
struct Buffer { const char* p; size_t bytes; };
static std::vector<Buffer> buffers;  // where cp.async may read

#define EMU_FAIL(...) do { if (errors++ < 10) std::fprintf(stderr, __VA_ARGS__); } while (0)

void emu_syncthreads() { cta_barrier->arrive_and_wait(); }

namespace conv_ext { namespace cuda { namespace emu {
uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - igemm::smem); }
static void check_smem(uint32_t a, int bytes) {
  if (a + bytes > sizeof(igemm::smem)) EMU_FAIL("shared address %u out of range\n", a);
}
void cp_async_16(uint32_t dst, const void* src, bool valid) {
  check_smem(dst, 16);
  if (dst % 16) EMU_FAIL("cp.async: shared destination %u not 16-byte aligned\n", dst);
  if (!valid) { std::memset(igemm::smem + dst, 0, 16); return; }
  if (reinterpret_cast<uintptr_t>(src) % 16) EMU_FAIL("cp.async: global source not 16-byte aligned\n");
  bool inside = false;
  for (const Buffer& b : buffers)
    if (static_cast<const char*>(src) >= b.p && static_cast<const char*>(src) + 16 <= b.p + b.bytes) inside = true;
  if (!inside) EMU_FAIL("cp.async: global source outside every tensor\n");
  else std::memcpy(igemm::smem + dst, src, 16);
}
uint32_t lds32(uint32_t addr) {
  check_smem(addr, 4);
  uint32_t v;
  std::memcpy(&v, igemm::smem + addr, 4);
  return v;
}
static uint16_t lds16(uint32_t addr) {
  check_smem(addr, 2);
  uint16_t v;
  std::memcpy(&v, igemm::smem + addr, 2);
  return v;
}
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of matrix i; thread t receives, of each
// matrix, row t/4, 16-bit elements 2*(t%4) and 2*(t%4)+1 (.trans: of the transposed matrix).
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans) {
  const int lane = threadIdx.x & 31;
  Warp& w = warps[threadIdx.x >> 5];
  if (addr % 16) EMU_FAIL("ldmatrix: row address %u not 16-byte aligned\n", addr);
  w.addr[lane] = addr;
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) {
    if (!trans) {
      r[i] = lds32(w.addr[8 * i + lane / 4] + 4 * (lane % 4));
    } else {
      const uint32_t lo = lds16(w.addr[8 * i + 2 * (lane % 4)] + 2 * (lane / 4));
      const uint32_t hi = lds16(w.addr[8 * i + 2 * (lane % 4) + 1] + 2 * (lane / 4));
      r[i] = lo | (hi << 16);
    }
  }
  w.bar.arrive_and_wait();
}
uint32_t to_tf32(float x) {  // cvt.rna.tf32.f32: round to nearest, ties away from zero
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
}
static float half_bits(uint32_t h, int kind) {
  const uint16_t v = static_cast<uint16_t>(h);
  if (kind == 0) { __half x; std::memcpy(&x, &v, 2); return __half2float(x); }
  __nv_bfloat16 x; std::memcpy(&x, &v, 2); return __bfloat162float(x);
}
// mma.sync, fragment layouts of the PTX ISA (g = lane/4, t = lane%4):
//   m16n8k16 (16-bit): A regs (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..);
//                      B regs (k 2t..2t+1, n g), (k 2t+8.., n g)
//   m16n8k8 (tf32):    A (g, t), (g+8, t), (g, t+4), (g+8, t+4); B (k t, n g), (k t+4, n g)
//   C/D (both):        (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int kind) {
  const int lane = threadIdx.x & 31;
  Warp& w = warps[threadIdx.x >> 5];
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
  w.bar.arrive_and_wait();
  float A[16][16] = {}, B[16][8] = {};
  const int kdim = kind == 2 ? 8 : 16;
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    if (kind == 2) {
      for (int i = 0; i < 4; ++i)
        if (w.a[t][i] & 0x1fffu) EMU_FAIL("mma tf32: A operand is not tf32\n");
      for (int i = 0; i < 2; ++i)
        if (w.b[t][i] & 0x1fffu) EMU_FAIL("mma tf32: B operand is not tf32\n");
      A[g][q] = __uint_as_float(w.a[t][0]);
      A[g + 8][q] = __uint_as_float(w.a[t][1]);
      A[g][q + 4] = __uint_as_float(w.a[t][2]);
      A[g + 8][q + 4] = __uint_as_float(w.a[t][3]);
      B[q][g] = __uint_as_float(w.b[t][0]);
      B[q + 4][g] = __uint_as_float(w.b[t][1]);
    } else {
      const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * q, 2 * q, 2 * q + 8, 2 * q + 8};
      for (int i = 0; i < 4; ++i) {
        A[rows[i]][cols[i]] = half_bits(w.a[t][i] & 0xffff, kind);
        A[rows[i]][cols[i] + 1] = half_bits(w.a[t][i] >> 16, kind);
      }
      B[2 * q][g] = half_bits(w.b[t][0] & 0xffff, kind);
      B[2 * q + 1][g] = half_bits(w.b[t][0] >> 16, kind);
      B[2 * q + 8][g] = half_bits(w.b[t][1] & 0xffff, kind);
      B[2 * q + 9][g] = half_bits(w.b[t][1] >> 16, kind);
    }
  }
  w.bar.arrive_and_wait();
  const int g = lane / 4, q = lane % 4;
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
  for (int i = 0; i < 4; ++i) {
    double s = d[i];
    for (int k = 0; k < kdim; ++k) s += double(A[rows[i]][k]) * double(B[k][cols[i]]);
    d[i] = static_cast<float>(s);
  }
}
cudaError_t last_error() { return cudaSuccess; }  // launches here cannot fail
cudaError_t set_max_dynamic_smem(const void*, int bytes) {
  return bytes <= int(sizeof(igemm::smem)) ? cudaSuccess : cudaErrorInvalidValue;
}
// A launch: CTA after CTA, each as blockDim.x host threads (one per CUDA thread).
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, const A&... args) {
  gridDim = grid, blockDim = block;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32) EMU_FAIL("launch: %d threads is not whole warps\n", threads);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = make_uint3(x, y, z);
        std::memset(igemm::smem, 0xff, sizeof(igemm::smem));  // NaN garbage where nothing was copied
        cta_barrier = std::make_unique<std::barrier<>>(threads);
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t)
          ts.emplace_back([&, t] { threadIdx = make_uint3(t, 0, 0); kernel(args...); });
        for (auto& th : ts) th.join();
      }
}
}}}  // namespace conv_ext::cuda::emu

// ---- problems --------------------------------------------------------------------------------
template <typename T> T from_f(float v) { return static_cast<T>(v); }
template <> __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> double to_d(T v) { return double(v); }
template <> double to_d<__half>(__half v) { return __half2float(v); }
template <> double to_d<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

struct Case { const char* name; int64_t N, C, H, W, K, R, S, sh, sw, ph, pw, dh, dw, G; };

Conv2dParams nhwc_params(const Case& c) {
  Conv2dParams p;
  p.N = c.N, p.C = c.C, p.H = c.H, p.W = c.W, p.K = c.K, p.R = c.R, p.S = c.S;
  p.stride_h = c.sh, p.stride_w = c.sw, p.pad_h = c.ph, p.pad_w = c.pw, p.dil_h = c.dh, p.dil_w = c.dw, p.groups = c.G;
  p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.dil_h);
  p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.dil_w);
  p.xs_n = p.H * p.W * p.C, p.xs_c = 1, p.xs_h = p.W * p.C, p.xs_w = p.C;
  p.ws_k = p.Cg() * p.R * p.S, p.ws_c = p.R * p.S, p.ws_r = p.S, p.ws_s = 1;
  p.ys_n = p.P * p.Q * p.K, p.ys_k = 1, p.ys_p = p.Q * p.K, p.ys_q = p.K;
  return p;
}

template <typename T>
std::vector<T> random_tensor(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d;
  std::vector<T> v(n);
  for (auto& e : v) e = from_f<T>(d(rng));
  return v;
}

// float64 references: y (N,P,Q,K), dx (N,H,W,C), dw (K,Cg,R,S)
template <typename T>
void reference(const Conv2dParams& p, const std::vector<T>& x, const std::vector<T>& w, const std::vector<T>& dy,
               const std::vector<T>& bias, std::vector<double>& y, std::vector<double>& dx, std::vector<double>& dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  y.assign(p.N * p.P * p.Q * p.K, 0.0), dx.assign(p.N * p.H * p.W * p.C, 0.0), dw.assign(p.K * Cg * p.R * p.S, 0.0);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t oh = 0; oh < p.P; ++oh)
      for (int64_t ow = 0; ow < p.Q; ++ow)
        for (int64_t k = 0; k < p.K; ++k) {
          const int64_t g = k / Kg;
          const int64_t yi = ((n * p.P + oh) * p.Q + ow) * p.K + k;
          double s = to_d(bias[k]);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < p.R; ++r)
              for (int64_t t = 0; t < p.S; ++t) {
                const int64_t ih = oh * p.stride_h - p.pad_h + r * p.dil_h, iw = ow * p.stride_w - p.pad_w + t * p.dil_w;
                if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
                const int64_t xi = ((n * p.H + ih) * p.W + iw) * p.C + g * Cg + c, wi = ((k * Cg + c) * p.R + r) * p.S + t;
                s += to_d(x[xi]) * to_d(w[wi]);
                dx[xi] += to_d(dy[yi]) * to_d(w[wi]);
                dw[wi] += to_d(dy[yi]) * to_d(x[xi]);
              }
          y[yi] = s;
        }
}

template <typename T>
bool compare(const char* what, const Case& c, const std::vector<T>& got, const std::vector<double>& want, double tol) {
  double maxref = 0, maxerr = 0;
  long nan = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_d(got[i]);
    if (std::isnan(g)) { ++nan; continue; }
    maxref = std::max(maxref, std::fabs(want[i]));
    maxerr = std::max(maxerr, std::fabs(g - want[i]));
  }
  const double rel = maxerr / std::max(maxref, 1e-30);
  const bool ok = nan == 0 && rel < tol;
  std::printf("%-5s %-16s %-16s rel.err %.2e %s%s\n", ok ? "ok" : "FAIL", what, c.name, rel,
              nan ? "unwritten/NaN elements: " : "", nan ? std::to_string(nan).c_str() : "");
  return ok;
}

// a device-workspace stand-in: 256-byte aligned, filled with NaN bytes
struct Workspace {
  size_t bytes;
  void* p;
  explicit Workspace(size_t b) : bytes(b), p(b ? ::operator new(b, std::align_val_t(256)) : nullptr) {
    if (p) std::memset(p, 0xff, b);
  }
  ~Workspace() { if (p) ::operator delete(p, std::align_val_t(256)); }
};

template <typename T, bool kX3>
bool run_case(const Case& cs, const char* tname, double tol) {
  const Conv2dParams p = nhwc_params(cs);
  std::mt19937 rng(1234);
  auto x = random_tensor<T>(p.N * p.H * p.W * p.C, rng), w = random_tensor<T>(p.K * p.Cg() * p.R * p.S, rng);
  auto dy = random_tensor<T>(p.N * p.P * p.Q * p.K, rng), bias = random_tensor<T>(p.K, rng);
  std::vector<double> ry, rdx, rdw;
  reference(p, x, w, dy, bias, ry, rdx, rdw);
  const int es = sizeof(T);
  const T nan = from_f<T>(NAN);
  bool ok = true;
  const std::string tag = std::string(tname) + (kX3 ? "/3xtf32" : "");
  auto reg = [](const void* ptr, size_t bytes) { buffers.push_back({static_cast<const char*>(ptr), bytes}); };

  auto check = [](cudaError_t e) { if (e != cudaSuccess) EMU_FAIL("launcher returned %d\n", int(e)); };
  if (igemm_forward_supports(p, es)) {  // ---- forward, through the real launcher
    buffers.clear();
    Workspace ws(igemm_forward_workspace(p, es));
    std::vector<T> y(p.N * p.P * p.Q * p.K, nan);
    reg(x.data(), x.size() * es), reg(ws.p, ws.bytes);
    check(igemm_forward<T>(p, x.data(), w.data(), bias.data(), y.data(), ws.p, kX3, nullptr));
    ok &= compare(("fwd " + tag).c_str(), cs, y, ry, tol);
  }
  if (igemm_backward_input_supports(p, es)) {  // ---- backward-input
    buffers.clear();
    Workspace ws(igemm_backward_input_workspace(p, es));
    std::vector<T> dx(p.N * p.H * p.W * p.C, nan);
    reg(dy.data(), dy.size() * es), reg(ws.p, ws.bytes);
    check(igemm_backward_input<T>(p, dy.data(), w.data(), dx.data(), ws.p, kX3, nullptr));
    ok &= compare(("bwd_input " + tag).c_str(), cs, dx, rdx, tol);
  }
  if (igemm_backward_weight_supports(p, es)) {  // ---- backward-weight
    buffers.clear();
    Workspace ws(igemm_backward_weight_workspace(p, es));
    std::vector<T> dw(p.K * p.Cg() * p.R * p.S, nan);
    reg(dy.data(), dy.size() * es), reg(x.data(), x.size() * es), reg(ws.p, ws.bytes);  // ws: padded x
    check(igemm_backward_weight<T>(p, dy.data(), x.data(), dw.data(), ws.p, kX3, nullptr));
    ok &= compare(("bwd_weight " + tag + " s" + std::to_string(plan(p, es).splits)).c_str(), cs, dw, rdw, tol);
  }
  return ok;
}

Conv2dParams nchw_params(const Case& c) {
  Conv2dParams p = nhwc_params(c);
  p.xs_n = p.C * p.H * p.W, p.xs_c = p.H * p.W, p.xs_h = p.W, p.xs_w = 1;
  p.ys_n = p.K * p.P * p.Q, p.ys_k = p.P * p.Q, p.ys_p = p.Q, p.ys_q = 1;
  return p;
}
// (N, A, B, C) <-> (N, B, C, A) for the channel dimension A
template <typename T>
std::vector<T> to_nchw(const std::vector<T>& v, int64_t N, int64_t C, int64_t H, int64_t W) {
  std::vector<T> o(v.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) o[((n * C + c) * H + h) * W + w] = v[((n * H + h) * W + w) * C + c];
  return o;
}
template <typename T>
std::vector<T> to_nhwc(const std::vector<T>& v, int64_t N, int64_t C, int64_t H, int64_t W) {
  std::vector<T> o(v.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) o[((n * H + h) * W + w) * C + c] = v[((n * C + c) * H + h) * W + w];
  return o;
}

// the direct kernels (reference.cu, depthwise.cu) in NHWC and NCHW
template <typename T>
bool run_direct_case(const Case& cs, const char* tname, double tol) {
  std::mt19937 rng(99);
  const Conv2dParams q = nhwc_params(cs);
  auto x = random_tensor<T>(q.N * q.H * q.W * q.C, rng), w = random_tensor<T>(q.K * q.Cg() * q.R * q.S, rng);
  auto dy = random_tensor<T>(q.N * q.P * q.Q * q.K, rng), bias = random_tensor<T>(q.K, rng);
  std::vector<double> ry, rdx, rdw, rdb(q.K, 0.0);
  reference(q, x, w, dy, bias, ry, rdx, rdw);
  for (size_t i = 0; i < dy.size(); ++i) rdb[i % q.K] += to_d(dy[i]);
  const T nan = from_f<T>(NAN);
  bool ok = true;
  for (int nhwc = 0; nhwc < 2; ++nhwc) {
    const Conv2dParams p = nhwc ? q : nchw_params(cs);
    const std::string tag = std::string(tname) + (nhwc ? " nhwc" : " nchw");
    auto in = [&](const std::vector<T>& v, int64_t C, int64_t H, int64_t W) { return nhwc ? v : to_nchw(v, p.N, C, H, W); };
    auto out = [&](const std::vector<T>& v, int64_t C, int64_t H, int64_t W) { return nhwc ? v : to_nhwc(v, p.N, C, H, W); };
    const auto xl = in(x, p.C, p.H, p.W), dyl = in(dy, p.K, p.P, p.Q);
    std::vector<T> y(ry.size(), nan), dx(rdx.size(), nan), dw(rdw.size(), nan), db(p.K, nan);
    reference_forward<T>(p, xl.data(), w.data(), bias.data(), y.data(), nullptr);
    ok &= compare(("ref fwd " + tag).c_str(), cs, out(y, p.K, p.P, p.Q), ry, tol);
    reference_backward_input<T>(p, dyl.data(), w.data(), dx.data(), nullptr);
    ok &= compare(("ref bwd_in " + tag).c_str(), cs, out(dx, p.C, p.H, p.W), rdx, tol);
    reference_backward_weight<T>(p, dyl.data(), xl.data(), dw.data(), nullptr);
    ok &= compare(("ref bwd_w " + tag).c_str(), cs, dw, rdw, tol);
    const int64_t PQ = p.P * p.Q;
    backward_bias<T>(dyl.data(), p.N, p.K, PQ, p.K * PQ, nhwc ? 1 : PQ, nhwc ? p.K : 1, db.data(), nullptr);
    ok &= compare(("ref bias " + tag).c_str(), cs, db, rdb, tol);
    if (depthwise_supports(p)) {
      std::vector<T> yd(ry.size(), nan);
      depthwise_forward<T>(p, xl.data(), w.data(), bias.data(), yd.data(), nullptr);
      ok &= compare(("depthwise " + tag).c_str(), cs, out(yd, p.K, p.P, p.Q), ry, tol);
    }
    if (depthwise_backward_weight_supports(p)) {
      Workspace ws(depthwise_backward_weight_workspace(p, sizeof(T)));
      std::vector<T> dwd(rdw.size(), nan);
      depthwise_backward_weight<T>(p, dyl.data(), xl.data(), dwd.data(), ws.p, nullptr);
      ok &= compare(("depthwise bwd_w " + tag).c_str(), cs, dwd, rdw, tol);
    }
  }
  return ok;
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::vector<Case> cases = {
      //  name           N   C   H   W    K  R  S sh sw ph pw dh dw G
      {"3x3",            2, 16,  9, 11,  24, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {"3x3_s2",         2, 32, 13, 10,  32, 3, 3, 2, 2, 1, 1, 1, 1, 1},
      {"1x1",            3, 40,  7,  5,  48, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {"1x1_s2",         2, 64,  9,  9,  16, 1, 1, 2, 2, 0, 0, 1, 1, 1},
      {"dilated",        1, 24, 12, 12,  16, 3, 3, 1, 1, 2, 2, 2, 2, 1},
      {"groups",         2, 32,  8,  8,  32, 3, 3, 1, 1, 1, 1, 1, 1, 2},
      {"many_k",         1,  8, 15, 17, 136, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {"many_c",         1, 72,  6,  6,   8, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {"big_m",          2, 16, 23, 21,  32, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {"stem",           1,  8, 23, 23,  16, 7, 7, 2, 2, 3, 3, 1, 1, 1},
      {"stride3_k2",     1,  8, 10, 11,   8, 2, 2, 3, 3, 0, 0, 1, 1, 1},
      {"rect",           2, 16, 10,  7,  16, 3, 1, 2, 1, 1, 0, 1, 1, 1},
      {"odd_pad",        1, 16,  5,  5,   8, 5, 5, 1, 1, 3, 0, 1, 1, 1},
      {"c4_fp32only",    1, 12,  6,  6,  12, 3, 3, 1, 1, 1, 1, 1, 1, 1},
      {"long_reduce",    8,  8, 16, 16,   8, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // split-K with several splits
      {"stem_c3",        2,  3, 23, 23,  16, 7, 7, 2, 2, 3, 3, 1, 1, 1},  // channels padded 3 -> 8 (4)
      {"c5_pad",         1,  5,  9,  8,   8, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // padded 5 -> 8 for every dtype
  };
  const std::vector<Case> direct = {  // the direct kernels: odd sizes, groups, depthwise
      {"d_3x3_odd",      2,  6,  7,  5,   4, 3, 2, 2, 1, 1, 0, 1, 2, 2},
      {"d_dw3x3",        2,  8,  9,  7,   8, 3, 3, 2, 2, 1, 1, 1, 1, 8},
      {"d_dw5x5_mult2",  1,  4,  8,  8,   8, 5, 5, 1, 1, 2, 2, 1, 1, 4},
      {"d_dw4x2",        1,  3,  6,  9,   3, 4, 2, 1, 2, 1, 0, 2, 1, 3},
      {"d_stride3",      1,  2, 10, 11,   3, 2, 2, 3, 3, 0, 1, 1, 1, 1},
      {"d_dw7x7_many",   3, 40, 12, 13,  40, 7, 7, 2, 1, 3, 3, 1, 2, 40},  // two 32-channel blocks
  };
  const std::string only = argc > 1 ? argv[1] : "";
  bool ok = true;
  for (const Case& c : direct) {
    if (!only.empty() && only != c.name && only != "direct") continue;  // "direct": only these
    ok &= run_direct_case<double>(c, "fp64", 1e-12);
    ok &= run_direct_case<float>(c, "fp32", 1e-5);
    ok &= run_direct_case<__half>(c, "fp16", 4e-3);
    ok &= run_direct_case<__nv_bfloat16>(c, "bf16", 2e-2);
  }
  for (const Case& c : cases) {
    if (only == "direct" || (!only.empty() && only != c.name && only != "igemm")) continue;  // "igemm": only these
    ok &= run_case<__half, false>(c, "fp16", 4e-3);
    ok &= run_case<__nv_bfloat16, false>(c, "bf16", 2e-2);
    ok &= run_case<float, false>(c, "tf32", 4e-3);
    ok &= run_case<float, true>(c, "fp32", 2e-5);
  }
  if (errors) std::printf("%ld emulation errors (first ones above)\n", errors.load());
  std::printf(ok && !errors ? "ALL OK\n" : "FAILURES\n");
  return ok && !errors ? 0 : 1;
}
