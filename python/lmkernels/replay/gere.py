"""GeRe's threshold-based margin (TM) loss: keep hidden activations on replayed general text
in the region (below mean - std, between, above mean + std) that a frozen reference put them."""

from __future__ import annotations

import torch


class ThresholdMarginLoss(torch.nn.Module):
    """Per hidden unit, thresholds ``neg = mean - std`` and ``pos = mean + std`` computed once
    from the reference model's activations (:meth:`from_reference`). For an activation ``h``
    whose reference value ``r`` was

    - at or below ``neg``: penalise ``relu(h - neg)``;
    - at or above ``pos``: penalise ``relu(pos - h)``;
    - in between: penalise ``relu(h - pos) + relu(neg - h)``;

    averaged over the entries with a non-zero penalty (0 when there is none), as in GeRe.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError("ThresholdMarginLoss: mean and std must be 1-D and of one shape")
        self.register_buffer("neg", (mean - std).float())
        self.register_buffer("pos", (mean + std).float())

    @classmethod
    def from_reference(cls, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> ThresholdMarginLoss:
        """Thresholds from reference activations ``[..., hidden]`` (``mask [...]`` drops padding)."""
        flat = hidden.detach().float().reshape(-1, hidden.shape[-1])
        if mask is not None:
            flat = flat[mask.reshape(-1).bool()]
        if flat.shape[0] < 2:
            raise ValueError("ThresholdMarginLoss.from_reference: need at least two activation vectors")
        return cls(flat.mean(0), flat.std(0))

    def forward(self, hidden: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if hidden.shape != reference.shape or hidden.shape[-1] != self.neg.numel():
            raise ValueError(f"ThresholdMarginLoss: hidden {tuple(hidden.shape)} and reference "
                             f"{tuple(reference.shape)} must match, with {self.neg.numel()} units")
        h, r = hidden.float(), reference.detach().float()
        below, above = r <= self.neg, r >= self.pos
        between_penalty = torch.relu(h - self.pos) + torch.relu(self.neg - h)
        penalty = torch.where(below, torch.relu(h - self.neg), torch.where(above, torch.relu(self.pos - h), between_penalty))
        if mask is not None:
            penalty = penalty * mask.unsqueeze(-1).to(penalty.dtype)
        active = (penalty > 0).sum()
        return penalty.sum() / active.clamp(min=1)
