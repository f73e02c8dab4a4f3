"""Trustworthy data: every rating, sample and adapter is the one the user meant. One regression test (at least)
per defect of the "Trustworthy data" issue; ``pytest -k integrity`` selects them all (the browser journey in
test_e2e_browser.py checks reload, second tab, one label per generation and fresh seeds in a real page)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import ROOT, wait_until

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.hf_generation import HFGenerator
from idiolect.core.models.sampling import SamplingParams
from idiolect.core.store import Store
from idiolect.core.training import worker
from idiolect.core.training.config import TrainConfig
from idiolect.core.training.data import load_sets
from idiolect.core.training.labels import NEG, TAR
from idiolect.core.training.lora import build_peft_model
from idiolect.core.training.runs import create_run, run_dir
from idiolect.core.training.trainer import Trainer


def config(base, **kw) -> TrainConfig:
    defaults = dict(
        model=str(base), pool="others", steps=12, batch_size=4, lr=1e-3, heldout_fraction=0.3, save_every=1000,
        validation_fraction=0.0,  # every step runs (early stopping: test_train.py)
    )
    return TrainConfig(**{**defaults, **kw})


# 1. Stale adapter ------------------------------------------------------------------------------------------


def _save_adapter(base_dir, folder, seed):
    from peft import LoraConfig, get_peft_model

    from idiolect.core.models.loading import load_hf_model

    base, _, _ = load_hf_model(base_dir, device="cpu")
    torch.manual_seed(seed)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(folder)
    return folder


def _logits(gen, text="Review a restaurant."):
    ids = torch.tensor([gen.encode(text)])
    with torch.no_grad():
        return gen.model(input_ids=ids).logits


def test_integrity_each_run_serves_its_own_adapter(tiny_models, tmp_path):
    """Two runs save to runs/<id>/adapter: the second must not be served the first one's weights, nor must an
    adapter folder rewritten in place."""
    a1 = _save_adapter(tiny_models["qwen2"], tmp_path / "runs" / "1" / "adapter", seed=1)
    a2 = _save_adapter(tiny_models["qwen2"], tmp_path / "runs" / "2" / "adapter", seed=2)
    gen = HFGenerator.from_pretrained(tiny_models["qwen2"], device="cpu")
    gen.load_adapter(a1)
    run1 = _logits(gen)
    gen.load_adapter(a2)
    run2 = _logits(gen)
    assert not torch.allclose(run1, run2)
    gen.load_adapter(a1)
    assert torch.allclose(_logits(gen), run1)  # switching back serves run 1 again

    # Run 1's folder rewritten (a run saved again to the same place): the new weights are served.
    shutil.rmtree(a1)
    _save_adapter(tiny_models["qwen2"], a1, seed=3)
    gen.load_adapter(a1)
    rewritten = _logits(gen)
    assert not torch.allclose(rewritten, run1) and not torch.allclose(rewritten, run2)
    assert len(gen.adapters) == 2  # the stale copy of run 1 was dropped


def test_integrity_an_adapter_for_another_base_is_refused_clearly(tiny_models, tmp_path):
    llama_adapter = _save_adapter(tiny_models["llama"], tmp_path / "llama-adapter", seed=1)
    gen = HFGenerator.from_pretrained(tiny_models["qwen2"], device="cpu")
    with pytest.raises(IdiolectError, match="was trained on .*llama.*not on the model in use"):
        gen.load_adapter(llama_adapter)
    assert gen.active_adapter is None and not gen.adapters


def test_integrity_latest_adapter_is_per_base_model(store, tmp_path):
    from idiolect.core.training.runs import latest_completed_run, run_dir

    pid = store.create_profile("ana")
    runs = []
    for model in ("/models/a", "/models/b", "/models/a"):
        run = store.create_run(pid, "cbpo", model, {"model": model})
        adapter = run_dir(store, run) / "adapter"
        adapter.mkdir(parents=True)
        store.update_run(run, status="completed", adapter_path=str(adapter), model=model)
        runs.append(run)
    assert latest_completed_run(store, pid)["id"] == runs[2]
    assert latest_completed_run(store, pid, model_dir="/models/b")["id"] == runs[1]
    # "The latest adapter" is the newest whose folder is still there
    import shutil

    shutil.rmtree(run_dir(store, runs[2]))
    assert latest_completed_run(store, pid)["id"] == runs[1]
    assert latest_completed_run(store, pid, model_dir="/models/c") is None


# 2. One generation, one label ------------------------------------------------------------------------------


def _labels(store, profile):
    """Every text of the profile's ratings with the labels training would give it."""
    from idiolect.core.training.labels import feedback_examples

    out = []
    for f in store.list_feedback(store.get_profile(profile)["id"]):
        out += feedback_examples(f["rating"], f["text"], f["edited_text"])
    return out


