// quant_linear on CPU: activation quantization, threads over output rows, ISA choice.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "lmkernels/cpu_isa.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"
#include "quant/quant_checks.h"
#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

// The per-call buffers of the op (quantized activations, their pairs copy, per-thread kernel
// scratch, a float output for 16-bit x), carved from one allocation that the calling thread
// keeps between calls up to kKeptBytes. Five tensors allocated through the dispatcher per call
// cost 30-50 us once the previous layer's weights had flushed the caches (the dispatcher's
// code and data come back from DRAM one miss at a time): a tenth of a batch-1 4096x4096 call.
class CallScratch {
 public:
  explicit CallScratch(int64_t bytes) {
    constexpr int64_t kKeptBytes = int64_t{4} << 20;
    const size_t words = static_cast<size_t>((bytes + 2 * kAlign) / 8);
    std::vector<int64_t>* storage = &owned_;
    if (bytes <= kKeptBytes) {
      thread_local std::vector<int64_t> kept;
      storage = &kept;
    }
    if (storage->size() < words) storage->resize(words);
    next_ = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(storage->data()) + kAlign - 1) & ~uintptr_t{kAlign - 1});
  }
  template <class T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += quant_round_up(count * static_cast<int64_t>(sizeof(T)), kAlign);
    return p;
  }
  // `threads` regions of `bytes` each for the threads to write, every one on pages of its own
  // and a page away from everything else. When the calling thread's scratch directly followed
  // pair_offsets, which every thread reads each row, the worker's prefetchers ran past its end
  // into that scratch and pulled the lines away each row: a cross-core miss per row, and the
  // calling thread took 1.6x the worker's time per row (2048x4096 batch 1, 2 threads,
  // 0.16 -> 0.13 ms). Starting it on the next page was not far enough; one page between was.
  struct ThreadRegions {
    char* first;
    int64_t stride;
    void* of(int64_t thread) const { return first + thread * stride; }
  };
  ThreadRegions take_per_thread(int64_t threads, int64_t bytes) {
    const ThreadRegions regions{page_after(next_ + kPage), thread_stride(bytes)};
    next_ = regions.first + threads * regions.stride + kPage;
    return regions;
  }
  // Upper bound of what take_per_thread(threads, bytes) uses, for bytes_for.
  static int64_t per_thread_bytes(int64_t threads, int64_t bytes) { return threads * thread_stride(bytes) + 3 * kPage; }
  // Upper bound of what takes of these element counts use (each rounded up to kAlign).
  static int64_t bytes_for(std::initializer_list<int64_t> sizes) {
    int64_t total = 0;
    for (int64_t b : sizes) total += quant_round_up(b, kAlign);
    return total;
  }

 private:
  static constexpr int64_t kAlign = 64;
  static constexpr int64_t kPage = 4096;
  static int64_t thread_stride(int64_t bytes) { return quant_round_up(bytes, kPage); }
  static char* page_after(char* p) {
    return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~uintptr_t{kPage - 1});
  }
  std::vector<int64_t> owned_;
  char* next_ = nullptr;
};

struct QuantizedActivations {
  int8_t* codes;   // [rows, S * 256]
  float* scales;   // [rows, S8]
  int16_t* sums;   // [rows, groups]
};

// Below this many activation values, quantizing them on the calling thread beats waking the
// pool (batch 1 on a 4096-wide layer: a few microseconds of work).
constexpr int64_t kActivationParallelMin = 1 << 15;

void quantize_activation_rows(const QuantShape& s, const void* x, at::ScalarType dtype, int64_t rows,
                              const QuantizedActivations& qa, const CallScratch::ThreadRegions& row_scratch) {
  using Kernel = void (*)(const ActivationQuantArgs&, int64_t, int64_t, float*);
  const Kernel kernel = pick_for_isa<Kernel>(LMK_ISA_KERNELS(quantize_activation_rows_));
  const ActivationQuantArgs args{s, x, storage_dtype(dtype), qa.codes, qa.scales, qa.sums};
  auto row = [&](int64_t thread) { return static_cast<float*>(row_scratch.of(thread)); };
  if (rows * s.in_features < kActivationParallelMin) return kernel(args, 0, rows, row(0));
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    kernel(args, begin, end, row(at::get_thread_num()));
  });
}

// Offset of unit u's codes in xq_pairs' block order (kQuantPairPosition).
LMK_INLINE int64_t pair_offset(int64_t unit) {
  return (unit / kQuantSuperUnits) * kQuantSuperBlock + kQuantPairPosition[unit % kQuantSuperUnits] * kQuantUnit;
}

// xq's units in xq_pairs' order, block by block.
void reorder_units_in_pairs(const int8_t* xq, int64_t blocks, int8_t* pairs) {
  for (int64_t u = 0; u < blocks * kQuantSuperUnits; ++u) std::memcpy(pairs + pair_offset(u), xq + u * kQuantUnit, kQuantUnit);
}

