"""``bench device`` (the GPU run in one command) as a dry run on the CPU, so it never rots between the sessions that
are lent a GPU: every part runs and lands in device.json with the device named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, STACKEXCHANGE


def test_bench_device_dry_run_writes_every_part(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "device"
    done = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "bench", "device", "--dry-run", "--out", str(out),
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "device.json").read_text())
    assert result["dry_run"] is True and result["device"] == result["device_info"]["device"]
    parts = {p["part"].split()[0]: p for p in result["parts"]}
    assert set(parts) == {"training", "generation", "protocol"}
    train = parts["training"]
    assert train["status"] == "ok", train
    assert train["tokens_per_s"] > 0 and train["speedup_vs_trl"] > 0 and set(train["engines"]) == {"idiolect", "trl"}
    assert parts["generation"]["status"] == "ok" and len(parts["generation"]["rows"]) == 3  # transformers, llama.cpp x2
    if STACKEXCHANGE.exists():
        assert parts["protocol"]["status"] == "ok", parts["protocol"]
        assert set(parts["protocol"]["objectives"]) == {"base", f"{result['default_objective']}@lr=0.001"}
    else:
        assert parts["protocol"]["status"] == "failed" and "Stack Exchange samples" in parts["protocol"]["error"]
    assert "| training bench-small | ok |" in (out / "device.md").read_text()
