// Run-time choice of the CPU kernel path.
//
// Each kernel is compiled several times in per-ISA translation units (`*_scalar.cpp`,
// `*_avx2.cpp`, `*_avx512.cpp`, and `*_avx512_vnni.cpp` / `*_amx.cpp` where an op has them; see
// cmake/cpu_isa.cmake). The dispatcher asks `active_isa()` which one to call. The answer is the
// best path this CPU supports, unless LMKERNELS_CPU_ISA=scalar|avx2|avx512|avx512_vnni|amx in
// the environment or `set_isa_override()` (exposed to Python as `lmkernels.set_cpu_isa`) asks
// for a lower one, which is how the tests cover every path on one machine.
//
// Rule for ISA translation units: include no torch header and instantiate no std container
// or other inline template there. Inline functions are merged across translation units by
// the linker, and an AVX-512 copy could end up called from the scalar path. Shared math
// headers use LMK_INLINE (internal linkage) for the same reason.
#pragma once

#include <string>
#include <vector>

namespace lmkernels {

// kAvx512Vnni is AVX-512 plus VNNI (vpdpbusd), kAmx that plus AMX-INT8 tiles (enabled for this
// process): ops without such a kernel run their best lower one there.
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3, kAmx = 4 };

// Best path the CPU (and OS) supports; computed once.
CpuIsa best_supported_isa();
// Path kernels use now: the override if any, else LMKERNELS_CPU_ISA, else the best.
CpuIsa active_isa();
// Force a path for this process; throws if the CPU lacks it. Reset with `clear_isa_override`.
void set_isa_override(CpuIsa isa);
void clear_isa_override();

const char* isa_name(CpuIsa isa);
// Parses "scalar", "avx2", "avx512", "avx512_vnni", "amx"; throws std::invalid_argument naming the value.
CpuIsa parse_isa(const std::string& name);
// Every path this machine can run, lowest first.
std::vector<CpuIsa> supported_isas();
// Individual features, for kernels with optional extras (e.g. "avx512_vnni").
bool cpu_has_feature(const std::string& feature);

// The kernel for the active path: pick_for_isa(LMK_ISA_KERNELS(my_kernel_)) with functions
// my_kernel_scalar / my_kernel_avx2 / my_kernel_avx512 (only the scalar one off x86).
template <class Kernel>
Kernel pick_for_isa(Kernel scalar, Kernel avx2, Kernel avx512) {
  switch (active_isa()) {
    case CpuIsa::kAmx:
    case CpuIsa::kAvx512Vnni:
    case CpuIsa::kAvx512:
      return avx512;
    case CpuIsa::kAvx2:
      return avx2;
    default:
      return scalar;
  }
}

// The same for kernels with a VNNI variant: LMK_ISA_KERNELS_VNNI(my_kernel_) adds
// my_kernel_avx512_vnni.
template <class Kernel>
Kernel pick_for_isa(Kernel scalar, Kernel avx2, Kernel avx512, Kernel avx512_vnni) {
  return active_isa() >= CpuIsa::kAvx512Vnni ? avx512_vnni : pick_for_isa(scalar, avx2, avx512);
}

}  // namespace lmkernels

#ifdef LMKERNELS_NO_X86_SIMD
#define LMK_ISA_KERNELS(prefix) prefix##scalar, prefix##scalar, prefix##scalar
#define LMK_ISA_KERNELS_VNNI(prefix) prefix##scalar, prefix##scalar, prefix##scalar, prefix##scalar
#else
#define LMK_ISA_KERNELS(prefix) prefix##scalar, prefix##avx2, prefix##avx512
#define LMK_ISA_KERNELS_VNNI(prefix) prefix##scalar, prefix##avx2, prefix##avx512, prefix##avx512_vnni
#endif
