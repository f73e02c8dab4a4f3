"""Reading GGUF files: their context length, and a GGUF model dequantized into a transformers folder (config, tokenizer, weights)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.gguf.file import open_gguf
from idiolect.core.models.gguf.writer import SUPPORT, ArchSupport, unpermute_qk


def gguf_context_length(path: str | Path) -> int | None:
    """The context length a GGUF model was trained with, read from its metadata (None if unreadable)."""
    try:
        reader = open_gguf(path)
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.context_length"].contents())
    except (KeyError, ValueError, OSError, IdiolectError):
        return None


def complete_config(reader: gguf.GGUFReader, config, support: ArchSupport) -> None:
    """Fill in what transformers' GGUF config reader leaves at the class defaults, from the file's metadata
    (in place): head_dim (Qwen3's default is 128 whatever the file says) and, for Gemma 3, the sliding-window
    layers, the RoPE bases and linear scaling, the final logit softcap and the query scale llama.cpp uses. With
    the defaults a Gemma 3 file other than the 270M/1B layout would load into a model that computes otherwise."""

    def field(key: str):
        f = reader.fields.get(key.format(arch=support.name))
        return None if f is None else f.contents()

    key_length = field(gguf.Keys.Attention.KEY_LENGTH)
    if key_length is not None and hasattr(config, "head_dim"):
        config.head_dim = int(key_length)
    if support.arch != gguf.MODEL_ARCH.GEMMA3:
        return
    n_layers = config.num_hidden_layers
    head_dim = int(key_length or config.hidden_size // config.num_attention_heads)
    config.query_pre_attn_scalar = (  # llama.cpp's gemma3 graph: head_dim, but hidden / heads for the 27B
        config.hidden_size // config.num_attention_heads if n_layers == 62 else head_dim
    )
    config.final_logit_softcapping = field(gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING)
    window = field(gguf.Keys.Attention.SLIDING_WINDOW)
    pattern = field(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN)
    if not window:
        swa = [False] * n_layers
    elif isinstance(pattern, list):
        swa = [bool(b) for b in pattern]
    else:  # llama.cpp's set_swa_pattern(n): every n-th layer is global (n = 6 when the file does not say)
        n = int(pattern or 6)
        swa = [n == 0 or i % n < n - 1 for i in range(n_layers)]
    config.sliding_window = int(window) if window else None
    config.layer_types = ["sliding_attention" if s else "full_attention" for s in swa]
    full = {"rope_type": "default", "rope_theta": float(field(gguf.Keys.Rope.FREQ_BASE) or 1_000_000.0)}
    if field(gguf.Keys.Rope.SCALING_TYPE) == "linear":
        full.update(rope_type="linear", factor=float(field(gguf.Keys.Rope.SCALING_FACTOR)))
    local = {"rope_type": "default", "rope_theta": float(field(gguf.Keys.Rope.FREQ_BASE_SWA) or 10_000.0)}
    config.rope_parameters = {"full_attention": full, "sliding_attention": local}


def dequantize_gguf(
    gguf_path: str | Path,
    config,
    out_file: str | Path,
    *,
    bf16: bool = False,
    progress: Callable[[int, int], None] | None = None,
    rows_per_chunk: int = 8192,
) -> None:
    """Write a GGUF model's weights, dequantized, as ``out_file`` (safetensors with transformers' names) for an
    architecture in :data:`SUPPORT`, a block of rows at a time: the peak is one block, not the model (which
    ``from_pretrained(gguf_file=...)`` holds). The inverse of :func:`convert_hf_to_gguf`: llama q/k rows back to
    transformers' rotary halves, Gemma's norms back to ``w`` from ``1 + w``. ``config``: the transformers config
    read from the file's metadata, corrected in place where that reader misses a key (head_dim); an lm_head the
    file does not carry is tied to the embedding."""
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    support = next((SUPPORT[a] for a in config.architectures or [] if a in SUPPORT), None)
    if support is None:
        raise IdiolectError(f"{Path(gguf_path).name}: no streaming dequantizer for {config.architectures}")
    reader = open_gguf(gguf_path)
    by_name = {t.name: t for t in reader.tensors}
    complete_config(reader, config, support)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    name_map = gguf.get_tensor_name_map(support.arch, config.num_hidden_layers)
    plan = []
    for hf_name, param in meta.state_dict().items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name not in by_name:
            if hf_name == "lm_head.weight":
                config.tie_word_embeddings = True  # llama.cpp reads the head from the embedding
                continue
            raise IdiolectError(f"{Path(gguf_path).name}: no tensor {gguf_name} for {hf_name}")
        plan.append((hf_name, gguf_name, tuple(param.shape)))

    def chunks(hf_name: str, gguf_name: str, shape: tuple[int, ...]):
        t = by_name[gguf_name]
        whole = len(shape) == 1 or (
            support.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight"))
        )
        step = shape[0] if whole else rows_per_chunk
        for start in range(0, shape[0], step):
            rows = t.data[
                start : start + step
            ]  # quantized data is (rows, bytes per row): no block spans rows
            data = dequantize(rows, t.tensor_type).astype(np.float32, copy=False).reshape(-1, *shape[1:])
            if whole and len(shape) > 1:  # llama q/k: rows back from llama.cpp's interleaved pairs
                data = unpermute_qk(data, n_head if "q_proj" in hf_name else n_kv)
            if support.arch == gguf.MODEL_ARCH.GEMMA3 and hf_name.endswith("norm.weight"):
                data = data - 1.0
            yield data.reshape(-1, *shape[1:]) if len(shape) > 1 else data.reshape(shape)

    def tensors():
        for i, (hf_name, gguf_name, shape) in enumerate(plan):
            yield chunks(hf_name, gguf_name, shape)
            if progress:
                progress(i + 1, len(plan))

    dtype = "BF16" if bf16 else "F32"
    _write_safetensors_streamed(Path(out_file), [(h, s, dtype) for h, _, s in plan], tensors())


def _write_safetensors_streamed(
    out_file: Path, entries: list[tuple[str, tuple[int, ...], str]], tensors
) -> None:
    """A safetensors file written piece by piece: the header (names, dtypes, shapes, offsets) first, then each
    tensor's bytes from the chunks ``tensors`` yields for it (float32 arrays of whole rows, in order), so no
    more than one chunk is ever in memory."""
    sizes = {"F32": 4, "BF16": 2}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(out_file, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for (name, shape, dtype), chunks in zip(entries, tensors, strict=True):
            written = 0
            for chunk in chunks:
                if dtype == "BF16":
                    chunk = torch.from_numpy(chunk).to(torch.bfloat16).view(torch.int16).numpy()
                fh.write(memoryview(np.ascontiguousarray(chunk)))
                written += chunk.size
            if written != int(np.prod(shape)):
                raise IdiolectError(f"{name}: {written} values written where {tuple(shape)} was expected")