using RowsKernel = bool (*)(const QuantLinearArgs&, int64_t, int64_t, void*);
using StripsKernel = bool (*)(const QuantStripArgs&, int64_t, int64_t, void*);

#ifndef LMKERNELS_NO_X86_SIMD
// From this many activation rows the strip path beats the VNNI row kernel, whose cost grows
// with every row (the strip path unpacks the weight once and runs an int8 GEMM on it).
constexpr int64_t kQuantStripMinRows = 8;

// Bytes the strip path takes from the call's scratch for `rows` activation rows.
int64_t strip_scratch_bytes(const QuantShape& s, int64_t rows, int64_t threads) {
  const int64_t x_stride = quant_round_up(rows, kQuantStripCols);
  return CallScratch::bytes_for({x_stride * s.super_blocks * kQuantSuperBlock, s.super_blocks * x_stride * 4,
                                 s.groups * x_stride * 4,
                                 CallScratch::per_thread_bytes(threads, quant_strip_scratch_bytes(s))});
}

void quant_linear_strips(const QuantShape& s, const QuantizedActivations& qa, const QuantLinearArgs& packed,
                         CallScratch& scratch) {
  const int64_t rows = packed.rows, S = s.super_blocks, threads = at::get_num_threads();
  const int64_t x_stride = quant_round_up(rows, kQuantStripCols), tile_bytes = x_stride * S * kQuantSuperBlock;
  int8_t* tiles = scratch.take<int8_t>(tile_bytes);
  std::memset(tiles, 0, static_cast<size_t>(tile_bytes));
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    quant_strip_activation_tiles(qa.codes, begin, end, S, tiles);
  });
  // The activations' block scales and, for the min term, each group's block scale times its
  // code sum, transposed to [block or group][activation row] and zero padded (plain loops: a
  // handful of small torch ops cost more than the products at a few rows).
  float* xs = scratch.take<float>(S * x_stride);
  float* gs = scratch.take<float>(s.groups * x_stride);
  const float* scales = qa.scales;
  const int16_t* sums = qa.sums;
  const int64_t S8 = quant_combine_stride(S);
  for (int64_t b = 0; b < S; ++b) {
    for (int64_t m = 0; m < x_stride; ++m) xs[b * x_stride + m] = m < rows ? scales[m * S8 + b] : 0.0f;
  }
  for (int64_t g = 0; g < s.groups; ++g) {
    const int64_t b = super_block_of_group(g, s.units_per_group);
    for (int64_t m = 0; m < x_stride; ++m) {
      gs[g * x_stride + m] = m < rows ? scales[m * S8 + b] * static_cast<float>(sums[m * s.groups + g]) : 0.0f;
    }
  }
  const QuantStripArgs args{packed, tiles, xs, gs, x_stride};
  const StripsKernel kernel = active_isa() == CpuIsa::kAmx ? quant_linear_strips_amx : quant_linear_strips_avx512_vnni;
  const int64_t strips = (s.out_features + kQuantStripRows - 1) / kQuantStripRows;
  const CallScratch::ThreadRegions thread_scratch = scratch.take_per_thread(threads, quant_strip_scratch_bytes(s));
  std::atomic<bool> ok{true};
  at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
    const int64_t last = std::min(end * kQuantStripRows, s.out_features);
    if (!kernel(args, begin * kQuantStripRows, last, thread_scratch.of(at::get_thread_num()))) {
      ok = false;
    }
  });
  TORCH_CHECK(ok.load(), "quant_linear: hi_groups rows must hold strictly ascending group indices in [0, ", s.groups, ")");
}
#endif

// The float results into out's dtype, where that is 16-bit (fp32: the kernels wrote to out).
void store_output(const float* y, int64_t count, at::Tensor& out) {
  if (out.scalar_type() == at::kFloat) return;
  using Kernel = void (*)(const float*, int64_t, StorageDtype, void*);
  const Kernel kernel = pick_for_isa<Kernel>(LMK_ISA_KERNELS(round_outputs_));
  kernel(y, count, storage_dtype(out.scalar_type()), out.data_ptr());
}

