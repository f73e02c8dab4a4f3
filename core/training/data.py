"""The three training sets of a profile, assembled from the store, split, tokenized and batched.

- target: the user's own samples, thumbs-up generations, and edited generations (the edit is the positive);
- negatives: thumbs-down generations (with an edit and a thumbs-down, the generated text is the negative and the
  edit the positive); :func:`feedback_examples` is the one rule from a rating to training labels;
- auxiliary (unlabeled): texts of other writers from a peer pool, at most ``peer_cap``, chosen round-robin across
  writers (so many voices are present) with the texts that answer the user's own prompts first.

Held-out: a deterministic ~10% of the target texts (at least one once there are 5, none when the fraction is 0)
and of the peer texts, never trained on, for the likelihood metrics. Validation: a few more of the user's texts
(:func:`validation_count`), also never trained on, scored during the run to keep its best step (early stopping);
the held-out texts stay untouched by that choice, so the metrics reported on them are honest.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import text_digest, text_fraction
from idiolect.core.models.prompt import prompt_ids
from idiolect.core.store import Store
from idiolect.core.training.labels import AUX, NEG, TAR, feedback_examples, without_own_texts

MIN_TARGETS = 4


@dataclass
class Example:
    kind: str
    prompt: str | None
    context: str | None
    text: str
    source: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class TrainingSets:
    train: dict[str, list[Example]]
    heldout: dict[str, list[Example]]
    validation: dict[str, list[Example]] = field(default_factory=lambda: {TAR: []})

    def splits(self) -> tuple[tuple[str, dict[str, list[Example]]], ...]:
        return (("train", self.train), ("heldout", self.heldout), ("validation", self.validation))

    def counts(self) -> dict:
        return {f"{split}_{k}": len(v) for split, sets in self.splits() for k, v in sets.items()}


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a text is in the held-out share ``fraction`` (stable: decided by the text alone)."""
    return text_fraction(text) < fraction


MIN_VALIDATION_TRAIN = 8  # fewer training texts than this: no validation slice (each text is needed to train)
MAX_VALIDATION = 16


def validation_count(n_train: int, fraction: float) -> int:
    """How many of ``n_train`` training texts become the validation slice: ``fraction`` of them, at least 2 and
    at most :data:`MAX_VALIDATION`; none below :data:`MIN_VALIDATION_TRAIN` texts or with a fraction of 0."""
    if fraction <= 0 or n_train < MIN_VALIDATION_TRAIN:
        return 0
    return min(MAX_VALIDATION, max(2, round(fraction * n_train)))


def split_validation(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, validation): the validation texts chosen by the texts themselves (stable across runs), with
    another salt than the held-out split."""
    n = validation_count(len(examples), fraction)
    chosen = {id(e) for e in sorted(examples, key=lambda e: text_fraction("validation\0" + e.text))[:n]}
    return [e for e in examples if id(e) not in chosen], [e for e in examples if id(e) in chosen]


def _split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    if fraction <= 0:
        return list(examples), []
    held = [e for e in examples if is_heldout(e.text, fraction)]
    if not held and len(examples) >= 5:
        held = [min(examples, key=lambda e: text_digest(e.text))]
    if len(held) >= len(examples):
        held = held[: len(examples) // 2]
    ids = {id(e) for e in held}
    return [e for e in examples if id(e) not in ids], held


def load_sets(
    store: Store,
    profile: str,
    *,
    pool: str = "default",
    peer_cap: int | None = None,
    heldout_fraction: float = 0.1,
    validation_fraction: float = 0.0,
    seed: int = 0,
) -> TrainingSets:
    prof = store.get_profile(profile)
    targets = [
        Example(TAR, s["prompt"], s["context"], s["text"], f"sample:{s['id']}")
        for s in store.list_samples(prof["id"])
    ]
    negatives = []
    for f in store.list_feedback(prof["id"]):
        for kind, text in feedback_examples(f["rating"], f["text"], f["edited_text"]):
            (targets if kind == TAR else negatives).append(
                Example(kind, f["prompt"], None, text, f"feedback:{f['id']}:{kind}")
            )
    if len(targets) < MIN_TARGETS:
        raise IdiolectError(
            f"profile {profile!r} has {len(targets)} texts to learn from; add at least {MIN_TARGETS} samples of your "
            "writing (20 or more work better)"
        )
    pool_row = store.get_pool(pool)
    peers = store.peer_texts(pool_row["id"])
    if not peers:
        raise IdiolectError(f"peer pool {pool!r} is empty")
    tar_train, tar_held = _split(targets, heldout_fraction)
    tar_train, tar_val = split_validation(tar_train, validation_fraction)
    neg_train, neg_held = _split(negatives, heldout_fraction) if len(negatives) >= 5 else (negatives, [])
    cap = peer_cap or max(64, 4 * len(tar_train))
    peers = without_own_texts(peers, [e.text for e in targets])
    # The questions the user's texts answer (a prompt, or a context such as a Stack Exchange question): peers'
    # answers to the same ones come first.
    asked = {(e.prompt or e.context or "").strip() for e in targets} - {""}
    chosen = select_peers(peers, asked, cap + max(8, cap // 10), seed)
    aux = [Example(AUX, None, p["context"], p["text"], f"peer:{p['id']}") for p in chosen]
    aux_train, aux_held = _split(aux, heldout_fraction)
    return TrainingSets(
        train={TAR: tar_train, AUX: aux_train[:cap], NEG: neg_train},
        heldout={TAR: tar_held, AUX: aux_held, NEG: neg_held},
        validation={TAR: tar_val},
    )


def sets_for(store: Store, profile: str, cfg) -> TrainingSets:
    """The sets a run with config ``cfg`` (a TrainConfig) trains on: the one call behind the run, its estimate and
    its checks, so all three count the same texts."""
    return load_sets(store, profile, pool=cfg.pool, peer_cap=cfg.peer_cap, heldout_fraction=cfg.heldout_fraction,
                     validation_fraction=cfg.validation_fraction, seed=cfg.seed)  # fmt: skip


def select_peers(peers: list[dict], user_prompts: set[str], cap: int, seed: int) -> list[dict]:
    """Round-robin across writers; within a writer, texts that answer one of the user's prompts first."""
    rng = random.Random(seed)
    by_writer: dict[str, list[dict]] = defaultdict(list)
    for p in peers:
        by_writer[p["writer"]].append(p)
    for texts in by_writer.values():
        rng.shuffle(texts)
        texts.sort(key=lambda p: (p["context"] or "").strip() not in user_prompts)
    writers = sorted(by_writer)
    rng.shuffle(writers)
    out: list[dict] = []
    depth = 0
    while len(out) < cap and any(len(by_writer[w]) > depth for w in writers):
        for w in writers:
            if depth < len(by_writer[w]) and len(out) < cap:
                out.append(by_writer[w][depth])
        depth += 1
    return out


