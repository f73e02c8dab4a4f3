"""Training: C-BPO personalizes (held-out likelihood), runs survive kills, cancels and out-of-memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, cancelled_at, wait_until

from idiolect.core.base.errors import IdiolectError
from idiolect.core.training import worker
from idiolect.core.training.config import TrainConfig
from idiolect.core.training.runs import create_run, run_dir
from idiolect.core.training.trainer import Trainer


def config(base, **kw) -> TrainConfig:
    defaults = dict(
        model=str(base),
        pool="others",
        steps=40,
        batch_size=4,
        lr=1e-3,
        heldout_fraction=0.3,
        save_every=1000,
        validation_fraction=0.0,
    )
    return TrainConfig(**{**defaults, **kw})


def test_cbpo_raises_target_likelihood_more_than_peers(pretrained_base, target_store):
    run = create_run(target_store, "me", config(pretrained_base, objective="cbpo", beta=0.1))
    result = Trainer(target_store, run).run()
    ev = result["eval"]
    assert result["status"] == "completed" and result["counts"]["heldout_tar"] >= 3
    assert ev["heldout_target_lift"] > 0, ev
    assert ev["heldout_target_lift"] > ev["heldout_peer_lift"], ev
    metrics = target_store.run_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert metrics[-1]["reward_margin"] > 0  # the user's texts now score above other writers'
    for key in ("l_pos", "l_pure_neg", "delta", "tokens_per_s", "peak_memory_mb", "reward_tar", "reward_aux"):
        assert key in metrics[-1]
    saved = target_store.get_run(run)
    assert saved["status"] == "completed" and (ROOT / saved["adapter_path"] / "adapter_config.json").exists()
    assert 0 <= result["pi"]["pi"] <= 0.9 and result["pi"]["source"] == "estimated"


def test_baselines_run_on_the_same_path(pretrained_base, target_store):
    results = {}
    for objective in ("sft", "bco"):
        run = create_run(target_store, "me", config(pretrained_base, objective=objective, steps=10))
        results[objective] = Trainer(target_store, run).run()["eval"]
    assert results["sft"]["heldout_target_lift"] > 0  # SFT raises the user's likelihood ...
    assert results["sft"]["heldout_peer_lift"] > 0  # ... and everyone else's with it


def test_a_killed_worker_resumes_and_finishes_with_the_same_steps(pretrained_base, target_store):
    cfg = config(pretrained_base, steps=12, save_every=3)
    run = worker.start(target_store, "me", cfg)
    wait_until(lambda: target_store.get_run(run)["step"] >= 7)
    os.kill(target_store.get_run(run)["pid"], signal.SIGKILL)
    wait_until(lambda: worker.status(target_store, run)["status"] == "failed", 30)
    failed = worker.status(target_store, run)
    assert "stopped unexpectedly" in failed["error"] and "resume continues from step" in failed["error"]
    assert target_store.integrity_check() == "ok"
    worker.resume(target_store, run)
    wait_until(lambda: worker.status(target_store, run)["status"] in ("completed", "failed"))
    done = worker.status(target_store, run)
    assert done["status"] == "completed", done["error"]
    assert done["step"] == done["total_steps"] == 12
    assert [m["step"] for m in target_store.run_metrics(run)] == list(range(1, 13))
    assert not list(run_dir(target_store, run).glob("checkpoint-*"))  # cleaned up after the finish


def test_cancel_checkpoints_and_resume_finishes(pretrained_base, target_store):
    run = worker.start(target_store, "me", config(pretrained_base, steps=24, save_every=1000))
    wait_until(lambda: target_store.get_run(run)["step"] >= 2)
    with pytest.raises(IdiolectError, match="still training"):
        worker.start(target_store, "me", config(pretrained_base))
    worker.cancel(target_store, run)
    wait_until(lambda: worker.status(target_store, run)["status"] == "cancelled")
    stopped = target_store.get_run(run)["step"]
    assert list(run_dir(target_store, run).glob(f"checkpoint-{stopped}"))
    worker.resume(target_store, run)
    wait_until(lambda: worker.status(target_store, run)["status"] == "completed")
    assert target_store.get_run(run)["step"] == 24
    assert [m["step"] for m in target_store.run_metrics(run)] == list(range(1, 25))


def test_out_of_memory_is_one_clear_error(pretrained_base, target_store, monkeypatch):
    import idiolect.core.training.reference as reference
    import idiolect.core.training.trainer as train

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "response_logps", boom)
    monkeypatch.setattr(
        reference, "logps_of", lambda model, ex, *a, **k: (torch.zeros(len(ex)), torch.ones(len(ex)))
    )
    cfg = config(pretrained_base, steps=3)
    run = create_run(target_store, "me", cfg)
    with pytest.raises(
        IdiolectError, match=f"out of GPU memory at batch size 4 and max length {cfg.max_length}: lower --batch-size"
    ):
        Trainer(target_store, run).run()
    assert target_store.get_run(run)["status"] == "failed"


def test_too_little_writing_is_refused(pretrained_base, target_store):
    target_store.create_profile("newbie")
    target_store.add_samples(target_store.get_profile("newbie")["id"], [{"text": "only one"}])
    run = create_run(target_store, "newbie", config(pretrained_base))
    with pytest.raises(IdiolectError, match="add at least 4 samples"):
        Trainer(target_store, run).run()


def test_cli_train_shows_progress_and_results(pretrained_base, target_store):
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "train", "--profile", "me", "--model", str(pretrained_base),
         "--pool", "others", "--steps", "4", "--lr", "1e-3", "--objective", "kto", "--lambda-sft", "0.3",
         "--reward-norm", "mean", "--db", str(target_store.path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4/4 loss" in out.stderr
    assert "completed: adapter in" in out.stdout and "held-out target texts" in out.stdout
    assert "  pi = " in out.stdout and "  early stopping: " in out.stdout  # which step it kept, in words
    run = target_store.list_runs(target_store.get_profile("me")["id"])[0]
    assert run["objective"] == "kto" and run["config"]["lambda_sft"] == 0.3  # the flags reach the run
    assert run["config"]["reward_norm"] == "mean"
    assert "sft" in target_store.run_metrics(run["id"])[-1]  # the SFT term was trained and logged
    bad = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "train", "--profile", "ghost", "--model", str(pretrained_base),
         "--db", str(target_store.path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: no profile named 'ghost'")


def test_training_benchmark_writes_its_table(tiny_models, tmp_path):
    pytest.importorskip("trl")
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "bench", "training", "--model", str(tiny_models["qwen2"]),
         "--steps", "5", "--max-length", "64", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    result = json.loads((tmp_path / "training.json").read_text())
    assert [r["engine"].split(" (")[0] for r in result["rows"]] == [
        "idiolect C-BPO",
        "TRL KTOTrainer",
        "TRL KTOTrainer",
    ]
    assert result["speedup_vs_trl"] > 0 and all(r["peak MB"] > 0 for r in result["rows"])
    assert "Against TRL's defaults" in (tmp_path / "training.md").read_text()


def test_qlora_path_runs_on_cpu(pretrained_base, target_store):
    """The CUDA recipe (4-bit NF4 base via bitsandbytes, k-bit preparation, LoRA) also runs on the CPU, so the
    QLoRA code path is exercised without a GPU."""
    import bitsandbytes as bnb

    from idiolect.core.models.loading import load_hf_model

    model, _, desc = load_hf_model(pretrained_base, device="cpu", quantize="4bit")
    assert desc["quantization"] == "nf4"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    run = create_run(target_store, "me", config(pretrained_base, steps=3, quantize="4bit", device="cpu"))
    result = Trainer(target_store, run).run()
    assert result["status"] == "completed" and len(target_store.run_metrics(run)) == 3


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_response_logps_equal_the_models_own_log_softmax(arch, tiny_models):
    """The chunked response-only head applies what the model applies to its logits (gemma3's final softcap
    included), so it equals log_softmax(model(...).logits) at the response tokens."""
    import torch.nn.functional as F

    from idiolect.core.models.loading import load_hf_model
    from idiolect.core.training.data import Example, tokenize
    from idiolect.core.training.labels import TAR
    from idiolect.core.training.logprobs import response_logps

    model, tok, _ = load_hf_model(tiny_models[arch], device="cpu")
    examples = [
        Example(TAR, "Describe rain.", None, "It pours on the tin roof all night, and I sleep anyway."),
        Example(TAR, "A note to a friend.", "Context line.", "See you Sunday!"),
    ]
    tokenize(examples, tok, 128)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        sums, counts = response_logps(model, examples, "cpu", pad)
        for i, e in enumerate(examples):
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            logp = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
            start = len(e.prompt_ids)
            want = sum(float(logp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1]))
            assert counts[i] == len(e.response_ids)
            assert abs(float(sums[i]) - want) < 1e-3 * max(1.0, abs(want)), (arch, float(sums[i]), want)
    if arch == "gemma3":
        assert model.config.final_logit_softcapping == 5.0  # the case a plain head gets wrong


def test_protocol_early_stopping_keeps_the_best_step(pretrained_base, target_store):
    """A run that overfits (a high learning rate, many passes) keeps the step at which its validation texts were
    most likely, saves that adapter (its validation score is the best one, not the last), stops once patience
    ran out, and says so; the validation texts are neither trained on nor the held-out ones."""
    from peft import PeftModel

    from idiolect.core.models.loading import load_hf_model, pad_id
    from idiolect.core.training.data import tokenize
    from idiolect.core.training.logprobs import mean_token_ll
    from idiolect.core.training.runs import read_data_record, sets_from_record

    cfg = config(pretrained_base, objective="sft", steps=30, lr=1e-2, validation_fraction=0.3, eval_every=2,
                 patience=2)  # fmt: skip
    run = create_run(target_store, "me", cfg)
    result = Trainer(target_store, run).run()
    es = result["early_stopping"]
    assert es["active"] and es["validation_texts"] >= 2
    scores = dict(es["history"])
    assert es["kept_step"] == max(scores, key=scores.get)
    assert es["stopped_at"] is not None and es["stopped_at"] < 30 and result["steps"] == es["stopped_at"]
    assert es["stopped_at"] - es["kept_step"] == 2 * cfg.patience  # two checks without a gain
    assert f"kept step {es['kept_step']} of 30" in es["message"] and "stopped at step" in es["message"]
    logged = {m["step"]: m["val_ll"] for m in target_store.run_metrics(run) if m.get("val_ll") is not None}
    assert logged == {s: v for s, v in scores.items() if s}  # every check is in the run's log too

    sets = sets_from_record(read_data_record(run_dir(target_store, run)))
    val = sets.validation["tar"]
    texts = {e.text for e in val}
    assert not texts & {e.text for e in sets.train["tar"]} and not texts & {
        e.text for e in sets.heldout["tar"]
    }
    base, tok, _ = load_hf_model(pretrained_base, device="cpu", quantize="none")
    tokenize(val, tok, cfg.max_length)
    adapter = PeftModel.from_pretrained(base, run_dir(target_store, run) / "adapter").eval()
    saved = mean_token_ll(adapter, val, "cpu", pad_id(tok), adapter=True)
    assert saved == pytest.approx(scores[es["kept_step"]], abs=1e-4)
    assert saved > scores[es["stopped_at"]]  # the last step's weights were not the ones kept


def test_protocol_warmup_is_at_least_three_steps():
    from idiolect.core.training.schedule import lr_factor, warmup_steps

    assert warmup_steps(15, 0.1) == 3  # int(0.1 x 15) was 1 step
    assert warmup_steps(100, 0.1) == 10 and warmup_steps(4, 0.1) == 2  # 10%; at most half a short run
    assert [round(lr_factor(s, 15, 3), 3) for s in range(3)] == [0.333, 0.667, 1.0]


def test_protocol_peers_answering_the_users_questions_come_first(store):
    """A Stack Exchange-like profile keeps its questions as each sample's context (no prompt): the peers chosen
    for it are still the other writers' answers to those questions first (they were chosen at random before)."""
    from idiolect.core.training.data import load_sets

    pool = store.ensure_pool("site")
    asked = [f"How do I brew question {i}?" for i in range(6)]
    rows = [{"writer": f"w{w}", "context": f"Unrelated question {w}-{k}", "text": f"Writer {w} on topic {k}."}
            for w in range(10) for k in range(30)]  # fmt: skip
    rows += [{"writer": f"w{w}", "context": q, "text": f"Writer {w} answers {q}"} for w in range(10) for q in asked]
    store.add_peer_texts(pool["id"], rows)
    pid = store.create_profile("asker")
    store.add_samples(pid, [{"context": q, "text": f"My own answer, number {i}, to this."} for i, q in enumerate(asked)])
    sets = load_sets(store, "asker", pool="site", peer_cap=60, heldout_fraction=0.0)
    chosen = sets.train["aux"]
    assert len(chosen) == 60 and all(e.context in asked for e in chosen)


def test_protocol_early_stopping_survives_a_cancel_and_resume(pretrained_base, target_store):
    """A run cancelled mid-way and resumed keeps its validation history and best step (they are in the
    checkpoint), so it keeps the same step an uninterrupted run keeps, with the same scores."""
    cfg = config(pretrained_base, objective="sft", steps=12, lr=2e-2, validation_fraction=0.3, eval_every=2,
                 patience=10, save_every=1)  # fmt: skip
    whole = Trainer(target_store, create_run(target_store, "me", cfg)).run()["early_stopping"]
    run = create_run(target_store, "me", cfg)
    assert cancelled_at(target_store, run, 5)["status"] == "cancelled"
    resumed = Trainer(target_store, run).run()["early_stopping"]
    assert [s for s, _ in resumed["history"]] == [s for s, _ in whole["history"]]  # step 0 scored once
    assert resumed["kept_step"] == whole["kept_step"]
    assert [v for _, v in resumed["history"]] == pytest.approx([v for _, v in whole["history"]], abs=1e-4)
