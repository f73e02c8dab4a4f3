"""Wall time of a whole training run from the command line, as a user meets it: model load, reference pass,
steps, held-out evaluation and saving, on one bundled writer against the rest of the bundled pool.

    python -m bench.train_wall --model MODEL --steps 20 --variant NAME[=REPO][:EXTRA ARGS] ... [--out bench/results]

Each variant runs ``launch.py train`` in its own process from a checkout (REPO; default this one) with the
same data, steps, batch and length, one after the other on the same machine; extra arguments (e.g.
``--precision fp32``) follow the colon. Recorded per variant: wall seconds, seconds per step (from the run's
metrics), the process's peak RSS (GNU time), the model it trained (a variant may name its own ``--model``), and the held-out log-likelihood lifts (target and peers) the run
reports.
Writes NAME.json and NAME.md (default name: train_wall).
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_variant(repo: Path, model: str, steps: int, extra: list[str], target: str, workdir: Path) -> dict:
    from idiolect.core.ingest.pool import default_pool_rows

    db = workdir / "wall.db"
    texts = workdir / "mine.jsonl"
    texts.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "text": r["text"]}) + "\n" for r in default_pool_rows()[target]
        )
    )
    launch = [sys.executable, str(repo / "launch.py")]
    subprocess.run([*launch, "add-samples", str(texts), "--profile", "me", "--db", str(db)], check=True,
                   capture_output=True, cwd=repo)  # fmt: skip
    # GNU time reports the peak RSS of this one process (getrusage of children keeps the largest so far).
    timer = ["/usr/bin/time", "-f", "PEAK_RSS_KB=%M"] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    out = subprocess.run(
        [*timer, *launch, "train", "--profile", "me", "--model", model, "--steps", str(steps), "--db", str(db),
         *extra],
        capture_output=True, text=True, cwd=repo,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"train failed in {repo}:\n{out.stderr[-3000:]}")
    found = re.findall(r"PEAK_RSS_KB=(\d+)", out.stderr)
    peak = int(found[-1]) if found else None
    conn = sqlite3.connect(db)
    run_model, raw = conn.execute("SELECT model, result FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    result = json.loads(raw)
    step_s = [
        json.loads(m)["seconds"] for (m,) in conn.execute("SELECT metrics FROM run_metrics ORDER BY step")
    ]
    conn.close()
    ev = result.get("eval", {})
    return {
        "model": run_model,  # what this variant trained (its extra args may name another --model)
        "wall_s": wall,
        "mean_step_s": sum(step_s) / len(step_s),
        "steps": len(step_s),
        "peak_rss_mb": peak / 1024 if peak else None,
        "heldout_target_lift": ev.get("heldout_target_lift"),
        "heldout_peer_lift": ev.get("heldout_peer_lift"),
        "heldout_target_ll": ev.get("heldout_target_ll"),
        "precision": result.get("precision", "fp32 (not recorded)"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--target", default="ada")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="train_wall")
    args = parser.parse_args(argv)
    from idiolect.bench.report import write

    results = []
    for spec in args.variant:
        head, _, extra = spec.partition(":")
        name, _, repo = head.partition("=")
        with tempfile.TemporaryDirectory() as tmp:
            r = run_variant(Path(repo or ROOT), args.model, args.steps, extra.split(), args.target, Path(tmp))
        results.append({"variant": name, **r})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    rows = [
        {
            "variant": r["variant"],
            "model": r["model"],
            "wall s": round(r["wall_s"]),
            "s/step": round(r["mean_step_s"], 2),
            "peak RSS MB": round(r["peak_rss_mb"]) if r["peak_rss_mb"] else "",
            "precision": r["precision"],
            "held-out lift (you)": round(r["heldout_target_lift"], 4),
            "held-out lift (peers)": round(r["heldout_peer_lift"], 4),
        }
        for r in results
    ]
    summary = {"default_model": args.model, "steps": args.steps, "target": args.target, "variants": results}
    if len(results) > 1:
        summary["wall_ratio_first_to_last"] = results[0]["wall_s"] / results[-1]["wall_s"]
    command = "python -m bench.train_wall " + " ".join(
        [f"--model {args.model}", f"--steps {args.steps}"] + [f"--variant '{v}'" for v in args.variant]
    )
    _, md = write(
        args.out, args.name, summary, rows, f"Whole training run, {args.steps} steps (CLI)", command
    )
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
