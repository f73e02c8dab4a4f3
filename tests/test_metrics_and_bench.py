"""Offline text metrics against hand-computed values, and the personalization benchmark end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, shared_file

from idiolect.bench.metrics import bleu, mean_ci, meteor, rouge1, rouge_l


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


def _bench(out, base, *extra):
    peers = [str(shared_file(f"{site}.stackexchange.com_Posts.xml.gz")) for site in ("beer", "coffee")]
    cmd = [sys.executable, str(ROOT / "launch.py"), "bench", "personalization", "--peers", peers[0], "--peers", peers[1],
           "--base", str(base), "--out", str(out), "--epochs", "1", "--max-length", "128", "--gen-tokens", "6",
           "--distractors", "4", "--device", "cpu", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def test_protocol_tunes_on_tuning_writers_then_reports_frozen_settings_and_resumes(pretrained_base, tmp_path):
    """The protocol end to end on a tiny base: the tune phase tries the same learning rates for each objective on
    the tuning writers and freezes its choice in tuning.json; the report phase, on other writers, takes it
    unchanged, writes each finished cell at once, and a second report run with one more objective reuses every
    finished cell (same file, same bytes) and adds only the new ones. Every metric and the paired comparison
    against C-BPO are in personalization.json."""
    from idiolect.bench.protocol import draw_writers, load_rows

    early = tmp_path / "early"  # a tuning phase with nothing done: reported as incomplete, and nothing frozen
    out = _bench(early, pretrained_base, "--phase", "tune", "--tuning-targets", "2", "--budget-hours", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (early / "tuning.json").exists()
    assert json.loads((early / "personalization-tune.json").read_text())["complete"] is False
    assert not (early / "personalization.json").exists()  # the name of the report phase's table
    tune = tmp_path / "tune"
    out = _bench(tune, pretrained_base, "--phase", "tune", "--tuning-targets", "2", "--objectives",
                 "base,sft,cbpo,cbpo_pi0", "--grid", "1e-3,3e-3")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    tuned = json.loads((tune / "tuning.json").read_text())
    assert set(tuned["chosen"]) == {"sft", "cbpo"}  # the ablation is not tuned: it runs at cbpo's setting
    assert all(len(c["candidates"]) == 2 for c in tuned["chosen"].values())  # as many settings each
    report = tmp_path / "report"
    args = ("--phase", "report", "--report-targets", "2", "--tuning-targets", "2", "--seeds", "0,1",
            "--settings", str(tune / "tuning.json"))  # fmt: skip
    out = _bench(report, pretrained_base, *args, "--objectives", "base,cbpo")
    assert out.returncode == 0, out.stderr[-3000:]
    cells = sorted((report / "cells" / "report").rglob("*.json"))
    assert len(cells) == 2 * (1 + 2)  # per target: the base once, cbpo per seed
    before = {c: c.read_bytes() for c in cells}
    out = _bench(report, pretrained_base, *args, "--objectives", "base,cbpo,sft,cbpo_pi0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(c.read_bytes() == b for c, b in before.items())  # resumed: nothing finished was run again
    assert len(list((report / "cells" / "report").rglob("*.json"))) == 2 * 7
    result = json.loads((report / "personalization.json").read_text())
    assert result["protocol"]["targets"] == 2 and result["protocol"]["seeds"] == 2 and result["complete"]
    assert result["protocol"]["tuning_targets"] == 2 and result["protocol"]["budget_epochs"] == 1
    rows = load_rows([str(shared_file("beer.stackexchange.com_Posts.xml.gz")),
                      str(shared_file("coffee.stackexchange.com_Posts.xml.gz"))])  # fmt: skip
    tune_w, report_w = draw_writers(rows, 2, 2, 12)
    assert not set(tune_w) & set(report_w) and set(result["per_target"]) == set(report_w)
    assert result["settings"]["sft"]["lr"] == tuned["chosen"]["sft"]["settings"]["lr"]  # frozen, unchanged
    assert result["settings"]["cbpo_pi0"] == {"objective": "cbpo_pi0", **tuned["chosen"]["cbpo"]["settings"]}
    for name in ("base", "sft", "cbpo"):
        row = result["objectives"][name]
        for key in (
            "discrimination",
            "discrimination_ci",
            "target_lift",
            "attribution",
            "rougeL",
            "pair_auc",
        ):
            assert key in row
    assert (
        result["objectives"]["base"]["discrimination"] == 0.0
        and result["objectives"]["base"]["target_lift"] == 0
    )
    assert result["objectives"]["sft"]["target_lift"] != 0  # trained and applied
    assert (
        set(result["paired"]) == {"base-cbpo", "sft-cbpo", "cbpo_pi0-cbpo"}
        and result["paired"]["sft-cbpo"]["n"] == 2
    )
    assert {"mean", "ci"} <= set(result["paired"]["sft-cbpo"])
    assert result["paired_metrics"]["sft-cbpo"]["discrimination"]["mean"] == result["paired"]["sft-cbpo"]["mean"]
    assert set(result["paired_metrics"]["sft-cbpo"]) >= {"attribution", "rougeL", "target_lift"}
    for folder, name in ((report, "personalization"), (tune, "personalization-tune")):  # the plot, in its table
        assert (folder / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"]({name}.png)" in (folder / f"{name}.md").read_text()
    assert 0 <= result["attribution_ceiling"] <= 1


def test_protocol_no_measured_text_was_trained_on():
    """A target's held-out answers, and the other writers' answers to the same questions, are never in its
    training texts or its peer pool."""
    from idiolect.bench.protocol import split_target

    rows = [{"writer": w, "context": f"q{q}", "text": f"{w} answers q{q} in their own words"}
            for q in range(12) for w in ("a", "b", "c") if (q + ord(w)) % 3]  # fmt: skip
    rows += [{"writer": "a", "context": f"solo{q}", "text": f"a alone on {q}"} for q in range(6)]
    split = split_target(rows, "a")
    held_q = {r["context"] for r in split["heldout"]}
    assert len(split["heldout"]) >= 3 and all(split["others"][q] for q in held_q if not q.startswith("solo"))
    trained = {r["text"] for r in split["train"]} | {r["text"] for r in split["peers"]}
    measured = {r["text"] for r in split["heldout"]} | {
        o["text"] for os in split["others"].values() for o in os
    }
    assert not trained & measured
    assert all(r["writer"] != "a" for r in split["peers"])


def test_protocol_the_shipped_defaults_are_the_setting_the_protocol_measured():
    """What ships is what was measured: the default objective's setting frozen by the tuning phase on SmolLM2
    (the app's default model), at the protocol's batch and length, is the product's default; a change of either
    without a new measurement fails here."""
    import argparse
    import json

    from conftest import ROOT

    from idiolect.bench.protocol import add_arguments
    from idiolect.core.training.config import defaults

    shipped = defaults()

    frozen = json.loads((ROOT / "bench/results/protocol/smollm2/tuning.json").read_text())
    chosen = frozen["chosen"][shipped["objective"]]["settings"]
    assert [shipped[k] for k in ("lr", "epochs", "beta")] == [chosen[k] for k in ("lr", "epochs", "beta")]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    protocol = parser.parse_args(["--phase", "report", "--peers", "x", "--base", "x", "--out", "x"])
    assert (shipped["batch_size"], shipped["max_length"]) == (protocol.batch, protocol.max_length)


def test_train_wall_names_the_model_each_variant_trained(tiny_models, tmp_path):
    """A variant's extra arguments may name another --model; the figures must say which model made them."""
    from idiolect.bench import train_wall

    first, second = tiny_models["llama"], tiny_models["qwen2"]
    train_wall.main([
        "--model", str(first), "--steps", "2", "--out", str(tmp_path), "--name", "wall",
        "--variant", "default:--batch-size 2 --max-length 64",
        "--variant", f"other:--batch-size 2 --max-length 64 --model {second}",
    ])  # fmt: skip
    summary = json.loads((tmp_path / "wall.json").read_text())
    assert summary["default_model"] == str(first)
    assert [v["model"] for v in summary["variants"]] == [str(first), str(second)]
    assert str(second) in (tmp_path / "wall.md").read_text()
