"""Generation speed of both backends on the same model and prompt: decode tokens/s, median of several runs.

    python launch.py bench generation [--model DIR] [--tokens 128] [--runs 5] [--out bench/results]

Without --model it builds a small llama model (hidden 256, 4 layers, a BPE of 2048 tokens trained on the bundled
pool, embeddings padded to a 32,768-token vocabulary as real small models have) in a cache folder, so the figures
mean the same on any machine. EOS is banned so every run decodes
exactly --tokens tokens; decoding is greedy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a short review of a pair of headphones you bought recently."


def small_model(cache: Path, arch: str = "llama") -> Path:
    from idiolect.bench.tinymodels import save_tiny_model
    from idiolect.core.ingest.pool import default_pool_rows

    path = cache / f"bench-small-{arch}-v32k"
    if not (path / "config.json").exists():
        texts = [r["text"] for rows in default_pool_rows().values() for r in rows]
        save_tiny_model(
            path, arch, texts, vocab_size=2048, hidden_size=256, layers=4, heads=8, kv_heads=4,
            intermediate_size=768, max_positions=1024, init_std=0.05, pad_vocab_to=32768,
        )  # fmt: skip
    return path


def run(args: argparse.Namespace) -> dict:
    import torch

    from idiolect.bench.report import matmul_gflops, write
    from idiolect.core.models.gguf.writer import convert_hf_to_gguf
    from idiolect.core.models.llama import LlamaCppGenerator
    from idiolect.core.models.loading import load_hf_model
    from idiolect.core.models.prompt import render_prompt

    cache = Path(args.cache)
    model_dir = Path(args.model) if args.model else small_model(cache)
    torch.set_num_threads(args.threads)
    model, tok, desc = load_hf_model(model_dir, device=getattr(args, "device", "cpu"), quantize="none")
    text = render_prompt(tok, PROMPT)
    ids = tok(text, add_special_tokens=not tok.chat_template)["input_ids"]
    n = args.tokens
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    flops_per_token = 2 * (params - embed) + (2 * embed if model.config.tie_word_embeddings else 0)
    ceiling = matmul_gflops()
    rows = []

    def hf_once() -> float:
        x = torch.tensor([ids], device=model.device)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        assert out.shape[1] - len(ids) == n  # generate returns after the device finished
        return n / (time.perf_counter() - t)

    def cpp_once(gen: LlamaCppGenerator) -> float:
        llm = gen.llm
        eos = llm.token_eos()
        t = time.perf_counter()
        for count, _ in enumerate(
            llm.generate(ids, top_k=1, temp=0.0, reset=True, logits_processor=[_ban(eos)]), 1
        ):
            if count == n:
                break
        return n / (time.perf_counter() - t)

    def measure(name: str, fn) -> None:
        fn()  # warm-up
        speeds = [fn() for _ in range(args.runs)]
        tps = statistics.median(speeds)
        rows.append(
            {
                "backend": name,
                "decode tokens/s (median)": round(tps, 1),
                "min": round(min(speeds), 1),
                "max": round(max(speeds), 1),
                "runs": args.runs,
                "MFU vs fp32 matmul": round(tps * flops_per_token / (ceiling * 1e9), 4),
            }
        )
        print(f"{name}: {tps:.1f} tokens/s", file=sys.stderr)

    measure("transformers fp32" if desc["device"] == "cpu" else f"transformers {desc['device']}", hf_once)
    for dtype in ("f32", "f16"):
        gguf_path = cache / f"{model_dir.name}-{dtype}.gguf"
        if not gguf_path.exists() or gguf_path.stat().st_mtime < (model_dir / "config.json").stat().st_mtime:
            convert_hf_to_gguf(model_dir, gguf_path, dtype=dtype)
        gen = LlamaCppGenerator(gguf_path, n_threads=args.threads, n_ctx=1024)
        measure(f"llama.cpp {dtype}", lambda gen=gen: cpp_once(gen))
    result = {
        "model": str(model_dir),
        "params": params,
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "threads": args.threads,
        "matmul_gflops_fp32": round(ceiling, 1),
        "flops_per_token": flops_per_token,
    }
    command = f"python launch.py bench generation --tokens {n} --runs {args.runs} --threads {args.threads}"
    if args.model:
        command += f" --model {args.model}"
    json_path, md_path = write(
        args.out, "generation", result, rows, "Generation speed (greedy decode)", command
    )
    print(md_path.read_text())
    return {**result, "rows": rows, "json": str(json_path)}


def _ban(token: int):
    import numpy as np

    def processor(input_ids, scores):
        scores = np.array(scores, copy=True)
        scores[token] = -np.inf
        return scores

    return processor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="an HF model folder (default: build the small bench model)")
    p.add_argument("--tokens", type=int, default=128, help="tokens to decode per run (default: 128)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per backend (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both backends (default: 2)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for generation.json/.md")
    p.add_argument("--cache", default=str(ROOT / "cache"), help="folder for built models (gitignored)")