def test_integrity_a_generation_has_one_current_rating(store):
    pid = store.create_profile("ana")
    gen = store.add_generation(pid, "Describe rain.", "Rain falls softly.")
    store.rate(pid, gen, 1)
    store.rate(pid, gen, -1)
    assert _labels(store, "ana") == [(NEG, "Rain falls softly.")]
    # A double press counts once.
    again = store.rate(pid, gen, -1)
    assert not again["changed"] and len(store.list_feedback(pid)) == 1
    stats = store.stats()["profiles"]["ana"]
    assert (stats["ratings_up"], stats["ratings_down"]) == (0, 1)
    # Undo: the generation is unrated; the presses stay as history.
    assert store.undo_rating(pid, gen)
    assert store.list_feedback(pid) == [] and len(store.list_feedback(pid, history=True)) == 2
    assert not store.undo_rating(pid, gen)
    # The database itself refuses a second current rating.
    store.rate(pid, gen, 1)
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute(
            "INSERT INTO feedback (generation_id, rating, created_at) VALUES (?, -1, 'now')", [gen]
        )


def test_integrity_edit_with_thumbs_down_means_edit_positive_original_negative(store):
    pid = store.create_profile("ana")
    gen = store.add_generation(pid, "Describe rain.", "Rain falls softly.")
    store.rate(pid, gen, -1, edited_text="It pours, like always.")
    assert _labels(store, "ana") == [(TAR, "It pours, like always."), (NEG, "Rain falls softly.")]
    store.rate(pid, gen, 1, edited_text="It pours, like always.")
    assert _labels(store, "ana") == [(TAR, "It pours, like always.")]
    # Text that only differs in whitespace from the generation is no edit.
    store.rate(pid, gen, 1, edited_text="  Rain falls\nsoftly. ")
    assert _labels(store, "ana") == [(TAR, "Rain falls softly.")]


def test_integrity_training_and_profile_read_the_same_labels(target_store):
    """load_sets (training) and profile_data (You vs. peers) give a rated generation one label, the same one."""
    from idiolect.core.persona.style import profile_data

    pid = target_store.get_profile("me")["id"]
    up = target_store.add_generation(pid, "Describe rain.", "A generation first liked, then disliked.")
    target_store.rate(pid, up, 1)
    target_store.rate(pid, up, -1)
    sets = load_sets(target_store, "me", pool="others", heldout_fraction=0.0)
    texts = {k: [e.text for e in sets.train[k] + sets.heldout[k]] for k in (TAR, NEG)}
    assert "A generation first liked, then disliked." in texts[NEG]
    assert "A generation first liked, then disliked." not in texts[TAR]
    _, _, liked, disliked = profile_data(target_store, "me", "others")
    assert liked == [] and disliked == ["A generation first liked, then disliked."]


