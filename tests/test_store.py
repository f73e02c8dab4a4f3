from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading

import pytest

from idiolect.core.base.errors import IdiolectError
from idiolect.core.store import SCHEMA_VERSION, Store


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


def test_search_pages_and_bulk_delete_with_undo(store):
    pid = store.create_profile("ana")
    other = store.create_profile("bo")
    store.add_samples(
        pid, [{"text": f"note {i} about {'coffee' if i % 3 == 0 else 'beer'}"} for i in range(30)]
    )
    store.add_samples(pid, [{"text": "100% sure_thing", "prompt": "Coffee?"}])
    theirs = store.add_samples(other, [{"text": "coffee from bo"}]).added
    page, total = store.search_samples(pid, "COFFEE", offset=0, limit=4)
    assert total == 11 and len(page) == 4 and page[0]["text"] == "100% sure_thing"  # newest first; prompt too
    assert (
        store.search_samples(pid, "%")[1] == 1 and store.search_samples(pid, "o_e")[1] == 0
    )  # literal % and _
    assert store.search_samples(pid, "", offset=28, limit=10)[1] == 31
    assert len(store.search_samples(pid, "", offset=28, limit=10)[0]) == 3
    ids = [r["id"] for r in store.search_samples(pid, "coffee", limit=100)[0]]
    with pytest.raises(IdiolectError, match="no sample"):
        store.delete_samples(pid, ids + theirs)  # another profile's id refuses the whole batch
    assert store.search_samples(pid, "coffee")[1] == 11
    gone = store.delete_samples(pid, ids)
    assert len(gone) == 11 and store.search_samples(pid, "coffee")[1] == 0
    store.add_samples(pid, [{"text": gone[0]["text"]}])  # re-added meanwhile: the undo does not double it
    assert store.restore_samples(pid, gone) == 10
    back = {r["id"]: r["text"] for r in store.list_samples(pid)}
    assert all(back.get(r["id"]) == r["text"] for r in gone[1:])  # same ids, same texts
    assert store.restore_samples(other, gone) == 0  # never into another profile


def test_an_import_can_be_undone_as_a_whole(store, tmp_path):
    from idiolect.core.ingest.samples import import_sample_texts, import_samples

    pid = store.create_profile("ana")
    first = import_sample_texts(store, "ana", "one\n\ntwo\n\nthree")
    f = tmp_path / "notes.txt"
    f.write_text("three\n\nfour")
    (second,) = import_samples(store, "ana", [f])
    hist = store.list_imports(pid)
    assert [(h["source"], h["added"], h["duplicates"], h["remaining"]) for h in hist] == [
        ("notes.txt", 1, 1, 1), ("pasted text", 3, 0, 3)]  # fmt: skip
    assert second.import_id == hist[0]["id"] and first.import_id == hist[1]["id"]
    sample = next(s for s in store.list_samples(pid) if s["text"] == "two")
    store.update_sample(pid, sample["id"], "two, edited")  # an edited sample still belongs to its import
    gone = store.undo_import(pid, first.import_id)
    assert sorted(r["text"] for r in gone) == ["one", "three", "two, edited"]
    assert [s["text"] for s in store.list_samples(pid)] == ["four"]
    assert store.list_imports(pid)[1]["undone_at"] and store.list_imports(pid)[1]["remaining"] == 0
    with pytest.raises(IdiolectError, match="undone already"):
        store.undo_import(pid, first.import_id)
    other = store.create_profile("bo")
    with pytest.raises(IdiolectError, match="no import"):
        store.undo_import(other, second.import_id)


def test_rename_and_delete_a_profile_with_its_run_folders(store):
    from idiolect.core.training.runs import run_dir
    from idiolect.core.training.worker import delete_profile

    pid = store.create_profile("ana")
    store.create_profile("bo")
    store.add_samples(pid, [{"text": "hello"}, {"text": "again"}])
    store.rate(pid, store.add_generation(pid, "p", "t"), 1)
    run = store.create_run(pid, "cbpo", "tiny", {"steps": 2})
    store.update_run(run, status="completed")
    run_dir(store, run).mkdir(parents=True)
    (run_dir(store, run) / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(IdiolectError, match="already exists"):
        store.rename_profile("ana", "bo")
    assert store.rename_profile("ana", "  ana2 ")["id"] == pid
    assert store.find_profile("ana") is None and len(store.list_samples(pid)) == 2
    assert store.profile_footprint("ana2") == {"samples": 2, "generations": 1, "ratings": 1, "runs": 1,
                                               "summaries": 0}  # fmt: skip
    assert delete_profile(store, "ana2")["samples"] == 2
    assert store.find_profile("ana2") is None and not run_dir(store, run).exists()
    assert [p["name"] for p in store.list_profiles()] == ["bo"]
