"""Faults, load, bad input and security: nothing the user wrote is lost, every failure is one clear message."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, running_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idiolect.core.base import limits
from idiolect.core.base.errors import IdiolectError, ImportFailed
from idiolect.core.ingest.peers import import_peers
from idiolect.core.ingest.samples import import_samples
from idiolect.core.store import Store

# --- faults ----------------------------------------------------------------------------------------------

WRITER = """
import sys
from idiolect.core.store import Store
s = Store(sys.argv[1])
pid = s.ensure_profile("me")[0]["id"]
i = 0
while True:
    s.add_samples(pid, [{"text": f"note number {i}"}])
    print(i, flush=True)  # acknowledged: committed before this line
    i += 1
"""


def test_killing_a_writer_mid_write_loses_no_acknowledged_row(tmp_path):
    db = tmp_path / "k.db"
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0 + random.random())
        proc.send_signal(signal.SIGKILL)
        acked = [int(line) for line in proc.stdout.read().split()]
        proc.wait()
        s = Store(db)
        assert s.integrity_check() == "ok"
        texts = {r["text"] for r in s.list_samples(s.get_profile("me")["id"])}
        assert {f"note number {i}" for i in acked} <= texts, f"round {round_}: an acknowledged write was lost"
        s.close()


def test_read_only_and_full_databases_give_clear_errors(store):
    store.conn.execute("PRAGMA query_only = ON")
    with pytest.raises(IdiolectError, match="read-only"):
        store.create_profile("ana")
    store.conn.execute("PRAGMA query_only = OFF")
    pid = store.create_profile("ana")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(IdiolectError, match="disk .* is full"):
        store.add_samples(pid, [{"text": "x" * 20_000 + str(i)} for i in range(20)])
    assert store.list_samples(pid) == []  # the failed import left nothing half-written


# --- load ------------------------------------------------------------------------------------------------

CLIENT = """
import sys, time, json
from idiolect.core.store import Store
s = Store(sys.argv[1]); pid = s.get_profile("me")["id"]; worst = 0.0; t0 = time.perf_counter()
for i in range(int(sys.argv[3])):
    t = time.perf_counter()
    if i % 5 == 0:
        s.add_samples(pid, [{"text": f"client {sys.argv[2]} import {i} line {j}"} for j in range(10)])
    else:
        g = s.add_generation(pid, "p", f"client {sys.argv[2]} gen {i}")
        s.rate(pid, g, 1 if i % 2 else -1)
    worst = max(worst, time.perf_counter() - t)
