"""Training objectives on one code path: C-BPO and its baselines (BCO with peers as plain negatives, SFT).

Notation (the project's design brief; C-BPO, Ma et al., arXiv 2605.10043). For a prompt x and response y, with the frozen base
model as reference, the implicit reward is ``r = beta * (log pi(y|x) - log pi_ref(y|x))`` (sums over response
tokens). With a reference point delta, the binary per-sample losses are::

    l+(r) = -log sigmoid(r - delta)        (y should be preferred)
    l-(r) = -log sigmoid(-(r - delta))     (y should be dispreferred)

Three sets: *target* T (the user's writing, thumbs-up generations, edits), *auxiliary* A (other writers' texts,
treated as unlabeled), explicit *negatives* N (thumbs-down). C-BPO is the class-balanced non-negative PU risk
(Kiryo et al. 2017) with class prior pi (the share of peer texts that are target-like)::

    L_pos      = mean_T l+(r)
    L_pure_neg = mean_A l-(r) - pi * mean_T l-(r)          (the "positive bias" of peers removed)
    L_CBPO     = L_pos + 1/(1-pi) * max(0, L_pure_neg) + lambda_N * mean_N l-(r) + lambda_sft * NLL_T

and delta is "preference calibration": two moving averages of the (detached) reward, one over target and one
over peer samples, ``delta = (m_T + m_A) / 2`` -- unlike BCO's single pooled mean, which the larger peer set
dominates.

Departures and choices (the paper's method text could not be read here; this follows the detailed note in
the design brief):
- delta's moving averages are exponential with decay ``delta_decay = 0.95`` per step (a ~20-step window): the
  rewards drift as the adapter learns, and a cumulative mean (BCO's) lags further behind the longer a run is.
  Each is bias-corrected as Adam's moments are (divided by ``1 - decay**n`` after n updates), so after one step
  delta is that step's reward means and not 5% of them: without it, after 15 steps 46% of the weight was still
  on the starting 0 and the reference point sat near 0 while the rewards were at +-2..5.
- the clamp is a plain ``max(0, .)`` (no gradient through a negative PU term), as the design brief states, not
  Kiryo's gradient-ascent step.
- ``reward_norm``: ``sum`` (the default, as in DPO/BCO) or ``mean`` -- the log-ratio averaged over the
  response's tokens (SimPO's length normalization), so a 300-token answer does not get a reward 10x a 30-token
  one's; with ``mean`` the per-token ratios are small and beta is ~10x larger (about 1).
- ``lambda_sft`` (default 0) optionally adds the target set's token NLL, which keeps fluency on tiny data.
- Baselines on the same path: ``bco`` -- TRL's BCO with the peers as plain negatives (pooled cumulative mean
  delta, count-weighted mean over all samples); ``kto`` -- TRL's KTO loss (``1 - sigmoid(r - z0)`` for the
  target, ``1 - sigmoid(z0 - r)`` for peers and thumbs-down, equal weights: the batches hold as many peer as
  target texts) with the reference point z0 = max(0, mean detached reward of the batch), which stands in for
  TRL's KL estimate on mismatched prompt/completion pairs (that costs one more forward pass per step, which the
  other objectives do not get); ``cbpo_pi0`` -- C-BPO with pi = 0 (isolates delta); ``sft``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from idiolect.core.training.config import OBJECTIVES, ObjectiveConfig


class RewardShift:
    """delta. ``separate``: EMAs of the target and peer reward means, delta = their midpoint (C-BPO).
    ``pooled``: the cumulative mean of every reward seen (TRL's BCO)."""

    def __init__(self, mode: str = "separate", decay: float = 0.95) -> None:
        if mode not in ("separate", "pooled"):
            raise ValueError(mode)
        self.mode = mode
        self.decay = decay
        self.mean_tar = 0.0  # the EMAs, not yet bias-corrected
        self.mean_aux = 0.0
        self.updates_tar = 0
        self.updates_aux = 0
        self.total = 0.0
        self.count = 0

    def _corrected(self, ema: float, updates: int) -> float | None:
        return ema / (1 - self.decay**updates) if updates else None

    @property
    def value(self) -> float:
        if self.mode == "pooled":
            return self.total / self.count if self.count else 0.0
        means = [
            m
            for m in (
                self._corrected(self.mean_tar, self.updates_tar),
                self._corrected(self.mean_aux, self.updates_aux),
            )
            if m is not None
        ]
        return sum(means) / 2 if len(means) == 2 else (means[0] if means else 0.0)

    def update(self, r_tar: torch.Tensor, r_aux: torch.Tensor, r_neg: torch.Tensor | None = None) -> None:
        """Call after computing the loss with the current value (the loss uses delta from earlier steps)."""
        if self.mode == "pooled":
            for r in (r_tar, r_aux, r_neg):
                if r is not None and r.numel():
                    self.total += float(r.detach().sum())
                    self.count += r.numel()
            return
        if r_tar.numel():
            self.mean_tar = self.decay * self.mean_tar + (1 - self.decay) * float(r_tar.detach().mean())
            self.updates_tar += 1
        if r_aux.numel():
            self.mean_aux = self.decay * self.mean_aux + (1 - self.decay) * float(r_aux.detach().mean())
            self.updates_aux += 1

    FIELDS = ("mode", "decay", "mean_tar", "mean_aux", "updates_tar", "updates_aux", "total", "count")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.FIELDS}

    def load_state_dict(self, state: dict) -> None:
        if (
            "updates_tar" not in state
        ):  # a checkpoint from before the bias correction: its EMAs stay as they were
            state = {**state, "updates_tar": 10**6, "updates_aux": 10**6}
        for k, v in state.items():
            setattr(self, k, v)


