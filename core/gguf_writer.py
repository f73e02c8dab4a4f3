"""Writing GGUF files with the ``gguf`` package: a Hugging Face base model (weights, hyperparameters and the
byte-level BPE tokenizer), so a user holding only HF weights can run llama.cpp / llama-cpp-python, and a PEFT
LoRA adapter as a GGUF LoRA. (The llama.cpp convert scripts are not installed by pip.) What each architecture
supports is in :data:`SUPPORT`; a format an architecture cannot take is refused before any file is written
(:func:`export_problem`).

Facts this relies on (checked by tests/test_gguf.py against llama-cpp-python):
- llama.cpp applies rotary embeddings to interleaved pairs, transformers' llama to two halves, so the rows of
  ``q_proj`` and ``k_proj`` are permuted for the llama arch (the same permutation as llama.cpp's converter);
  qwen2 takes them as they are.
- tokenizer: ``tokenizer.ggml.model = "gpt2"`` and a pre-tokenizer name llama.cpp knows, chosen here from the
  regex in tokenizer.json (``gpt-2`` for plain byte-level BPE; llama.cpp rejects ``"gpt2"`` there).
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

from core.errors import IdiolectError


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
# Gemma 3: LoRA only -- its LoRA targets the user's own GGUF (a GGUF base needs no re-export), while a base
# export would need the SentencePiece tokenizer and Gemma's norm offsets.
SUPPORT: dict[str, ArchSupport] = {
    "LlamaForCausalLM": ArchSupport(gguf.MODEL_ARCH.LLAMA, permute_qk=True, base=True, lora=True),
    "MistralForCausalLM": ArchSupport(gguf.MODEL_ARCH.LLAMA, permute_qk=True, base=True, lora=True),
    "Qwen2ForCausalLM": ArchSupport(gguf.MODEL_ARCH.QWEN2, permute_qk=False, base=True, lora=True),
    "Qwen3ForCausalLM": ArchSupport(gguf.MODEL_ARCH.QWEN3, permute_qk=False, base=True, lora=True),
    "Gemma3ForCausalLM": ArchSupport(gguf.MODEL_ARCH.GEMMA3, permute_qk=False, base=False, lora=True),
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
            _tokenizer_json(Path(model_dir))
    except IdiolectError as exc:
        return str(exc)
    return None


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
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


def _tokenizer_json(model_dir: Path) -> tuple[dict, str]:
    """The tokenizer as transformers loads it (not as the file says: transformers 5 rebuilds some families'
    pipelines from their class, and llama.cpp must tokenize the way the model is actually used), with
    llama.cpp's name for its pre-tokenizer. Refuses what the writer cannot map."""
    if not (model_dir / "tokenizer.json").exists():
        raise IdiolectError(
            f"{model_dir}: no tokenizer.json (a fast byte-level BPE tokenizer is needed for GGUF)"
        )
    from transformers import AutoTokenizer

    tokenizer_json = json.loads(AutoTokenizer.from_pretrained(model_dir).backend_tokenizer.to_str())
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise IdiolectError(
            f"{model_dir.name}: only byte-level BPE tokenizers can be written to a GGUF base here (this one is "
            "SentencePiece-style); use the model's published GGUF as the base instead"
        )
    return tokenizer_json, _pre_tokenizer_name(tokenizer_json)


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    tokenizer_json, pre = _tokenizer_json(model_dir)
    model = tokenizer_json["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    special_ids = set()
    for added in tokenizer_json.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special", False):
            special_ids.add(added["id"])
    if max(vocab.values()) >= vocab_size:
        raise IdiolectError(f"{model_dir}: the tokenizer has ids beyond the model's vocab_size {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # padded embedding rows with no token
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)


def rope_parameters(config: dict) -> dict:
    """RoPE settings from either config style: transformers 5 (``rope_parameters``) or older files
    (``rope_theta`` + ``rope_scaling``)."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
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


def iter_safetensors(model_dir: Path):
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise IdiolectError(f"{model_dir}: no .safetensors weights")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open objects are not iterable
                yield name, st.get_tensor(name)


def convert_hf_to_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f16",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``out_path`` (a GGUF base model) from a Hugging Face folder of a llama or qwen2 model.
    ``dtype``: ``f32`` (exact; what the tests use) or ``f16`` (half the size). 1-D tensors stay f32."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if dtype not in ("f32", "f16"):
        raise IdiolectError(f"dtype must be f32 or f16, not {dtype!r}")
    config, support = read_config(model_dir, "base")
    arch = support.name
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    vocab_size = config["vocab_size"]
    name_map = gguf.get_tensor_name_map(support.arch, n_layers)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_name(model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, model_dir, vocab_size)

    rope = _llama3_rope_factors(config, head_dim) if support.permute_qk else None
    if not support.permute_qk and rope_parameters(config)["rope_type"] != "default":
        raise IdiolectError(f"{arch} models with RoPE scaling are not supported by the GGUF writer")
    if rope is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope)

    count = 0
    for hf_name, tensor in iter_safetensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise IdiolectError(f"{model_dir}: tensor {hf_name} has no GGUF name for the {arch} architecture")
        data = tensor.to(torch.float32).numpy()
        if support.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, n_head)
        elif support.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, n_kv)
        if dtype == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        writer.add_tensor(new_name, np.ascontiguousarray(data))
        count += 1
    if progress:
        progress(f"writing {count} tensors to {out_path}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def gguf_context_length(path: str | Path) -> int | None:
    """The context length a GGUF model was trained with, read from its metadata (None if unreadable)."""
    try:
        reader = gguf.GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.context_length"].contents())
    except (KeyError, ValueError, OSError):
        return None


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
