// kv_deviation on CPU: checks, threads, ISA choice.
#include "kvcache/kv_checks.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "kv_deviation_kernel.h"
#include "lmkernels/cpu_isa.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels {

void check_kv_deviation_args(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 4, "kv_deviation: a must be [batch, tokens, heads, head_dim], got ", a.sizes());
  TORCH_CHECK(b.sizes() == a.sizes(), "kv_deviation: b must have a's shape ", a.sizes(), ", got ", b.sizes());
  const auto dtype = a.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "kv_deviation: a must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(b.scalar_type() == dtype, "kv_deviation: a and b must share a dtype, got ", dtype, " and ",
              b.scalar_type());
  TORCH_CHECK(b.device() == a.device(), "kv_deviation: a is on ", a.device(), " but b is on ", b.device());
  for (const auto* t : {&a, &b}) {
    TORCH_CHECK(t->size(3) <= 1 || t->stride(3) == 1, "kv_deviation: ", t == &a ? "a" : "b",
                " must have unit stride on head_dim, got strides ", t->strides());
  }
}

namespace {

using RowsKernel = void (*)(const KvDeviationArgs&, int64_t, int64_t);


at::Tensor kv_deviation_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_kv_deviation_args(a, b);
  at::Tensor out = at::empty({a.size(0), a.size(1)}, a.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  KvDeviationArgs args{};
  args.a = a.data_ptr();
  args.b = b.data_ptr();
  args.dtype = storage_dtype(a.scalar_type());
  args.tokens = a.size(1);
  args.heads = a.size(2);
  args.head_dim = a.size(3);
  for (int i = 0; i < 3; ++i) {
    args.a_stride[i] = a.stride(i);
    args.b_stride[i] = b.stride(i);
  }
  args.out = out.data_ptr<float>();
  const RowsKernel kernel = pick_for_isa<RowsKernel>(LMK_ISA_KERNELS(kv_deviation_rows_));
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, args.heads * args.head_dim));
  at::parallel_for(0, out.numel(), grain, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("kv_deviation", &kv_deviation_cpu); }

}  // namespace lmkernels
