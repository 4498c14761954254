// Scalar element access by storage dtype, for kernels templated on StorageDtype, on the host
// and in CUDA kernels. Internal linkage (anonymous namespace): safe to include from per-ISA
// translation units.
#pragma once

#include <cstdint>

#include "lmkernels/common.h"
#include "lmkernels/dtype.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
struct Storage;
template <>
struct Storage<StorageDtype::kFloat32> {
  using T = float;
  LMK_HOST_DEVICE static float load(const T* p) { return *p; }
  LMK_HOST_DEVICE static void store(T* p, float v) { *p = v; }
};
template <>
struct Storage<StorageDtype::kBFloat16> {
  using T = uint16_t;
  LMK_HOST_DEVICE static float load(const T* p) { return bf16_to_f32(*p); }
  LMK_HOST_DEVICE static void store(T* p, float v) { *p = f32_to_bf16(v); }
};
template <>
struct Storage<StorageDtype::kFloat16> {
  using T = uint16_t;
  LMK_HOST_DEVICE static float load(const T* p) { return f16_to_f32(*p); }
  LMK_HOST_DEVICE static void store(T* p, float v) { *p = f32_to_f16(v); }
};

// Element i of a buffer of storage dtype D, as fp32.
template <StorageDtype D>
LMK_HOST_DEVICE float load_elem(const void* base, int64_t i) {
  return Storage<D>::load(static_cast<const typename Storage<D>::T*>(base) + i);
}

template <StorageDtype D>
LMK_HOST_DEVICE void store_elem(void* base, int64_t i, float value) {
  Storage<D>::store(static_cast<typename Storage<D>::T*>(base) + i, value);
}

}  // namespace
}  // namespace lmkernels
