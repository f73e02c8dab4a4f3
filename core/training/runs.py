"""The run catalogue: where a run's files live, the profile's latest adapter, the estimate before a run, the checks and row that start one, and the record of exactly what a run trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.adapters import same_model
from idiolect.core.store import SAMPLE_KEY, Store, row_key
from idiolect.core.training.config import TrainConfig
from idiolect.core.training.data import Example, TrainingSets, sets_for, total_steps
from idiolect.core.training.labels import TAR


def run_dir(store: Store, run_id: int) -> Path:
    """The folder of a run's files (adapter, checkpoints, data record, log): found from the database's folder,
    never from a path stored in it, so a data folder that moved still finds its runs."""
    return store.path.parent / "runs" / str(run_id)


def adapter_dir(store: Store, run: dict) -> Path | None:
    """The adapter folder of a completed run (None before it completed)."""
    return run_dir(store, run["id"]) / "adapter" if run["status"] == "completed" else None


def runs_with_adapter(
    store: Store, profile_id: int, *, model_dir: str | Path | None = None
) -> list[dict]:
    """The profile's runs that have an adapter to use, newest first: completed, with the adapter folder still on
    disk; with ``model_dir``, only runs trained on that base model (an adapter fits its own base only)."""
    found = []
    for run in store.list_runs(profile_id):
        adapter = adapter_dir(store, run)
        if adapter is None or not adapter.exists():
            continue
        if model_dir is not None and not (run["model"] and same_model(run["model"], model_dir)):
            continue
        found.append(run)
    return found


def latest_completed_run(
    store: Store, profile_id: int, *, model_dir: str | Path | None = None
) -> dict | None:
    """The one definition of "the profile's latest adapter": the newest of :func:`runs_with_adapter`."""
    return next(iter(runs_with_adapter(store, profile_id, model_dir=model_dir)), None)


def seconds_per_step(step_seconds) -> float | None:
    """The typical duration of a training step from measured ones: their median, the first (warm-up) left out
    when there are others. The one rule behind every "time remaining" (the CLI, the Train tab, the estimate)."""
    xs = [float(x) for x in step_seconds if x]
    xs = xs[1:] if len(xs) > 1 else xs
    return sorted(xs)[len(xs) // 2] if xs else None


def seconds_left(step_seconds, steps_left: int) -> float | None:
    per_step = seconds_per_step(step_seconds)
    return None if per_step is None else per_step * max(0, steps_left)


def estimate_run(store: Store, profile: str, cfg: TrainConfig) -> dict:
    """Before starting: how many steps the run will take on the profile's data now, and its time and peak memory
    as measured on this machine by the latest earlier run on the same base model (any profile), its seconds per
    step scaled by texts per step (batch x accumulation) x max length. ``seconds`` and ``peak_memory_mb`` are None when no run on this
    model has been measured here yet."""
    sets = sets_for(store, profile, cfg)
    n = len(sets.train[TAR])
    steps = total_steps(cfg, n)
    out = {"steps": steps, "target_texts": n, "validation_texts": len(sets.validation[TAR]), "seconds": None,
           "peak_memory_mb": None, "based_on_run": None}
    if not (cfg.model or "").strip():
        return out
    seen: dict[str, bool] = {}
    runs = [r for p in store.list_profiles() for r in store.list_runs(p["id"])]
    for run in sorted(runs, key=lambda r: -r["id"]):
        spec = run["config"].get("model") or run["model"]  # the spec as given; runs.model is the folder used
        if spec not in seen:
            seen[spec] = same_model(spec, cfg.model)
        if not seen[spec]:
            continue
        metrics = [m for m in store.run_metrics(run["id"]) if m.get("seconds")]
        if len(metrics) < 2:
            continue
        per_step = seconds_per_step(m["seconds"] for m in metrics)
        then = TrainConfig.from_dict({**run["config"], "model": run["model"]})
        scale = (cfg.batch_size * cfg.grad_accum * cfg.max_length) / (
            then.batch_size * then.grad_accum * then.max_length
        )
        out.update(
            seconds=steps * per_step * scale,
            peak_memory_mb=max(m.get("peak_memory_mb") or 0 for m in metrics) or None,
            based_on_run=run["id"],
        )
        break
    return out


def latest_checkpoint(directory: Path) -> Path | None:
    ckpts = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


DATA_RECORD = "data.json"


def _record_examples(examples: list[Example]) -> list[dict]:
    return [
        {
            "source": e.source,
            "hash": row_key({"prompt": e.prompt, "context": e.context, "text": e.text}, SAMPLE_KEY),
            "prompt": e.prompt,
            "context": e.context,
            "text": e.text,
        }
        for e in examples
    ]


def data_record(sets: TrainingSets, total_steps: int) -> dict:
    """Exactly what a run trains and evaluates on (each row's source id, content hash and text) and its step
    count: written when a run starts, used as-is when it resumes, named in the export manifest."""
    return {
        "version": 1,
        "total_steps": total_steps,
        "sets": {split: {k: _record_examples(v) for k, v in group.items()} for split, group in sets.splits()},
    }


def sets_from_record(record: dict) -> TrainingSets:
    def examples(kind, rows):
        return [Example(kind, r["prompt"], r["context"], r["text"], r["source"]) for r in rows]

    return TrainingSets(
        train={k: examples(k, v) for k, v in record["sets"]["train"].items()},
        heldout={k: examples(k, v) for k, v in record["sets"]["heldout"].items()},
        validation={k: examples(k, v) for k, v in record["sets"].get("validation", {TAR: []}).items()},
    )


def record_summary(record: dict) -> dict:
    """The record without the texts: row sources and content hashes per set (what a manifest names)."""
    return {
        split: {k: [f"{r['source']}#{r['hash']}" for r in rows] for k, rows in group.items()}
        for split, group in record["sets"].items()
    }


def read_data_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / DATA_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IdiolectError(
            f"the record of this run's training data ({directory / DATA_RECORD}) cannot be read ({exc}); "
            "start a new run"
        ) from exc


def check_trainable(store: Store, profile: str, cfg: TrainConfig) -> None:
    """Refuse, before a run is created, what would make it fail at once: an unknown profile, a model that is
    not there, too little writing, a missing or empty peer pool."""
    from idiolect.core.models.resolve import resolve

    resolve(cfg.model)
    sets_for(store, profile, cfg)


def create_run(store: Store, profile: str, cfg: TrainConfig) -> int:
    prof = store.get_profile(profile)
    return store.create_run(prof["id"], cfg.objective, cfg.model, cfg.to_dict())
