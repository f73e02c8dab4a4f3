"""Base models: the recommended list, resolving what the user named (a Hugging Face id, a local folder, a
GGUF file), downloading with progress, loading for training/generation, and the prompt format.

Loading policy: on CUDA, 4-bit NF4 (bitsandbytes) with bf16 compute and double quantization (QLoRA); on the
CPU, fp32 (4-bit also works there with bitsandbytes >= 0.45, when asked for).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from idiolect.core.base.errors import IdiolectError

# --------------------------------------------------------------------------------------------------------
# Downloads


# --------------------------------------------------------------------------------------------------------
# GGUF files as training bases


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


def pad_id(tokenizer) -> int:
    """The token id batches are padded with: the tokenizer's pad token, else its end-of-text token (padding is
    masked out, so any id works; this is the one choice)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


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
        with warnings.catch_warnings():  # torch's note on a pickle's protocol, before it refuses or loads it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused a pickle: no code in it ran
        raise IdiolectError(
            f"{model_dir}: its weights are a pickle that is not plain tensors, which Idiolect does not load "
            "(it could run code); use a model with .safetensors weights"
        ) from None
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