def test_integrity_migration_keeps_only_the_latest_press_current(tmp_path):
    path = tmp_path / "old.db"
    old = Store(path, target_version=3)
    pid = old.create_profile("ana")
    gen = old.add_generation(pid, "p", "text")
    with old.write() as db:  # what version 3 stored for 👍 then 👎
        for rating in (1, -1):
            db.execute(
                "INSERT INTO feedback (generation_id, rating, created_at) VALUES (?, ?, '2026-01-01')",
                [gen, rating],
            )
    old.close()
    new = Store(path)
    assert [f["rating"] for f in new.list_feedback(pid)] == [-1]
    assert len(new.list_feedback(pid, history=True)) == 2
    new.close()


# 3. Samples: an edit keeps the prompt; a profile touches only its own rows ------------------------------------


def test_integrity_editing_a_sample_keeps_its_prompt(store):
    pid = store.create_profile("ana")
    sid = store.add_samples(pid, [{"prompt": "Describe your street.", "text": "Old text."}]).added[0]
    store.update_sample(pid, sid, "New text.")
    sample = store.get_sample(pid, sid)
    assert (sample["prompt"], sample["text"]) == ("Describe your street.", "New text.")
    # Re-adding the edited sample is recognised as a duplicate (the hash covers prompt and text).
    assert store.add_samples(pid, [{"prompt": "Describe your street.", "text": "New text."}]).duplicates == [
        0
    ]
    store.update_sample(pid, sid, "New text.", prompt=None)
    assert store.get_sample(pid, sid)["prompt"] is None


def test_integrity_a_profile_cannot_touch_another_profiles_samples(store):
    ana = store.create_profile("ana")
    bo = store.create_profile("bo")
    sid = store.add_samples(ana, [{"text": "Ana's words."}]).added[0]
    with pytest.raises(IdiolectError, match="no sample with id"):
        store.update_sample(bo, sid, "Bo was here.")
    with pytest.raises(IdiolectError, match="no sample with id"):
        store.delete_sample(bo, sid)
    with pytest.raises(IdiolectError, match="no sample with id"):
        store.delete_sample(ana, sid + 1000)  # a missing id is an error, not a silent success
    assert store.get_sample(ana, sid)["text"] == "Ana's words."
    gen = store.add_generation(ana, "p", "t")
    with pytest.raises(IdiolectError, match="no generation"):
        store.rate(bo, gen, 1)
    with pytest.raises(IdiolectError, match="no generation"):
        store.undo_rating(bo, gen)
    store.delete_sample(ana, sid)
    assert store.list_samples(ana) == []


# 4. Reload / second tab -----------------------------------------------------------------------------------


def _handler(demo, name):
    """The event handler named ``name`` in a built UI (its BlockFunction: the function and its outputs)."""
    for block_fn in demo.fns.values():
        if getattr(block_fn.fn, "__name__", None) == name:
            return block_fn
    raise AssertionError(f"no event handler {name}")


def _fn(demo, name):
    return _handler(demo, name).fn


def _outputs(demo, name, *args) -> dict:
    """What handler ``name`` returns, by its outputs' elem_id (or class name where they have none)."""
    block_fn = _handler(demo, name)
    keys = [o.elem_id or type(o).__name__ for o in block_fn.outputs]
    return dict(zip(keys, block_fn.fn(*args), strict=True))


