"""The app starts, serves its page on 127.0.0.1 only, and shuts down (the full browser test comes with the
complete UI)."""

from __future__ import annotations

import time
import urllib.request

import psutil
from conftest import free_port

from idiolect.core.ingest.pool import open_store


def test_app_serves_on_loopback_only(tmp_path):
    from idiolect.app.main import build_ui

    store = open_store(str(tmp_path / "app.db"))
    demo = build_ui(store)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, inbrowser=False)
    try:
        deadline = time.time() + 60
        while True:
            try:
                html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        assert "Idiolect" in html
        listening = [
            c.laddr
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == "LISTEN" and c.laddr.port == port
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        demo.close()
        store.close()


def test_launch_defaults_are_private():
    from idiolect.core.cli import build_parser

    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.auth is None
