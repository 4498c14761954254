// flex_select_blocks for CUDA tensors: the selection is a sort and a scan per (batch, head)
// over at most a few thousand block scores, so the scores come to the host and the CSR index
// goes back to the device (as pack_sequences does).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "sparse/flex_select.h"

namespace lmkernels::sparse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> flex_select_blocks_cuda(const at::Tensor& vertical,
                                                                       const at::Tensor& slash,
                                                                       const at::Tensor& block_attn,
                                                                       const at::Tensor& query_aware, double gamma,
                                                                       int64_t min_blocks, int64_t max_blocks) {
  const c10::cuda::CUDAGuard guard(vertical.device());
  auto [crow, col, density] =
      flex_select_blocks_host(vertical, slash, block_attn, query_aware, gamma, min_blocks, max_blocks);
  return {crow.to(vertical.device()), col.to(vertical.device()), density.to(vertical.device())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("flex_select_blocks", &flex_select_blocks_cuda); }

}  // namespace lmkernels::sparse