def test_integrity_every_page_load_reads_the_database(tmp_path):
    """Profiles, pools and runs created after the UI was built (another tab, the CLI, a worker) appear on the
    next page load, and the browser's remembered profile is chosen again."""
    from idiolect.app.main import build_ui
    from idiolect.core.ingest.peers import import_peers
    from idiolect.core.ingest.pool import DEFAULT_POOL_DIR, open_store

    store = open_store(str(tmp_path / "app.db"))
    demo = build_ui(store)
    pid = store.create_profile("zoe")
    store.create_profile("amy")
    store.add_samples(pid, [{"text": "Zoe writes this."}])
    import_peers(store, sorted(DEFAULT_POOL_DIR.glob("*.jsonl"))[0], "fresh pool")
    run = store.create_run(pid, "cbpo", "m", {})
    store.update_run(run, status="running", pid=os.getpid(), stage="training", step=3, total_steps=9)
    out = _outputs(demo, "on_load", "zoe")
    profile_update, status_md, samples = out["profile"], out["status"], out["samples"]
    train_msg, timer, pool_update = out["train-progress"], out["Timer"], out["pool-pick"]
    assert profile_update["choices"] in (["amy", "zoe"], [("amy", "amy"), ("zoe", "zoe")])
    assert profile_update["value"] == "zoe"
    assert "fresh pool" in [c if isinstance(c, str) else c[0] for c in pool_update["choices"]]
    assert "Profile **zoe**: 1 samples" in status_md
    assert "Zoe writes this." in samples["text"].tolist()
    assert "training" in train_msg and "step 3/9" in train_msg
    assert timer.active  # the page keeps polling the running job
    assert _outputs(demo, "on_load", "deleted-profile")["profile"]["value"] == "amy"  # falls back to the first
    store.close()


# 5. Fresh seed per generation ------------------------------------------------------------------------------


def test_integrity_generations_get_fresh_seeds_that_reproduce(tiny_models):
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    seeds = {params.with_seed().seed for _ in range(20)}
    assert len(seeds) > 15
    gen = HFGenerator.from_pretrained(tiny_models["qwen2"], device="cpu")
    texts = {gen.generate("Review a restaurant.", params.with_seed()) for _ in range(4)}
    assert len(texts) > 1
    fixed = params.with_seed(1234)
    assert gen.generate("Review a restaurant.", fixed) == gen.generate("Review a restaurant.", fixed)
    assert fixed.to_dict()["seed"] == 1234  # what is stored with the generation


# 6. Rating while streaming ----------------------------------------------------------------------------------


def test_integrity_rating_is_off_until_both_texts_are_complete(tmp_path, tiny_models):
    from idiolect.app.main import build_ui
    from idiolect.core.ingest.pool import open_store

    store = open_store(str(tmp_path / "app.db"))
    pid = store.create_profile("ana")
    store.update_profile_settings("ana", model=str(tiny_models["qwen2"]))
    demo = build_ui(store)
    frames = list(_fn(demo, "stream_pair")("ana", None, "Describe rain.", 0.8, 16, None))
    *streaming, last = frames
    assert len(streaming) >= 2
    for text_a, text_b, ids, _label, *buttons in streaming:
        assert ids == [None, None]  # a rating now has nothing to refer to
        assert not text_a["interactive"] and not text_b["interactive"]  # nothing to edit yet
        assert all(b["interactive"] is False for b in buttons)
    text_a, text_b, ids, label, *buttons = last
    assert None not in ids and all(b["interactive"] for b in buttons) and text_a["interactive"]
    stored = [store.get_generation(i) for i in ids]
    assert [g["text"] for g in stored] == [text_a["value"], text_b["value"]]
    seeds = [json.loads(g["params"])["seed"] for g in stored]
    assert seeds[0] != seeds[1] and f"seeds {seeds[0]} / {seeds[1]}" in label
    # Rating a pair still streaming is refused; the finished pair is rated once.
    from idiolect.app.common import Ctx
    from idiolect.app.rate import rate

    with pytest.raises(IdiolectError, match="let both texts finish"):
        rate(Ctx(store), "ana", [None, None], 0, 1, "")
    rate(Ctx(store), "ana", ids, 0, 1, text_a["value"])
    assert len(store.list_feedback(pid)) == 1
    store.close()


# 7. Ctrl-C in the CLI ---------------------------------------------------------------------------------------


