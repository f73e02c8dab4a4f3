"""The training configuration: one dataclass whose fields, defaults and help texts drive the ``train`` command's
flags (:func:`add_arguments`, :func:`from_args`) and the app's Train tab fields. Torch-free, so building the
command line does not load torch.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields

from idiolect.core.base.errors import IdiolectError

OBJECTIVES = ("cbpo", "bco", "kto", "sft", "cbpo_pi0")  # objectives.LOSSES holds the loss of each
# The product's method. Another objective becomes the default only where the personalization protocol's report
# (docs/benchmarks.md) shows it better than C-BPO, paired, on the report writers of both real models; the earlier
# choice of KTO was made on the splits it was reported on.
DEFAULT_OBJECTIVE = "cbpo"
DEFAULT_BETA = 0.02  # the protocol's shared reward scale for every preference objective (not tuned by it)


REWARD_NORMS = ("sum", "mean")

# What each objective does, in words for the app and the CLI (the product's default first where they list them).
DESCRIPTIONS = {
    "cbpo": "C-BPO: learns what is yours against other writers' texts, and does not push down what you share "
    "with them (a positive-unlabeled correction). Uses your texts, your ratings and a peer pool.",
    "kto": "KTO: raises the likelihood of your texts and lowers other writers' against a moving reference "
    "point. Uses your texts, your ratings and a peer pool; can collapse at high learning rates.",
    "sft": "SFT: imitates your texts and 👍 edits; no peers, no 👎. Learns the site's register as much as you.",
    "bco": "BCO: yours against others, treating every peer text as something you would not write.",
    "cbpo_pi0": "C-BPO without the PU correction (pi = 0): an ablation, for comparisons.",
}


@dataclass
class ObjectiveConfig:
    name: str = DEFAULT_OBJECTIVE
    beta: float = DEFAULT_BETA  # reward scale
    pi: float | None = (
        None  # class prior of target-like peer texts; None = estimate per user (training.pu_prior)
    )
    lambda_n: float = 1.0  # weight of explicit thumbs-down negatives
    lambda_sft: float = 0.0  # weight of the target token NLL
    delta_decay: float = 0.95  # EMA decay of the reward means behind delta
    pi_cap: float = 0.9
    reward_norm: str = "sum"  # "sum" over response tokens, or "mean" per token (length-normalized)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.name!r}")
        if self.pi is not None and not 0 <= self.pi <= self.pi_cap:
            raise ValueError(f"pi must be within [0, {self.pi_cap}]")
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.reward_norm not in REWARD_NORMS:
            raise ValueError(
                f"reward_norm must be one of {', '.join(REWARD_NORMS)}, not {self.reward_norm!r}"
            )
        if not 0 <= self.delta_decay < 1:
            raise ValueError("delta_decay must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def _opt(default, help: str, *, choices=None, cli: bool = True, type=None):  # noqa: A002 - argparse's names
    """A field that is also a ``train`` flag: its help, and the choices argparse checks."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli, "type": type})


