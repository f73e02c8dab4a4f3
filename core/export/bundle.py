"""Exporting a profile's adapter and preference summary to a folder the user picks.

Formats:
- ``peft``: the PEFT adapter folder (``PeftModel.from_pretrained``);
- ``gguf``: the GGUF LoRA for llama.cpp, and the base model as GGUF (f16) to load it onto -- when the run trained
  on a GGUF file, the LoRA targets that very file (named by its path in the Modelfile and commands; no base is
  written);
- ``merged``: base + adapter merged into one Hugging Face model (safetensors; from a GGUF base, its dequantized
  weights);

A format the base model's architecture cannot take is refused (when asked for by name) or skipped with its
reason (by default) before any file is written.
- ``summary``: the preference summary as plain text, an OpenAI chat-completions JSON body with the summary as the
  system message, a Python snippet with the official ``openai`` client, an Ollama Modelfile (FROM / ADAPTER /
  SYSTEM) and llama.cpp command lines;
- ``kto-jsonl``, ``dpo-jsonl``, ``llamafactory``: the profile's own texts, ratings and edits as datasets other
  trainers load unchanged (:mod:`idiolect.core.export.datasets`), with the peer pool as an unlabeled file beside them;
and always ``manifest.json``: base model, training run and its metrics, summary version and score, SHA-256 of
every file written, date.

File names come from the profile name through :func:`idiolect.core.export.formats.safe_name`, so no name can leave the chosen folder.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import sha256_file
from idiolect.core.export.datasets import DATASET_FORMATS, dataset_files
from idiolect.core.export.formats import run_commands, safe_name, summary_files
from idiolect.core.export.tryout import merge_adapter
from idiolect.core.models.gguf.cache import gguf_source
from idiolect.core.models.gguf.writer import convert_hf_to_gguf, convert_lora_to_gguf, export_problem
from idiolect.core.models.resolve import local_model_dir, resolve
from idiolect.core.store import Store
from idiolect.core.training.labels import preference_data
from idiolect.core.training.runs import (
    adapter_dir,
    latest_completed_run,
    read_data_record,
    record_summary,
    run_dir,
)

MODEL_FORMATS = ("peft", "gguf", "merged")
FORMATS = (*MODEL_FORMATS, "summary", *DATASET_FORMATS)
DEFAULT_FORMATS = ("peft", "gguf", "summary")


@dataclass
class ExportResult:
    folder: Path
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    export_id: int | None = None
    commands: dict[str, str] = field(default_factory=dict)  # what to type to run this export, per runner


def _move_into(work: Path, final: Path) -> None:
    """Move each entry of ``work`` into ``final``, replacing what is there under that name: a file or a link is
    unlinked (a link is never followed), a folder removed; then ``work`` itself goes."""
    for entry in sorted(work.iterdir()):
        dest = final / entry.name
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    work.rmdir()


def _chosen_run(store: Store, profile_id: int, run_id: int | None) -> dict | None:
    """The run to export: ``run_id`` when given (it must be the profile's, with its adapter on disk), else the
    profile's latest adapter (:func:`latest_completed_run`)."""
    if run_id is None:
        return latest_completed_run(store, profile_id)
    run = store.get_run(run_id)
    if run["profile_id"] != profile_id:
        raise IdiolectError(f"run {run_id} belongs to another profile")
    adapter = adapter_dir(store, run)
    if adapter is None or not adapter.exists():
        raise IdiolectError(f"run {run_id} has no finished adapter (status: {run['status']})")
    return run


def _training_data(store: Store, run: dict) -> dict | None:
    """The rows a run trained and was evaluated on (source id and content hash of each), from its record."""
    try:
        record = read_data_record(run_dir(store, run["id"]))
    except IdiolectError:
        record = None
    if record is None:
        return None
    return {"sha256": run["result"]["data"].get("sha256"), "rows": record_summary(record)}


@dataclass
class _Plan:
    """What an export will write, decided (and refused) before the first file is written."""

    profile: dict
    wanted: tuple[str, ...]
    run: dict | None
    summary: dict | None
    adapter: Path | None = None
    base_spec: str | None = None
    base_dir: Path | None = None
    base_gguf_file: Path | None = None  # the user's own GGUF base, when the run trained on one
    skipped: dict[str, str] = field(default_factory=dict)


def _plan(store: Store, profile: str, formats, run_id: int | None) -> _Plan:
    prof = store.get_profile(profile)
    asked = tuple(formats) if formats else None
    wanted = asked or DEFAULT_FORMATS
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise IdiolectError(f"unknown export format {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    run = _chosen_run(store, prof["id"], run_id)
    summaries = store.list_summaries(prof["id"])
    plan = _Plan(prof, wanted, run, summaries[0] if summaries else None)
    if any(f in MODEL_FORMATS for f in wanted) and run is None and (asked or not plan.summary):
        raise IdiolectError(
            f"profile {profile!r} has no trained adapter yet: train one first (tab Train, or launch.py train)"
        )
    if "summary" in wanted and plan.summary is None and asked and "summary" in asked:
        raise IdiolectError(
            f"profile {profile!r} has no preference summary yet: make one first (tab You vs. peers, or launch.py "
            "summary), or untick the summary format"
        )
    for fmt in MODEL_FORMATS:
        if fmt in wanted and run is None:
            plan.skipped[fmt] = "no trained adapter"
    if run is None:
        return plan
    plan.adapter, plan.base_spec = adapter_dir(store, run), run["config"].get("model")
    if "gguf" in wanted or "merged" in wanted:
        plan.base_dir = local_model_dir(plan.base_spec)
        source = resolve(plan.base_spec)
        if source.kind == "gguf":  # the LoRA targets the user's own GGUF: the weights it was trained against
            plan.base_gguf_file = source.path
        problem = export_problem(plan.base_dir, "lora") or (
            None if plan.base_gguf_file else export_problem(plan.base_dir, "base")
        )
        if "gguf" in wanted and problem:
            if asked and "gguf" in asked:
                raise IdiolectError(f"cannot export gguf: {problem}")
            plan.skipped["gguf"] = problem
    return plan


def _work_folder(out_dir: str | Path) -> tuple[Path, Path]:
    """The chosen folder (created) and a fresh folder inside it that the export is written into, then moved
    into place entry by entry: a failure (a full disk) leaves nothing half-written, and a link planted in the
    folder is replaced, never written through."""
    final = Path(out_dir).expanduser().resolve()  # a relative folder is the working folder's, said in full
    try:
        final.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IdiolectError(f"cannot create the export folder {final}: {exc.strerror or exc}") from exc
    try:
        return final, Path(tempfile.mkdtemp(prefix=".idiolect-export-", dir=final))
    except OSError as exc:
        raise IdiolectError(f"cannot write into the export folder {final}: {exc.strerror or exc}") from None


def _model_files(plan: _Plan, folder: Path, slug: str, result: ExportResult, gguf_dtype: str):
    """The adapter as PEFT, GGUF LoRA (+ GGUF base unless the run trained on the user's own GGUF) and merged;
    returns the llama.cpp (base, lora) file names."""
    base_gguf_name = lora_gguf_name = None
    if plan.run and "peft" in plan.wanted:
        dest = folder / f"{slug}-peft"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(plan.adapter, dest)
        result.files += sorted(p for p in dest.rglob("*") if p.is_file())
    if plan.base_dir is not None and "gguf" in plan.wanted and "gguf" not in result.skipped:
        lora_gguf = folder / f"{slug}-lora.gguf"
        convert_lora_to_gguf(
            plan.adapter, plan.base_dir, lora_gguf, dtype="f32" if gguf_dtype == "f32" else "f16"
        )
        lora_gguf_name = lora_gguf.name
        result.files.append(lora_gguf)
        if plan.base_gguf_file is not None:
            base_gguf_name = str(plan.base_gguf_file)  # referred to where it is, not copied
        else:
            base_gguf = folder / f"{safe_name(plan.base_dir.name, 'base')}-{gguf_dtype}.gguf"
            convert_hf_to_gguf(plan.base_dir, base_gguf, dtype=gguf_dtype)
            base_gguf_name = base_gguf.name
            result.files.append(base_gguf)
    if plan.base_dir is not None and "merged" in plan.wanted and "merged" not in result.skipped:
        result.files += merge_adapter(plan.base_dir, plan.adapter, folder / f"{slug}-merged")
    return base_gguf_name, lora_gguf_name


def _manifest(store: Store, plan: _Plan, folder: Path, result: ExportResult) -> dict:
    run, summary = plan.run, plan.summary
    return {
        "idiolect_export": 1,
        "profile": plan.profile["name"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "formats": [f for f in plan.wanted if f not in result.skipped],
        "skipped": result.skipped,
        "base_model": plan.base_spec,
        "base_model_dir": str(plan.base_dir) if plan.base_dir else None,
        "base_gguf": None
        if plan.base_gguf_file is None
        else {"path": str(plan.base_gguf_file), "sha256": (gguf_source(plan.base_dir) or {}).get("sha256")},
        "training_run": None
        if run is None
        else {
            "id": run["id"],
            "objective": run["objective"],
            "config": run["config"],
            "result": run["result"],
            "finished_at": run["finished_at"],
            "training_data": _training_data(store, run),
        },
        "summary": None
        if summary is None
        else {"version": summary["version"], "source": summary["source"], "score": summary["score"]},
        "files": {str(p.relative_to(folder)): sha256_file(p) for p in result.files},
    }


def _write(store: Store, plan: _Plan, final: Path, folder: Path, gguf_dtype: str) -> ExportResult:
    """Every file of the export into ``folder`` (the work folder inside ``final``), the manifest last."""
    slug = safe_name(plan.profile["name"])
    result = ExportResult(folder=final.resolve(), skipped=plan.skipped)
    base_gguf_name, lora_gguf_name = _model_files(plan, folder, slug, result, gguf_dtype)
    if "summary" in plan.wanted:
        if plan.summary:
            result.files += summary_files(folder, slug, plan.summary["text"], base_gguf=base_gguf_name,
                                          lora_gguf=lora_gguf_name)  # fmt: skip
        else:
            result.skipped["summary"] = "no preference summary yet"
    datasets = [f for f in plan.wanted if f in DATASET_FORMATS]
    if datasets:
        pool = plan.run["config"].get("pool", "default") if plan.run else "default"
        written, why = dataset_files(
            folder, slug, preference_data(store, plan.profile["name"], pool=pool), datasets
        )
        result.files += written
        result.skipped.update(why)
    manifest = _manifest(store, plan, folder, result)
    result.commands = run_commands(final, slug, base_gguf_name, lora_gguf_name,
                                   modelfile=(folder / "Modelfile").exists())  # fmt: skip
    manifest["commands"] = result.commands
    manifest["llama_cpp"] = {"base": base_gguf_name, "lora": lora_gguf_name}
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result.files.append(manifest_path)
    result.manifest = manifest
    return result


def export(
    store: Store,
    profile: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] | list[str] | None = None,
    run_id: int | None = None,
    gguf_dtype: str = "f16",
) -> ExportResult:
    """Write the profile's adapter, summary and datasets in ``formats`` (default :data:`DEFAULT_FORMATS`) into
    ``out_dir``, with a manifest; all or nothing (see :func:`_work_folder`)."""
    plan = _plan(store, profile, formats, run_id)
    final, work = _work_folder(out_dir)
    try:
        result = _write(store, plan, final, work, gguf_dtype)
        _move_into(work, final)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise IdiolectError(f"export to {final} failed ({why}); nothing was written") from None
        raise
    result.files = [final / p.relative_to(work) for p in result.files]
    result.export_id = store.add_export(plan.profile["id"], str(result.folder), result.manifest["formats"],
                                        result.manifest, run_id=plan.run["id"] if plan.run else None,
                                        summary_id=plan.summary["id"] if plan.summary else None)  # fmt: skip
    return result
