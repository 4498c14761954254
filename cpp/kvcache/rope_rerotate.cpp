// rope_rerotate_ on CPU: argument checks, threading, and the choice of ISA kernel.
#include "rope_rerotate.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "lmkernels/cpu_isa.h"
#include "lmkernels/rope.h"
#include "lmkernels/torch_dtype.h"
#include "rope_rerotate_kernel.h"

namespace lmkernels {

void check_rope_rerotate_args(const at::Tensor& k, const at::Tensor& old_pos,
                              const at::Tensor& new_pos, const at::Tensor& inv_freq) {
  TORCH_CHECK(k.dim() == 4, "rope_rerotate_: k must be [batch, tokens, heads, head_dim], got ",
              k.sizes());
  const auto dtype = k.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "rope_rerotate_: k must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.size(3) <= 1 || k.stride(3) == 1,
              "rope_rerotate_: k must have unit stride on head_dim, got strides ", k.strides());
  TORCH_CHECK(at::has_internal_overlap(k) != at::MemOverlap::Yes,
              "rope_rerotate_: k must not have overlapping elements (e.g. an expanded view)");
  const at::IntArrayRef rows = k.sizes().slice(0, 2);
  for (const auto* pos : {&old_pos, &new_pos}) {
    const char* name = pos == &old_pos ? "old_pos" : "new_pos";
    TORCH_CHECK(pos->scalar_type() == at::kLong, "rope_rerotate_: ", name,
                " must be int64, got ", pos->scalar_type());
    TORCH_CHECK(pos->sizes() == rows, "rope_rerotate_: ", name, " must be [batch, tokens] = ",
                rows, ", got ", pos->sizes());
    TORCH_CHECK(pos->is_contiguous(), "rope_rerotate_: ", name, " must be contiguous");
    TORCH_CHECK(pos->device() == k.device(), "rope_rerotate_: ", name, " is on ", pos->device(),
                " but k is on ", k.device());
  }
  TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.scalar_type() == at::kFloat &&
                  inv_freq.is_contiguous(),
              "rope_rerotate_: inv_freq must be a contiguous 1-D float32 tensor, got ",
              inv_freq.scalar_type(), " of shape ", inv_freq.sizes());
  TORCH_CHECK(inv_freq.device() == k.device(), "rope_rerotate_: inv_freq is on ",
              inv_freq.device(), " but k is on ", k.device());
  TORCH_CHECK(inv_freq.numel() >= 1 && 2 * inv_freq.numel() <= k.size(3),
              "rope_rerotate_: inv_freq must have between 1 and head_dim / 2 = ", k.size(3) / 2,
              " entries (rotary_dim / 2), got ", inv_freq.numel());
}

RopeRerotateArgs rope_rotation_args(const at::Tensor& k, const at::Tensor& old_pos, const at::Tensor& new_pos,
                                    const at::Tensor& inv_freq, bool neox) {
  RopeRerotateArgs args{};
  args.dtype = storage_dtype(k.scalar_type());
  args.old_pos = old_pos.data_ptr<int64_t>();
  args.new_pos = new_pos.data_ptr<int64_t>();
  args.inv_freq = inv_freq.data_ptr<float>();
  args.rotary_dim = static_cast<int>(2 * inv_freq.numel());
  args.neox = neox;
  return args;
}

void set_rope_rows(RopeRerotateArgs& args, const at::Tensor& x) {
  args.k = x.data_ptr();
  args.batch = x.size(0);
  args.tokens = x.size(1);
  args.heads = x.size(2);
  args.head_dim = x.size(3);
  args.stride_batch = x.stride(0);
  args.stride_token = x.stride(1);
  args.stride_head = x.stride(2);
}

RopeRowsKernel rope_rows_kernel() { return pick_for_isa<RopeRowsKernel>(LMK_ISA_KERNELS(rope_rerotate_rows_)); }

namespace {

void rope_rerotate_cpu(at::Tensor k, const at::Tensor& old_pos, const at::Tensor& new_pos,
                       const at::Tensor& inv_freq, bool neox) {
  check_rope_rerotate_args(k, old_pos, new_pos, inv_freq);
  if (k.numel() == 0) return;

  RopeRerotateArgs args = rope_rotation_args(k, old_pos, new_pos, inv_freq, neox);
  set_rope_rows(args, k);

  const RopeRowsKernel kernel = rope_rows_kernel();
  const int64_t rows = args.batch * args.tokens;
  // About 32k values a task: enough to amortise a table refill and the task start.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, args.heads * args.rotary_dim));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> table(rope::delta_table_floats(args.rotary_dim));
    kernel(args, begin, end, table.data());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("rope_rerotate_", &rope_rerotate_cpu); }

}  // namespace lmkernels
