// torch scalar types <-> the storage dtypes of our kernels. For dispatcher translation units
// (CPU or CUDA), never for per-ISA ones (it includes c10).
#pragma once

#include <c10/core/ScalarType.h>

#include <type_traits>

#include "lmkernels/dtype.h"

namespace lmkernels {

// Callers have already checked that `t` is float32, bfloat16 or float16.
inline StorageDtype storage_dtype(c10::ScalarType t) {
  if (t == c10::ScalarType::BFloat16) return StorageDtype::kBFloat16;
  if (t == c10::ScalarType::Half) return StorageDtype::kFloat16;
  return StorageDtype::kFloat32;
}

// Calls f(std::integral_constant<StorageDtype, D>{}) for the storage dtype of `t`, so kernel
// templates can be instantiated from one call site.
template <class F>
decltype(auto) with_storage_dtype(c10::ScalarType t, F&& f) {
  switch (storage_dtype(t)) {
    case StorageDtype::kBFloat16:
      return f(std::integral_constant<StorageDtype, StorageDtype::kBFloat16>{});
    case StorageDtype::kFloat16:
      return f(std::integral_constant<StorageDtype, StorageDtype::kFloat16>{});
    default:
      return f(std::integral_constant<StorageDtype, StorageDtype::kFloat32>{});
  }
}

}  // namespace lmkernels
