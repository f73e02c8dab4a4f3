"""Switching profile in a real browser (Playwright + Debian's Chromium): nothing of the last profile stays on
screen, is rated or is imported under the next one; and the run comparison draws every run ticked.
Selected by ``pytest -k profile_switch``."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, TARGET_WRITER, running_app

from idiolect.core.ingest.pool import default_pool_rows
from idiolect.core.store import Store

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


@pytest.fixture
def two_profiles(tmp_path):
    """A data folder with profiles ana and ben (ana first), each with some writing; yields (home, store)."""
    from idiolect.core.ingest.pool import ensure_defaults

    home = tmp_path / "home"
    home.mkdir()
    store = Store(home / "idiolect.db")
    ensure_defaults(store)
    texts = [r["text"] for r in default_pool_rows()[TARGET_WRITER]]
    for name, mine in (("ana", texts[:12]), ("ben", texts[12:16])):
        store.add_samples(store.create_profile(name), [{"text": t} for t in mine])
    yield home, store
    store.close()


@pytest.fixture
def browser_page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _choose_profile(page, name):
    page.click("#profile input")
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(f"document.querySelector('#status')?.innerText.includes('Profile {name}')")


def _has(page, selector, text):
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)", arg=[selector, text]
    )


def _samples(db, name):
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT count(*) FROM samples s JOIN profiles p ON p.id = s.profile_id WHERE p.name = ?", (name,)
        ).fetchone()[0]


def test_profile_switch_never_imports_the_last_profiles_upload(two_profiles, browser_page, tmp_path):
    """A file picked under ana stays ana's: after a switch to ben the upload box is empty, so a refused pick
    followed by "Add files" imports nothing into ben; a report names the file, not the server's upload path."""
    home, _ = two_profiles
    db = home / "idiolect.db"
    mine = tmp_path / "anas-notes.txt"
    mine.write_text("Ana's first note, written for ana only.\n\nAnd a second one of hers.\n", encoding="utf-8")
    his = tmp_path / "bens-notes.txt"
    his.write_text("Ben's own note.\n\nAnother of his.\n", encoding="utf-8")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\0" * 16)
    before = {name: _samples(db, name) for name in ("ana", "ben")}
    page = browser_page
    with running_app(home, tmp_path / "app-terminal.log") as (url, _):
        page.goto(url)
        _has(page, "#status", "Profile ana")
        page.locator("#writing-files input[type=file]").set_input_files(str(mine))
        _has(page, "#writing-files", "anas-notes.txt")
        _choose_profile(page, "ben")
        page.wait_for_function("!(document.querySelector('#writing-files')?.innerText || '').includes('anas-notes')")
        page.locator("#writing-files input[type=file]").set_input_files(str(bad))  # refused by its type
        page.wait_for_timeout(1000)
        page.click("#add-files")
        page.get_by_text("Pick one or more files first").first.wait_for()
        assert {name: _samples(db, name) for name in ("ana", "ben")} == before
        # Picked under ben and added: it lands in ben, the report names the file as the user picked it.
        page.locator("#writing-files input[type=file]").set_input_files(str(his))
        _has(page, "#writing-files", "bens-notes.txt")
        page.click("#add-files")
        _has(page, "#import-report", "bens-notes.txt -> profile ben: 2 added")
        assert "uploads-" not in page.inner_text("#import-report")
        page.wait_for_function("!(document.querySelector('#writing-files')?.innerText || '').includes('bens-notes')")
        assert {name: _samples(db, name) for name in ("ana", "ben")} == {**before, "ben": before["ben"] + 2}
    assert "Traceback" not in (tmp_path / "app-terminal.log").read_text()


