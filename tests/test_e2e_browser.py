"""End to end in a real browser: headless Chromium (Debian's) driven by Playwright against the app on 127.0.0.1
with a tiny model. Create a profile, add writing, choose the model, generate and rate, train, see the summary,
export -- checking what the page shows, what lands in SQLite and what lands on disk.

Set IDIOLECT_SCREENSHOTS=DIR to keep a screenshot of every tab, and IDIOLECT_E2E_MODEL=offline (or any model
the app takes) to walk the journey with a real model instead of the tiny one, so the texts are English (slow on a
CPU: the waits grow accordingly). docs/screenshots/ is made with both."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, TARGET_WRITER, running_app

from idiolect.core.ingest.pool import default_pool_rows

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


@pytest.fixture
def app(tmp_path):
    with running_app(tmp_path / "home", tmp_path / "app-terminal.log") as (url, _):  # the user's terminal output
        yield url, tmp_path / "home" / "idiolect.db"


REAL_MODEL = os.environ.get("IDIOLECT_E2E_MODEL")
SLOW = 8 if REAL_MODEL else 1  # a real model on a CPU: every wait on the model is this many times longer
STEPS = 8 if REAL_MODEL else 30


def test_first_time_user_journey(app, pretrained_base, tmp_path):
    url, db = app
    shots = Path(os.environ["IDIOLECT_SCREENSHOTS"]) if os.environ.get("IDIOLECT_SCREENSHOTS") else None
    texts = [r["text"] for r in default_pool_rows()[TARGET_WRITER]]
    pasted = "\n\n".join(texts)
    # One sample per paragraph; a paragraph that repeats (a sign-off) is kept once.
    n_blocks = len({" ".join(b.split()) for b in re.split(r"\n[ \t]*\n", pasted) if b.strip()})
    export_dir = tmp_path / "my-export"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)

        def shot(name):
            if shots:
                page.wait_for_timeout(1500)  # let the plots draw
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        def tab(name):
            page.get_by_role("tab", name=name).click()

        # An expected mistake (no name) is one message on the page, not a traceback in the terminal.
        page.click("#create-profile")
        page.get_by_text("invalid profile name").first.wait_for()

        # Profile & writing
        page.fill("#new-profile input, #new-profile textarea", "e2e")
        page.click("#create-profile")
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Profile e2e')")
        page.fill("#paste textarea", pasted)
        page.click("#add-paste")
        page.wait_for_function(
            f"document.querySelector('#import-report')?.innerText.includes('{n_blocks} added')"
        )
        assert f"{n_blocks} samples" in page.inner_text("#status")
        shot("1-profile-and-writing")

        # A reload and a second tab show the same profile and its samples (read per page load).
        def shows_profile(pg):
            pg.wait_for_function(
                f"document.querySelector('#status')?.innerText.includes('Profile e2e: {n_blocks} samples')"
            )
            pg.wait_for_function(
                f"document.querySelector('#page-info')?.innerText.includes('{n_blocks} samples in all')"
            )

        page.reload()
        shows_profile(page)
        second = browser.new_page(viewport={"width": 1280, "height": 900})
        second.set_default_timeout(60_000)
        second.goto(url)
        shows_profile(second)

        # Your writing: find a sample, click it, edit it; tick two rows, delete them, undo.
        probe = " ".join(texts[0].split()[:4])
        page.fill("#sample-search input, #sample-search textarea", probe)
        page.press("#sample-search input, #sample-search textarea", "Enter")
        page.wait_for_function("document.querySelector('#page-info')?.innerText.includes('matching')")
        page.locator("#samples").get_by_text(probe).last.click()
        page.wait_for_function("document.querySelector('#edit-text textarea')?.value.length > 0")
        opened = page.input_value("#edit-text textarea")
        assert opened.startswith(probe)  # the whole text, not the table's cut
        page.fill("#edit-text textarea", opened + " (edited in the browser)")
        page.click("#save-sample")
        page.wait_for_function("document.querySelector('#edit-status')?.innerText.includes('Saved sample')")
        page.fill("#sample-search input, #sample-search textarea", "")
        page.press("#sample-search input, #sample-search textarea", "Enter")
        page.wait_for_function(
            f"document.querySelector('#page-info')?.innerText.includes('{n_blocks} samples in all')"
        )
        boxes = page.locator("#samples input[type=checkbox]")  # the first one ticks the whole page
        boxes.nth(1).check()
        boxes.nth(2).check()
        page.click("#delete-ticked")
        page.wait_for_function(
            "document.querySelector('#edit-status')?.innerText.includes('Deleted 2 samples')"
        )
        assert f"{n_blocks - 2} samples" in page.inner_text("#status")
        page.click("#undo-delete")
        page.wait_for_function("document.querySelector('#edit-status')?.innerText.includes('Brought back 2')")
        assert f"{n_blocks} samples" in page.inner_text("#status")

        # Model
        tab("Model")
        page.fill("#custom-model input, #custom-model textarea", REAL_MODEL or str(pretrained_base))
        page.click("#use-model")
        page.wait_for_function(
            "document.querySelector('#model-status')?.innerText.includes('Using the')", timeout=SLOW * 60_000
        )
        shot("2-model")

        # Rate: generate two; A gets 👍 then 👎 (one label stays), B 👎 by keyboard shortcut.
        tab("Rate")
        page.fill("#prompt-own input, #prompt-own textarea", "Describe your morning coffee.")

        def generate_pair():
            # The label of a finished pair names its seeds: wait for a finished pair with other seeds.
            before = re.search(r"seeds \d+ / \d+", page.inner_text("#pair-label"))
            page.click("#generate-btn")
            page.wait_for_function(
                "([before]) => { const t = document.querySelector('#pair-label')?.innerText || '';"
                " return t.includes('rate each') && !(before && t.includes(before)); }",
                arg=[before.group(0) if before else None],
                timeout=SLOW * 120_000,
            )
            return page.input_value("#text-a textarea"), page.input_value("#text-b textarea")

        first_pair = generate_pair()
        assert first_pair[0].strip() and first_pair[1].strip()
        assert first_pair[0] != first_pair[1]  # both sides are the base here: fresh seeds per side
        page.click("#up-a")
        page.wait_for_function("document.querySelector('#rate-status')?.innerText.includes('Saved 👍 for A')")
        page.click("#down-a")
        page.wait_for_function("document.querySelector('#rate-status')?.innerText.includes('Saved 👎 for A')")
        page.click("#down-a")  # a double press counts once
        page.wait_for_function(
            "document.querySelector('#rate-status')?.innerText.includes('nothing changed')"
        )
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("4")
        page.wait_for_function("document.querySelector('#rate-status')?.innerText.includes('Saved 👎 for B')")
        shot("3-rate")
        second_pair = generate_pair()  # the same prompt again gives new texts
        assert second_pair[0] != first_pair[0] and second_pair[1] != first_pair[1]

        # Train a few steps in the worker process; the page polls its progress.
        tab("Train")
        page.fill("#train-steps input", str(STEPS))
        page.fill("#train-lr input", "0.001")
        page.click("#start-train")
        page.wait_for_function("document.querySelector('#train-progress')?.innerText.includes('Run 1')")
        # Mid-run, a reload and the second tab still show the job (and keep following it).
        for pg in (page, second):
            pg.reload()
            pg.get_by_role("tab", name="Train").click()
            pg.wait_for_function(
                "document.querySelector('#train-progress')?.innerText.includes('Run 1 (cbpo)')"
            )
        page.wait_for_function(
            "document.querySelector('#train-progress')?.innerText.includes('completed')",
            timeout=SLOW * 300_000,
        )
        # The run ends at its last step or earlier by early stopping, and says which step it kept.
        shown = page.inner_text("#train-progress")
        done = re.search(r"step (\d+)/(\d+)", shown)
        assert done and int(done.group(2)) == STEPS and "Early stopping: " in shown
        assert int(done.group(1)) == STEPS or f"stopped at step {done.group(1)}" in shown
        second.wait_for_function(
            "document.querySelector('#train-progress')?.innerText.includes('completed')", timeout=60_000
        )
        second.close()
        shot("4-train")

        # Rate, blind: after training one side is the adapter, named only once a side is rated.
        tab("Rate")
        page.fill(
            "#prompt-own input, #prompt-own textarea", "Describe your morning coffee."
        )  # the page was reloaded
        third_pair = generate_pair()
        assert "shown after you rate" in page.inner_text("#pair-label")
        page.click("#up-b")
        page.wait_for_function(
            "document.querySelector('#rate-status')?.innerText.includes('was your adapter (run 1)')"
        )
        assert third_pair[0] != third_pair[1]

        # "Sounds like me?": one held-out text of the user's and the adapter's answer; the pick is scored.
        page.click("#likeness")
        page.click("#likeness-new")
        page.wait_for_function(
            "document.querySelector('#likeness-1 textarea')?.value.length > 0"
            " && !document.querySelector('#likeness-pick-0').disabled",
            timeout=SLOW * 120_000,
        )
        shot("3b-sounds-like-me")
        page.click("#likeness-pick-0")
        page.wait_for_function(
            "document.querySelector('#likeness-result')?.innerText.includes('Run 1 has fooled you')"
        )
        tab("Train")
        page.wait_for_function("document.querySelector('#runs')?.innerText.includes('of 1 times')")
        page.locator("#compare-runs label", has_text="run 1").first.click()  # the run comparison plot
        page.wait_for_function("document.querySelector('#loss-plot canvas, #loss-plot svg')", timeout=60_000)

        # You vs. peers: differences and the summary chosen by lift.
        tab("You vs. peers")
        page.click("#analyze")
        page.wait_for_function(
            "document.querySelector('#summary-score')?.innerText.includes('more likely')",
            timeout=SLOW * 300_000,
        )
        assert "Writer A" in page.inner_text("#report")
        page.wait_for_function("document.querySelector('#summary-history')?.innerText.includes('Idiolect (')")
        summary = page.input_value("#summary textarea")
        assert len(summary) > 20
        shot("5-you-vs-peers")

        # Export
        tab("Export")
        page.fill("#export-folder input, #export-folder textarea", str(export_dir))
        page.click("#export-btn")
        page.wait_for_function(
            "document.querySelector('#export-report')?.innerText.includes('Exported run 1 (cbpo) to')",
            timeout=SLOW * 300_000,
        )
        assert "e2e-lora.gguf" in page.inner_text("#export-report")
        assert "ollama create" in page.inner_text("#export-commands") or "llama-server" in page.inner_text(
            "#export-commands"
        )
        with page.expect_download() as download:
            page.locator("#export-downloads tr", has_text="e2e-export").locator("a").first.click()
        zipped = tmp_path / "download.zip"
        download.value.save_as(zipped)
        import zipfile

        with zipfile.ZipFile(zipped) as z:
            assert "manifest.json" in z.namelist() and "e2e-lora.gguf" in z.namelist()
        page.click("#export-test")  # llama.cpp runs the exported GGUF LoRA
        page.wait_for_function(
            "document.querySelector('#export-test-answer textarea')?.value.length > 0", timeout=SLOW * 120_000
        )
        shot("6-export")

        # A second profile: nothing of e2e's is on any tab; back on e2e, all of it is; then scratch is deleted
        # after a confirmation that says what goes.
        page.fill("#new-profile input, #new-profile textarea", "scratch")
        page.click("#create-profile")
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Profile scratch')")

        def choose(name):
            page.click("#profile input")
            page.get_by_role("option", name=name, exact=True).click()
            page.wait_for_function(f"document.querySelector('#status')?.innerText.includes('Profile {name}')")

        for _ in range(2):  # there and back twice: a switch is not a one-off
            tab("Your writing")
            page.wait_for_function("document.querySelector('#page-info')?.innerText.includes('0 samples in all')")
            tab("Rate")
            assert page.input_value("#text-a textarea") == "" and page.input_value("#text-b textarea") == ""
            assert page.input_value("#likeness-0 textarea") == "" and page.is_disabled("#up-a")
            tab("Train")
            page.wait_for_function("document.querySelector('#train-progress')?.innerText.includes('No training run')")
            tab("You vs. peers")
            assert page.input_value("#summary textarea") == "" and "Writer A" not in page.inner_text("#report")
            tab("Export")
            assert "e2e-lora.gguf" not in page.inner_text("#export-report")
            assert "llama-server" not in page.inner_text("#export-commands")
            choose("e2e")
            tab("Your writing")
            page.wait_for_function(
                f"document.querySelector('#page-info')?.innerText.includes('{n_blocks} samples in all')"
            )
            tab("Train")
            page.wait_for_function("document.querySelector('#train-progress')?.innerText.includes('Run 1')")
            tab("You vs. peers")
            page.wait_for_function("document.querySelector('#summary textarea')?.value.length > 20")
            assert page.input_value("#summary textarea") == summary
            tab("Export")
            page.wait_for_function("document.querySelector('#export-run input')?.value.includes('run 1')")
            choose("scratch")
        page.click("#profile-manage")
        page.click("#delete-profile")
        page.wait_for_function(
            "document.querySelector('#delete-confirm')?.innerText.includes('Delete profile scratch?')"
        )
        page.click("#delete-yes")
        page.wait_for_function(
            "document.querySelector('#profile-manage-status')?.innerText.includes('Deleted profile scratch')"
        )
        browser.close()

    conn = sqlite3.connect(db)
    count = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    assert count("SELECT count(*) FROM samples") == n_blocks
    assert count("SELECT count(*) FROM samples WHERE text LIKE '%(edited in the browser)'") == 1
    assert count("SELECT count(*) FROM profiles WHERE name = 'scratch'") == 0
    assert count("SELECT count(*) FROM generations") == 6
    assert count("SELECT count(*) FROM likeness_tests WHERE picked_side IS NOT NULL AND run_id = 1") == 1
    current = conn.execute(
        "SELECT g.text, f.rating FROM feedback f JOIN generations g ON g.id = f.generation_id "
        "WHERE f.superseded_at IS NULL ORDER BY g.id"
    ).fetchall()
    # one label per generation
    assert current == [(first_pair[0], -1), (first_pair[1], -1), (third_pair[1], 1)]
    assert count("SELECT count(*) FROM feedback") == 4  # A's 👍 is kept as history
    assert count(f"SELECT count(*) FROM runs WHERE status = 'completed' AND total_steps = {STEPS}") == 1
    assert count("SELECT text FROM summaries ORDER BY version DESC LIMIT 1") == summary
    assert count("SELECT count(*) FROM exports") == 1
    assert (export_dir / "manifest.json").exists() and (export_dir / "e2e-lora.gguf").exists()
    assert (export_dir / "e2e-summary.txt").read_text().strip() == summary.strip()
    assert "Traceback" not in (tmp_path / "app-terminal.log").read_text()
