"""Early stopping on a validation slice of the user's own texts: the run keeps its best step, not its last.

A personal set is small (10-50 texts), and a few passes over it at a learning rate that suits a big set make the
model recite those texts while it gets worse at the person's other writing (measured on Gemma 3 270M: 3+ passes
over 7-10 texts lowered the held-out likelihood). So a few of the user's training texts (training.data
:func:`~idiolect.core.training.data.validation_count`) are never trained on; every ``eval_every`` steps their mean
per-token log-likelihood under the adapter is measured, the adapter's weights at the best score so far are kept
(in memory and in each checkpoint), and the run ends early once ``patience`` scores in a row brought no gain.
The base model (step 0: a fresh LoRA changes nothing) is a candidate like any step: when no step beats it, the
adapter is left as the base and the run says so.

The held-out texts of the run's metrics are not the validation texts, so what is reported was not chosen on.
"""

from __future__ import annotations

import math

import torch

from idiolect.core.training.data import MIN_VALIDATION_TRAIN
from idiolect.core.training.logprobs import mean_token_ll

MIN_GAIN = 1e-4  # nats/token: a score must beat the best by this much to count as a gain
CHECKS_PER_RUN = 20  # the default eval_every scores the slice about this many times a run


def default_eval_every(total: int) -> int:
    return max(1, math.ceil(total / CHECKS_PER_RUN))


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the weights the run trains (the LoRA matrices)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


class EarlyStopping:
    """The validation slice's scores and the best weights of one run. ``active`` is False without a slice (too
    few texts, or switched off): the run then trains every step and keeps the last."""

    def __init__(self, examples: list, total: int, *, every: int | None, patience: int) -> None:
        self.examples = examples
        self.total = total
        self.every = every or default_eval_every(total)
        self.patience = patience
        self.history: list[tuple[int, float]] = []  # (step, mean per-token log-likelihood)
        self.best_step = 0
        self.best_score: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.misses = 0
        self.stopped_at: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.examples)

    def start(self, model, score) -> None:
        """Score the base (step 0) and keep the fresh adapter as the best so far. ``score(model, adapter)``."""
        if not self.active or self.history:
            return
        self.best_score = score(model, False)
        self.best_state = trainable_state(model)
        self.history.append((0, self.best_score))

    def due(self, step: int) -> bool:
        return self.active and (step % self.every == 0 or step == self.total)

    def after_step(self, model, step: int, score) -> tuple[float | None, bool]:
        """Score the slice after ``step`` when it is due; returns (the score or None, whether to stop now)."""
        if not self.due(step):
            return None, False
        value = score(model, True)
        self.history.append((step, value))
        if self.best_score is None or value > self.best_score + MIN_GAIN:
            self.best_score, self.best_step, self.misses = value, step, 0
            self.best_state = trainable_state(model)
        else:
            self.misses += 1
        stop = self.misses >= self.patience and step < self.total
        if stop:
            self.stopped_at = step
        return value, stop

    def restore_best(self, model, last_step: int) -> None:
        """Put the best weights back into the model (before it is saved and evaluated)."""
        if self.active and self.best_state is not None and self.best_step != last_step:
            load_trainable_state(model, self.best_state)

    def report(self, last_step: int) -> dict:
        """What the run did, for its result, the CLI and the Train tab (``message`` in plain words)."""
        if not self.active:
            return {"active": False, "kept_step": last_step, "message": (
                f"off (no validation slice: it needs {MIN_VALIDATION_TRAIN}+ training texts and a validation "
                f"fraction above 0); kept the last step ({last_step})")}  # fmt: skip
        base = self.history[0][1]
        if self.best_step == 0:
            message = (
                f"no step made your validation texts more likely than the base model (checked {len(self.history) - 1} "
                "times): the adapter is left as the base"
            )
        else:
            message = (
                f"kept step {self.best_step} of {self.total}: your validation texts were most likely there "
                f"({self.best_score - base:+.3f} nats/token over the base)"
            )
        if self.stopped_at is not None:
            message += f"; stopped at step {self.stopped_at} after {self.patience} checks without a gain"
        if self.best_step == 0:
            message += ". Try a lower learning rate, or add more of your writing"
        return {
            "active": True,
            "validation_texts": len(self.examples),
            "eval_every": self.every,
            "patience": self.patience,
            "kept_step": self.best_step,
            "stopped_at": self.stopped_at,
            "total_steps": self.total,
            "base_ll": base,
            "best_ll": self.best_score,
            "history": self.history,
            "message": message,
        }

    def state_dict(self) -> dict:
        keys = ("history", "best_step", "best_score", "best_state", "misses", "stopped_at")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict | None) -> None:
        for k, v in (state or {}).items():
            setattr(self, k, v)


def validation_scorer(examples, device, pad_id: int, autocast):
    """``score(model, adapter)``: the slice's mean per-token log-likelihood with or without the adapter."""

    def score(model, adapter: bool) -> float:
        return mean_token_ll(model, examples, device, pad_id, adapter=adapter, autocast=autocast)

    return score