print(json.dumps({"worst_s": worst, "seconds": time.perf_counter() - t0}))
"""


def test_parallel_clients_while_training_lose_nothing(pretrained_base, target_store, capsys):
    from idiolect.core.training import worker
    from idiolect.core.training.config import TrainConfig

    db = str(target_store.path)
    run = worker.start(
        target_store,
        "me",
        TrainConfig(model=str(pretrained_base), pool="others", steps=25, lr=1e-3, save_every=5,
                    validation_fraction=0.0),  # every step runs: no early stopping
    )
    n_clients, n_ops = 4, 100
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, db, str(c), str(n_ops)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in range(n_clients)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert not any("locked" in e for _, e in outs)
    stats = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    deadline = time.time() + 600
    while worker.status(target_store, run)["status"] in worker.ACTIVE and time.time() < deadline:
        time.sleep(0.5)
    assert worker.status(target_store, run)["status"] == "completed"
    counts = target_store.stats()["tables"]
    per_client_imports = len(range(0, n_ops, 5))
    assert counts["generations"] == counts["feedback"] == n_clients * (n_ops - per_client_imports)
    assert len(target_store.run_metrics(run)) == 25
    assert target_store.integrity_check() == "ok"
    with capsys.disabled():
        ops = n_clients * n_ops
        print(f"\nload: {ops} client operations from {n_clients} processes beside a training run: worst latency "
              f"{max(s['worst_s'] for s in stats) * 1000:.0f} ms, slowest client {max(s['seconds'] for s in stats):.1f} s")  # fmt: skip


# --- bad input -------------------------------------------------------------------------------------------


def test_zip_bomb_and_over_long_lines(tmp_path, store, monkeypatch):
    monkeypatch.setattr(limits, "MAX_DECOMPRESSED_BYTES", 64 * 2**20)
    monkeypatch.setattr(limits, "MAX_XML_LINE_BYTES", 2**20)
    bomb = tmp_path / "bomb_Posts.xml.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(b'<?xml version="1.0"?>\n<posts>\n')
        chunk = b"\0" * 2**20
        for _ in range(200):  # 200 MiB of zeros, about 200 KB on disk
            fh.write(chunk)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(ImportFailed, match="zip bomb"):
        import_peers(store, bomb, "bomb")
    assert store.find_pool("bomb") is None
    long_line = tmp_path / "beer.stackexchange.com_Posts.xml"
    rows = [
        '<row Id="1" PostTypeId="1" Title="Q" Body="question" />',
        '<row Id="2" PostTypeId="2" ParentId="1" Body="' + "a" * (3 * 2**20) + '" OwnerUserId="5" />',
        '<row Id="3" PostTypeId="2" ParentId="1" Body="a good answer" OwnerUserId="6" />',
    ]
    long_line.write_text('<?xml version="1.0"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n")
    report = import_peers(store, long_line, "long")
    assert report.added == 1 and "longer than 1 MiB" in report.skipped[0].reason


def test_oversized_uploads_are_refused_whole(tmp_path, store, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SAMPLE_FILE_BYTES", 1024)
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    [report] = import_samples(store, "ana", [big])
    assert "over the 1.0 KiB limit per file" in report.error
    assert store.find_profile("ana") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=3000), suffix=st.sampled_from([".txt", ".md", ".jsonl", ".json", ".csv", ".tsv"])
)
def test_any_bytes_give_a_report_never_a_crash(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    s = Store(tmp_path / f"fuzz-{uuid.uuid4().hex}.db")
    try:
        [report] = import_samples(s, "fuzz", [path])
        profile = s.find_profile("fuzz")
        stored = len(s.list_samples(profile["id"])) if profile else 0
        assert stored == report.added
        if report.error:
            assert report.added == 0
    finally:
        s.close()


XML_LINES = st.lists(
    st.one_of(
        st.sampled_from([
            '<row Id="1" PostTypeId="1" Title="T" Body="&lt;p&gt;q&lt;/p&gt;" />',
            '<row Id="2" PostTypeId="2" ParentId="1" Body="&lt;p&gt;an answer&lt;/p&gt;" OwnerUserId="3" />',
            '<row Id="4" PostTypeId="2" ParentId="1" Body="unclosed',
            "</posts>",
        ]),
        st.text(max_size=80),
    ),
    max_size=30,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=XML_LINES)
def test_any_posts_file_gives_a_report_never_a_crash(tmp_path, lines):
    path = tmp_path / "x.stackexchange.com_Posts.xml"
    path.write_text('<?xml version="1.0"?>\n<posts>\n' + "\n".join(lines), encoding="utf-8")
    s = Store(tmp_path / f"x-{uuid.uuid4().hex}.db")
    try:
        report = import_peers(s, path, "fuzz")
        pool = s.find_pool("fuzz")
        assert (len(s.peer_texts(pool["id"])) if pool else 0) == report.added
    except ImportFailed:
        assert s.find_pool("fuzz") is None
    finally:
        s.close()


OPTIONS = ["import-peers", "add-samples", "stats", "train", "export", "summary", "generate", "--json", "--profile",
           "--pool", "--model", "--out", "--steps", "-1", "0", "x", "../../etc", "--formats", "zip,peft", "--db"]  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(OPTIONS), max_size=7))
def test_any_command_line_exits_cleanly(tmp_path, argv, capsys):
    from idiolect.core.cli import main

    args = [a if a != "--db" else "--db" for a in argv] + ["--db", str(tmp_path / "cli.db")]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code in (0, 1, 2, 130)
    err = capsys.readouterr().err
    assert "Traceback" not in err


# --- security --------------------------------------------------------------------------------------------


GUARD = """
import socket, os
_log = os.environ["IDIOLECT_NET_LOG"]
_orig = socket.socket.connect
def _guard(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and not (host.startswith("127.") or host in ("::1", "localhost")):
        with open(_log, "a") as fh:
            fh.write(f"{host}\\n")
        raise OSError("outbound network blocked by the test")
    return _orig(self, address)
socket.socket.connect = _guard
"""


def test_app_makes_no_outbound_calls_and_honours_auth(tmp_path):
    """The app, with every non-loopback connection refused and logged, serves its page, needs the login it was
    given, and tries to reach nothing outside this machine (no analytics, no update checks)."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    net_log = tmp_path / "net.log"
    # GRADIO_ANALYTICS_ENABLED unset (this suite sets it): the app must turn Gradio's telemetry off by itself.
    env = {"PYTHONPATH": str(guard), "IDIOLECT_NET_LOG": str(net_log), "GRADIO_ANALYTICS_ENABLED": None}
    with running_app(tmp_path / "home", tmp_path / "app.log", "--auth", "me:s3cret", env=env) as (url, _):
        base = url.rstrip("/")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(base + "/config", timeout=10)
        assert denied.value.code in (401, 403)
        bad = urllib.request.Request(base + "/login", data=b"username=me&password=wrong", method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad, timeout=10)
        good = urllib.request.Request(base + "/login", data=b"username=me&password=s3cret", method="POST")
        with urllib.request.urlopen(good, timeout=10) as resp:
            cookie = resp.headers.get("set-cookie", "").split(";")[0]
        config = urllib.request.Request(base + "/config", headers={"Cookie": cookie})
        with urllib.request.urlopen(config, timeout=10) as resp:
            assert resp.status == 200
        time.sleep(3)  # give any background telemetry a chance to show itself
    attempts = net_log.read_text().split() if net_log.exists() else []
    assert attempts == [], f"the app tried to reach {attempts}"


class FakeChatAPI(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        FakeChatAPI.seen_auth.append(self.headers.get("Authorization", ""))
        body = json.dumps(
            {"choices": [{"message": {"content": "Write in short sentences and name the beers."}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_api_key_reaches_the_endpoint_but_never_disk(target_store, pretrained_base, tmp_path):
    secret = "sk-test-SECRET-1234567890"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeChatAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    env = {**os.environ, "IDIOLECT_LLM_API_KEY": secret}
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "launch.py"), "summary", "--profile", "me", "--model", str(pretrained_base),
             "--pool", "others", "--llm-url", url, "--db", str(target_store.path)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    assert FakeChatAPI.seen_auth and all(a == f"Bearer {secret}" for a in FakeChatAPI.seen_auth)
    target_store.close()
    export_dir = tmp_path / "exp"
    exp = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "export", "--profile", "me", "--out", str(export_dir),
         "--formats", "summary", "--db", str(target_store.path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    leaks = [
        p
        for p in [*Path(target_store.path).parent.rglob("*"), *export_dir.rglob("*")]
        if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert leaks == [] and secret not in out.stdout + out.stderr
    con = sqlite3.connect(target_store.path)
    assert not any(secret in (row[0] or "") for row in con.execute("SELECT details FROM summaries"))
