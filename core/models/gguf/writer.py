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
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from idiolect.core.base.errors import IdiolectError


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

# Pre-tokenizer split regexes of known families -> llama.cpp's name for them.
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_KNOWN_SPLITS = {_QWEN2_RE: "qwen2", _LLAMA3_RE: "llama-bpe"}


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
            _tokenizer_spec(Path(model_dir))
    except IdiolectError as exc:
        return str(exc)
    return None


def _sequence_parts(node: dict | None, key: str) -> list[dict]:
    """The steps of a tokenizer.json normalizer / pre-tokenizer: the list of a ``Sequence``, else the node."""
    node = node or {}
    return node.get(key, [node]) if node.get("type") == "Sequence" else [node]


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    parts = _sequence_parts(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = parts[0].get("pattern", {}).get("Regex")
        if pattern in _KNOWN_SPLITS:
            return _KNOWN_SPLITS[pattern]
    raise IdiolectError(
        "this tokenizer's pre-tokenizer is not one Idiolect can map to llama.cpp (plain byte-level BPE, Qwen2 "
        "and Llama 3 are supported); use the model's published GGUF instead"
    )


@dataclass(frozen=True)
class TokenizerSpec:
    """How llama.cpp is to tokenize: ``gpt2`` (byte-level BPE with a named pre-tokenizer) or ``llama``
    (SentencePiece-style BPE over characters with byte fallback, as Gemma, Llama 2 and Mistral use)."""

    json: dict
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    add_space_prefix: bool = False  # SentencePiece: a "▁" is put before the text


def _spm_space_prefix(tokenizer_json: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts "▁" before the text (Llama 2, Mistral) or not (Gemma)."""
    for part in _sequence_parts(tokenizer_json.get("normalizer"), "normalizers"):
        if part.get("type") == "Prepend" and part.get("prepend") == "\u2581":
            return True
    for part in _sequence_parts(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if part.get("type") == "Metaspace":
            return (
                part.get("prepend_scheme", "always" if part.get("add_prefix_space", True) else "never")
                != "never"
            )
    return False


def _tokenizer_spec(model_dir: Path) -> TokenizerSpec:
    """The tokenizer as transformers loads it (not as the file says: transformers 5 rebuilds some families'
    pipelines from their class, and llama.cpp must tokenize the way the model is actually used), with
    llama.cpp's names for it. Refuses what the writer cannot map."""
    if not (model_dir / "tokenizer.json").exists():
        raise IdiolectError(
            f"{model_dir}: no tokenizer.json (a fast tokenizer is needed to write a GGUF base)"
        )
    from transformers import AutoTokenizer

    tokenizer_json = json.loads(AutoTokenizer.from_pretrained(model_dir).backend_tokenizer.to_str())
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise IdiolectError(
            f"{model_dir.name}: a {model.get('type')} tokenizer cannot be written to a GGUF base here (BPE, "
            "byte-level or SentencePiece-style, is supported); use the model's published GGUF as the base instead"
        )
    if model.get("byte_fallback"):
        return TokenizerSpec(tokenizer_json, "llama", "default", _spm_space_prefix(tokenizer_json))
    return TokenizerSpec(tokenizer_json, "gpt2", _pre_tokenizer_name(tokenizer_json))


_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    spec = _tokenizer_spec(model_dir)
    model = spec.json["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    special_ids, user_ids = set(), set()
    for added in spec.json.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        (special_ids if added.get("special", False) else user_ids).add(added["id"])
    if max(vocab.values()) >= vocab_size:
        raise IdiolectError(f"{model_dir}: the tokenizer has ids beyond the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    # SentencePiece merges by score (highest first) where BPE merges by rank: a token's score is minus the rank
    # of the first merge that makes it, so llama.cpp merges in the order transformers does.
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges", [])):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, r)
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        score = 0.0
        if token is None:  # padded embedding rows with no token
            token, kind, score = f"[PAD{i}]", gguf.TokenType.UNUSED, -1000.0
        elif i in special_ids:
            kind, score = gguf.TokenType.CONTROL, -1000.0
        elif i in user_ids:
            kind, score = gguf.TokenType.USER_DEFINED, -1000.0
        elif spec.model == "llama" and _BYTE_TOKEN.fullmatch(token):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
            score = -float(rank.get(token, len(rank) + i))
        tokens.append(token)
        types.append(kind)
        scores.append(score)
    writer.add_tokenizer_model(spec.model)
    writer.add_tokenizer_pre(spec.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if spec.model == "llama":
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(spec.add_space_prefix)
    vocab_log = logging.getLogger("gguf.vocab")  # it warns of template details llama.cpp does not use
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=spec.model == "gpt2", n_vocab=len(tokens))
    finally:
        vocab_log.setLevel(level)
    special.add_to_gguf(writer, quiet=True)


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
    arch = support.name
    gemma = support.arch == gguf.MODEL_ARCH.GEMMA3
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    vocab_size = config["vocab_size"]
    name_map = gguf.get_tensor_name_map(support.arch, n_layers)

    # Plan every tensor (name, shape, dtype, transform) from the headers, so the writer can stream them.
    plan: list[_PlannedTensor] = []
    rope = _llama3_rope_factors(config, head_dim) if support.permute_qk else None
    if not support.permute_qk and not gemma and rope_parameters(config)["rope_type"] != "default":
        raise IdiolectError(f"{arch} models with RoPE scaling are not supported by the GGUF writer")
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
            raise IdiolectError(f"{model_dir}: tensor {hf_name} has no GGUF name for the {arch} architecture")
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

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_name(model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
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
    _add_tokenizer(writer, model_dir, vocab_size)
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
