# Decide whether to build cuda/ and set up the CUDA language. Sets LMKERNELS_WITH_CUDA and
# defines lmk_configure_cuda_target(). See shared BUILD-NOTES for why each step is here.

function(_lmk_cuda_unavailable reason)
  if(LMKERNELS_CUDA STREQUAL "ON")
    message(FATAL_ERROR "lmkernels: LMKERNELS_CUDA=ON but ${reason}")
  endif()
  message(STATUS "lmkernels: CUDA kernels NOT built: ${reason}")
endfunction()

if(TORCH_cuda STREQUAL "")
  _lmk_cuda_unavailable("torch ${TORCH_version} is a CPU-only build (install the CUDA build of torch)")
  return()
endif()

# The nvcc on PATH may be a wrapper script (`exec /usr/local/cuda-X/bin/nvcc "$@"`); CMake
# then guesses the toolkit root wrongly, so resolve the real compiler first.
set(_lmk_cuda_root "")
if(DEFINED ENV{CUDAToolkit_ROOT})
  set(_lmk_cuda_root "$ENV{CUDAToolkit_ROOT}")
elseif(DEFINED ENV{CUDA_HOME})
  set(_lmk_cuda_root "$ENV{CUDA_HOME}")
else()
  find_program(_lmk_nvcc nvcc)
  if(_lmk_nvcc)
    file(READ "${_lmk_nvcc}" _lmk_nvcc_head LIMIT 4096)
    if(_lmk_nvcc_head MATCHES "exec[ \t]+\"?([^ \t\"\n]+)/bin/nvcc")
      set(_lmk_cuda_root "${CMAKE_MATCH_1}")
    else()
      get_filename_component(_lmk_nvcc_real "${_lmk_nvcc}" REALPATH)
      get_filename_component(_lmk_cuda_root "${_lmk_nvcc_real}/../.." ABSOLUTE)
    endif()
  endif()
endif()
if(_lmk_cuda_root STREQUAL "" OR NOT EXISTS "${_lmk_cuda_root}/bin/nvcc")
  _lmk_cuda_unavailable("nvcc was not found (put it on PATH or set CUDA_HOME)")
  return()
endif()
message(STATUS "lmkernels: CUDA toolkit at ${_lmk_cuda_root}")

set(CMAKE_CUDA_COMPILER "${_lmk_cuda_root}/bin/nvcc")
set(CUDAToolkit_ROOT "${_lmk_cuda_root}")
# torch ignores CMAKE_CUDA_ARCHITECTURES and reads TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX");
# honour the same variable so users set one knob.
set(_lmk_arch_list "8.0;9.0")
if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  set(_lmk_arch_list "$ENV{TORCH_CUDA_ARCH_LIST}")
endif()
string(REPLACE " " ";" _lmk_arch_list "${_lmk_arch_list}")
set(CMAKE_CUDA_ARCHITECTURES "")
foreach(_arch IN LISTS _lmk_arch_list)
  if(_arch STREQUAL "")
    continue()
  endif()
  string(REGEX MATCH "^([0-9]+)\\.([0-9]+)([a-z]?)(\\+PTX)?$" _ok "${_arch}")
  if(NOT _ok)
    message(FATAL_ERROR "lmkernels: cannot read '${_arch}' in TORCH_CUDA_ARCH_LIST")
  endif()
  set(_sm "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
  if(CMAKE_MATCH_4)
    list(APPEND CMAKE_CUDA_ARCHITECTURES "${_sm}-real" "${_sm}-virtual")
  else()
    list(APPEND CMAKE_CUDA_ARCHITECTURES "${_sm}-real")
  endif()
endforeach()
message(STATUS "lmkernels: CUDA architectures ${CMAKE_CUDA_ARCHITECTURES}")

# torch 2.14 headers use std::strong_ordering, so nvcc must compile at C++20.
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
find_library(TORCH_CUDA_LIB torch_cuda PATHS ${TORCH_libdir} NO_DEFAULT_PATH REQUIRED)
find_library(C10_CUDA_LIB c10_cuda PATHS ${TORCH_libdir} NO_DEFAULT_PATH REQUIRED)
set(LMKERNELS_WITH_CUDA ON)
message(STATUS "lmkernels: building the CUDA kernels")

function(lmk_configure_cuda_target target)
  target_compile_definitions(${target} PRIVATE LMKERNELS_WITH_CUDA=1)
  target_include_directories(${target} PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/cuda")
  # The same flags torch.utils.cpp_extension uses: torch's half/bf16 types, not CUDA's operators.
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:
    --expt-relaxed-constexpr -Xcompiler=-fPIC
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
    --diag-suppress=186,20012>)
  target_link_libraries(${target} PRIVATE ${TORCH_CUDA_LIB} ${C10_CUDA_LIB} CUDA::cudart)
endfunction()
