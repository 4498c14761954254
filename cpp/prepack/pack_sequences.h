// pack_sequences: the host implementation shared by the CPU and CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace lmkernels::prepack {

// Returns (row, offset), int64 [n] on the CPU; throws c10::Error naming the bad argument.
std::tuple<at::Tensor, at::Tensor> pack_sequences_host(const at::Tensor& lengths, int64_t capacity,
                                                       const std::string& algorithm);

}  // namespace lmkernels::prepack
