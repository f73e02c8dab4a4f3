"""Import bounds: peak memory (RSS) and wall time of the largest imports allowed and of the slowest-to-parse
inputs built under the limits, each in its own process (so each peak is its own), written as imports.json/.md.

Inputs (generated, never committed): a 64 MB .txt of paragraphs and one with no blank lines; 64 MB of JSONL rows;
a Stack Exchange Posts.xml of 64 MB and a .gz whose rows are each just under the per-line limit; texts of
"a.a.a." for the URL scrubber (the old quadratic case) inside a peer file; one unclosed row spanning 400,000
lines; a chat export with 64 MB of turns full of code fences and log lines."""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def _posts(rows) -> bytes:
    head = b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
    q = b'  <row Id="1" PostTypeId="1" Title="Q" Body="question" />\n'
    return head + q + b"".join(rows) + b"</posts>\n"


def _fill(make, size: int) -> str:
    """Rows ``make(0), make(1), ...`` up to just under ``size`` bytes (the limit is inclusive of nothing more)."""
    parts, total, i = [], 0, 0
    while True:
        part = make(i)
        if total + len(part.encode()) > size:
            return "".join(parts)
        parts.append(part)
        total += len(part.encode())
        i += 1


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_inputs(folder: Path, size: int) -> list[tuple[str, str, Path]]:
    """(label, kind, path) of each input: kind is "samples" or "peers"."""
    out = [("start-up only (imports, an empty database): the floor", "baseline", folder)]
    para = "Paragraph {}: I write in plain sentences about coffee and trains. " * 6 + "\n\n"
    p = folder / "paragraphs.txt"
    p.write_text(_fill(lambda i: para.replace("{}", str(i)), size))
    out.append((f"{size // MB} MB .txt, paragraphs (the largest own-writing file)", "samples", p))
    p = folder / "one-block.txt"
    p.write_bytes(b"word " * (size // 5))
    out.append((f"{size // MB} MB .txt, no blank lines (one block)", "samples", p))
    row = (
        json.dumps({"prompt": "Describe your morning.", "text": "Coffee first, then the paper {}. " * 8})
        + "\n"
    )
    p = folder / "rows.jsonl"
    p.write_text(_fill(lambda i: row.replace("{}", str(i)), size))
    out.append((f"{size // MB} MB .jsonl rows", "samples", p))
    body = "&lt;p&gt;" + "A plain answer about beer glasses and foam. " * 20 + "&lt;/p&gt;"
    rows = (
        f'  <row Id="{i + 2}" PostTypeId="2" ParentId="1" OwnerUserId="{i % 50 + 3}" Body="{i} {body}" />\n'.encode()
        for i in range(size // (len(body) + 80))
    )
    p = folder / "big.stackexchange.com_Posts.xml"
    p.write_bytes(_posts(rows))
    out.append((f"{size // MB} MB Posts.xml", "peers", p))
    big = "x" * (7 * MB)
    rows = [f'  <row Id="{i + 2}" PostTypeId="2" ParentId="1" OwnerUserId="3" Body="{big}" />\n'.encode()
            for i in range(100)]  # fmt: skip
    p = folder / "wide.stackexchange.com_Posts.xml.gz"
    p.write_bytes(gzip.compress(_posts(rows), 9))
    out.append(("Posts.xml.gz of 100 rows of 7 MB (just under the line limit; 700 MB inflated)", "peers", p))
    p = folder / "one-item.json"
    p.write_text(json.dumps([{"prompt": "One long answer.", "text": "A plain sentence, again. " * ((size - MB) // 25)}]))
    out.append((f"one {size // MB - 1} MB item in a JSON list (decoded once, not per chunk)", "samples", p))
    rows = (
        json.dumps({"writer": f"w{i % 20}", "text": f"{i} " + "a." * 20_000}) + "\n"
        for i in range(size // 40_100)
    )
    p = folder / "dots.jsonl"
    p.write_text("".join(rows))
    out.append((f"{size // MB} MB of 'a.a.a.' peer texts (URL scrubber)", "peers", p))
    p = folder / "unclosed.stackexchange.com_Posts.xml"
    p.write_bytes(
        _posts([b'  <row Id="2" PostTypeId="2" ParentId="1" OwnerUserId="3" Body="'] + [b"x\n"] * 400_000)
    )
    out.append(("one unclosed row over 400,000 lines", "peers", p))
    turn = "Here is what I think, plainly {}.\n```\ncode line\n```\n2024-01-01 12:00 ERROR x\n> quoted\n" * 40
    convs = []
    total = 0
    while total < size:
        n = len(convs)
        msgs = [m for j in range(10) for m in ({"role": "user", "content": turn.replace("{}", f"{n}-{j}")},
                                               {"role": "assistant", "content": "ok"})]  # fmt: skip
        convs.append({"messages": msgs})
        total += len(turn) * 10
    p = folder / "conversations.json"
    p.write_text(
        "[" + ",".join(json.dumps(_chatgpt_conversation(c["messages"], k)) for k, c in enumerate(convs)) + "]"
    )
    out.append(
        (f"{size // MB} MB ChatGPT conversations.json (one JSON document, read as a stream)", "samples", p)
    )
    p = folder / "chats.jsonl"
    p.write_text("".join(json.dumps(c) + "\n" for c in convs))
    out.append((f"{size // MB} MB OpenAI-style chat JSONL (code, logs, quotes)", "samples", p))
    return out


def _chatgpt_conversation(messages: list[dict], k: int) -> dict:
    """A ChatGPT export's conversation: a chain of mapping nodes ending at current_node."""
    mapping, parent = {}, None
    for i, m in enumerate(messages):
        node = f"n{i}"
        mapping[node] = {"id": node, "parent": parent, "children": [f"n{i + 1}"] if i + 1 < len(messages) else [],
                         "message": {"author": {"role": m["role"]},
                                     "content": {"content_type": "text", "parts": [m["content"]]}}}  # fmt: skip
        parent = node
    return {"title": f"conversation {k}", "mapping": mapping, "current_node": parent}


def _child(kind: str, path: str, db: str) -> None:
    from idiolect.core.ingest.peers import import_peers
    from idiolect.core.ingest.samples import import_samples
    from idiolect.core.store import Store

    store = Store(db)
    t0 = time.perf_counter()
    if kind == "baseline":
        print(json.dumps({"seconds": 0.0, "peak_mb": _peak_mb(), "added": 0, "skipped": 0, "error": None}))
        return
    if kind == "samples":
        [report] = import_samples(store, "me", [path])
    else:
        report = import_peers(store, path, "pool")
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "added": report.added, "skipped": len(report.skipped),
                      "error": report.error}))  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size-mb", type=int, default=64, help="size of the large inputs (default: 64, the limit)"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for imports.json/.md")


def run(args) -> dict:
    from idiolect.bench.report import write

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = build_inputs(Path(tmp), args.size_mb * MB)
        for label, kind, path in inputs:
            code = "import sys; from idiolect.bench.imports import _child; _child(*sys.argv[1:])"
            out = subprocess.run(
                [sys.executable, "-c", code, kind, str(path), str(Path(tmp) / f"{path.stem or 'base'}-{kind}.db")],
                capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            table.append({"input": label, "file MB": round(path.stat().st_size / MB, 1) if path.is_file() else 0, "seconds": r["seconds"],
                          "peak RSS MB": r["peak_mb"], "added": r["added"], "skipped": r["skipped"],
                          "error": r["error"] or ""})  # fmt: skip
            print(table[-1], flush=True)
    command = f"python launch.py bench imports --size-mb {args.size_mb}"
    write(args.out, "imports", {}, table, "Import bounds (each input in its own process)", command)
    return {"rows": table}
