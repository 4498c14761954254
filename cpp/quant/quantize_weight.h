// The host quantizers (round-to-nearest and GPTQ), also called by the CUDA impl (quantization is a one-off host task).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace lmkernels {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_host(
    const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const std::string& select,
    const std::optional<at::Tensor>& importance);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_gptq_host(
    const at::Tensor& weight, const at::Tensor& hessian, int64_t group_size, int64_t num_4bit_groups,
    const std::string& select, double damp);

}  // namespace lmkernels
