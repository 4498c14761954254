#include "lmkernels/cpu_isa.h"

#include <ATen/cpu/Utils.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace lmkernels {
namespace {

// -1 means "no override".
std::atomic<int> g_override{-1};

bool x86_has(const char* feature) {
#if defined(__x86_64__) && !defined(LMKERNELS_NO_X86_SIMD)
  __builtin_cpu_init();
  // __builtin_cpu_supports needs a literal, hence the chain.
  const std::string f(feature);
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "f16c") return __builtin_cpu_supports("f16c");
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (f == "avx512_vnni") return __builtin_cpu_supports("avx512vnni");
  if (f == "avx512_bf16") return __builtin_cpu_supports("avx512bf16");
  if (f == "avxvnni") return __builtin_cpu_supports("avxvnni");
  if (f == "amx_int8") {  // CPUID.(7, 0).EDX: bit 24 AMX-TILE, bit 25 AMX-INT8
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 24 & 1) && (edx >> 25 & 1);
  }
#endif
  (void)feature;
  return false;
}

bool isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
    case CpuIsa::kAvx2:
      return x86_has("avx2") && x86_has("fma") && x86_has("f16c");
    case CpuIsa::kAvx512:
      return isa_supported(CpuIsa::kAvx2) && x86_has("avx512f") && x86_has("avx512bw") &&
             x86_has("avx512vl") && x86_has("avx512dq");
    case CpuIsa::kAvx512Vnni:
      return isa_supported(CpuIsa::kAvx512) && x86_has("avx512_vnni");
    case CpuIsa::kAmx: {
      // init_amx asks the kernel for the tile state (arch_prctl); false without AMX or consent.
      static const bool amx = x86_has("amx_int8") && at::cpu::init_amx();
      return isa_supported(CpuIsa::kAvx512Vnni) && amx;
    }
  }
  return false;
}

CpuIsa env_or_best() {
  static const CpuIsa chosen = [] {
    const CpuIsa best = best_supported_isa();
    const char* env = std::getenv("LMKERNELS_CPU_ISA");
    if (env == nullptr || env[0] == '\0') return best;
    const CpuIsa wanted = parse_isa(env);  // throws on a typo rather than ignoring it
    if (!isa_supported(wanted)) {
      throw std::runtime_error(std::string("LMKERNELS_CPU_ISA=") + env +
                               " but this CPU does not support it; best available is " +
                               isa_name(best));
    }
    return wanted;
  }();
  return chosen;
}

}  // namespace

CpuIsa best_supported_isa() {
  static const CpuIsa best = [] {
    if (isa_supported(CpuIsa::kAmx)) return CpuIsa::kAmx;
    if (isa_supported(CpuIsa::kAvx512Vnni)) return CpuIsa::kAvx512Vnni;
    if (isa_supported(CpuIsa::kAvx512)) return CpuIsa::kAvx512;
    if (isa_supported(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
    return CpuIsa::kScalar;
  }();
  return best;
}

CpuIsa active_isa() {
  const int forced = g_override.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<CpuIsa>(forced);
  return env_or_best();
}

void set_isa_override(CpuIsa isa) {
  if (!isa_supported(isa)) {
    throw std::invalid_argument(std::string("cpu isa '") + isa_name(isa) +
                                "' is not supported by this CPU; supported up to " +
                                isa_name(best_supported_isa()));
  }
  g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void clear_isa_override() { g_override.store(-1, std::memory_order_relaxed); }

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx512Vnni:
      return "avx512_vnni";
    case CpuIsa::kAmx:
      return "amx";
  }
  return "unknown";
}

CpuIsa parse_isa(const std::string& name) {
  if (name == "scalar") return CpuIsa::kScalar;
  if (name == "avx2") return CpuIsa::kAvx2;
  if (name == "avx512") return CpuIsa::kAvx512;
  if (name == "avx512_vnni") return CpuIsa::kAvx512Vnni;
  if (name == "amx") return CpuIsa::kAmx;
  throw std::invalid_argument("cpu isa must be one of scalar, avx2, avx512, avx512_vnni, amx; got '" + name + "'");
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Vnni, CpuIsa::kAmx}) {
    if (isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

bool cpu_has_feature(const std::string& feature) { return x86_has(feature.c_str()); }

}  // namespace lmkernels