def implicit_rewards(
    cfg: ObjectiveConfig, logps: torch.Tensor, ref_logps: torch.Tensor, counts: torch.Tensor
):
    """``beta * (log pi(y|x) - log pi_ref(y|x))`` per sample from summed response log-probs, divided by the
    response's token count where ``reward_norm`` is ``mean``."""
    ratio = logps - ref_logps
    if cfg.reward_norm == "mean":
        ratio = ratio / counts.to(ratio.dtype).clamp(min=1)
    return cfg.beta * ratio


def l_plus(r: torch.Tensor, delta: float) -> torch.Tensor:
    return -F.logsigmoid(r - delta)


def l_minus(r: torch.Tensor, delta: float) -> torch.Tensor:
    return -F.logsigmoid(-(r - delta))


def _f(x: torch.Tensor) -> float:
    return float(x.detach())


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.new_zeros(())


def _sft(cfg, pi, delta, r_tar, r_aux, r_neg, nll_tar, terms):
    if nll_tar is None:
        raise ValueError("sft needs nll_tar")
    terms.update(sft=_f(nll_tar))
    return nll_tar


def _kto(cfg, pi, delta, r_tar, r_aux, r_neg, nll_tar, terms):
    pooled = torch.cat([r_tar, r_aux, r_neg]).detach()
    z0 = max(0.0, float(pooled.mean())) if pooled.numel() else 0.0
    pos = 1 - torch.sigmoid(r_tar - z0)
    losses = torch.cat([pos, 1 - torch.sigmoid(z0 - r_aux), cfg.lambda_n * (1 - torch.sigmoid(z0 - r_neg))])
    terms.update(z0=z0, l_pos=_f(_mean(pos)))
    return _mean(losses)


def _bco(cfg, pi, delta, r_tar, r_aux, r_neg, nll_tar, terms):
    # TRL's BCO: every sample weighs the same, peers are plain negatives.
    losses = torch.cat([l_plus(r_tar, delta), l_minus(r_aux, delta), cfg.lambda_n * l_minus(r_neg, delta)])
    terms.update(l_pos=_f(_mean(l_plus(r_tar, delta))), l_aux_neg=_f(_mean(l_minus(r_aux, delta))))
    return _mean(losses)


def _cbpo(cfg, pi, delta, r_tar, r_aux, r_neg, nll_tar, terms):
    pi_used = 0.0 if cfg.name == "cbpo_pi0" else pi
    l_pos = _mean(l_plus(r_tar, delta))
    pure_neg = _mean(l_minus(r_aux, delta)) - pi_used * _mean(l_minus(r_tar, delta))
    clamped = bool(pure_neg.detach() < 0)
    neg_term = r_tar.new_zeros(()) if clamped else pure_neg / (1 - pi_used)
    l_n = _mean(l_minus(r_neg, delta))
    terms.update(l_pos=_f(l_pos), l_pure_neg=_f(pure_neg), pu_clamped=float(clamped), l_explicit_neg=_f(l_n),
                 pi=pi_used)  # fmt: skip
    return l_pos + neg_term + cfg.lambda_n * l_n


# The one registry of objectives: each name of config.OBJECTIVES has its loss here, and only those.
LOSSES = {"sft": _sft, "kto": _kto, "bco": _bco, "cbpo": _cbpo, "cbpo_pi0": _cbpo}
assert set(LOSSES) == set(OBJECTIVES), "every objective needs a loss"


def objective_loss(
    cfg: ObjectiveConfig,
    pi: float,
    delta: float,
    r_tar: torch.Tensor,
    r_aux: torch.Tensor,
    r_neg: torch.Tensor,
    nll_tar: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The loss for one batch and the terms to log. ``r_*`` are rewards per sample (already times beta);
    ``nll_tar`` is the mean token NLL of the target samples (for SFT and ``lambda_sft``). An objective without
    a loss in :data:`LOSSES` is an error, never another objective's loss."""
    if cfg.name not in LOSSES:
        raise ValueError(f"no loss for objective {cfg.name!r} (known: {', '.join(LOSSES)})")
    terms: dict[str, float] = {"delta": float(delta)}
    loss = LOSSES[cfg.name](cfg, pi, delta, r_tar, r_aux, r_neg, nll_tar, terms)
    if cfg.name != "sft" and cfg.lambda_sft and nll_tar is not None:
        loss = loss + cfg.lambda_sft * nll_tar
        terms["sft"] = _f(nll_tar)
    terms["loss"] = _f(loss)
    return loss, terms
