"""Each tab's handlers, called directly (no browser): what a user would see after each action, and the errors
they would get. The browser test walks the same journey through the page."""

from __future__ import annotations

import logging
import zipfile

import pandas as pd
import pytest

from idiolect.app import export as export_tab
from idiolect.app import profiles, rate, train, writing
from idiolect.app.common import Ctx, message_of
from idiolect.core.base.errors import IdiolectError
from idiolect.core.training.runs import adapter_dir


@pytest.fixture
def ctx(store):
    return Ctx(store)


def test_expected_errors_are_their_message_and_faults_go_to_the_log(caplog):
    assert message_of("x", IdiolectError("add at least 4 samples")) == "add at least 4 samples"
    with caplog.at_level(logging.ERROR, logger="idiolect.app"):
        try:
            raise KeyError("boom")
        except KeyError as exc:
            msg = message_of("train", exc)
    assert msg.startswith("Something went wrong (KeyError") and "Details are in the log" in msg
    assert "Traceback" in caplog.text


def test_writing_search_pages_edit_delete_undo_and_import_history(ctx):
    with pytest.raises(IdiolectError, match="profile first"):
        writing.add_pasted(ctx, None, "hello")
    profiles.create(ctx, "ana")
    pasted = "\n\n".join(
        f"Paragraph {i} about {'coffee' if i % 2 else 'tea'}, written slowly." for i in range(60)
    )
    assert "60 added" in writing.add_pasted(ctx, "ana", pasted)
    table, info, page = writing.samples_page(ctx, "ana", "", 1)
    assert len(table) == writing.PAGE_SIZE and "60 samples in all; page 1 of 3" in info
    table, info, page = writing.samples_page(ctx, "ana", "", 99)  # past the end: the last page
    assert page == 3 and len(table) == 10
    table, info, page = writing.samples_page(ctx, "ana", "coffee", 1)
    assert "30 samples matching “coffee”" in info and all("coffee" in t for t in table["text"])

    # Click a row: the whole sample opens; a save keeps its prompt unless the prompt box changed.
    sid = int(table["id"].iloc[0])
    ctx.store.update_sample(
        ctx.store.get_profile("ana")["id"], sid, table["text"].iloc[0], prompt="Why coffee?"
    )
    opened = writing.open_sample(ctx, "ana", sid)
    assert opened[1] == "Why coffee?" and opened[2].startswith("Paragraph")
    writing.save_sample(ctx, "ana", sid, opened[1], "A better paragraph.")
    s = ctx.store.get_sample(ctx.store.get_profile("ana")["id"], sid)
    assert (s["prompt"], s["text"]) == ("Why coffee?", "A better paragraph.")
    with pytest.raises(IdiolectError, match="Click the sample"):
        writing.save_sample(ctx, "ana", None, "", "text")

    # Tick three rows and delete them; undo brings them back with their ids.
    table["delete?"] = [i < 3 for i in range(len(table))]
    ticked = writing.ticked_ids(table)
    msg, undo = writing.delete_ticked(ctx, "ana", table, [])
    assert "Deleted 3 samples" in msg and writing.samples_page(ctx, "ana", "coffee")[1].startswith(
        "27 samples"
    )
    with pytest.raises(IdiolectError, match="Tick the samples"):
        writing.delete_ticked(ctx, "ana", table.assign(**{"delete?": False}), undo)
    msg, undo = writing.undo_delete(ctx, "ana", undo)
    assert msg == "Brought back 3 samples." and undo == []
    assert set(ticked) <= {s["id"] for s in ctx.store.list_samples(ctx.store.get_profile("ana")["id"])}
    with pytest.raises(IdiolectError, match="Nothing to undo"):
        writing.undo_delete(ctx, "ana", undo)

    # The import history names the paste; undoing it removes what it added (edited ones too), undoably.
    (label, import_id), = writing.import_choices(ctx, "ana")  # fmt: skip
    assert "pasted text" in label and "60 added, 60 still here" in label
    msg, undo = writing.undo_import(ctx, "ana", import_id, [])
    assert "removed 60 samples" in msg and writing.samples_page(ctx, "ana")[1].startswith("0 samples")
    assert "undone" in writing.import_choices(ctx, "ana")[0][0]
    writing.undo_delete(ctx, "ana", undo)
    assert writing.samples_page(ctx, "ana")[1].startswith("60 samples")


def test_ticked_rows_come_from_the_table_as_the_browser_sends_it():
    as_sent = pd.DataFrame([["true", 4, "", "", "a"], ["false", 5, "", "", "b"], [True, 9, "", "", "c"]],
                           columns=writing.COLUMNS)  # fmt: skip
    assert writing.ticked_ids(as_sent) == [4, 9]
    assert writing.ticked_ids(None) == []


