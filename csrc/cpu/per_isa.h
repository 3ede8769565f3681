// per_isa.h — compiles an algorithm file once per SIMD level, in the same translation unit.
//
// An algorithm file starts with
//     #ifndef CONV_EXT_ISA_NS
//     #define CONV_EXT_PER_ISA_FILE "name.cpp"
//     #include "per_isa.h"
//     ... (ISA-independent code: supports(), run(), registration)
//     #else
//     ... (kernels, written once against simd.h, inside namespace CONV_EXT_ISA_NS)
//     #endif
// and this header includes that file again twice: for AVX-512 (namespace avx512, 512-bit vectors)
// and for AVX2 (namespace avx2, 256-bit vectors). cpu_capability() picks one at run time.
// No include guard: each algorithm file includes it once.
#include <ATen/ATen.h>

#include "algorithms.h"
#include "filter_cache.h"
#include "kernel_util.h"

#pragma GCC push_options
#ifdef CONV_EXT_PER_ISA_BF16  // the file runs bfloat16 pairs too (simd.h's Tile::pairs): AVX512-BF16 as well
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
#define CONV_EXT_ISA_NS avx512
#define CONV_EXT_ISA_BITS 512
#include "simd.h"
#include CONV_EXT_PER_ISA_FILE
#undef CONV_EXT_ISA_NS
#undef CONV_EXT_ISA_BITS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")  // F16C: float16 conversions (every AVX2 CPU has them)
#define CONV_EXT_ISA_NS avx2
#define CONV_EXT_ISA_BITS 256
#include "simd.h"
#include CONV_EXT_PER_ISA_FILE
#undef CONV_EXT_ISA_NS
#undef CONV_EXT_ISA_BITS
#pragma GCC pop_options
