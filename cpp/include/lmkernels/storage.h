// Scalar element access by storage dtype, for kernels templated on StorageDtype. Internal
// linkage (anonymous namespace): safe to include from per-ISA translation units.
#pragma once

#include <cstdint>

#include "lmkernels/dtype.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
struct Storage;
template <>
struct Storage<StorageDtype::kFloat32> {
  using T = float;
  static float load(const T* p) { return *p; }
  static void store(T* p, float v) { *p = v; }
};
template <>
struct Storage<StorageDtype::kBFloat16> {
  using T = uint16_t;
  static float load(const T* p) { return bf16_to_f32(*p); }
  static void store(T* p, float v) { *p = f32_to_bf16(v); }
};
template <>
struct Storage<StorageDtype::kFloat16> {
  using T = uint16_t;
  static float load(const T* p) { return f16_to_f32(*p); }
  static void store(T* p, float v) { *p = f32_to_f16(v); }
};

}  // namespace
}  // namespace lmkernels