def test_profile_rename_and_delete_with_a_confirmation_that_names_what_goes(ctx):
    profiles.create(ctx, "ana")
    with pytest.raises(IdiolectError, match="already exists"):
        profiles.create(ctx, "ana")
    writing.add_pasted(ctx, "ana", "one\n\ntwo")
    assert profiles.rename(ctx, "ana", "ana-b") == "ana-b"
    question = profiles.what_delete_removes(ctx, "ana-b")
    assert "Delete profile ana-b?" in question and "2 samples" in question and "0 training runs" in question
    assert profiles.delete(ctx, "ana-b").startswith("Deleted profile ana-b (2 samples")
    assert profiles.names(ctx) == []


def test_train_tab_offers_every_objective_default_first_and_checks_settings(ctx):
    choices = train.objective_choices()
    assert choices[0][1] == train.DEFAULTS.objective and "(default)" in choices[0][0]
    assert {v for _, v in choices} >= {"cbpo", "kto", "sft", "bco"}
    profiles.create(ctx, "ana")
    from idiolect.app import common

    with pytest.MonkeyPatch.context() as mp:  # no offline model installed, none chosen: say what to do
        mp.setattr(common, "default_model", lambda: None)
        with pytest.raises(IdiolectError, match="base model first"):
            train.start(ctx, "ana", "kto", 0, 3, 1e-4, 4, 8, 512)
    ctx.store.update_profile_settings("ana", model="/nowhere")
    with pytest.raises(IdiolectError, match="LoRA|lora r|at least 1"):
        train.start(ctx, "ana", "kto", 0, 3, 1e-4, 4, 0, 512)
    assert train.progress_md(ctx, "ana") == "No training run yet." and train.loss_per_step(ctx, "ana") is None
    with pytest.raises(IdiolectError, match="Nothing is training"):
        train.cancel(ctx, "ana")


def test_rate_refuses_before_a_pair_exists(ctx):
    profiles.create(ctx, "ana")
    with pytest.raises(IdiolectError, match="Generate first"):
        rate.rate(ctx, "ana", [None, None], 0, 1, "text")
    with pytest.raises(IdiolectError, match="prompt"):
        next(rate.generate_pair(ctx, "ana", None, "  ", 0.8, 16, ""))
    pid = ctx.store.get_profile("ana")["id"]
    gen = ctx.store.add_generation(pid, "p", "a text")
    assert rate.rate(ctx, "ana", [gen, None], 0, 1, "a text").startswith("Saved 👍 for A")
    assert "nothing changed" in rate.rate(ctx, "ana", [gen, None], 0, 1, "a text")
    assert rate.undo(ctx, "ana", [gen, None], 0) == "Took back the rating of A."
    assert rate.history(ctx, "ana").empty