def test_profile_switch_clears_every_view_of_the_last_profile(two_profiles, browser_page, pretrained_base,
                                                              tmp_path):  # fmt: skip
    """ana's A/B pair, "Sounds like me?" texts, summary and export are on screen; after a switch to ben none of
    them is, the rating buttons are off and the export offers ben's runs (none); back on ana, ana's run is
    offered again."""
    from idiolect.core.training.config import TrainConfig
    from idiolect.core.training.runs import create_run
    from idiolect.core.training.trainer import Trainer

    home, store = two_profiles
    store.update_profile_settings("ana", model=str(pretrained_base))
    store.update_profile_settings("ben", model=str(pretrained_base))
    cfg = TrainConfig(model=str(pretrained_base), objective="sft", steps=2, batch_size=4, max_length=64,
                      heldout_fraction=0.3, validation_fraction=0.0, save_every=1000)  # fmt: skip
    assert Trainer(store, create_run(store, "ana", cfg)).run()["status"] == "completed"
    store.add_summary(store.get_profile("ana")["id"], "Writes short, plain sentences about ana's coffee.", "user")
    page = browser_page
    with running_app(home, tmp_path / "app-terminal.log") as (url, _):
        page.goto(url)
        _has(page, "#status", "Profile ana")
        page.get_by_role("tab", name="Rate").click()
        page.fill("#prompt-own textarea, #prompt-own input", "Describe your morning coffee.")
        page.click("#generate-btn")
        _has(page, "#pair-label", "rate each")
        assert page.input_value("#text-a textarea")
        page.click("#likeness")
        page.click("#likeness-new")
        page.wait_for_function("document.querySelector('#likeness-1 textarea')?.value.length > 0")
        page.get_by_role("tab", name="You vs. peers").click()
        page.wait_for_function("document.querySelector('#summary textarea')?.value.includes(\"ana's coffee\")")
        page.get_by_role("tab", name="Export").click()
        page.wait_for_function("document.querySelector('#export-run input')?.value.includes('run 1')")
        page.click("#export-btn")
        _has(page, "#export-report", "Exported run 1 (sft)")
        _has(page, "#export-commands", "llama-server")

        _choose_profile(page, "ben")
        page.wait_for_function("!(document.querySelector('#export-report')?.innerText || '').includes('Exported')")
        assert "llama-server" not in page.inner_text("#export-commands")
        assert page.input_value("#export-run input") == ""
        page.get_by_role("tab", name="You vs. peers").click()
        assert page.input_value("#summary textarea") == ""
        page.get_by_role("tab", name="Rate").click()
        shown = [page.input_value(f"#text-{s} textarea") for s in "ab"]
        assert shown == ["", ""], shown
        assert page.inner_text("#pair-label").strip() == ""
        assert page.is_disabled("#up-a") and page.is_disabled("#down-b")
        assert page.input_value("#likeness-0 textarea") == "" and page.input_value("#likeness-1 textarea") == ""
        assert page.is_disabled("#likeness-pick-0")

        _choose_profile(page, "ana")
        page.get_by_role("tab", name="Export").click()
        page.wait_for_function("document.querySelector('#export-run input')?.value.includes('run 1')")
        page.get_by_role("tab", name="You vs. peers").click()
        page.wait_for_function("document.querySelector('#summary textarea')?.value.includes(\"ana's coffee\")")
    assert "Traceback" not in (tmp_path / "app-terminal.log").read_text()


def _legend(page) -> list[str]:
    """The series the loss plot's legend names (Vega draws it as SVG text)."""
    texts = page.evaluate(
        "Array.from(document.querySelectorAll('#loss-plot svg text')).map(t => t.textContent)"
    )
    return sorted(t for t in texts if t.startswith("run ") and "(" in t)


def test_profile_switch_run_comparison_draws_every_ticked_run(two_profiles, browser_page, tmp_path):
    """Two runs ticked: both in the plot and its legend; only the older ticked: it alone. After a switch to
    ben and back, a comparison still draws what is ticked."""
    home, store = two_profiles
    pid = store.get_profile("ana")["id"]
    for k, objective in enumerate(("cbpo", "sft")):  # what a finished run leaves: its loss per step
        run = store.create_run(pid, objective, "m", {"model": "m", "steps": 5})
        for step in range(1, 6):
            store.log_metrics(run, step, {"loss": 3.0 - 0.3 * step - k, "seconds": 1.0})
        store.update_run(run, status="completed", total_steps=5, step=5, result={"eval": {}})
    page = browser_page

    def shows(expected):
        page.wait_for_function(
            "([want]) => { const t = Array.from(document.querySelectorAll('#loss-plot svg text'))"
            ".map(e => e.textContent).filter(s => s.startsWith('run ') && s.includes('(')).sort();"
            " return JSON.stringify(t) === JSON.stringify(want); }",
            arg=[sorted(expected)],
            timeout=30_000,
        )

    def tick(label):
        page.locator("#compare-runs label", has_text=label).first.click()

    with running_app(home, tmp_path / "app-terminal.log") as (url, _):
        page.goto(url)
        _has(page, "#status", "Profile ana")
        page.get_by_role("tab", name="Train").click()
        shows(["run 2 (sft)"])  # the latest, by default
        tick("run 2")
        tick("run 1")
        shows(["run 1 (cbpo)", "run 2 (sft)"])
        tick("run 2")
        shows(["run 1 (cbpo)"])
        _choose_profile(page, "ben")
        page.wait_for_function(  # ben has no run: no plot (ana's curves gone)
            "() => { const e = document.querySelector('#loss-plot'); return !e || e.offsetParent === null"
            " || !e.querySelector('svg'); }"
        )
        _choose_profile(page, "ana")
        page.get_by_role("tab", name="Train").click()
        shows(["run 2 (sft)"])
        tick("run 1")
        shows(["run 1 (cbpo)"])
        tick("run 2")
        shows(["run 1 (cbpo)", "run 2 (sft)"])
        assert _legend(page) == ["run 1 (cbpo)", "run 2 (sft)"]
    assert "Traceback" not in (tmp_path / "app-terminal.log").read_text()
