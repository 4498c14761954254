#include "attention/schedule.h"

#include <algorithm>

namespace lmkernels::attention {

void Schedule::link() {
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].spans = spans.data() + span_offset[i];
    items[i].span_heads = masked[i] ? span_heads.data() + span_offset[i] : nullptr;
  }
}

Schedule varlen_schedule(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, int64_t heads_kv,
                         bool causal, int64_t positions) {
  Schedule s;
  const int64_t batch = static_cast<int64_t>(cu_q.size()) - 1;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len_q = cu_q[b + 1] - cu_q[b];
    const int64_t len_k = cu_k[b + 1] - cu_k[b];
    for (int64_t qb = 0; qb < len_q; qb += positions) {
      const int64_t qe = std::min(len_q, qb + positions);
      // One span per item, up to the item's last visible key.
      const int64_t key_end = causal ? std::clamp<int64_t>(qe + len_k - len_q, 0, len_k) : len_k;
      for (int64_t h = 0; h < heads_kv; ++h) {
        s.items.push_back({b, h, qb, qe, nullptr, 1, nullptr});
        s.span_offset.push_back(static_cast<int64_t>(s.spans.size()));
        s.masked.push_back(0);
        s.cost.push_back((qe - qb) * (key_end + kKeyTile));
        s.spans.push_back({0, key_end});
        s.span_heads.push_back(~uint64_t{0});
      }
    }
  }
  s.link();
  return s;
}

Schedule block_sparse_schedule(const int64_t* crow, const int64_t* col, int64_t blocks, int64_t width,
                               int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t tokens,
                               int64_t block_size, bool causal, int64_t positions) {
  Schedule s;
  const int64_t group = heads_q / heads_kv;
  const uint64_t all_heads = group == 64 ? ~uint64_t{0} : (uint64_t{1} << group) - 1;
  std::vector<int64_t> cursor(group), stop(group);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads_kv; ++h) {
      for (int64_t i = 0; i < blocks; ++i) {
        // Merge the group's sorted block lists, one block at a time.
        const int64_t first_span = static_cast<int64_t>(s.spans.size());
        int64_t keys = 0;
        for (int64_t g = 0; g < group; ++g) {
          const int64_t bh = b * heads_q + h * group + g;
          cursor[g] = bh * width + crow[bh * (blocks + 1) + i];
          stop[g] = bh * width + crow[bh * (blocks + 1) + i + 1];
        }
        while (true) {
          int64_t block = blocks;
          for (int64_t g = 0; g < group; ++g) {
            if (cursor[g] < stop[g]) block = std::min(block, col[cursor[g]]);
          }
          if (block == blocks) break;
          uint64_t seen = 0;
          for (int64_t g = 0; g < group; ++g) {
            if (cursor[g] < stop[g] && col[cursor[g]] == block) {
              seen |= uint64_t{1} << g;
              ++cursor[g];
            }
          }
          if (causal && block > i) continue;  // entirely above the diagonal
          const int64_t begin = block * block_size, end = std::min(tokens, begin + block_size);
          if (static_cast<int64_t>(s.spans.size()) > first_span && s.spans.back().end == begin &&
              s.span_heads.back() == seen) {
            s.spans.back().end = end;
          } else {
            s.spans.push_back({begin, end});
            s.span_heads.push_back(seen);
          }
          keys += end - begin;
        }
        const int64_t num_spans = static_cast<int64_t>(s.spans.size()) - first_span;
        const bool every_head = std::all_of(s.span_heads.begin() + first_span, s.span_heads.end(),
                                            [&](uint64_t m) { return m == all_heads; });
        const int64_t q_end = std::min(tokens, (i + 1) * block_size);
        for (int64_t qb = i * block_size; qb < q_end; qb += positions) {
          const int64_t qe = std::min(q_end, qb + positions);
          s.items.push_back({b, h, qb, qe, nullptr, num_spans, nullptr});
          s.span_offset.push_back(first_span);
          s.masked.push_back(every_head ? 0 : 1);
          s.cost.push_back((qe - qb) * group * (keys + kKeyTile));
        }
      }
    }
  }
  s.link();
  return s;
}

}  // namespace lmkernels::attention
