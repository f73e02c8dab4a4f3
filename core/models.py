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

from core.errors import IdiolectError

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, file name)

HF_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    label: str
    params_b: float  # parameters, billions
    download_gb: float  # bf16 safetensors, approximate
    arch: str
    license: str
    gguf_repo: str | None = None  # a repository of ready GGUF quantizations, where one exists
    gated: bool = False
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


RECOMMENDED: tuple[ModelInfo, ...] = (
    ModelInfo(
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct", 0.49, 1.0, "qwen2", "Apache-2.0",
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF", notes="fastest; trains on a CPU or any GPU",
    ),
    ModelInfo(
        "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct", 1.54, 3.1, "qwen2", "Apache-2.0",
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF", notes="good default for a 6-8 GB GPU",
    ),
    ModelInfo(
        "Qwen/Qwen2.5-3B-Instruct", "Qwen2.5 3B Instruct", 3.09, 6.2, "qwen2", "Qwen Research",
        "Qwen/Qwen2.5-3B-Instruct-GGUF", notes="better writing; QLoRA fits in 8 GB",
    ),
    ModelInfo(
        "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M Instruct", 0.36, 0.7, "llama", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", notes="tiny; for trying the app out",
    ),
    ModelInfo(
        "HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2 1.7B Instruct", 1.71, 3.4, "llama", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF",
    ),
    ModelInfo(
        "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct", 1.24, 2.5, "llama",
        "Llama 3.2 Community", "bartowski/Llama-3.2-1B-Instruct-GGUF", gated=True,
        notes="gated: accept the licence on its Hugging Face page first",
    ),
    ModelInfo(
        "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct", 3.21, 6.4, "llama",
        "Llama 3.2 Community", "bartowski/Llama-3.2-3B-Instruct-GGUF", gated=True,
    ),
    ModelInfo(
        "mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3", 7.25, 14.5, "mistral", "Apache-2.0",
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF", notes="the C-BPO paper's base; QLoRA needs about 10 GB",
    ),
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
    """A local folder for an HF-format model: the folder itself, or the downloaded/cached snapshot."""
    source = resolve(spec)
    if source.kind == "gguf":
        raise IdiolectError(
            f"{spec} is a GGUF file: it runs with the llama.cpp backend (--backend llama) only"
        )
    if source.kind == "folder":
        return source.path
    return download(source.ref, progress=progress, **kwargs)


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


def load_hf_model(model_dir: str | Path, *, device: str = "auto", quantize: str = "auto"):
    """The base model for training or generation. ``quantize``: ``auto`` (4-bit on CUDA, none on CPU),
    ``4bit`` or ``none``. Returns (model, tokenizer, description dict)."""
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


def render_prompt(
    tokenizer_or_template, prompt: str, *, system: str | None = None, context: str | None = None
) -> str:
    """The text a model continues for ``prompt``: its chat template where it has one (with the generation
    prompt), else a plain format (system, context and prompt as paragraphs, ending in a blank line).

    Takes a tokenizer, or a chat template string (from a GGUF file's metadata) or None."""
    user = f"{context.strip()}\n\n{prompt.strip()}" if context and context.strip() else prompt.strip()
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
