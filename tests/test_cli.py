"""The headless CLI as a user runs it: `python launch.py SUBCOMMAND ...` in a fresh process."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

from conftest import ROOT

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
URL = re.compile(r"https?://|\bwww\.|\b[\w-]+\.(?:com|org|net|io|edu|gov)\b", re.IGNORECASE)


def cli(*args, env_home=None):
    env = None
    if env_home is not None:
        import os

        env = {**os.environ, "IDIOLECT_HOME": str(env_home)}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def test_help_documents_every_subcommand():
    out = cli("--help")
    assert out.returncode == 0
    for sub in ("import-peers", "add-samples", "stats"):
        assert sub in out.stdout
        sub_help = cli(sub, "--help")
        assert sub_help.returncode == 0 and "--db" in sub_help.stdout


def test_import_real_stackexchange_dump(tmp_path, beer_posts):
    db = tmp_path / "x.db"
    out = cli("import-peers", beer_posts, "--pool", "beer", "--db", db)
    assert out.returncode == 0, out.stderr
    assert "added" in out.stdout
    stats = json.loads(cli("stats", "--json", "--db", db).stdout)
    beer = stats["pools"]["beer"]
    assert beer["writers_with_3_plus"] >= 100
    assert stats["pools"]["default"]["writers"] >= 30  # the bundled pool is loaded on first start
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT t.text, t.context, t.writer, t.attribution FROM peer_texts t JOIN peer_pools p ON p.id = t.pool_id "
        "WHERE p.name = 'beer'"
    ).fetchall()
    assert len(rows) == beer["texts"] > 1000
    leaks = [
        (text[:80], m.group())
        for text, ctx, *_ in rows
        for s in (text, ctx)
        for m in [EMAIL.search(s or "") or URL.search(s or "")]
        if m
    ]
    assert leaks == []
    # Attribution is kept, but apart: never the writer's name.
    assert all(a and "users/" in a for *_, a in rows)
    assert all(re.fullmatch(r"peer-[0-9a-f]{10}", w) for _, _, w, _ in rows)
    # Importing the same file again adds nothing.
    again = cli("import-peers", beer_posts, "--pool", "beer", "--db", db, "--json")
    assert json.loads(again.stdout)["added"] == 0


def test_add_samples_reports_bad_rows_and_exit_code(tmp_path):
    db = tmp_path / "x.db"
    good = tmp_path / "mine.txt"
    good.write_text("My first note.\n\nMy second note.")
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    out = cli("add-samples", good, bad, "--profile", "sam", "--db", db)
    assert out.returncode == 0, out.stderr
    assert "mine.txt -> profile sam: 2 added" in out.stdout
    assert "skipped line 2: not valid JSON" in out.stdout
    assert "profile sam: 3 samples in all" in out.stdout
    missing = cli("add-samples", tmp_path / "nope.txt", "--profile", "sam", "--db", db)
    assert missing.returncode == 1 and "no such file" in missing.stdout
    stats = json.loads(cli("stats", "--json", "--db", db).stdout)
    assert stats["profiles"]["sam"]["samples"] == 3


def test_errors_are_one_line_without_traceback(tmp_path):
    out = cli("import-peers", tmp_path / "missing.xml", "--pool", "p", "--db", tmp_path / "x.db")
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:") and "Traceback" not in out.stderr
    out = cli("add-samples", tmp_path, "--profile", "../evil", "--db", tmp_path / "x.db")
    assert out.returncode == 1 and "invalid profile name" in out.stderr and "Traceback" not in out.stderr


def test_default_db_lives_in_the_data_dir(tmp_path):
    out = cli("stats", "--json", env_home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["db"] == str(tmp_path / "home" / "idiolect.db")


def test_own_answers_in_a_stackexchange_dump_become_samples_not_peers(beer_posts, tmp_path):
    from collections import Counter

    from idiolect.core.ingest.stackexchange import read_stackexchange

    rows, _, _ = read_stackexchange(beer_posts)
    me, mine = Counter(r["original_writer"].split(":")[-1] for r in rows).most_common(1)[0]
    db = tmp_path / "se.db"
    # An earlier import without --me put the user's answers in the pool; --me takes them out again.
    assert cli("import-peers", beer_posts, "--pool", "beer", "--db", db).returncode == 0
    writers_before = (
        sqlite3.connect(db).execute("SELECT count(DISTINCT writer) FROM peer_texts").fetchone()[0]
    )
    out = cli("import-peers", beer_posts, "--pool", "beer", "--me", me, "--profile", "sam", "--db", db)
    assert out.returncode == 0, out.stderr
    assert f"your own texts: {mine} added to your profile" in out.stdout and f"({mine} removed" in out.stdout
    conn = sqlite3.connect(db)
    samples = conn.execute("SELECT prompt, text FROM samples").fetchall()
    assert len(samples) == mine and all(p for p, _ in samples)  # each answer with its question as the prompt
    assert conn.execute("SELECT count(DISTINCT writer) FROM peer_texts").fetchone()[0] == writers_before - 1
    own_texts = {t for _, t in samples}
    assert not own_texts & {t for (t,) in conn.execute("SELECT text FROM peer_texts")}
    wrong = cli("import-peers", beer_posts, "--pool", "beer", "--me", "no-such-user", "--db", db)
    assert wrong.returncode == 1 and "no texts by 'no-such-user'" in wrong.stdout


def test_train_flags_come_from_the_config_dataclass(tmp_path):
    """One source of defaults: the `train` command's flags give exactly TrainConfig's defaults, every flag has a
    field, and the app's Train tab starts at the same values."""
    from idiolect.core.cli import build_parser
    from idiolect.core.training import config

    args = build_parser().parse_args(["train", "--profile", "me", "--model", "m"])
    assert config.from_args(args, "m") == config.TrainConfig(model="m")
    args = build_parser().parse_args(
        ["train", "--model", "m", "--lr", "3e-3", "--lora-r", "4", "--pi", "0.2"]
    )
    cfg = config.from_args(args, "m")
    assert (cfg.lr, cfg.lora_r, cfg.lora_alpha, cfg.pi) == (3e-3, 4, 8, 0.2)
    # The Train tab's fields, as built, start at the config's defaults.
    from idiolect.app.main import build_ui
    from idiolect.core.ingest.pool import open_store

    store = open_store(str(tmp_path / "ui.db"))
    try:
        shown = {b.elem_id: getattr(b, "value", None) for b in build_ui(store).blocks.values() if b.elem_id}
    finally:
        store.close()
    want = config.defaults()
    fields = {"objective": "objective", "train-epochs": "epochs", "train-lr": "lr", "train-rank": "lora_r",
              "train-max-length": "max_length", "train-batch": "batch_size"}  # fmt: skip
    assert {k: shown.get(k) for k in fields} == {k: want[v] for k, v in fields.items()}
