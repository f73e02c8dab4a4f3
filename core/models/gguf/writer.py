"""Writing GGUF files with the ``gguf`` package: a Hugging Face base model (weights, hyperparameters and the
byte-level BPE tokenizer), so a user holding only HF weights can run llama.cpp / llama-cpp-python, and a PEFT
LoRA adapter as a GGUF LoRA. (The llama.cpp convert scripts are not installed by pip.) What each architecture
supports is in :data:`SUPPORT`; a format an architecture cannot take is refused before any file is written
(:func:`export_problem`).

Facts this relies on (checked by tests/test_gguf.py against llama-cpp-python):
- llama.cpp applies rotary embeddings to interleaved pairs, transformers' llama to two halves, so the rows of
  ``q_proj`` and ``k_proj`` are permuted for the llama arch (the same permutation as llama.cpp's converter);
  qwen2/qwen3/gemma3 take them as they are.
- Gemma's RMSNorm multiplies by ``1 + w`` where llama.cpp multiplies by ``w``: its norm weights are written + 1.
- tokenizers: byte-level BPE is ``tokenizer.ggml.model = "gpt2"`` with a pre-tokenizer name llama.cpp knows,
  chosen here from the regex in tokenizer.json (``gpt-2`` for plain byte-level BPE; llama.cpp rejects ``"gpt2"``
  there); SentencePiece-style BPE with byte fallback (Gemma, Llama 2, Mistral) is ``"llama"`` with scores that
  make llama.cpp merge in transformers' merge order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.gguf.tokenizer import add_tokenizer, tokenizer_spec


@dataclass(frozen=True)
class ArchSupport:
    arch: gguf.MODEL_ARCH  # llama.cpp's architecture
    permute_qk: bool  # transformers' rotary halves -> llama.cpp's interleaved pairs (the llama family)
    base: bool  # the GGUF base writer handles it
    lora: bool  # the GGUF LoRA writer handles it

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


# Hugging Face model class -> what the writers do with it. Mistral is written as llama (llama.cpp reads it so).
SUPPORT: dict[str, ArchSupport] = {
    "LlamaForCausalLM": ArchSupport(gguf.MODEL_ARCH.LLAMA, permute_qk=True, base=True, lora=True),
    "MistralForCausalLM": ArchSupport(gguf.MODEL_ARCH.LLAMA, permute_qk=True, base=True, lora=True),
    "Qwen2ForCausalLM": ArchSupport(gguf.MODEL_ARCH.QWEN2, permute_qk=False, base=True, lora=True),
    "Qwen3ForCausalLM": ArchSupport(gguf.MODEL_ARCH.QWEN3, permute_qk=False, base=True, lora=True),
    "Gemma3ForCausalLM": ArchSupport(gguf.MODEL_ARCH.GEMMA3, permute_qk=False, base=True, lora=True),
}
ARCHS = {cls: support.name for cls, support in SUPPORT.items()}


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a llama q/k projection (or a LoRA B for one) from transformers' rotary layout
    (two halves) to llama.cpp's (interleaved pairs)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`: llama.cpp's interleaved pairs back to transformers' two halves."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def read_config(model_dir: Path, purpose: str = "base") -> tuple[dict, ArchSupport]:
    """The model's config and what the writers support for it; ``purpose`` ``base`` or ``lora`` refuses an
    architecture that writer cannot take."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise IdiolectError(f"{model_dir}: no config.json, so not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    arch_names = config.get("architectures") or []
    for name in arch_names:
        support = SUPPORT.get(name)
        if support is not None and getattr(support, purpose):
            return config, support
    able = [cls for cls, sup in SUPPORT.items() if getattr(sup, purpose)]
    what = "a GGUF base model" if purpose == "base" else "a GGUF LoRA"
    raise IdiolectError(
        f"{Path(model_dir).name}: architecture {', '.join(arch_names) or 'unknown'} cannot be written as {what} "
        f"here (supported: {', '.join(able)})"
    )


def export_problem(model_dir: Path, purpose: str) -> str | None:
    """Why ``purpose`` (``base``: the model as GGUF; ``lora``: an adapter as GGUF LoRA) cannot be written for
    this model, or None: checked before an export writes anything. A base also needs a tokenizer the writer
    can map."""
    try:
        read_config(model_dir, purpose)
        if purpose == "base":
            tokenizer_spec(Path(model_dir))
    except IdiolectError as exc:
        return str(exc)
    return None