@dataclass
class TrainConfig:
    model: str
    objective: str = _opt(
        DEFAULT_OBJECTIVE, "cbpo (the product's method), kto, sft, bco or cbpo_pi0 (README: Does it work?)",
        choices=OBJECTIVES)  # fmt: skip
    pool: str = _opt("default", "peer pool: other writers' texts ('default' is the bundled pool)")
    steps: int | None = _opt(None, "optimizer steps (default: epochs x batches per epoch)", type=int)
    # The shipped setting is one the protocol measured (docs/benchmarks.md, "The personalization protocol"): the
    # default objective's setting chosen on the tuning writers (bench/results/protocol/smollm2/tuning.json: lr,
    # epochs, beta) at the protocol's batch and length, then reported on other writers. A test holds them equal.
    epochs: int = _opt(4, "passes over your texts")
    batch_size: int = _opt(4, "your texts per batch; as many peer texts")
    aux_per_batch: int | None = None  # peer samples per batch (default: batch_size)
    neg_per_batch: int = 2
    grad_accum: int = _opt(1, "batches per optimizer step")
    lr: float = _opt(3e-3, "learning rate")
    warmup: float = (
        0.1  # share of the steps that warm the learning rate up; never fewer than 3 steps (schedule)
    )
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = _opt(8, "LoRA rank (alpha is twice the rank unless set)")
    lora_alpha: int | None = None  # default: 2 x lora_r
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    max_length: int = _opt(256, "tokens per sample, prompt included (a longer text is cut, never its prompt's head)")
    device: str = _opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    quantize: str = _opt("auto", "auto: 4-bit on CUDA", choices=("auto", "4bit", "none"))
    gradient_checkpointing: bool | None = None  # default: on with CUDA
    seed: int = _opt(0, "random seed")
    save_every: int = _opt(50, "checkpoint every N steps")
    peer_cap: int | None = None
    heldout_fraction: float = _opt(
        0.1, "share of your texts (and of the peer texts) held out for the held-out metrics"
    )
    validation_fraction: float = _opt(
        0.15, "share of your training texts scored during the run to keep its best step (early stopping; 0: "
        "off; needs 8+ texts)")  # fmt: skip
    eval_every: int | None = _opt(
        None, "score the validation texts every N steps (default: about 20 times a run)", type=int
    )
    patience: int = _opt(3, "stop after this many scores in a row without a gain (early stopping)")
    beta: float = _opt(DEFAULT_BETA, "reward scale of every preference objective (the protocol's shared setting)")
    pi: float | None = _opt(None, "class prior of target-like peer texts (default: estimated)", type=float)
    lambda_n: float = 1.0
    lambda_sft: float = _opt(0.0, "weight of an SFT term on your texts added to a preference objective")
    delta_decay: float = 0.95
    reward_norm: str = _opt(
        "sum", "implicit reward summed over the response's tokens, or their mean (length-normalized; use a beta "
        "near 1)", choices=("sum", "mean"))  # fmt: skip
    # Compute precision of the forward passes on a CPU: auto = bf16 autocast where the CPU has native bf16
    # (AVX512-BF16 / AMX), else fp32. Reference, policy and evaluation passes always use the same one.
    precision: str = _opt(
        "auto", "CPU compute precision (auto: bf16 autocast on CPUs with native bf16, for models of 100M+ "
        "parameters; fp32 otherwise)", choices=("auto", "fp32", "bf16"))  # fmt: skip
    recompute_head: bool | None = None  # None: recompute the LM head in the backward pass only when its
    # saved logits would exceed HEAD_MEMORY_BUDGET
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "save_every", "lora_r", "patience"):
            if getattr(self, name) < 1:
                raise IdiolectError(f"{name.replace('_', ' ')} must be at least 1")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.steps is not None and self.steps < 1:
            raise IdiolectError("steps must be at least 1")
        if self.lr <= 0:
            raise IdiolectError("the learning rate must be positive")
        if not 0 <= self.heldout_fraction < 1:
            raise IdiolectError("the held-out fraction must be in [0, 1)")
        if not 0 <= self.validation_fraction <= 0.5:
            raise IdiolectError("the validation fraction must be in [0, 0.5]")
        if self.eval_every is not None and self.eval_every < 1:
            raise IdiolectError("eval every must be at least 1")
        if not 0 <= self.warmup < 1:
            raise IdiolectError("warmup must be a share of the steps in [0, 1)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise IdiolectError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        self.objective_config()  # validates the objective, beta, pi, delta_decay, reward_norm

    def objective_config(self) -> ObjectiveConfig:
        try:
            return ObjectiveConfig(
                name=self.objective,
                beta=self.beta,
                pi=self.pi,
                lambda_n=self.lambda_n,
                lambda_sft=self.lambda_sft,
                delta_decay=self.delta_decay,
                reward_norm=self.reward_norm,
            )
        except ValueError as exc:
            raise IdiolectError(str(exc)) from None

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def defaults() -> dict:
    """Every field's default (what the app's fields start at)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _flag_fields():
    return [f for f in fields(TrainConfig) if f.metadata.get("cli")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per training setting, its type, choices, default and help from :class:`TrainConfig`."""
    for f in _flag_fields():
        meta = f.metadata
        kind = meta["type"] or type(f.default)
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, default=f.default, choices=meta["choices"],
            help=meta["help"] + shown,
        )  # fmt: skip


def from_args(args: argparse.Namespace, model: str) -> TrainConfig:
    """The configuration the flags of :func:`add_arguments` describe."""
    return TrainConfig(model=model, **{f.name: getattr(args, f.name) for f in _flag_fields()})