def tokenize(examples: list[Example], tokenizer, max_length: int, *, system: str | None = None) -> None:
    """Fill prompt_ids / response_ids (response ends with EOS). A long prompt is fitted into half of
    ``max_length`` by :func:`prompt_ids` (its text is cut, never BOS or the template's turn tokens); a long
    response is cut at the end. ``system``: a system message (a summary)."""
    eos = tokenizer.eos_token_id
    for e in examples:
        p_ids = prompt_ids(tokenizer, e.prompt, context=e.context, system=system, budget=max_length // 2)
        r_ids = tokenizer(e.text, add_special_tokens=False)["input_ids"] + [eos]
        r_ids = r_ids[: max_length - len(p_ids)]
        e.prompt_ids, e.response_ids = p_ids, r_ids


def length_grouped_batches(
    examples: list[Example], batch_size: int, rng: random.Random, group: int = 8
) -> list[list[int]]:
    """Indices in batches of similar length (less padding): shuffle, cut into groups of ``group`` batches,
    sort each group by length, cut into batches, shuffle the batch order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: examples[i].length)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(n_targets: int, batch_size: int) -> int:
    return max(1, math.ceil(n_targets / batch_size))


def total_steps(cfg, n_targets: int) -> int:
    """The optimizer steps of a run: ``cfg.steps``, else ``cfg.epochs`` passes over the training targets with
    ``batch_size x grad_accum`` targets per step. The one rule for the run itself and its estimate."""
    return cfg.steps or cfg.epochs * steps_per_epoch(n_targets, cfg.batch_size * cfg.grad_accum)


def plan_batches(
    sets: TrainingSets,
    batch_size: int,
    aux_per_batch: int,
    neg_per_batch: int,
    total_steps: int,
    seed: int,
):
    """The whole run's batches, deterministic from the seed: ``[(tar idx, aux idx, neg idx)] * total_steps``.
    Every batch holds target and peer samples; the peers cycle through their own length-grouped order."""
    rng = random.Random(seed)
    tar, aux, neg = sets.train[TAR], sets.train[AUX], sets.train[NEG]
    plan = []
    aux_stream: list[int] = []
    neg_stream: list[int] = []
    while len(plan) < total_steps:
        for t_batch in length_grouped_batches(tar, batch_size, rng):
            while len(aux_stream) < aux_per_batch:
                aux_stream += [i for b in length_grouped_batches(aux, aux_per_batch, rng) for i in b]
            a_batch, aux_stream = aux_stream[:aux_per_batch], aux_stream[aux_per_batch:]
            n_batch: list[int] = []
            if neg and neg_per_batch:
                while len(neg_stream) < neg_per_batch:
                    order = list(range(len(neg)))
                    rng.shuffle(order)
                    neg_stream += order
                n_batch, neg_stream = neg_stream[:neg_per_batch], neg_stream[neg_per_batch:]
            plan.append((t_batch, a_batch, n_batch))
            if len(plan) == total_steps:
                break
    return plan


# ---------------------------------------------------------------------------------------------------------
# The profile's data as preference datasets for other trainers (TRL, LLaMA-Factory).