def rope_parameters(config: dict, layer_type: str | None = None) -> dict:
    """RoPE settings from either config style: transformers 5 (``rope_parameters``, per layer type for Gemma 3)
    or older files (``rope_theta`` + ``rope_scaling``)."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    if layer_type is not None or "full_attention" in params:
        params = dict(params.get(layer_type or "full_attention") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _llama3_rope_factors(config: dict, head_dim: int) -> np.ndarray | None:
    scaling = rope_parameters(config)
    kind = scaling["rope_type"]
    if kind == "default":
        return None
    if kind != "llama3":
        raise IdiolectError(f"rope scaling {kind!r} is not supported by the GGUF writer")
    base = scaling["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add_gemma3_hparams(writer: gguf.GGUFWriter, config: dict, head_dim: int) -> None:
    """Gemma 3's own settings: sliding-window layers (pattern and RoPE base), logit softcap, linear RoPE scaling
    of the global layers. What llama.cpp's gemma3 graph cannot reproduce is refused in one line."""
    name = config.get("_name_or_path") or "this Gemma 3 model"
    if config.get("attn_logit_softcapping"):
        raise IdiolectError(f"{name}: attention logit softcapping is not run by llama.cpp's gemma3 graph")
    scalar = config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        raise IdiolectError(
            f"{name}: query_pre_attn_scalar {scalar} differs from head_dim {head_dim}, which llama.cpp's gemma3 "
            "graph assumes (except for the 27B model); use the model's published GGUF"
        )
    full, local = rope_parameters(config, "full_attention"), rope_parameters(config, "sliding_attention")
    if local["rope_type"] != "default":
        raise IdiolectError(f"{name}: RoPE scaling on sliding-window layers is not supported by llama.cpp")
    writer.add_rope_freq_base(float(full["rope_theta"]))
    if full["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    elif full["rope_type"] != "default":
        raise IdiolectError(f"{name}: rope scaling {full['rope_type']!r} is not supported by the GGUF writer")
    layer_types = config.get("layer_types") or []
    if "sliding_attention" in layer_types and config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


@dataclass
class _PlannedTensor:
    gguf_name: str
    hf_name: str | None  # None: made here (llama 3 rope factors)
    shape: tuple[int, ...]
    dtype: type
    transform: Callable[[np.ndarray], np.ndarray]


def _safetensors_index(model_dir: Path) -> list[tuple[Path, str, tuple[int, ...]]]:
    """(file, tensor name, shape) of every weight, read from the headers only."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise IdiolectError(f"{model_dir}: no .safetensors weights")
    out = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open objects are not iterable
                out.append((f, name, tuple(st.get_slice(name).get_shape())))
    return out


def _load_tensor(path: Path, name: str) -> np.ndarray:
    with safe_open(str(path), framework="pt") as st:
        return st.get_tensor(name).to(torch.float32).numpy()


def _plan_base_tensors(model_dir: Path, config: dict, support: ArchSupport, dtype: str):
    """Every tensor of the GGUF base (name, shape, dtype, transform) from the safetensors headers, so the
    writer can stream them; and the file each comes from."""
    gemma = support.arch == gguf.MODEL_ARCH.GEMMA3
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    name_map = gguf.get_tensor_name_map(support.arch, config["num_hidden_layers"])
    plan: list[_PlannedTensor] = []
    rope = _llama3_rope_factors(config, head_dim) if support.permute_qk else None
    if not support.permute_qk and not gemma and rope_parameters(config)["rope_type"] != "default":
        raise IdiolectError(f"{support.name} models with RoPE scaling are not supported by the GGUF writer")
    if rope is not None:
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.append(_PlannedTensor(name, None, rope.shape, np.float32, lambda _x, r=rope: r))
    sources: dict[str, Path] = {}
    for path, hf_name, shape in _safetensors_index(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings") and gemma:
            continue  # Gemma ties the head to the embedding; llama.cpp reads it from there
        new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise IdiolectError(
                f"{model_dir}: tensor {hf_name} has no GGUF name for the {support.name} architecture"
            )
        steps: list[Callable[[np.ndarray], np.ndarray]] = []
        if support.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            steps.append(lambda x: permute_qk(x, n_head))
        elif support.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            steps.append(lambda x: permute_qk(x, n_kv))
        if gemma and hf_name.endswith("norm.weight"):
            steps.append(lambda x: x + 1.0)  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w
        out_dtype = np.float16 if dtype == "f16" and len(shape) > 1 else np.float32

        def transform(x: np.ndarray, steps=steps, out_dtype=out_dtype) -> np.ndarray:
            for step in steps:
                x = step(x)
            return np.ascontiguousarray(x.astype(out_dtype, copy=False))

        sources[hf_name] = path
        plan.append(_PlannedTensor(new_name, hf_name, shape, out_dtype, transform))
    return plan, sources


def _add_base_hparams(
    writer: gguf.GGUFWriter, model_dir: Path, config: dict, support: ArchSupport, dtype: str
):
    gemma = support.arch == gguf.MODEL_ARCH.GEMMA3
    hidden, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // n_head
    writer.add_name(model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_head))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if gemma:
        _add_gemma3_hparams(writer, config, head_dim)
    else:
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    if gemma or head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    add_tokenizer(writer, model_dir, config["vocab_size"])


def convert_hf_to_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f16",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``out_path`` (a GGUF base model) from a Hugging Face folder of a model in :data:`SUPPORT` with a
    byte-level BPE or SentencePiece-style tokenizer. ``dtype``: ``f32`` (exact; what the tests use) or ``f16``
    (half the size); 1-D tensors stay f32. Tensors are streamed: one is in memory at a time, never the model."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if dtype not in ("f32", "f16"):
        raise IdiolectError(f"dtype must be f32 or f16, not {dtype!r}")
    config, support = read_config(model_dir, "base")
    plan, sources = _plan_base_tensors(model_dir, config, support, dtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), support.name)
    _add_base_hparams(writer, model_dir, config, support, dtype)
    for t in plan:
        nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(t.dtype), nbytes)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for n, t in enumerate(plan):
            data = t.transform(None if t.hf_name is None else _load_tensor(sources[t.hf_name], t.hf_name))
            if data.shape != t.shape:
                raise IdiolectError(
                    f"{t.hf_name}: shape {data.shape} changed while writing (expected {t.shape})"
                )
            writer.write_tensor_data(data)
            if progress and (n % 32 == 0 or n == len(plan) - 1):
                progress(f"wrote {n + 1}/{len(plan)} tensors to {out_path.name}")
    finally:
        writer.close()
    return out_path


def convert_lora_to_gguf(
    adapter_dir: str | Path, base_dir: str | Path, out_path: str | Path, *, dtype: str = "f32"
) -> Path:
    """Write a PEFT LoRA adapter as a GGUF LoRA for llama.cpp (``--lora``; llama-cpp-python ``lora_path``).

    ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``; each adapted weight W of the base
    gets ``<gguf name>.weight.lora_a`` (A, rank x in) and ``.lora_b`` (B, out x rank), so W' = W + alpha/r * B A;
    for the llama architecture B of q/k is row-permuted like the base weights (permuting W's rows is permuting B's).
    """
    from safetensors.torch import load_file

    adapter_dir, base_dir, out_path = Path(adapter_dir), Path(base_dir), Path(out_path)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.exists():
        raise IdiolectError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    acfg = json.loads(cfg_path.read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise IdiolectError(
            f"{adapter_dir}: a {acfg.get('peft_type')} adapter, only LoRA can be written to GGUF"
        )
    if acfg.get("use_dora") or acfg.get("use_rslora"):
        raise IdiolectError(
            f"{adapter_dir}: DoRA / rsLoRA adapters are not supported by llama.cpp LoRA files"
        )
    config, support = read_config(base_dir, "lora")
    arch = support.name
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    name_map = gguf.get_tensor_name_map(support.arch, n_layers)
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        raise IdiolectError(f"{adapter_dir}: no adapter_model.safetensors")
    tensors = load_file(str(weights_path))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                pairs.setdefault(module, {})[part] = value
                break
        else:
            raise IdiolectError(
                f"{adapter_dir}: tensor {key} is not a LoRA A/B matrix (modules_to_save is not supported)"
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg.get("lora_alpha", acfg.get("r", 8))))
    writer.add_name(f"{adapter_dir.name} (LoRA for {base_dir.name})")
    count = 0
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise IdiolectError(f"{adapter_dir}: {module} lacks its lora_A or lora_B")
        hf_name = module.removeprefix("base_model.model.")
        gguf_name = name_map.get_name(hf_name)
        if gguf_name is None:
            raise IdiolectError(f"{adapter_dir}: {hf_name} has no GGUF name for the {arch} architecture")
        a = ab["lora_A"].to(torch.float32).numpy()
        b = ab["lora_B"].to(torch.float32).numpy()
        if support.permute_qk and hf_name.endswith("q_proj"):
            b = permute_qk(b, n_head)
        elif support.permute_qk and hf_name.endswith("k_proj"):
            b = permute_qk(b, n_kv)
        if dtype == "f16":
            a, b = a.astype(np.float16), b.astype(np.float16)
        writer.add_tensor(f"{gguf_name}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{gguf_name}.weight.lora_b", np.ascontiguousarray(b))
        count += 1
    if not count:
        raise IdiolectError(f"{adapter_dir}: the adapter holds no LoRA weights")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
