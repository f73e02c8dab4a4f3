"""Pretraining a small base for the quality benchmarks, and reading writers' rows from a dump.

    python launch.py bench pretrain --corpus POSTS.xml.gz ... --out DIR

``pretrain`` trains a small llama-architecture LM with its own BPE tokenizer on the given texts within a time
budget (a labelled smoke-test base). The personalization protocol itself is bench/protocol.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from idiolect.core.base.identity import text_fraction

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("base", "sft", "bco", "kto", "cbpo", "cbpo_sft", "cbpo_pi0")
VARIANTS = {"cbpo_sft": "cbpo"}  # benchmark rows that train another objective with other settings


def _h(text: str) -> float:
    return text_fraction(text)


def read_rows(path: str) -> list[dict]:
    """``{writer, context, text}`` rows from a Stack Exchange dump or a JSONL/CSV peer table."""
    from idiolect.core.ingest.peers import detect_peer_format, read_peer_table
    from idiolect.core.ingest.stackexchange import read_stackexchange

    p = Path(path)
    rows, _, _ = read_stackexchange(p) if detect_peer_format(p) == "stackexchange" else read_peer_table(p)
    return [{"writer": r["original_writer"], "context": r["context"], "text": r["text"]} for r in rows]


# --------------------------------------------------------------------------------------------------------
# pretrain


def pretrain_cmd(args) -> Path:
    from idiolect.bench.pretrain import pretrain

    texts = []
    for path in args.corpus:
        texts += [((r["context"] or "")[:400] + "\n\n" + r["text"]).strip() for r in read_rows(path)]
    if not texts:
        raise SystemExit("no texts in the corpus")
    key = hashlib.sha256(
        json.dumps(
            [
                sorted(Path(c).name for c in args.corpus),
                len(texts),
                sum(map(len, texts)),
                args.size,
                args.steps,
                args.seconds,
                args.seed,
            ]
        ).encode()  # fmt: skip
    ).hexdigest()[:12]
    out = Path(args.out)
    stamp = out / "pretrain.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("cache_key") == key:
        print(f"cached: {out} (same corpus and settings)", file=sys.stderr)
        return out
    t0 = time.monotonic()

    def progress(step, total, loss):
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.3f} ({time.monotonic() - t0:.0f}s)", file=sys.stderr)

    pretrain(
        texts,
        out,
        arch="llama",
        size=args.size,
        steps=args.steps,
        seconds=args.seconds,
        seed=args.seed,
        progress=progress,
    )
    info = json.loads(stamp.read_text())
    info.update(cache_key=key, corpus=[str(c) for c in args.corpus], texts=len(texts))
    stamp.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return out


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, help="Posts.xml(.gz) or JSONL/CSV files")
    p.add_argument(
        "--out", default=str(ROOT / "cache" / "base"), help="model folder (default: cache/base, gitignored)"
    )
    p.add_argument("--size", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=900, help="time budget (default: 900)")
    p.add_argument("--seed", type=int, default=0)
