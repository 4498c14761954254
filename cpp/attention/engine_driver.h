// Runs a schedule of work items on the attention engine: threads, ISA choice, scratch.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "attention/engine.h"

namespace lmkernels::attention {

// Args with the pointers, dtype, head counts, causal flag and scale of one call filled in;
// callers add the layout (strides, bases, sequence lengths). k32/v32: K and V widened to fp32.
Args engine_args(const at::Tensor& q, const at::Tensor& k32, const at::Tensor& v32, at::Tensor& out,
                 at::Tensor* lse, bool causal, double scale);

// engine_args for the packed (flash-attention varlen) layout: q, out [total_q, H, D] and
// k32, v32 [total_k, Hkv, D], with each tensor's token and head strides (lse, when given,
// is [total_q, H]).
Args packed_engine_args(const at::Tensor& q, const at::Tensor& k32, const at::Tensor& v32, at::Tensor& out,
                        at::Tensor* lse, bool causal, double scale);

// Items are handed out to at::parallel_for threads heaviest first (by `cost`), one at a time:
// the longest-processing-time rule keeps every thread busy to the end, even with one long
// sequence among many short ones. `items` must hold at most positions_per_item(group)
// query positions each.
void run_schedule(const Args& args, const std::vector<WorkItem>& items, const std::vector<int64_t>& cost);

}  // namespace lmkernels::attention
