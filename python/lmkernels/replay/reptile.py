"""Meta-experience replay's Reptile step: every ``k`` optimizer steps,
``theta <- theta_0 + beta * (theta - theta_0)`` and ``theta_0 <- theta``."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class Reptile:
    """Reptile interpolation of weights, with ``torch._foreach_*`` ops.

    Call :meth:`step` after every optimizer step. The anchor ``theta_0`` is kept in fp32.

    Mixed precision: when the optimizer updates fp32 master copies of lower-precision model
    weights (pass the ``optimizer`` whose params are the masters, or ``master_params``), the
    interpolation is applied to the masters, and the model weights are refreshed from them,
    so the next optimizer step cannot undo it (the authors' DeepSpeed code interpolated only
    the bf16 module weights).

    Args:
        params: a module or an iterable of parameters (the weights the forward pass uses).
        k: inner steps between interpolations.
        beta: interpolation factor in ``(0, 1]`` (1 is plain training).
        optimizer: an optimizer over ``params`` or over fp32 masters of them (same order).
        master_params: fp32 masters of ``params`` in the same order, instead of ``optimizer``.
    """

    def __init__(
        self,
        params: torch.nn.Module | Iterable[torch.Tensor],
        k: int,
        beta: float,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        master_params: Iterable[torch.Tensor] | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Reptile: k must be a positive int, got {k!r}")
        if not isinstance(beta, (int, float)) or not math.isfinite(beta) or not 0.0 < beta <= 1.0:
            raise ValueError(f"Reptile: beta must be in (0, 1], got {beta!r}")
        model = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
        if not model:
            raise ValueError("Reptile: no parameters")
        masters = None if master_params is None else list(master_params)
        if masters is None and optimizer is not None:
            opt_params = [p for group in optimizer.param_groups for p in group["params"]]
            model_ids = {id(p) for p in model}
            if not all(id(p) in model_ids for p in opt_params):
                masters = opt_params
        if masters is not None:
            if len(masters) != len(model) or any(m.shape != p.shape for m, p in zip(masters, model)):
                raise ValueError("Reptile: master params must match the model params one to one, in order and shape")
            if any(m.dtype != torch.float32 for m in masters):
                raise ValueError("Reptile: master params must be float32")
        self.k = k
        self.beta = float(beta)
        self.count = 0
        self._model = model
        self._masters = masters
        with torch.no_grad():
            self._anchors = [t.detach().float().clone() for t in self._targets]

    @property
    def _targets(self) -> list[torch.Tensor]:
        return self._masters if self._masters is not None else self._model

    def step(self) -> bool:
        """Counts one inner step; interpolates on every k-th. Returns whether it did."""
        self.count += 1
        if self.count % self.k:
            return False
        self.interpolate()
        return True

    @torch.no_grad()
    def interpolate(self) -> None:
        """``theta <- theta_0 + beta (theta - theta_0)`` now, and the result becomes ``theta_0``."""
        targets = self._targets
        current = [t if t.dtype == torch.float32 else t.float() for t in targets]
        torch._foreach_lerp_(self._anchors, current, self.beta)
        torch._foreach_copy_(targets, self._anchors)  # casts where a target is not fp32
        if self._masters is not None:
            torch._foreach_copy_(self._model, self._masters)

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "beta": self.beta, "count": self.count, "anchors": [a.clone() for a in self._anchors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        anchors = state["anchors"]
        if len(anchors) != len(self._anchors) or any(a.shape != b.shape for a, b in zip(anchors, self._anchors)):
            raise ValueError("Reptile.load_state_dict: the anchors do not match these parameters")
        self.k, self.beta, self.count = state["k"], state["beta"], state["count"]
        with torch.no_grad():
            torch._foreach_copy_(self._anchors, [a.float() for a in anchors])
