"""Reliability and security, round two (issue 17): inputs built here by generators, one test per class of fault
the adversarial run found. `pytest -k hardening` selects them; SECURITY.md maps each promise to its test."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cancelled_at

from idiolect.core.ingest.anonymize import scrub
from idiolect.core.ingest.peers import import_peers
from idiolect.core.ingest.samples import import_samples

# 1. One bad row is one skipped row ---------------------------------------------------------------------------


def test_hardening_bad_json_rows_are_skipped_rows_and_other_files_still_land(tmp_path, store):
    bad = tmp_path / "bad.jsonl"
    rows = [
        '{"text": "\\ud800 a lone surrogate"}',
        '{"text": "big", "n": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"text": "This one row is fine and lands."}),
    ]
    bad.write_text("\n".join(rows) + "\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = tmp_path / "good.txt"
    good.write_text("A good paragraph of my own.\n")
    reports = import_samples(store, "me", [bad, deep, good])
    by_name = {os.path.basename(r.source): r for r in reports}
    assert by_name["bad.jsonl"].added == 1 and len(by_name["bad.jsonl"].skipped) == 3
    reasons = " | ".join(s.reason for s in by_name["bad.jsonl"].skipped)
    assert "lone surrogate" in reasons and "digits" in reasons and "nested too deeply" in reasons
    assert "nested too deeply" in by_name["deep.json"].error
    assert by_name["good.txt"].added == 1


# 2. Valid Stack Exchange rows are read ------------------------------------------------------------------------


def _posts(rows: list[str]) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n"


def test_hardening_stackexchange_rows_written_open_and_closed_and_with_slash_gt_in_values(tmp_path, store):
    q = '  <row Id="1" PostTypeId="1" Title="Which glass?" Body="&lt;p&gt;Stout?&lt;/p&gt;"></row>'
    answers = [
        f'  <row Id="{i}" PostTypeId="2" ParentId="1" OwnerUserId="{i % 2 + 5}" '
        f'Body="&lt;p&gt;Answer {i}: a tulip glass /&gt; keeps the head, 2 > 1 />.&lt;/p&gt;" '
        f'CreationDate="2020-01-0{i}T00:00:00.000"></row>'
        for i in range(2, 8)
    ]
    answers.append('  <row Id="9" PostTypeId="2" ParentId="1" OwnerUserId="5" Body="a /> inside" />')
    path = tmp_path / "beer.stackexchange.com_Posts.xml"
    path.write_text(_posts([q, *answers]))
    report = import_peers(store, path, "beer")
    assert report.ok and (report.added, len(report.skipped)) == (7, 0), report.lines()


# 3. Time linear in the input -----------------------------------------------------------------------------------


def test_hardening_url_scrubber_is_linear(tmp_path):
    """16 KB of "a.a.a." took 53 s (a quadratic backtrack); 200 KB must take well under a second or two."""
    t0 = time.perf_counter()
    scrub("a." * 100_000)
    scrub("a@" + "a." * 100_000)
    assert time.perf_counter() - t0 < 10
    assert scrub("see www.foo.com, bob@example.co.uk and sub.domain.example.com/p.") == (
        "see [link], [email] and [link]."
    )


def test_hardening_one_unclosed_multiline_row_costs_linear_time(tmp_path, store):
    """A row that never closes, 0.8 MB over many lines, took 141 s (the whole buffer searched again per line)."""
    lines = ['  <row Id="1" PostTypeId="2" ParentId="1" OwnerUserId="5" Body="'] + ["x"] * 400_000
    path = tmp_path / "cut.stackexchange.com_Posts.xml.gz"
    path.write_bytes(gzip.compress(_posts(lines).encode()))
    t0 = time.perf_counter()
    report = import_peers(store, path, "cut")
    assert time.perf_counter() - t0 < 20
    assert report.added == 0 and report.skipped


# 4. Only regular files are read ------------------------------------------------------------------------------


def test_hardening_fifos_and_devices_are_refused_not_read(tmp_path, store):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "good.txt"
    good.write_text("Still imported.\n")
    reports = import_samples(
        store, "me", [fifo, zero, good]
    )  # would hang (FIFO) or exhaust memory (/dev/zero)
    assert [("not a regular file" in (r.error or "")) for r in reports] == [True, True, False]
    assert reports[2].added == 1
    xml = tmp_path / "x.stackexchange.com_Posts.xml"
    os.mkfifo(xml)
    with pytest.raises(Exception, match="not a regular file"):
        import_peers(store, xml, "p")


# 9 and 10. DNS rebinding; proxies -----------------------------------------------------------------------------


def _request(port: int, host_header: str, path: str = "/config") -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": host_header})
    status = conn.getresponse().status
    conn.close()
    return status


def test_hardening_app_answers_loopback_names_only_ignores_proxies_and_cleans_up_uploads(tmp_path):
    """Started with HTTP(S)_PROXY pointing at nothing (the start-up self-check used to go there and die), the app
    answers 127.0.0.1 / localhost / [::1] and the --allow-host name, and refuses a rebinding domain's name."""

    from conftest import running_app

    env = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}  # fmt: skip
    with running_app(tmp_path / "home", tmp_path / "app.log", "--allow-host", "my-box.lan", env=env) as (url, _):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for ok in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "my-box.lan"):
            assert _request(port, ok) == 200, ok
        for evil in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "127.0.0.1.evil.example"):
            assert _request(port, evil) == 403, evil
            assert _request(port, evil, "/gradio_api/info") == 403
        # 12. An upload lands in this app's own folder inside the data folder, which goes when the app stops.
        import requests

        session = requests.Session()
        session.trust_env = False
        reply = session.post(f"http://127.0.0.1:{port}/gradio_api/upload",
                             files={"files": ("mine.txt", b"My private writing.\n")}, timeout=30)  # fmt: skip
        assert reply.status_code == 200, reply.text
        [stored] = reply.json()
        assert str(tmp_path / "home") in stored and os.path.exists(stored)
    assert "Traceback" not in (tmp_path / "app.log").read_text()
    assert not os.path.exists(stored) and not list((tmp_path / "home").glob("uploads-*"))


