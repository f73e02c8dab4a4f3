from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import pytest

from core.errors import IdiolectError
from core.store import SCHEMA_VERSION, Store


def test_fresh_store_is_current_wal_with_foreign_keys(store):
    assert store.schema_version == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.backup_path is None  # nothing to back up on a new file
    assert store.integrity_check() == "ok"


def test_migration_from_v1_keeps_rows_and_leaves_a_backup(tmp_path):
    path = tmp_path / "old.db"
    old = Store(path, target_version=1)
    assert old.schema_version == 1
    c = old.conn
    c.execute("INSERT INTO profiles (id, name, created_at) VALUES (1, 'ana', 't')")
    # Two identical old samples: the migration must keep both (nothing the user wrote is dropped).
    for _ in range(2):
        c.execute("INSERT INTO samples (profile_id, text, created_at) VALUES (1, 'same words', 't')")
    c.execute(
        "INSERT INTO samples (profile_id, prompt, text, created_at) VALUES (1, 'p', 'other words', 't')"
    )
    c.execute("INSERT INTO peer_pools (id, name, salt, created_at) VALUES (1, 'pool', 's', 't')")
    c.execute("INSERT INTO peer_texts (pool_id, writer, text, created_at) VALUES (1, 'w', 'peer text', 't')")
    c.execute("INSERT INTO runs (profile_id, objective, created_at) VALUES (1, 'cbpo', 't')")
    c.commit()
    old.close()

    new = Store(path)
    assert new.schema_version == SCHEMA_VERSION
    assert new.backup_path is not None and new.backup_path.exists()
    samples = new.list_samples(1)
    assert [s["text"] for s in samples] == ["same words", "same words", "other words"]
    assert all(s["content_hash"] for s in samples)
    assert new.peer_texts(1)[0]["content_hash"]
    run = new.list_runs(1)[0]
    assert run["objective"] == "cbpo" and run["step"] == 0 and run["cancel_requested"] == 0
    # New code paths work on the migrated rows: re-adding an existing text is a duplicate.
    result = new.add_samples(1, [{"text": "other words", "prompt": "p"}, {"text": "brand new"}])
    assert len(result.added) == 1 and result.duplicates == [0]
    new.close()

    backup = sqlite3.connect(new.backup_path)
    assert backup.execute("PRAGMA user_version").fetchone()[0] == 1
    assert backup.execute("SELECT count(*) FROM samples").fetchone()[0] == 3
    backup.close()


def test_opening_again_does_not_migrate_or_back_up(tmp_path):
    Store(tmp_path / "a.db").close()
    again = Store(tmp_path / "a.db")
    assert again.backup_path is None
    assert list(tmp_path.glob("*backup*")) == []


def test_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE x (a)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(IdiolectError, match="newer than this Idiolect"):
        Store(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(IdiolectError, match="not an Idiolect database|cannot open"):
        Store(path)


def test_failed_write_rolls_back_everything(store):
    pid = store.create_profile("ana")
    with pytest.raises(RuntimeError), store.write():
        store.add_samples(pid, [{"text": "one"}, {"text": "two"}])
        raise RuntimeError("boom")
    assert store.list_samples(pid) == []


def test_validation_errors_are_readable(store):
    with pytest.raises(IdiolectError, match="invalid profile name"):
        store.create_profile("../../etc")
    pid = store.create_profile("ana")
    with pytest.raises(IdiolectError, match="already exists"):
        store.create_profile("ana")
    gen = store.add_generation(pid, "prompt", "text", model="tiny")
    with pytest.raises(IdiolectError, match=r"\+1 or -1"):
        store.rate(pid, gen, 0)
    with pytest.raises(IdiolectError, match="no generation"):
        store.rate(pid, gen + 100, 1)
    store.rate(pid, gen, 1, edited_text="better text")
    assert store.stats()["profiles"]["ana"]["ratings_up"] == 1


def test_deleting_a_profile_cascades(store):
    pid = store.create_profile("ana")
    store.add_samples(pid, [{"text": "hello"}])
    gen = store.add_generation(pid, "p", "t")
    store.rate(pid, gen, -1)
    run = store.create_run(pid, "cbpo", "tiny", {"steps": 2})
    store.log_metrics(run, 1, {"loss": 0.5})
    store.delete_profile("ana")
    counts = store.stats()["tables"]
    assert counts["samples"] == counts["feedback"] == counts["runs"] == counts["run_metrics"] == 0


def test_summaries_are_versioned(store):
    pid = store.create_profile("ana")
    assert store.add_summary(pid, "Writes tersely.", "dpl", score=0.1)["version"] == 1
    assert store.add_summary(pid, "Writes tersely, no emoji.", "user")["version"] == 2
    assert [s["version"] for s in store.list_summaries(pid)] == [2, 1]


def _writer_process(path: str, profile_id: int, worker: int, n: int) -> None:
    s = Store(path)
    for i in range(n):
        s.add_samples(profile_id, [{"text": f"worker {worker} sample {i}"}])
    s.close()


def _metrics_process(path: str, run_id: int, n: int) -> None:
    s = Store(path)
    for step in range(n):
        s.log_metrics(run_id, step, {"loss": 1.0 / (step + 1)})
        s.update_run(run_id, status="running")
    s.close()


def test_concurrent_processes_lose_no_write(tmp_path):
    """The UI (several threads) and a training worker (another process) write at the same time."""
    path = str(tmp_path / "busy.db")
    main = Store(path)
    pid = main.create_profile("ana")
    run = main.create_run(pid, "cbpo", "tiny", {})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(path, pid, w, 60)) for w in range(3)]
    procs.append(ctx.Process(target=_metrics_process, args=(path, run, 120)))
    for p in procs:
        p.start()
    # Meanwhile this process writes from several threads too.
    errors: list[BaseException] = []

    def thread_writer(t: int) -> None:
        try:
            for i in range(40):
                gen = main.add_generation(pid, "prompt", f"thread {t} gen {i}")
                main.rate(pid, gen, 1 if i % 2 else -1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert errors == []
    counts = main.stats()["tables"]
    assert counts["samples"] == 3 * 60
    assert counts["generations"] == counts["feedback"] == 3 * 40
    assert len(main.run_metrics(run)) == 120
    assert main.integrity_check() == "ok"
    main.close()
