"""Reference log-probabilities: every training sample's summed response log-prob under the frozen base, computed
once and cached.

The cache is keyed by what it holds: one file per base model and compute precision, mapping each sample's exact
token ids (prompt and response, so the tokenizer and the max length are in the key) to its log-prob. A second run
of the profile, another objective or another seed on the same texts, or a benchmark's next cell, computes only
the samples it has not seen; a file that cannot be read (a kill while it was written) is computed again."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import torch

from idiolect.core.base.process import release_freed_memory
from idiolect.core.training.labels import AUX, NEG, TAR
from idiolect.core.training.logprobs import batched, logps_of
from idiolect.core.training.runs import atomic_write_bytes

KINDS = (TAR, AUX, NEG)


def example_key(example) -> str:
    ids = ",".join(map(str, example.prompt_ids)) + "|" + ",".join(map(str, example.response_ids))
    return hashlib.sha256(ids.encode()).hexdigest()[:32]


def cache_file(folder: Path, model_dir: str, autocast) -> Path:
    return folder / (hashlib.sha256(f"{model_dir}\0{autocast}".encode()).hexdigest()[:24] + ".pt")


def _read(path: Path) -> dict[str, float]:
    try:
        cached = torch.load(path, weights_only=True)
        return dict(cached["logps"]) if isinstance(cached, dict) and "logps" in cached else {}
    except Exception:  # noqa: BLE001 - none yet, or unreadable (truncated, corrupt, old format): recompute
        return {}


def reference_logps(
    model, train: dict, device, pad_id: int, *, path: Path, budget: int, autocast,
    before_batch: Callable[[int, int], None] = lambda done, n: None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{kind: tensor of log-probs}`` for the training sets ``train`` ({TAR, AUX, NEG: examples}), from the cache
    at ``path`` where it has them; the rest computed with the adapter off in no-grad batches of at most
    ``budget`` tokens (no bigger than a training batch, so this pass never sets the memory peak).
    ``before_batch(done, n)`` is called before each batch (progress; it may raise to stop)."""
    known = _read(path)
    keys = {k: [example_key(e) for e in train[k]] for k in KINDS}
    todo = {k: [i for i, key in enumerate(keys[k]) if key not in known] for k in KINDS}
    n, done = sum(map(len, todo.values())), 0
    for k in KINDS:
        for idx in batched([train[k][i] for i in todo[k]], budget):
            before_batch(done, n)
            chunk = [train[k][todo[k][i]] for i in idx]
            sums = logps_of(
                model, chunk, device, pad_id, adapter=False, max_tokens=budget, autocast=autocast
            )[0]
            for e, value in zip(chunk, sums.tolist(), strict=True):
                known[example_key(e)] = value
            done += len(idx)
    if n:
        latest = _read(path)  # another run may have added samples meanwhile: keep theirs too
        latest.update(known)
        buffer = io.BytesIO()
        torch.save({"logps": latest}, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        release_freed_memory()
    return {k: torch.tensor([known[key] for key in keys[k]], dtype=torch.float32) for k in KINDS}
