"""What is on this machine: the offline model, downloaded hub models, dequantized GGUF copies, and deleting them."""

from __future__ import annotations

from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.gguf.cache import gguf_source
from idiolect.core.models.registry import OFFLINE_MODELS, offline_installed, offline_model
from idiolect.core.models.resolve import hub_cache


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def models_on_disk() -> list[dict]:
    """Models this machine already has: Hugging Face repositories in the hub cache, GGUF files in the data
    folder (the offline model among them, assembled or not), and dequantized copies of GGUF files. Each as
    ``{"kind", "name", "path", "bytes"}`` (``path`` is what ``--model`` takes)."""
    from idiolect.core.base.paths import DEQUANTIZED, MODELS, data_subdir

    found: list[dict] = []
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir(hub_cache()).repos:
            if repo.repo_type == "model":
                found.append(
                    {"kind": "hub", "name": repo.repo_id, "path": repo.repo_id, "bytes": repo.size_on_disk,
                     "folder": str(repo.repo_path)}
                )  # fmt: skip
    except Exception:  # noqa: BLE001 - no cache yet, or one this version cannot read
        pass
    for gguf_file in sorted(data_subdir(MODELS).glob("*.gguf")):
        found.append(
            {"kind": "gguf", "name": gguf_file.name, "path": str(gguf_file), "bytes": _size(gguf_file)}
        )
    for model in OFFLINE_MODELS:  # installed, and not listed above as a file in the data folder
        if offline_installed(model.spec) and (
            model.file is not None or offline_model(assemble=False) is None
        ):
            found.append({"kind": "offline", "name": model.label, "path": model.spec, "bytes": 0})
    for folder in sorted(data_subdir(DEQUANTIZED).glob("*/")):
        source = gguf_source(folder)
        if source:
            found.append(
                {"kind": "dequantized", "name": Path(source["gguf"]).name, "path": source["gguf"],
                 "bytes": _size(folder), "folder": str(folder)}
            )  # fmt: skip
    return found


def delete_model(path: str, *, kind: str | None = None) -> int:
    """Delete one model of :func:`models_on_disk` (its ``path``; ``kind`` picks between a GGUF file and its
    dequantized copy, which share a path): a hub repository from the cache, a GGUF file from the data folder,
    or a dequantized copy (a cache: made again when needed). Returns the bytes freed. Only what
    ``models_on_disk`` lists can be deleted, never another path."""
    import shutil

    matches = [m for m in models_on_disk() if m["path"] == path and (kind is None or m["kind"] == kind)]
    if not matches:
        raise IdiolectError(f"{path!r} is not a model this app keeps on disk")
    m = matches[0]
    if m["kind"] == "offline":
        raise IdiolectError("the offline model is a Python package: remove it with pip uninstall")
    target = Path(m.get("folder") or m["path"])
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    return int(m["bytes"] or 0)
