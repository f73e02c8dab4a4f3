"""Small causal LMs built on this machine: a byte-level BPE tokenizer trained with ``tokenizers`` and a Llama,
Qwen2, Qwen3 or Gemma 3 (text) model initialised from a config, saved as a normal Hugging Face folder.

No model can be downloaded here, so the tests build these and load them through exactly the code a real
model takes (``from_pretrained`` on a folder); the quality benchmarks pretrain a larger one of the same kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
EOS = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
BOS = "<s>"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, *, add_bos: bool = False, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (the same pre-tokenizer regex as llama.cpp's ``gpt-2``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [EOS, IM_START, IM_END] + ([BOS] if add_bos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        bos_token=BOS if add_bos else None,
        additional_special_tokens=[IM_START, IM_END],
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


SPACE = "\u2581"  # SentencePiece's visible space


def train_spm_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, *, space_prefix: bool = False
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer as Gemma's ``tokenizer.json`` has it (``space_prefix``: as Llama 2's and
    Mistral's, with a "▁" put before the text): spaces become "▁", BPE over
    characters, bytes (``<0x00>``..``<0xFF>``) for characters it does not know, ``<bos>`` first. As in the
    files converted from SentencePiece, every pair of tokens that makes a token is a merge, ranked by the
    token's id, so any runtime that merges by score (llama.cpp) splits text exactly as transformers does."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Replace(" ", SPACE)
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    n_bytes = 256
    learner.train_from_iterator(
        texts,
        trainer=trainers.BpeTrainer(vocab_size=vocab_size - len(specials) - n_bytes, show_progress=False),
    )
    learned = sorted(learner.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(n_bytes)])}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    merges = [
        (token[:cut], token[cut:])
        for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])
        for cut in range(1, len(token))
        if token[:cut] in vocab and token[cut:] in vocab and not token.startswith("<")
    ]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Replace(" ", SPACE)
    if space_prefix:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_model(
    arch: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 512,
    init_std: float = 0.2,
    seed: int = 0,
    pad_vocab_to: int | None = None,
):
    """A randomly initialised model. ``pad_vocab_to`` pads the embedding and LM head beyond the tokenizer (as real
    models do; benchmarks use it to give a small model a realistic vocabulary cost). A wide init (std 0.2) spreads the logits, so greedy decoding has no
    near-ties and two backends can be compared token by token."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    common = dict(
        vocab_size=max(len(tokenizer), pad_vocab_to or 0),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        rms_norm_eps=1e-6,
        rope_theta=5000.0,  # not the library default, so a writer that ignores it is caught
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "qwen2":
        config = Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)
    elif arch == "qwen3":  # q/k norms, an explicit head_dim that is not hidden/heads
        config = Qwen3Config(
            **common, head_dim=2 * hidden_size // heads, tie_word_embeddings=True, use_sliding_window=False
        )
    else:  # gemma3 text: a logit softcap (Gemma 2's 30.0 scaled down to matter here), sliding + full layers
        config = Gemma3TextConfig(
            **common,
            head_dim=hidden_size // heads,
            tie_word_embeddings=True,
            final_logit_softcapping=5.0,
            query_pre_attn_scalar=hidden_size // heads,  # = head_dim, as in every Gemma 3 but the 27B
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"][:layers] + ["full_attention"] * (layers - 2),
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # RMSNorm weights start at 1: jitter them so a wrong norm mapping shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model.eval()


def save_tiny_model(
    path: str | Path, arch: str, texts: Iterable[str], *, vocab_size: int = 512, seed: int = 0, **model_kwargs
) -> Path:
    """Train a tokenizer on ``texts``, build a model, save both to ``path`` (a Hugging Face folder). The
    llama one adds a BOS token and has no chat template (plain prompt format); the qwen2 one has no BOS and
    a ChatML template, as the real families do, so both prompt paths are exercised; the gemma3 one has a
    SentencePiece-style tokenizer, as Gemma has."""
    path = Path(path)
    if arch == "gemma3":  # SentencePiece-style, as Gemma's own
        tokenizer = train_spm_tokenizer(texts, vocab_size)
    else:
        tokenizer = train_bpe_tokenizer(
            texts,
            vocab_size,
            add_bos=arch == "llama",
            chat_template=CHATML_TEMPLATE if arch == "qwen2" else None,
        )
    model = build_tiny_model(arch, tokenizer, seed=seed, **model_kwargs)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
