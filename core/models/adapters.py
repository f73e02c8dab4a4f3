"""What an adapter folder is: its identity (folder plus content hash, for caches) and the base model it was trained on."""

from __future__ import annotations

from pathlib import Path


def adapter_identity(path: str | Path) -> str:
    """What an adapter folder holds: its resolved path plus a hash of its config and weights files. Two runs
    that save to folders of the same name, or one folder rewritten, give different identities."""
    import hashlib

    path = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.name == "adapter_config.json" or f.name.startswith("adapter_model")):
            h.update(f.name.encode() + b"\x00")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                    h.update(block)
    return f"{path}:{h.hexdigest()}"


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter was trained on: Idiolect's own record (idiolect.json) first, else PEFT's
    ``base_model_name_or_path``."""
    import json

    path = Path(path)
    for name, key in (("idiolect.json", "base"), ("adapter_config.json", "base_model_name_or_path")):
        try:
            value = json.loads((path / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None


def same_model(a: str | Path, b: str | Path) -> bool:
    """Whether two model references (folders, .gguf files, hub ids, ``offline``) name the same model: the one
    comparison, by :func:`idiolect.core.models.resolve.model_identity` (or the same resolved path)."""
    from idiolect.core.models.resolve import model_identity

    a, b = str(a), str(b)
    if a == b or model_identity(a) == model_identity(b):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
