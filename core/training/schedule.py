"""The learning-rate schedule of a run: a linear warmup of at least :data:`MIN_WARMUP_STEPS` steps, then a cosine
decay to 10% of the learning rate.

Why a floor on the warmup: ``int(0.1 x steps)`` is 1 step for the 10-30-step runs a personal set gives, so the
first step already took the full learning rate on Adam's first (unnormalized) moments."""

from __future__ import annotations

import math

MIN_WARMUP_STEPS = 3


def warmup_steps(total: int, fraction: float) -> int:
    """``fraction`` of the run's steps, at least :data:`MIN_WARMUP_STEPS`, and at most half the run (a run of a
    few steps still trains at its full learning rate for half of them)."""
    return min(max(MIN_WARMUP_STEPS, math.ceil(fraction * total)), max(1, total // 2))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the configured one."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