def test_integrity_ctrl_c_in_train_checkpoints_the_last_whole_step(pretrained_base, target_store):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "train", "--profile", "me", "--model", str(pretrained_base),
         "--pool", "others", "--steps", "400", "--save-every", "1000", "--db", str(target_store.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: (target_store.list_runs(1) or [{"step": 0}])[0]["step"] >= 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = target_store.list_runs(1)[0]
    assert proc.returncode == 130, err
    assert run["status"] == "cancelled" and run["step"] >= 3
    assert (run_dir(target_store, run["id"]) / f"checkpoint-{run['step']}" / "state.pt").exists(), err
    assert f"stopped at step {run['step']} (checkpoint saved)" in err
    assert "Traceback" not in err


# 8. Resume uses the recorded rows ---------------------------------------------------------------------------


def test_integrity_resume_trains_on_the_recorded_rows_and_plan(pretrained_base, target_store):
    from idiolect.core.training.runs import DATA_RECORD

    run = worker.start(target_store, "me", config(pretrained_base, steps=None, epochs=30))
    wait_until(lambda: target_store.get_run(run)["step"] >= 2)
    worker.cancel(target_store, run)
    wait_until(lambda: worker.status(target_store, run)["status"] == "cancelled", 60)
    cancelled = target_store.get_run(run)
    total = cancelled["total_steps"]
    record = json.loads((run_dir(target_store, run) / DATA_RECORD).read_text())
    # Between cancel and resume: a sample is edited, 30 are added.
    pid = target_store.get_profile("me")["id"]
    first = target_store.list_samples(pid)[0]
    target_store.update_sample(pid, first["id"], "An edit made after the run started.")
    target_store.add_samples(
        pid, [{"text": f"Added later, text {i}, well after the start."} for i in range(30)]
    )
    # A reference cache left unreadable by a kill is recomputed, not fatal.
    (run_dir(target_store, run) / "reference_logps.pt").write_bytes(b"")
    worker.resume(target_store, run)
    wait_until(lambda: worker.status(target_store, run)["status"] in ("completed", "failed"), 300)
    done = worker.status(target_store, run)
    assert done["status"] == "completed", done["error"]
    assert done["step"] == done["total_steps"] == total  # the plan it started with
    assert json.loads((run_dir(target_store, run) / DATA_RECORD).read_text()) == record
    trained = [r["text"] for rows in record["sets"]["train"].values() for r in rows]
    assert "An edit made after the run started." not in trained
    assert not any(t.startswith("Added later") for t in trained)
    assert done["result"]["counts"] == {
        f"{split}_{k}": len(v) for split, sets in record["sets"].items() for k, v in sets.items()
    }

    from idiolect.core.export.bundle import export

    manifest = export(target_store, "me", target_store.path.parent / "out", formats=["peft"]).manifest
    rows = manifest["training_run"]["training_data"]["rows"]
    recorded = {r["source"]: r["hash"] for sets in record["sets"].values() for r in sets["tar"]}
    named = rows["train"]["tar"] + rows["heldout"]["tar"]
    source = f"sample:{first['id']}"
    assert f"{source}#{recorded[source]}" in named


# 9. No dropout in preference objectives ---------------------------------------------------------------------


def test_integrity_preference_objectives_train_without_dropout(tiny_models):
    from idiolect.core.models.loading import load_hf_model

    for objective, dropout in (("cbpo", False), ("bco", False), ("sft", True)):
        base, tok, _ = load_hf_model(tiny_models["qwen2"], device="cpu")
        model = build_peft_model(TrainConfig(model="m", objective=objective, lora_dropout=0.05), base, "cpu")
        ps = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert (0.05 in ps) if dropout else ps <= {0.0}, (objective, ps)
        # In train mode, two policy passes agree exactly unless dropout is on (SFT keeps its configured one).
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        model.train()
        ids = torch.tensor([tok("Rain falls on the quiet street, and the cat watches it.")["input_ids"]])
        with torch.no_grad():
            same = torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        assert same != dropout, objective


# 10. Stages and a fast cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_integrity_a_run_reports_its_stage_and_cancels_fast_while_loading(
    pretrained_base, target_store, monkeypatch, sigint
):
    """Also where SIGINT is ignored, as in a worker started under nohup, systemd or a launcher (a process that
    inherits SIG_IGN): the cancel must not depend on the SIGINT disposition."""
    from idiolect.core.models import loading as core_models

    previous = signal.signal(
        signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler
    )
    try:
        _cancel_while_loading(pretrained_base, target_store, monkeypatch, core_models)
    finally:
        signal.signal(signal.SIGINT, previous)


