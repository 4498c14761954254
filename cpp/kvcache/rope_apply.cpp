// rope_apply_ on CPU: RoPE from per-token cos/sin tables (what transformers' rotary embedding
// hands each attention layer), in place. The rotation is rope_rerotate_'s per-ISA row kernel
// with the tables read instead of built, so every CPU path gives the same bits.
#include "rope_apply.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "lmkernels/torch_dtype.h"
#include "rope_rerotate.h"

namespace lmkernels {

void check_rope_apply_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4, "rope_apply_: x must be [batch, tokens, heads, head_dim], got ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "rope_apply_: x must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, "rope_apply_: x must have unit stride on head_dim, got strides ",
              x.strides());
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes,
              "rope_apply_: x must not have overlapping elements (e.g. an expanded view)");
  for (const auto* table : {&cos, &sin}) {
    const char* name = table == &cos ? "cos" : "sin";
    TORCH_CHECK(table->scalar_type() == at::kFloat, "rope_apply_: ", name, " must be float32, got ",
                table->scalar_type());
    TORCH_CHECK(table->dim() == 3 && (table->size(0) == 1 || table->size(0) == x.size(0)) &&
                    table->size(1) == x.size(1),
                "rope_apply_: ", name, " must be [batch or 1, tokens, rotary_dim / 2] with batch = ", x.size(0),
                " and tokens = ", x.size(1), ", got ", table->sizes());
    TORCH_CHECK(table->size(2) <= 1 || table->stride(2) == 1, "rope_apply_: ", name,
                " must have unit stride on its last dim, got strides ", table->strides());
    TORCH_CHECK(table->device() == x.device(), "rope_apply_: ", name, " is on ", table->device(), " but x is on ",
                x.device());
    const at::MemOverlapStatus overlap = at::get_overlap_status(x, *table);
    TORCH_CHECK(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, "rope_apply_: ",
                name, " must not share memory with x");
  }
  TORCH_CHECK(cos.sizes() == sin.sizes(), "rope_apply_: cos and sin must have the same shape, got ", cos.sizes(),
              " and ", sin.sizes());
  TORCH_CHECK(cos.size(2) >= 1 && 2 * cos.size(2) <= x.size(3),
              "rope_apply_: cos and sin must hold between 1 and head_dim / 2 = ", x.size(3) / 2,
              " pairs (rotary_dim / 2), got ", cos.size(2));
}

RopeTables rope_tables_with_shared_strides(const at::Tensor& cos, const at::Tensor& sin) {
  if (cos.strides() == sin.strides()) return {cos, sin};
  return {cos.contiguous(), sin.contiguous()};
}

RopeRerotateArgs rope_apply_args(const at::Tensor& x, const RopeTables& tables) {
  const at::Tensor& cos = tables.cos;
  RopeRerotateArgs args{};
  set_rope_rows(args, x);
  args.dtype = storage_dtype(x.scalar_type());
  args.rotary_dim = static_cast<int>(2 * cos.size(2));
  args.neox = true;
  args.cos_table = cos.data_ptr<float>();
  args.sin_table = tables.sin.data_ptr<float>();
  args.table_stride_batch = cos.size(0) == 1 ? 0 : cos.stride(0);  // one table shared by the batch
  args.table_stride_token = cos.stride(1);
  return args;
}

namespace {

void rope_apply_cpu(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin) {
  check_rope_apply_args(x, cos, sin);
  if (x.numel() == 0) return;
  const RopeTables tables = rope_tables_with_shared_strides(cos, sin);
  const RopeRerotateArgs args = rope_apply_args(x, tables);
  const RopeRowsKernel kernel = rope_rows_kernel();
  const int64_t rows = args.batch * args.tokens;
  // About 32k values a task, as in rope_rerotate_.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, args.heads * args.rotary_dim));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { kernel(args, begin, end, nullptr); });
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("rope_apply_", &rope_apply_cpu); }

}  // namespace lmkernels
