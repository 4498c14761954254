# Per-ISA translation units: `*_avx2.cpp`, `*_avx512.cpp`, `*_avx512_vnni.cpp` and `*_amx.cpp` get their own target flags and
# are only called after a run-time CPU check (cpp/include/lmkernels/cpu_isa.h). Everything
# else is compiled for the baseline x86-64 so the wheel runs on any CPU.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  # GCC 12 warns falsely inside its own masked-intrinsic headers.
  set(LMK_SIMD_WARN -Wno-maybe-uninitialized)
  set(LMK_AVX2_FLAGS -mavx2 -mfma -mf16c ${LMK_SIMD_WARN})
  set(LMK_AVX512_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c ${LMK_SIMD_WARN})
  set(LMK_AVX512_VNNI_FLAGS ${LMK_AVX512_FLAGS} -mavx512vnni)
  set(LMK_AMX_FLAGS ${LMK_AVX512_VNNI_FLAGS} -mamx-tile -mamx-int8)
  foreach(_src IN LISTS LMK_CPU_SOURCES)
    if(_src MATCHES "_amx\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AMX_FLAGS}")
    elseif(_src MATCHES "_avx512_vnni\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AVX512_VNNI_FLAGS}")
    elseif(_src MATCHES "_avx512\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AVX512_FLAGS}")
    elseif(_src MATCHES "_avx2\\.cpp$")
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${LMK_AVX2_FLAGS}")
    endif()
  endforeach()
else()
  # Other architectures get the scalar path only; the x86 kernels are left out.
  list(FILTER LMK_CPU_SOURCES EXCLUDE REGEX "_(avx2|avx512|avx512_vnni|amx)\\.cpp$")
  add_compile_definitions(LMKERNELS_NO_X86_SIMD)
endif()
