"""A model's tokenizer as GGUF metadata: byte-level BPE (with its pre-tokenizer's name, as llama.cpp knows it) or SentencePiece-style vocabularies, their merges, scores and special tokens."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from idiolect.core.base.errors import IdiolectError

# Pre-tokenizer split regexes of known families -> llama.cpp's name for them.
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


_KNOWN_SPLITS = {_QWEN2_RE: "qwen2", _LLAMA3_RE: "llama-bpe"}


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


def tokenizer_spec(model_dir: Path) -> TokenizerSpec:
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


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    spec = tokenizer_spec(model_dir)
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