def test_export_offers_a_zip_and_each_file(ctx, tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    files = [folder / "ana-summary.txt", folder / "sub" / "adapter.bin"]
    files[0].write_text("Writes tersely.")
    files[1].write_bytes(b"\0" * 10)
    paths = export_tab.download_copy(folder, files, "ana")
    assert paths[0].endswith("ana-export.zip") and len(paths) == 3
    with zipfile.ZipFile(paths[0]) as z:
        assert sorted(z.namelist()) == ["ana-summary.txt", "sub/adapter.bin"]
        assert z.read("ana-summary.txt") == b"Writes tersely."


def test_you_vs_peers_speaks_in_words_and_names_writers_by_letter(ctx):
    from idiolect.app import peers

    assert peers.percent(0.0) == "+0.0%" and peers.percent(0.1) == "+10.5%"
    words = peers.score_words(0.05, 0.01)
    assert "+5.1% more likely" in words and "generic summary: +1.0%" in words and "nats" not in words
    pool = ctx.store.ensure_pool("p")
    ctx.store.add_peer_texts(pool["id"], [{"writer": "peer-5f8cfb921d", "text": "Grind fine. " * 20},
                                          {"writer": "peer-0a", "text": "Short one."}])  # fmt: skip
    md = peers.writers_md(ctx, "p", ["peer-5f8cfb921d", "peer-0a"])
    assert (
        "**Writer A**: “Grind fine." in md
        and md.count("Grind") == 15
        and "fine. …”" in md
        and "**Writer B**: “Short one.”" in md
    )
    assert "peer-5f8cfb921d" not in md
    profiles.create(ctx, "ana")
    pid = ctx.store.get_profile("ana")["id"]
    ctx.store.add_summary(pid, "Writes tersely.", "dpl", score=0.05)
    ctx.store.add_summary(pid, "Writes tersely, no emoji.", "user")
    hist = peers.summary_history(ctx, "ana")
    assert hist["version"].tolist() == [2, 1] and hist["helps the model by"].tolist() == [
        "not scored",
        "+5.1%",
    ]
    assert peers.latest_summary(ctx, "ana")[1] == "Summary v2: edited by you (not scored)."


def test_the_train_estimate_comes_from_this_machines_last_run_on_the_model(tmp_path):
    from idiolect.core.ingest.pool import open_store

    store = open_store(str(tmp_path / "app.db"))
    ctx = Ctx(store)
    profiles.create(ctx, "ana")
    writing.add_pasted(ctx, "ana", "\n\n".join(f"My text number {i}, in my own words." for i in range(20)))
    store.update_profile_settings("ana", model="tiny-model")
    settings = ("cbpo", 0, 3, 1e-4, 4, 8, 256)
    first = train.estimate_md(ctx, "ana", *settings)
    assert (
        first.startswith("12 steps over 15 of your texts. 3 more are not trained on: they are scored during the run")
        and "no run on this model has been measured" in first
    )
    other = profiles.create(ctx, "bo")
    run = store.create_run(store.get_profile(other)["id"], "cbpo", "tiny-model",
                           {"batch_size": 2, "max_length": 128, "model": "tiny-model"})  # fmt: skip
    for step, secs in enumerate([9.0, 1.0, 1.2, 0.8], start=1):  # the first step (warm-up) is left out
        store.log_metrics(run, step, {"seconds": secs, "peak_memory_mb": 2048 + step})
    est = train.estimate_md(ctx, "ana", *settings)
    # 12 steps x 1.0 s median x (4 x 256) / (2 x 128) = 48 s
    assert (
        "On this machine: about 48 s, peak memory about 2.0 GiB (scaled from run 1 on the same model)" in est
    )
    store.close()


def test_chat_replies_are_stored_with_their_conversation_and_any_can_be_rated(ctx, pretrained_base):
    profiles.create(ctx, "ana")
    ctx.store.update_profile_settings("ana", model=str(pretrained_base))
    frames = list(rate.chat_reply(ctx, "ana", [], "What do you drink in the morning?", 0.8, 8))
    history, ids = frames[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and ids == {1: ids[1]}
    frames = list(rate.chat_reply(ctx, "ana", history, "And after lunch?", 0.8, 8))
    history, more = frames[-1]
    g = ctx.store.get_generation(more[3])
    assert g["prompt"].startswith("Me: What do you drink in the morning?\n\nAssistant: ")
    assert g["prompt"].endswith("\n\nAnd after lunch?") and g["text"] == history[3]["content"]
    assert rate.chat_rate(ctx, "ana", {**ids, **more}, 3, False).startswith("Saved 👎 for that reply")
    assert rate.chat_rate(ctx, "ana", {"1": ids[1]}, [1], True).startswith(
        "Saved 👍"
    )  # as the browser sends it
    with pytest.raises(IdiolectError, match="Only the assistant's finished replies"):
        rate.chat_rate(ctx, "ana", ids, 0, True)
    with pytest.raises(IdiolectError, match="Type a message"):
        next(rate.chat_reply(ctx, "ana", history, "  ", 0.8, 8))
    assert len(rate.history(ctx, "ana")) == 2


def test_a_failing_handler_shows_one_toast_and_leaves_every_output_as_it_was(monkeypatch):
    import gradio as gr

    from idiolect.app import common

    shown = []
    monkeypatch.setattr(common, "toast", shown.append)
    wire = lambda fn, inputs, outputs, **kw: fn  # noqa: E731 - stands in for button.click: returns the wrapper

    def fails(name):
        raise IdiolectError(f"no profile named {name!r}")

    handler = common.on(wire, fails, ["in"], ["a", "b"])
    assert handler("ghost") == (gr.skip(), gr.skip()) and shown == ["no profile named 'ghost'"]
    assert common.on(wire, fails, ["in"], ["a"])("x") == gr.skip()

    def streams(n):
        yield "first"
        raise IdiolectError("stopped half way")

    assert list(common.on(wire, streams, ["in"], ["a"])(1)) == ["first", gr.skip()]
    assert shown[-1] == "stopped half way"


def test_summary_versions_show_as_a_table(ctx):
    from idiolect.app import peers

    profiles.create(ctx, "ana")
    assert peers.history_md(ctx, "ana") == "No versions of your summary yet."
    ctx.store.add_summary(ctx.store.get_profile("ana")["id"], "Short | plain.", "popi:concise", score=0.05)
    md = peers.history_md(ctx, "ana")
    assert "| 1 |" in md and "Idiolect (concise)" in md and "+5.1%" in md and "Short \\| plain." in md


def test_a_chat_export_can_be_previewed_then_added(ctx, tmp_path):
    import json

    from test_chat_import import openwebui_chat

    ctx.store.create_profile("ana")
    f = tmp_path / "chat-export.json"
    f.write_text(json.dumps([openwebui_chat()]))
    preview = writing.add_files(ctx, "ana", [str(f)], dry_run=True)
    assert (
        "[openwebui]" in preview and "2 would be added" in preview and "ratings: 2 would be added" in preview
    )
    assert "nothing was added" in preview
    pid = ctx.store.get_profile("ana")["id"]
    assert ctx.store.list_samples(pid) == [] and ctx.store.list_feedback(pid) == []
    added = writing.add_files(ctx, "ana", [str(f)])
    assert "2 added" in added and len(ctx.store.list_feedback(pid)) == 2


def test_a_run_before_its_first_step_shows_the_reference_pass_and_the_status_says_it_trains(ctx):
    """The reference pass used to show 0% for minutes, and the status line said "Next: train your adapter"
    while a run was training."""
    import os

    from idiolect.app.common import status

    profiles.create(ctx, "ana")
    pid = ctx.store.get_profile("ana")["id"]
    run = ctx.store.create_run(pid, "cbpo", "m", {"model": "m"})
    ctx.store.update_run(run, status="running", pid=os.getpid(), stage="computing reference log-probs 30/120",
                         step=0, total_steps=9)  # fmt: skip
    shown = train.progress_md(ctx, "ana")
    assert "computing reference log-probs 30/120" in shown and "that pass 25% done" in shown
    assert "<progress value='30' max='120'" in shown
    assert f"run {run} is training" in status(ctx, "ana") and "train your adapter" not in status(ctx, "ana")


def test_export_names_the_run_and_ticks_only_what_the_profile_has(ctx, tmp_path):
    profiles.create(ctx, "ana")
    assert export_tab.run_choices(ctx, "ana") == [] and export_tab.default_formats(ctx, "ana") == list(
        export_tab.DEFAULT_FORMATS
    )  # nothing yet: the export refuses with its reason
    pid = ctx.store.get_profile("ana")["id"]
    run = ctx.store.create_run(pid, "kto", "m", {"model": "/models/base.gguf"})
    ctx.store.update_run(run, status="completed", finished_at="2026-12-06T21:30:00Z")
    assert export_tab.run_choices(ctx, "ana") == []  # completed, but its adapter is gone: nothing to export
    adapter_dir(ctx.store, ctx.store.get_run(run)).mkdir(parents=True)
    assert export_tab.run_choices(ctx, "ana") == [(f"run {run} (kto, base.gguf, 2026-12-06 21:30)", run)]
    assert export_tab.default_formats(ctx, "ana") == ["peft", "gguf"]  # no summary yet: not ticked
    ctx.store.add_summary(pid, "Writes tersely.", "user")
    assert "summary" in export_tab.default_formats(ctx, "ana")
    with pytest.raises(IdiolectError, match="nothing is exported in .* yet"):  # was a raw [Errno 2]
        export_tab.try_it(ctx, "ana", str(tmp_path / "never"), "hi")


def test_a_dequantized_copy_is_named_as_a_copy_of_its_gguf_file():
    from idiolect.app.model import disk_row

    row = disk_row({"kind": "dequantized", "path": "/m/a.gguf", "folder": "/data/dequantized/a-1234", "bytes": 2e9})
    assert row == "dequantized copy of /m/a.gguf in /data/dequantized/a-1234 (2.00 GB)"
    assert disk_row({"kind": "gguf", "path": "/m/a.gguf", "bytes": 0}) == "gguf: /m/a.gguf"


def test_the_loss_plot_colours_each_drawn_run_as_its_legend_names_it(ctx):
    profiles.create(ctx, "ana")
    pid = ctx.store.get_profile("ana")["id"]
    first, second = (ctx.store.create_run(pid, obj, "m", {"model": "/m"}) for obj in ("kto", "cbpo"))
    for step, loss in ((1, 0.9), (2, 0.7)):
        ctx.store.log_metrics(first, step, {"loss": loss})
    data = train.loss_per_step(ctx, "ana", [first, second])  # the second has no step yet: no series
    assert sorted(set(data["run"])) == [f"run {first} (kto)"]
    assert train.loss_per_step(ctx, "ana") is None  # default: the latest run only, which has no step yet
    colours = train.colours(ctx, "ana", [first, second])["color_map"]
    assert colours == {f"run {first} (kto)": train.RUN_COLOURS[first % len(train.RUN_COLOURS)]}
    assert train.run_choices(ctx, "ana") == [(f"run {second} (cbpo)", second), (f"run {first} (kto)", first)]
