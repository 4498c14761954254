// block_sparse_attention: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lmkernels::sparse {

// The CSR block index on the host: for (batch b, query head h) flattened as bh = b * heads + h,
// query block i lists key blocks col[bh * width + e] for e in [crow[bh * (blocks + 1) + i],
// crow[bh * (blocks + 1) + i + 1]), sorted and unique.
struct BlockIndex {
  int64_t blocks = 0;  // ceil(tokens / block_size)
  int64_t width = 0;   // col entries per head
  std::vector<int64_t> crow, col;
};

// Throws c10::Error naming the bad argument (shapes, dtypes, block size, malformed CSR).
BlockIndex check_block_sparse_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& crow, const at::Tensor& col, int64_t block_size,
                                   double scale);

}  // namespace lmkernels::sparse