def _cancel_while_loading(pretrained_base, target_store, monkeypatch, core_models):
    def slow_load(*args, **kwargs):
        for _ in range(600):  # a model that takes a minute to load
            time.sleep(0.1)
        raise AssertionError("loading was not interrupted")

    monkeypatch.setattr(core_models, "load_hf_model", slow_load)
    run = create_run(target_store, "me", config(pretrained_base))
    seen = []

    def cancel_soon():
        wait_until(lambda: target_store.get_run(run)["stage"] == "loading the model", 20)
        seen.append(worker.status(target_store, run)["activity"])
        worker.cancel(target_store, run)
        seen.append(worker.status(target_store, run)["activity"])

    threading.Thread(target=cancel_soon, daemon=True).start()
    started = time.monotonic()
    result = Trainer(target_store, run).run()
    assert time.monotonic() - started < 8
    assert result["status"] == "cancelled" and target_store.get_run(run)["status"] == "cancelled"
    assert seen == ["loading the model", "cancelling (was loading the model)"]


def test_integrity_cancel_cuts_a_slow_step_short_and_keeps_the_last_whole_one(pretrained_base, target_store):
    run = create_run(target_store, "me", config(pretrained_base, steps=50))
    trainer = Trainer(target_store, run)
    stages = []
    original = trainer._set_stage

    def record_stage(stage):
        stages.append(stage)
        original(stage)
        if stage == "training":  # from now on, every layer takes 0.3 s: one step takes many seconds
            from idiolect.core.training.logprobs import decoder_and_head

            decoder, _ = decoder_and_head(trainer._model)
            for layer in decoder.layers:
                layer.register_forward_pre_hook(lambda *a: time.sleep(0.3))

    trainer._set_stage = record_stage
    stopped_at = {}

    def cancel_in_step_two():
        wait_until(lambda: target_store.get_run(run)["step"] >= 1, 120)
        time.sleep(1.0)
        stopped_at["asked"] = time.monotonic()
        target_store.update_run(run, cancel_requested=1)

    threading.Thread(target=cancel_in_step_two, daemon=True).start()
    result = trainer.run()
    took = time.monotonic() - stopped_at["asked"]
    assert result == {"status": "cancelled", "step": result["step"]} and took < 5, took
    step = result["step"]
    assert [m["step"] for m in target_store.run_metrics(run)] == list(range(1, step + 1))
    assert (run_dir(target_store, run) / f"checkpoint-{step}").exists()
    assert any(s.startswith("computing reference log-probs") for s in stages)
    assert stages[:2] == ["loading the model", "reading your data"] and "training" in stages


# 11. Expected errors: one line, no traceback -----------------------------------------------------------------


def test_integrity_expected_user_errors_carry_no_traceback(tmp_path, capsys, monkeypatch):
    from idiolect.app import common
    from idiolect.app.main import build_ui
    from idiolect.core.ingest.pool import open_store

    shown = []
    monkeypatch.setattr(common, "toast", shown.append)
    store = open_store(str(tmp_path / "app.db"))
    demo = build_ui(store)
    # The handlers as wired in the page: an expected mistake is one message (a toast), no output changes.
    _fn(demo, "do_create")("")
    _fn(demo, "use")(None, "", "")
    assert shown[0].startswith("invalid profile name") and shown[1].startswith("Choose or create a profile")
    assert "Traceback" not in capsys.readouterr().err
    store.close()
