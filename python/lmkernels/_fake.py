"""Fake (meta) impls of every op, so `torch.compile(fullgraph=True)` can trace them."""

from __future__ import annotations

import torch


@torch.library.register_fake("lmkernels::rope_rerotate_")
def _rope_rerotate_fake(k, old_pos, new_pos, inv_freq, neox):
    return None
