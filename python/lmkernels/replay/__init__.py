"""Replay for continual pre-training: a disk-backed token replay buffer with a C++ core,
a mixer that keeps an exact replay rate per batch, the Reptile step of meta-experience replay
and GeRe's threshold-margin loss."""

from __future__ import annotations

from .buffer import ReplayBuffer, ReplaySample
from .gere import ThresholdMarginLoss
from .mixer import ReplayMixer, replay_count
from .reptile import Reptile

__all__ = ["ReplayBuffer", "ReplayMixer", "ReplaySample", "Reptile", "ThresholdMarginLoss", "replay_count"]
