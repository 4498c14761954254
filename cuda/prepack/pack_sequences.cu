// pack_sequences for CUDA tensors: packing is a sequential host algorithm over a few hundred
// lengths, so the lengths come to the host and the placement goes back to the device.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "prepack/pack_sequences.h"

namespace lmkernels::prepack {
namespace {

std::tuple<at::Tensor, at::Tensor> pack_sequences_cuda(const at::Tensor& lengths, int64_t capacity,
                                                       c10::string_view algorithm) {
  const c10::cuda::CUDAGuard guard(lengths.device());
  auto [row, offset] = pack_sequences_host(lengths, capacity, std::string(algorithm));
  return {row.to(lengths.device()), offset.to(lengths.device())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("pack_sequences", &pack_sequences_cuda); }

}  // namespace lmkernels::prepack
