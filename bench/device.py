"""``bench device``: the GPU figures in one command, on a bare machine that holds only the project's own files.

    python launch.py bench device [--models offline-smollm2,offline] [--steps 20] [--budget-s 480] [--out DIR]
    python launch.py bench device --dry-run     # the same path on the CPU, small models, in about a minute

In order, each part timed and recorded even when another part fails, and no part started once ``--budget-s`` is
spent (a lent GPU is lent for minutes):

1. the machine: the device's name and memory, torch, CUDA, bitsandbytes;
2. per model: ``--steps`` training steps of the product's default objective (NF4 QLoRA where CUDA is there:
   ``quantize=auto``) and the same work through TRL's KTOTrainer (4-bit too on CUDA), each in its own process
   (``bench training``): tokens/s, peak memory, wall, and the ratio of the two measured in this run;
3. generation on the first model: transformers on the device and llama.cpp (``bench generation``);
4. a slice of the personalization protocol (one tuning writer, the base and the default objective at one learning
   rate, one epoch) where the Stack Exchange samples are found (``IDIOLECT_SHARED`` or ../shared).

Writes ``device.json`` and ``device.md`` into ``--out``. What travels to a lent machine: the project's files and
at most 64 MiB besides; the offline models (SmolLM2 94 MB, Gemma 245 MB) are larger, and such a machine reaches
no registry, so a model that is not installed where it runs is skipped with that reason in the JSON (``--models``
takes folders and GGUF files too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("IDIOLECT_SHARED", ROOT.parent / "shared")) / "data" / "stackexchange"


def device_info() -> dict:
    import torch

    info = {"device": "cpu", "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1))
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError as exc:
        info["bitsandbytes"] = f"not installed ({exc})"
    return info


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _part(parts: list[dict], name: str, budget: Budget, fn) -> dict:
    """Run one part, recording its wall time, its result or its error; skipped once the budget is spent."""
    row: dict = {"part": name}
    if budget.left() <= 0:
        row.update(status="skipped", reason="the time budget was spent")
    else:
        t0 = time.monotonic()
        try:
            row.update(status="ok", **fn())
        except Exception as exc:  # noqa: BLE001 - one part's failure is a row of the report, not the end of it
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[-1500:]}")
        row["wall_s"] = round(time.monotonic() - t0, 1)
    parts.append(row)
    print(f"[device] {name}: {row['status']} ({row.get('wall_s', 0)} s)", file=sys.stderr)
    return row


def _models(args) -> list[tuple[str, str | None, str | None]]:
    """(spec, HF folder or None, why not) per model asked for; the dry run uses the small bench model."""
    if args.dry_run:
        from idiolect.bench.generation import small_model

        return [("bench-small", str(small_model(Path(args.cache))), None)]
    from idiolect.core.models.registry import OFFLINE, offline_installed
    from idiolect.core.models.resolve import local_model_dir

    out = []
    for spec in [m for m in args.models.split(",") if m]:
        if spec in OFFLINE and not offline_installed(spec):
            out.append((spec, None, f"not installed here ({OFFLINE[spec].pip})"))
            continue
        try:
            out.append((spec, str(local_model_dir(spec)), None))
        except Exception as exc:  # noqa: BLE001
            out.append((spec, None, f"{type(exc).__name__}: {exc}"))
    return out


def _training(folder: str, args) -> dict:
    """Idiolect's default objective and TRL's KTOTrainer on the same work, each in its own process."""
    engines = {}
    for engine in ("idiolect", "trl"):
        cmd = [sys.executable, "-m", "idiolect.bench.training", "--engine", engine, "--model", folder,
               "--steps", str(args.steps), "--batch", "8", "--max-length", str(args.max_length)]  # fmt: skip
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{engine}: {done.stderr[-1500:]}")
        engines[engine] = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": round(time.monotonic() - t0, 1)}
    ours, trl = engines["idiolect"], engines["trl"]
    return {"engines": engines, "tokens_per_s": ours["tokens_per_s"], "peak_mb": ours["peak_mb"],
            "speedup_vs_trl": ours["tokens_per_s"] / trl["tokens_per_s"],
            "peak_memory_ratio_vs_trl": ours["peak_mb"] / trl["peak_mb"]}  # fmt: skip


def _generation(folder: str, args) -> dict:
    from idiolect.bench.generation import run as generation_run

    ns = argparse.Namespace(model=folder, tokens=args.gen_tokens, runs=args.gen_runs, threads=os.cpu_count() or 2,
                            out=str(Path(args.out) / "device-generation"), cache=args.cache, device="auto")  # fmt: skip
    result = generation_run(ns)
    return {"rows": result["rows"]}


def _protocol(spec: str, folder: str, args) -> dict:
    from idiolect.bench.protocol import add_arguments, personalization_cmd

    dumps = [SHARED / f"{site}.stackexchange.com_Posts.xml.gz" for site in ("beer", "coffee")]
    if not all(d.exists() for d in dumps):
        raise FileNotFoundError(f"the Stack Exchange samples are not in {SHARED} (set IDIOLECT_SHARED)")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = folder if args.dry_run else spec
    ns = parser.parse_args(["--phase", "tune", "--peers", str(dumps[0]), "--peers", str(dumps[1]), "--base", base,
                            "--out", str(Path(args.out) / "device-protocol"), "--tuning-targets", "1",
                            "--objectives", f"base,{_default_objective()}", "--grid", "1e-3", "--epochs", "1",
                            "--max-length", str(args.max_length), "--gen-tokens", str(args.gen_tokens),
                            "--distractors", "4" if args.dry_run else "20"])  # fmt: skip
    result = personalization_cmd(ns)
    return {"objectives": result["objectives"], "seconds": result["seconds"],
            "cells_s": {label: c.get("seconds") for label, c in _cells(ns.out).items()}}  # fmt: skip


def _cells(out: str) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (Path(out) / "cells").rglob("*.json")}


def _default_objective() -> str:
    from idiolect.core.training.config import DEFAULT_OBJECTIVE

    return DEFAULT_OBJECTIVE


def run(args: argparse.Namespace) -> dict:
    from idiolect.bench.report import write

    if args.dry_run:
        args.steps, args.gen_tokens, args.gen_runs, args.max_length = 5, 8, 1, 128  # 3 warm-up steps, 2 timed
    budget = Budget(args.budget_s)
    parts: list[dict] = []
    info = device_info()
    if info["device"] == "cpu" and not args.dry_run:
        print("[device] no CUDA device here: the figures are the CPU's (--dry-run for a quick check)", file=sys.stderr)
    models = _models(args)
    for spec, folder, why in models:
        if folder is None:
            parts.append({"part": f"training {spec}", "status": "skipped", "reason": why})
            continue
        _part(parts, f"training {spec}", budget, lambda folder=folder: _training(folder, args))
    usable = [(s, f) for s, f, _ in models if f]
    if usable:
        _part(parts, f"generation {usable[0][0]}", budget, lambda: _generation(usable[0][1], args))
        _part(parts, f"protocol slice {usable[0][0]}", budget, lambda: _protocol(*usable[0], args))
    result = {"device": info["device"], "device_info": info, "dry_run": args.dry_run, "budget_s": args.budget_s,
              "default_objective": _default_objective(), "steps": args.steps, "parts": parts}  # fmt: skip
    rows = [{"part": p["part"], "status": p["status"], "wall s": p.get("wall_s", ""),
             "tokens/s": round(p["tokens_per_s"]) if "tokens_per_s" in p else "",
             "peak MB": round(p["peak_mb"]) if "peak_mb" in p else "",
             "vs TRL": f"{p['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in p else "",
             "note": " ".join((p.get("reason") or p.get("error", "")).split())[-160:]} for p in parts]  # fmt: skip
    command = "python launch.py bench device" + (" --dry-run" if args.dry_run else f" --models {args.models}")
    _, md = write(args.out, "device", result, rows, f"One command on {info['device']}", command)
    print(md.read_text())
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="offline-smollm2,offline", help="models, comma-separated (default: both offline)")
    p.add_argument("--steps", type=int, default=20, help="training steps per engine and model (default: 20)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--gen-runs", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=480, help="start no part after this many seconds (default: 480)")
    p.add_argument("--dry-run", action="store_true", help="the CPU path with the small bench model, in seconds")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "device"), help="folder for device.json/.md")
    p.add_argument("--cache", default=str(ROOT / "cache"), help="folder for built models (gitignored)")
