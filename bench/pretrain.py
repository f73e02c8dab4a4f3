"""Pretraining a small causal LM from scratch on given texts, within a step or time budget.

No model can be downloaded on the build machines, so the quality tests and benchmarks need a base that has
learned *some* language: this trains one of bench.tinymodels' Llama/Qwen2 models (own BPE tokenizer) on a
corpus, packed into fixed-length blocks, full-parameter, AdamW with warmup and cosine decay. The result is an
ordinary Hugging Face folder.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from idiolect.bench.tinymodels import CHATML_TEMPLATE, build_tiny_model, train_bpe_tokenizer

SIZES = {
    "tiny": dict(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=192, vocab_size=1024),
    "small": dict(hidden_size=256, layers=4, heads=8, kv_heads=4, intermediate_size=768, vocab_size=4096),
    "base": dict(hidden_size=512, layers=8, heads=8, kv_heads=4, intermediate_size=1536, vocab_size=8192),
}


def pretrain(
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    size: str = "tiny",
    steps: int = 200,
    seconds: float | None = None,
    block: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train and save; stops at ``steps`` or after ``seconds``, whichever comes first. Writes
    ``pretrain.json`` (settings, final loss, tokens seen) beside the weights."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    spec = dict(SIZES[size])
    vocab = spec.pop("vocab_size")
    out_dir = Path(out_dir)
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = train_bpe_tokenizer(
        texts, vocab, add_bos=arch == "llama", chat_template=CHATML_TEMPLATE if arch == "qwen2" else None
    )
    model = build_tiny_model(arch, tokenizer, max_positions=max(512, block), init_std=0.02, seed=seed, **spec)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block, block)]
    if not blocks:
        raise ValueError("not enough text to pretrain on")
    data = torch.tensor(blocks)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )
    start = time.monotonic()
    loss_value = float("nan")
    done = 0
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,))
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        done = step + 1
        if progress:
            progress(done, steps, loss_value)
        if seconds is not None and time.monotonic() - start > seconds:
            break
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "pretrain.json").write_text(
        json.dumps(
            {
                "arch": arch,
                "size": size,
                "steps": done,
                "block": block,
                "batch_size": batch_size,
                "lr": lr,
                "final_loss": loss_value,
                "tokens_seen": done * batch_size * block,
                "corpus_tokens": len(stream),
                "seconds": round(time.monotonic() - start, 1),
            },
            indent=2,
        )
    )
    return out_dir
