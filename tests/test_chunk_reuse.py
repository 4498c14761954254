"""Cache-Craft reuse metrics against hand-worked examples."""

from __future__ import annotations

import itertools
import math

import pytest

from lmkernels.chunk_reuse import cache_fix_overhead, contextual_impact, order_penalty, prefix_overlap


def test_prefix_overlap_is_the_share_of_attention_to_chunks_still_there():
    prefix = [(1, 3.0), (2, 1.0), (3, 4.0)]
    assert prefix_overlap(prefix, [3, 9, 1]) == pytest.approx(7.0 / 8.0)
    assert prefix_overlap(prefix, []) == 0.0
    assert prefix_overlap([], []) == 1.0 and prefix_overlap([], [4]) == 0.0
    assert prefix_overlap([(1, 0.0)], [5]) == 1.0  # it paid no attention to its context


def test_order_penalty_is_the_normalised_kendall_distance():
    assert order_penalty([1, 2, 3], [1, 2, 3]) == 0.0
    assert order_penalty([1, 2, 3], [3, 2, 1]) == 1.0
    assert order_penalty([1, 2, 3], [2, 1, 3]) == pytest.approx(1 / 3)
    assert order_penalty([1, 2, 3], [7, 3, 1]) == 1.0  # only 1 and 3 are common, swapped
    assert order_penalty([1], [1]) == 0.0
    # Against a brute-force count over all permutations of four chunks.
    for perm in itertools.permutations(range(4)):
        discordant = sum(1 for i, j in itertools.combinations(range(4), 2) if perm.index(i) > perm.index(j))
        assert order_penalty(list(range(4)), list(perm)) == pytest.approx(discordant / 6)


def test_contextual_impact_compares_attention_across_and_inside_chunks():
    assert contextual_impact([], [], 10.0, 5) == 0.5
    a = 6.0 / (4 * 3) + 2.0 / (4 * 8)
    b = 8.0 / 16
    assert contextual_impact([6.0, 2.0], [3, 8], 8.0, 4) == pytest.approx(1 / (1 + math.exp(-a / b)))
    with pytest.raises(ValueError, match="one entry per preceding chunk"):
        contextual_impact([1.0], [], 1.0, 2)


def test_cache_fix_overhead_combines_the_terms_and_clamps():
    prefix = [(1, 2.0), (2, 2.0)]
    assert cache_fix_overhead(0.8, prefix, [1, 2], alpha=1.0) == 0.0  # same context: reuse as is
    assert cache_fix_overhead(0.8, prefix, [2, 1], alpha=1.0) == pytest.approx(0.8)  # order reversed
    assert cache_fix_overhead(0.8, prefix, [1], alpha=0.5) == pytest.approx(0.5 * 0.8 * 0.5)
    assert cache_fix_overhead(0.9, prefix, [], alpha=5.0) == 1.0
