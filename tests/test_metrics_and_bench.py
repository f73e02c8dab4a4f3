"""Offline text metrics against hand-computed values, and the personalization benchmark end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, shared_file

from core.metrics import bleu, mean_ci, meteor, rouge1, rouge_l


def test_rouge():
    # 5 of 6 unigrams shared: P = R = 5/6.
    assert rouge1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "the cat on the mat" = 5 tokens.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("mat the on", "the cat is on the mat") == pytest.approx(
        2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6)
    )
    assert rouge1("", "anything") == 0.0


def test_bleu_and_meteor():
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert bleu("a b c", "x y z") == 0.0
    assert 0 < bleu("the cat sat on a mat", "the cat sat on the mat") < 1
    # Stems match in METEOR: "cats" ~ "cat", one chunk, 6/6 aligned.
    m = meteor("the cats sat on the mat", "the cat sat on the mat")
    assert m == pytest.approx(1 - 0.5 * (1 / 6) ** 3)
    assert meteor("mat the on sat cat the", "the cat sat on the mat") < m  # word order costs (more chunks)


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["ci95"][0] < 2.0 < ci["ci95"][1]
    assert mean_ci([]) == {"mean": None, "ci95": None, "n": 0}


def test_personalization_benchmark_end_to_end(pretrained_base, tmp_path):
    peers = shared_file("coffee.stackexchange.com_Posts.xml.gz")
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "bench", "personalization", "--peers", str(peers), "--targets", "2",
         "--base", str(pretrained_base), "--out", str(tmp_path), "--steps", "4", "--gen-tokens", "8", "--no-popi"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "personalization.json").read_text())
    assert result["targets"] == 2
    for objective in ("base", "sft", "bco", "cbpo"):
        row = result["objectives"][objective]
        for key in (
            "target_lift",
            "peer_lift",
            "rouge1",
            "rougeL",
            "meteor",
            "bleu",
            "authorship",
            "pair_accuracy",
        ):
            assert key in row
    assert result["objectives"]["base"]["target_lift"] == 0.0
    assert result["objectives"]["sft"]["target_lift"] != 0.0  # the adapters were really trained and applied
    assert "| cbpo |" in (tmp_path / "personalization.md").read_text()
