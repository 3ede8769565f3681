// algorithms.cpp — the CPU algorithm registry (see algorithms.h).
#include "algorithms.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace conv_ext {
namespace cpu {
namespace {

std::vector<Algorithm>& registry() {
  static std::vector<Algorithm> algorithms;  // filled by static initialisers, then read-only
  return algorithms;
}

std::atomic<int> forced_index[kNumPasses] = {{-1}, {-1}, {-1}};  // index into registry, -1 = auto
thread_local const Algorithm* last_run[kNumPasses] = {nullptr, nullptr, nullptr};

}  // namespace

const char* pass_name(Pass pass) {
  switch (pass) {
    case Pass::Forward: return "forward";
    case Pass::BackwardInput: return "backward_input";
    case Pass::BackwardWeight: return "backward_weight";
  }
  return "?";
}

Pass pass_from_name(const std::string& name) {
  for (int i = 0; i < kNumPasses; ++i)
    if (name == pass_name(static_cast<Pass>(i))) return static_cast<Pass>(i);
  TORCH_CHECK(false, "conv_ext: unknown pass '", name,
              "', expected forward, backward_input or backward_weight");
}

bool register_algorithm(Algorithm algorithm) {
  auto& algos = registry();
  algos.push_back(std::move(algorithm));
  // keep the registry sorted by priority, highest first, so choose() takes the first match
  std::stable_sort(algos.begin(), algos.end(),
                   [](const Algorithm& a, const Algorithm& b) { return a.priority > b.priority; });
  return true;
}

const Algorithm& choose_automatic(Pass pass, const Conv2dParams& p, at::ScalarType dtype) {
  for (const auto& a : registry())
    if (a.pass == pass && a.supports(p, dtype) && (!a.preferred || a.preferred(p, dtype))) return a;
  TORCH_CHECK(false, "conv_ext: no CPU algorithm for this ", pass_name(pass), " problem");
}

const Algorithm& choose(Pass pass, const Conv2dParams& p, at::ScalarType dtype) {
  const auto& algos = registry();
  const int forced = forced_index[static_cast<int>(pass)].load(std::memory_order_relaxed);
  const Algorithm* chosen = nullptr;
  if (forced >= 0) {
    chosen = &algos[forced];
    TORCH_CHECK(chosen->supports(p, dtype), "conv_ext: the forced ", pass_name(pass),
                " algorithm '", chosen->name, "' does not support this problem (N=", p.N, " C=", p.C,
                " H=", p.H, " W=", p.W, " K=", p.K, " R=", p.R, " S=", p.S, " groups=", p.groups,
                " dtype=", dtype, ")");
  } else {
    chosen = &choose_automatic(pass, p, dtype);
  }
  last_run[static_cast<int>(pass)] = chosen;
  return *chosen;
}

std::vector<std::string> algorithm_names(Pass pass) {
  std::vector<std::string> names;
  for (const auto& a : registry())
    if (a.pass == pass) names.push_back(a.name);
  return names;
}

void force_algorithm(Pass pass, const std::string& name) {
  int index = -1;
  if (name != "auto") {
    const auto& algos = registry();
    for (size_t i = 0; i < algos.size(); ++i)
      if (algos[i].pass == pass && algos[i].name == name) index = static_cast<int>(i);
    TORCH_CHECK(index >= 0, "conv_ext: unknown ", pass_name(pass), " algorithm '", name,
                "'; known: ", c10::Join(", ", algorithm_names(pass)), ", auto");
  }
  forced_index[static_cast<int>(pass)].store(index);
}

std::string forced_algorithm(Pass pass) {
  const int i = forced_index[static_cast<int>(pass)].load();
  return i < 0 ? "auto" : registry()[i].name;
}

std::string last_algorithm(Pass pass) {
  const Algorithm* a = last_run[static_cast<int>(pass)];
  return a ? a->name : "";
}

const std::string& cpu_capability() {
  static const std::string level = [] {
    std::string best = "portable";
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      best = "avx2";  // (F16C: the float16 conversions, simd.h; every AVX2 CPU has it)
    if (best == "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = "avx512";
#endif
    const char* env = std::getenv("CONV_EXT_CPU_CAPABILITY");
    if (env != nullptr) {
      const std::string want(env);
      const int rank_best = best == "avx512" ? 2 : best == "avx2" ? 1 : 0;
      const int rank_want = want == "avx512" ? 2 : want == "avx2" ? 1 : want == "portable" ? 0 : -1;
      TORCH_CHECK(rank_want >= 0, "CONV_EXT_CPU_CAPABILITY must be avx512, avx2 or portable, got '", want, "'");
      if (rank_want < rank_best) best = want;  // can only lower the level
    }
    return best;
  }();
  return level;
}

}  // namespace cpu
}  // namespace conv_ext
