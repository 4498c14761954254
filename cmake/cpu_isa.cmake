# Per-ISA translation units: `*_avx2.cpp` and `*_avx512.cpp` get their own target flags and
# are only called after a run-time CPU check (cpp/include/lmkernels/cpu_isa.h). Everything
# else is compiled for the baseline x86-64 so the wheel runs on any CPU.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  # GCC 12 warns falsely inside its own masked-intrinsic headers.
  set(LMK_SIMD_WARN -Wno-maybe-uninitialized)
  set(LMK_AVX2_FLAGS -mavx2 -mfma -mf16c ${LMK_SIMD_WARN})
  set(LMK_AVX512_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c ${LMK_SIMD_WARN})
  foreach(_src IN LISTS LMK_CPU_SOURCES)
    if(_src MATCHES "_avx512\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AVX512_FLAGS}")
    elseif(_src MATCHES "_avx2\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AVX2_FLAGS}")
    endif()
  endforeach()
else()
  # Other architectures get the scalar path only; the x86 kernels are left out.
  list(FILTER LMK_CPU_SOURCES EXCLUDE REGEX "_(avx2|avx512)\\.cpp$")
  add_compile_definitions(LMKERNELS_NO_X86_SIMD)
endif()