# 8. Damaged and foreign databases -----------------------------------------------------------------------------


def test_hardening_damaged_database_is_refused_with_a_recovery_hint(tmp_path):
    import sqlite3
    import subprocess
    import sys

    from conftest import ROOT

    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.store import Store

    db = tmp_path / "idiolect.db"
    s = Store(db)
    pid = s.create_profile("me")
    s.add_samples(pid, [{"text": f"Sample number {i} with some words in it."} for i in range(3000)])
    backup = s.backup(suffix="backup-v6")
    s.close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size_before = db.stat().st_size
    with db.open("r+b") as fh:  # 200 bytes of a page in the middle of the file: headers and cell pointers
        fh.seek((size_before // 4096 // 2) * 4096)
        fh.write(bytes((i * 37 + 11) % 256 for i in range(200)))
    with pytest.raises(IdiolectError, match=r"is damaged .*copy the newest backup"):
        Store(db)
    for cmd in (["stats"], ["add-samples", str(tmp_path / "x.txt"), "--profile", "me"]):
        (tmp_path / "x.txt").write_text("New text.\n")
        out = subprocess.run([sys.executable, str(ROOT / "launch.py"), *cmd, "--db", str(db)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 1 and "is damaged" in out.stderr and "Traceback" not in out.stderr
        assert str(backup) in out.stderr
    assert db.stat().st_size == size_before  # nothing written into it


def test_hardening_another_applications_database_is_not_migrated(tmp_path):
    import sqlite3

    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.store import Store

    other = tmp_path / "notes.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('mine')")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(IdiolectError, match="not an Idiolect database .*notes"):
        Store(other)
    # Refused before anything was written: the same bytes (header bytes 18-19 once said WAL), no -wal or -shm.
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    con = sqlite3.connect(other)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()
    Store(tmp_path / "empty.db").close()  # an empty (new) file is fine


def test_hardening_a_full_disk_is_called_a_full_disk(tmp_path, monkeypatch):
    import shutil
    import sqlite3

    from idiolect.core.store.db import _friendly

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    err = _friendly(sqlite3.OperationalError("disk I/O error"), tmp_path / "idiolect.db")
    assert "is full" in str(err)


# 5. A kill at the wrong moment never makes a run unresumable -----------------------------------------------------


def test_hardening_an_unreadable_checkpoint_is_set_aside_and_the_run_resumes(pretrained_base, target_store):
    """A checkpoint cut short (a kill or a full disk while it was written) costs its steps, not the run: the one
    before it is used. (An unreadable reference cache and the plan kept on resume: test_integrity.py's
    test_integrity_resume_trains_on_the_recorded_rows_and_plan.)"""
    from idiolect.core.training.config import TrainConfig
    from idiolect.core.training.runs import create_run, run_dir
    from idiolect.core.training.trainer import Trainer

    cfg = TrainConfig(model=str(pretrained_base), pool="others", steps=6, batch_size=2, save_every=1,
                      validation_fraction=0.0)  # every step runs: no early stopping
    run = create_run(target_store, "me", cfg)
    assert cancelled_at(target_store, run, 4)["status"] == "cancelled"
    folder = run_dir(target_store, run)
    newest = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (newest / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    result = Trainer(target_store, run).run()
    assert result["status"] == "completed"
    assert target_store.get_run(run)["step"] == 6
    broken = folder / f"broken-{newest.name}"
    assert (
        broken.is_dir() and (broken / "state.pt").read_bytes() == b"PK\x03\x04 cut short"
    )  # set aside, kept


# 7. Export never writes through a link, and a failed export leaves nothing half-written --------------------------


def test_hardening_export_replaces_planted_links_and_fails_whole(store, tiny_models, tmp_path, monkeypatch):
    from test_export import _trained_profile

    import idiolect.core.export.bundle as export_mod
    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.export.formats import safe_name

    _trained_profile(store, tiny_models, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    slug = safe_name("Sam O'Neil")
    (out / "manifest.json").symlink_to(victim)
    (out / f"{slug}-summary.txt").symlink_to(victim)
    (out / f"{slug}-peft").symlink_to(tmp_path)  # a linked folder where the adapter goes
    result = export_mod.export(store, "Sam O'Neil", out, formats=["peft", "summary"])
    assert victim.read_text() == "precious"
    for name in ("manifest.json", f"{slug}-summary.txt", f"{slug}-peft"):
        assert not (out / name).is_symlink() and (out / name).exists()
    assert all(p.exists() and out in p.parents for p in result.files)

    # A full disk in the middle: one line, no traceback, nothing half-written, the previous export intact.
    before = sorted(p.name for p in out.iterdir())

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "convert_lora_to_gguf", full_disk)  # the name export() calls
    with pytest.raises(IdiolectError, match=r"failed \(the disk is full\); nothing was written"):
        export_mod.export(store, "Sam O'Neil", out, formats=["peft", "gguf", "summary"], gguf_dtype="f32")
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(out.glob("*.gguf")) and not list(out.glob(".idiolect-export-*"))


# 11. The API key stays with its endpoint ---------------------------------------------------------------------------


def test_hardening_the_api_key_never_follows_a_redirect_is_never_stored_and_failures_are_one_line():
    import http.server
    import threading

    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.persona.llm_client import openai_compatible_writer

    key = "sk-test-SECRET-1234567890"
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"port": self.server.server_port, "path": self.path, **dict(self.headers)})
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{other.server_port}/v1/chat/completions")
                self.end_headers()
                return
            if self.path.startswith("/html"):
                body, kind = b"<html><body>Login</body></html>", "text/html"
            else:  # echoes the request headers back in the answer
                text = "Summary. " + json.dumps(dict(self.headers))
                body, kind = (
                    json.dumps({"choices": [{"message": {"content": text}}]}).encode(),
                    "application/json",
                )
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    main = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for srv in (main, other):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{main.server_port}"
    try:
        with pytest.raises(IdiolectError, match="redirected to another host"):
            openai_compatible_writer(f"{base}/redirect/v1", key, "m")("hi")
        assert not any(s["port"] == other.server_port for s in seen)  # the other origin never saw a request
        echoed = openai_compatible_writer(f"{base}/echo/v1", key, "m")("hi")
        assert key not in echoed and "[key removed]" in echoed
        with pytest.raises(
            IdiolectError, match=r"did not answer as an OpenAI-compatible endpoint \(text/html"
        ):
            openai_compatible_writer(f"{base}/html/v1", key, "m")("hi")
    finally:
        main.shutdown()
        other.shutdown()


def test_hardening_json_is_read_as_a_stream_whatever_the_chunking():
    """A .json export is decoded item by item as it is read (bench imports: a 77 MB conversations.json peaks
    at 182 MB instead of 370 MB); item boundaries may fall anywhere in a read."""
    from idiolect.core.base.errors import ImportFailed
    from idiolect.core.ingest.rows import stream_json, stream_jsonl

    doc = ' [ {"a": "x,]\\"}"}, \n {"b": [1, 2, {"c": "]"}]} ,{"d": "é"}] '
    for size in (1, 2, 3, 7, len(doc)):
        chunks = [doc[i : i + size] for i in range(0, len(doc), size)]
        assert [item for _, item, _ in stream_json(chunks, "x.json")] == json.loads(doc)
    assert list(stream_json(["[", "]"], "x.json")) == []
    assert [i for _, i, _ in stream_json(['{"title": 1}'], "x.json")] == [{"title": 1}]
    for broken, why in (('[{"a": 1}, {"b": ', "cut short|not valid"), ("", "empty"), ("[1, 2", "not closed")):
        with pytest.raises(ImportFailed, match=why):
            list(stream_json([broken], "x.json"))
    lines = ['{"text": "one"}\n{"te', 'xt": "two"}\n\n{bad\n', '{"text": "three"}']
    got = [(w, i, p is not None) for w, i, p in stream_jsonl(lines)]
    assert got == [("line 1", {"text": "one"}, False), ("line 2", {"text": "two"}, False),
                   ("line 4", None, True), ("line 5", {"text": "three"}, False)]  # fmt: skip


def test_hardening_ctrl_c_also_removes_the_upload_folder(tmp_path):
    """Ctrl-C (SIGINT) returns from Gradio and the process ends without atexit handlers: the app removes its
    upload folder itself."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT, at_a_terminal, free_port, wait_for_app

    port = free_port()
    home = tmp_path / "home"
    # As at a terminal: SIGINT reaches the app however pytest was started (a shell in the background, or
    # nohup, hands its children SIG_IGN, and a Python that starts with SIGINT ignored never sees Ctrl-C).
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--no-browser", "--port", str(port)],
                            env={**os.environ, "IDIOLECT_HOME": str(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=at_a_terminal)  # fmt: skip
    wait_for_app(port, proc)
    assert list(home.glob("uploads-*"))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert not list(home.glob("uploads-*")) and "Traceback" not in proc.stderr.read()


# Round three (issue 25) ------------------------------------------------------------------------------------------


def test_hardening_names_that_slug_alike_never_share_export_files():
    """N2: "José" and "Jos", or any two names in another script, once wrote the same file names, so exporting
    both into one folder overwrote the first without a word."""
    from idiolect.core.export.formats import safe_name

    names = ["José", "Jos", "한", "日本", "Ana B", "Ana-B", "ana"]
    slugs = {safe_name(n) for n in names}
    assert len(slugs) == len(names) and safe_name("Jos") == "Jos" and safe_name("ana") == "ana"
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) for s in slugs)
    assert safe_name("José") == safe_name("Jose\u0301")  # one name in NFC or NFD: one file


def test_hardening_a_relative_export_folder_works_in_the_cli_and_the_app(store, tiny_models, tmp_path, monkeypatch):
    """N8: ``export --out relout`` wrote its files, then printed a ValueError traceback and exited 1; the app
    said '... is not in the subpath' and offered no downloads."""
    from test_export import _trained_profile

    from idiolect.app import export as export_tab
    from idiolect.app.common import Ctx
    from idiolect.core.export.bundle import export

    _trained_profile(store, tiny_models, tmp_path)
    store.close()
    work = tmp_path / "cwd"
    work.mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "export", "--profile", "Sam O'Neil", "--out", "relout",
                          "--formats", "summary", "--db", str(store.path)], cwd=work, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (work / "relout" / "manifest.json").exists() and str(work / "relout") in out.stdout
    monkeypatch.chdir(work)
    result = export(store, "Sam O'Neil", "again", formats=["summary"])
    assert result.folder == work / "again" and all(p.is_absolute() and p.exists() for p in result.files)
    monkeypatch.setenv("IDIOLECT_HOME", str(tmp_path / "home"))
    report, *_, downloads = export_tab.do_export(Ctx(store), "Sam O'Neil", ["summary"], "mine")
    assert str(tmp_path / "home") in report and "/exports/mine" in report and downloads  # inside exports/


def test_hardening_downloads_stay_in_the_apps_private_folder(tmp_path, monkeypatch):
    """N7: the Export tab copied the user's texts into the system temp folder (mode 644 in 755 folders) and left
    them after the app stopped; now they go to the app's own folder (inside the data folder, removed with the
    uploads), only the user can enter it."""
    import stat

    from idiolect.app import export as export_tab

    app_dir = tmp_path / "data" / "uploads-123-abc"
    app_dir.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(app_dir))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "me-kto.jsonl").write_text('{"completion": "my words"}\n')
    paths = export_tab.download_copy(folder, [folder / "me-kto.jsonl"], "me")
    assert all(app_dir in Path(p).parents for p in paths)
    assert stat.S_IMODE((app_dir / "downloads").stat().st_mode) == 0o700


def test_hardening_one_name_and_one_text_in_either_unicode_form(store):
    """N1: "한" composed (NFC) and decomposed (NFD) made two profiles that look identical, and both forms of one
    sample were stored; "dan" and "Dan" were two profiles too."""
    import unicodedata

    from idiolect.core.base.errors import IdiolectError

    nfc, nfd = unicodedata.normalize("NFC", "한 José"), unicodedata.normalize("NFD", "한 José")
    assert nfc != nfd
    pid = store.create_profile(nfd)
    assert store.get_profile(nfc)["id"] == pid and store.find_profile(nfd)["name"] == nfc
    for name in (nfc, nfc.upper()):
        with pytest.raises(IdiolectError, match="already exists"):
            store.create_profile(name)
    store.create_profile("dan")
    with pytest.raises(IdiolectError, match="already exists"):
        store.create_profile("Dan")
    text = "Un café, s'il vous plaît, écrit à la main."
    first = store.add_samples(pid, [{"text": unicodedata.normalize("NFC", text)}])
    again = store.add_samples(pid, [{"text": unicodedata.normalize("NFD", text)}])
    assert len(first.added) == 1 and again.added == [] and again.duplicates == [0]
    assert store.list_samples(pid)[0]["text"] == unicodedata.normalize("NFC", text)  # the text as written


def test_hardening_migration_8_hashes_nfd_rows_as_their_nfc_form(tmp_path):
    import sqlite3
    import unicodedata

    from idiolect.core.store import Store

    path = tmp_path / "old.db"
    old = Store(path, target_version=7)
    pid = old.create_profile("ana")
    text = unicodedata.normalize("NFD", "Crème brûlée, twice.")
    old.add_samples(pid, [{"text": text}])
    old.close()
    con = sqlite3.connect(path)  # a version-7 store kept the decomposed name and the old hash
    con.execute("UPDATE profiles SET name = ? WHERE id = ?", [unicodedata.normalize("NFD", "Zoë"), pid])
    con.execute("UPDATE samples SET content_hash = 'hashed-without-nfc'")
    con.commit()
    con.close()
    store = Store(path)
    assert store.get_profile("Zoë")["name"] == unicodedata.normalize("NFC", "Zoë")
    again = store.add_samples(pid, [{"text": unicodedata.normalize("NFC", text)}])
    assert again.added == [] and store.list_samples(pid)[0]["text"] == text
    store.close()


def test_hardening_one_huge_json_item_is_decoded_once(monkeypatch):
    """N20: one 63 MB list item took 86 s: the reader decoded it again from its start after every 1 MiB chunk
    (quadratic). Now the item's end is found by one scan and it is decoded once: the decoder sees each
    character of the document about once, however it is chunked (counted, not timed)."""
    import json as jsonlib

    from idiolect.core.ingest import rows as rows_mod

    seen = []

    class Counting(jsonlib.JSONDecoder):
        def raw_decode(self, s, idx=0):
            seen.append(len(s) - idx)
            return super().raw_decode(s, idx)

    monkeypatch.setattr(rows_mod.json, "JSONDecoder", Counting)
    text = 'quote \\" brace } bracket ] back\\\\slash ' * 200_000  # 8 MB of what a scanner can trip on
    doc = json.dumps([{"text": "small"}, {"title": "big", "text": text, "nested": [{"a": [1, {"b": "}"}]}]}, 7])
    chunks = [doc[i : i + (1 << 20)] for i in range(0, len(doc), 1 << 20)]
    items = list(rows_mod.stream_json(chunks, "big.json"))
    assert items[0][1] == {"text": "small"} and items[1][1]["text"] == text
    assert items[2][1] == 7 and len(chunks) >= 8
    assert sum(seen) <= 2 * len(doc), (sum(seen), len(doc))  # was about len(chunks) / 2 times the item's size


def test_hardening_stackexchange_answers_over_the_limit_are_not_kept_until_the_end(tmp_path):
    """R1: a 0.8 MB Posts.xml.gz of 100 valid 8 MiB rows peaked at 959 MB: every answer's attributes were kept
    until the end of the file and the 50,000-character limit checked after the loop. Now an answer is cleaned and
    checked as it is read, and one over the limit leaves its reason, not its body (Python allocations, counted
    by tracemalloc: not a timing)."""
    import tracemalloc

    from idiolect.core.ingest.stackexchange import read_stackexchange

    body = "x" * (2 << 20)
    rows = [b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n',
            b'  <row Id="1" PostTypeId="1" Title="Glasses?" Body="&lt;p&gt;Which glass?&lt;/p&gt;" />\n']
    rows += [f'  <row Id="{i + 2}" PostTypeId="2" ParentId="1" OwnerUserId="{i}" Body="{body}" />\n'.encode()
             for i in range(30)]  # fmt: skip
    rows.append(b'  <row Id="99" PostTypeId="2" ParentId="1" OwnerUserId="7" Body="&lt;p&gt;A tulip.&lt;/p&gt;" />\n')
    path = tmp_path / "wide.stackexchange.com_Posts.xml.gz"
    path.write_bytes(gzip.compress(b"".join(rows) + b"</posts>\n", 9))
    tracemalloc.start()
    try:
        got, skipped, error = read_stackexchange(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["text"] for r in got] == ["A tulip."] and error is None
    assert len(skipped) == 30 and all("50,000" in s.reason for s in skipped)
    assert peak < 12 * len(body), peak / 2**20  # a few rows' worth at a time; it was every row's (60 MB and up)


def test_hardening_a_socks_proxy_does_not_kill_the_start(tmp_path):
    """N21: HTTPS_PROXY=socks5://... (or ALL_PROXY) ended the app with an ImportError raised inside
    ``import gradio`` (socksio missing), before the proxy fix ran. socksio is now a dependency, so the app starts
    (loopback bypasses the proxy); where it is missing anyway, the start is one line that says what to install."""
    from conftest import running_app

    socks = "socks5://127.0.0.1:9"
    proxies = {"HTTPS_PROXY": socks, "ALL_PROXY": socks, "all_proxy": socks, "NO_PROXY": "", "no_proxy": ""}
    with running_app(tmp_path / "home", tmp_path / "app.log", env=proxies):
        pass  # it answered
    env = {**os.environ, "IDIOLECT_HOME": str(tmp_path / "home"), **proxies}
    missing = ("import runpy, sys; sys.modules['socksio'] = None; sys.argv = ['launch.py', '--no-browser']; "
               f"runpy.run_path({str(ROOT / 'launch.py')!r}, run_name='__main__')")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", missing], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
    assert out.stdout.startswith("error: a SOCKS proxy is set") and "pip install socksio" in out.stdout


def test_hardening_hostile_model_files_are_one_line_each(tiny_models, tmp_path):
    """N16: a crafted GGUF header (2^40 tensors) gave an IndexError traceback from the GGUF reader (generate,
    train, --backend llama); a folder with a pickle pytorch_model.bin an UnpicklingError traceback; a chat
    template that touches ``cycler.__init__`` a jinja2 SecurityError traceback. No model code ran, and now each
    is one line that names the file and what is wrong with it."""
    import shutil
    import struct

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0))
    pkl = tmp_path / "pkl"
    shutil.copytree(tiny_models["llama"], pkl, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (pkl / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    templ = tmp_path / "templ"
    shutil.copytree(tiny_models["llama"], templ)
    (templ / "chat_template.jinja").write_text("{{ cycler.__init__.__globals__ }}")
    cases = [(["generate", "--model", str(bad)], "bad.gguf: not a readable GGUF file"),
             (["generate", "--model", str(bad), "--backend", "llama"], "cannot load"),
             (["generate", "--model", str(pkl)], "its weights are a pickle"),
             (["generate", "--model", str(templ)], "chat template cannot be used")]  # fmt: skip
    env = {**os.environ, "IDIOLECT_HOME": str(tmp_path / "home")}
    for args, said in cases:
        out = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args, "--prompt", "hi", "--max-tokens", "4"],
                             capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "Loading weights" not in ln]  # progress
        assert out.returncode == 1 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (args, lines)
    assert not marker.exists()  # and no code from the pickle ran


def test_hardening_a_deleted_wal_stops_writes_and_keeps_what_was_written(tmp_path):
    """N15: deleting idiolect.db-wal and -shm under a running app, then pasting, lost acknowledged writes with no
    error (integrity_check stayed ok). Now the next write notices (the -wal is not the file the store opened),
    saves what the open log holds into the database, and refuses to write more until a restart."""
    from idiolect.core.base.errors import IdiolectError
    from idiolect.core.store import Store

    path = tmp_path / "idiolect.db"
    store = Store(path)
    pid = store.create_profile("ana")
    store.add_samples(pid, [{"text": "Acknowledged before the log went."}])
    for suffix in ("-wal", "-shm"):
        os.remove(f"{path}{suffix}")
    with pytest.raises(IdiolectError, match="write-ahead log idiolect.db-wal was deleted .* saved into the database"):
        store.add_samples(pid, [{"text": "Written after the log went."}])
    with pytest.raises(IdiolectError, match="was deleted"):
        store.add_samples(pid, [{"text": "And another."}])  # still refused
    store.close()
    again = Store(path)
    assert [s["text"] for s in again.list_samples(again.get_profile("ana")["id"])] == ["Acknowledged before the log went."]
    assert again.integrity_check() == "ok"
    again.close()


def test_hardening_a_database_in_a_read_only_folder_is_read_and_says_why_it_cannot_be_written(tmp_path):
    """R3: a database in an immutable folder (or on a read-only mount) gave "unable to open database file", even
    for ``stats``. Now ``stats`` reads it as it is, and a command that writes says why it cannot: SQLite needs to
    create its WAL and lock files beside the database."""
    import shutil

    from idiolect.core.store import Store

    chattr = shutil.which("chattr")
    folder = tmp_path / "locked"
    folder.mkdir()
    db = folder / "idiolect.db"
    store = Store(db)
    store.add_samples(store.create_profile("ana"), [{"text": "Written while the folder could be written."}])
    store.close()
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder immutable here (chattr +i needs root on a filesystem that supports it)")
    try:
        if (folder / "probe").exists() or os.access(folder, os.W_OK) and _can_write(folder):
            pytest.skip("the immutable flag does not stop writes on this filesystem")
        launch = [sys.executable, str(ROOT / "launch.py")]
        out = subprocess.run([*launch, "stats", "--db", str(db)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "profile ana: 1 samples" in out.stdout, out.stderr[-2000:]
        assert "reading the database as it is" in out.stderr
        mine = tmp_path / "mine.txt"
        mine.write_text("One more text.")
        out = subprocess.run([*launch, "add-samples", str(mine), "--profile", "ana", "--db", str(db)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "is read-only" in out.stderr and "WAL and lock files" in out.stderr and "stats" in out.stderr
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)
    assert sorted(p.name for p in folder.iterdir()) == ["idiolect.db"]


def _can_write(folder) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True
