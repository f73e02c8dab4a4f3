"""The dequantized copy of a GGUF file that transformers trains on: one folder per file content (its SHA-256), with a record of where it came from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from idiolect.core.base import limits
from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import file_sha256
from idiolect.core.base.progress import Counted

SOURCE_RECORD = "idiolect-source.json"  # in a dequantized folder: which GGUF file (and hash) it came from


def gguf_architecture(path: str | os.PathLike) -> tuple[str, int]:
    """(architecture, number of weights) of a GGUF file, from its header (no weights read)."""
    import gguf

    from idiolect.core.models.gguf.file import open_gguf

    reader = open_gguf(path)
    try:
        arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
        n_weights = sum(int(t.n_elements) for t in reader.tensors)
    except (KeyError, ValueError, OSError) as exc:
        raise IdiolectError(f"{path}: not a readable GGUF file ({exc})") from exc
    return arch, n_weights



def _write_weights(gguf_path: Path, tmp: Path, fp32: bool, needed: int, progress: Counted | None) -> None:
    """The config and weights of a GGUF model as a transformers folder ``tmp``: one tensor at a time for the
    architectures Idiolect writes, through transformers (the whole model) for the others."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from idiolect.core.models.gguf.reader import dequantize_gguf
    from idiolect.core.models.gguf.writer import SUPPORT

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
                progress(int(needed * i / n), needed, f"dequantizing {gguf_path.name} (once): tensor {i}/{n}")

        dequantize_gguf(gguf_path, config, tmp / "model.safetensors", bf16=not fp32, progress=tensors_done)
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


def dequantized_dir(gguf_path: str | os.PathLike, *, progress: Counted | None = None) -> Path:
    """A Hugging Face folder with the GGUF file's weights dequantized (what LoRA trains on), made once and
    cached under the data folder by the file's SHA-256; the cache is reused whatever the file is called.

    Weights are written in fp32 for models under 2B parameters (exactly the dequantized values) and in bf16
    above (half the disk and RAM; a CUDA run quantizes them to NF4 anyway). transformers reads the config and the
    tokenizer from the file's metadata, so the architectures are the ones it reads from GGUF (another one is
    refused in one line); the weights of the architectures Idiolect writes (idiolect.core.models.gguf.writer.SUPPORT) are
    dequantized one tensor at a time (peak: the largest tensor), the others by transformers (the whole model)."""
    import shutil as _shutil

    from idiolect.core.base.paths import DEQUANTIZED, data_subdir

    gguf_path = Path(gguf_path).resolve()
    digest = file_sha256(gguf_path, progress=progress)
    cache = data_subdir(DEQUANTIZED)
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
    limits.check_free_space(cache, needed, f"dequantizing {gguf_path.name}")
    from transformers import AutoTokenizer

    if progress:
        progress(0, needed, f"dequantizing {gguf_path.name} (once)")
    tmp = cache / f".partial-{out.name}-{os.getpid()}"
    _shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_weights(gguf_path, tmp, fp32, needed, progress)
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


def gguf_source(model_dir: str | os.PathLike) -> dict | None:
    """For a dequantized folder: the GGUF file it came from (``{"gguf", "sha256", "architecture"}``)."""
    try:
        return json.loads((Path(model_dir) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None