at::Tensor quant_linear_cpu(const at::Tensor& x, const at::Tensor& codes_lo, const at::Tensor& codes_hi,
                            const at::Tensor& hi_groups, const at::Tensor& scales, const at::Tensor& super_scales,
                            const std::optional<at::Tensor>& bias, int64_t in_features, int64_t group_size) {
  const QuantShape s = check_packed_weight({codes_lo, codes_hi, hi_groups, scales, super_scales}, in_features,
                                           group_size, "quant_linear");
  check_quant_linear_input(x, bias, s, codes_lo.device());
  // Raw pointers and plain loops from here: at batch 1 each dispatched tensor op (reshape,
  // empty, to) is a measurable share of the call once the caches are cold.
  const at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const int64_t rows = x.numel() / s.in_features;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.out_features;
  at::Tensor out = at::empty(out_shape, x.options());
  if (rows == 0 || s.out_features == 0) {
    check_hi_groups_host(hi_groups, s.groups, "quant_linear");  // the kernel's own check never runs
    return out;
  }
  at::Tensor bias_f32;
  if (bias.has_value()) {
    bias_f32 = bias->scalar_type() == at::kFloat && bias->is_contiguous() ? *bias : bias->to(at::kFloat).contiguous();
  }

  const bool pairs = active_isa() >= CpuIsa::kAvx512Vnni;
#ifndef LMKERNELS_NO_X86_SIMD
  const bool strips = pairs && rows >= kQuantStripMinRows;
#else
  const bool strips = false;
#endif
  const int64_t S8 = quant_combine_stride(s.super_blocks), row_codes = s.super_blocks * kQuantSuperBlock;
  const int64_t threads = at::get_num_threads();
  const bool float_out = x.scalar_type() == at::kFloat;
  // What both paths take, then what only the chosen one takes (the row path: the pairs copy
  // and per-thread row scratch).
  const int64_t pair_units = pairs && s.in_features > kQuantPlainHighPassMaxK ? s.super_blocks * kQuantSuperUnits : 0;
  int64_t path_bytes = CallScratch::bytes_for({pairs ? rows * row_codes : 0, pair_units * 4,
                                               CallScratch::per_thread_bytes(threads, quant_linear_scratch_bytes(s))});
#ifndef LMKERNELS_NO_X86_SIMD
  if (strips) path_bytes = strip_scratch_bytes(s, rows, threads);
#endif
  CallScratch scratch(CallScratch::bytes_for({rows * row_codes, rows * S8 * 4, rows * s.groups * 2,
                                              float_out ? 0 : rows * s.out_features * 4,
                                              CallScratch::per_thread_bytes(threads, row_codes * 4)}) +
                      path_bytes);
  const QuantizedActivations qa{scratch.take<int8_t>(rows * row_codes), scratch.take<float>(rows * S8),
                                scratch.take<int16_t>(rows * s.groups)};
  float* out_f32 = float_out ? out.data_ptr<float>() : scratch.take<float>(rows * s.out_features);
  quantize_activation_rows(s, xc.data_ptr(), x.scalar_type(), rows, qa, scratch.take_per_thread(threads, row_codes * 4));

  QuantLinearArgs args{};
  args.shape = s;
  args.codes_lo = codes_lo.data_ptr<uint8_t>();
  args.codes_hi = codes_hi.data_ptr<uint8_t>();
  args.hi_groups = hi_groups.data_ptr<int16_t>();
  args.scales = scales.data_ptr<uint8_t>();
  args.super_scales = reinterpret_cast<const uint16_t*>(super_scales.data_ptr<at::Half>());
  args.bias = bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr;
  args.rows = rows;
  args.out = out_f32;
  args.xq = qa.codes;
  args.xscale = qa.scales;
  args.xsum = qa.sums;
#ifndef LMKERNELS_NO_X86_SIMD
  if (strips) {
    quant_linear_strips(s, qa, args, scratch);
    store_output(out_f32, rows * s.out_features, out);
    return out;
  }
#endif

  const RowsKernel kernel = pick_for_isa<RowsKernel>(LMK_ISA_KERNELS_VNNI(quant_linear_rows_));
  if (pairs) {
    int8_t* xq_pairs = scratch.take<int8_t>(rows * row_codes);
    reorder_units_in_pairs(qa.codes, rows * s.super_blocks, xq_pairs);
    args.xq_pairs = xq_pairs;
    if (pair_units > 0) {
      uint32_t* pair_offsets = scratch.take<uint32_t>(pair_units);
      for (int64_t u = 0; u < pair_units; ++u) pair_offsets[u] = static_cast<uint32_t>(pair_offset(u));
      args.pair_offsets = pair_offsets;
    }
  }
  const CallScratch::ThreadRegions thread_scratch = scratch.take_per_thread(threads, quant_linear_scratch_bytes(s));
  std::atomic<bool> ok{true};
  // Threads take blocks of rows from a shared counter instead of one fixed share each: a
  // thread that starts late (a worker woken from sleep, a vCPU the host had parked: up to a
  // few hundred microseconds on the bench VM, as long as a whole batch-1 call) finds its
  // blocks already taken instead of leaving the others waiting for its share.
  const int64_t block_rows = std::max<int64_t>(16, std::min<int64_t>(256, s.out_features / (8 * threads)));
  const int64_t blocks = (s.out_features + block_rows - 1) / block_rows;
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, std::min<int64_t>(blocks, threads), 1, [&](int64_t, int64_t) {
    void* mine = thread_scratch.of(at::get_thread_num());
    for (int64_t b = next_block++; b < blocks; b = next_block++) {
      if (!kernel(args, b * block_rows, std::min(s.out_features, (b + 1) * block_rows), mine)) ok = false;
    }
  });
  TORCH_CHECK(ok.load(), "quant_linear: hi_groups rows must hold strictly ascending group indices in [0, ", s.groups, ")");
  store_output(out_f32, rows * s.out_features, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quant_linear", &quant_linear_cpu); }

}  // namespace lmkernels
