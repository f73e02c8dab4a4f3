"""The Gradio app, assembled from one module per tab (app/<tab>.py). Started by ``python launch.py``.

Tabs, in the order a first-time user follows them: Your writing, Model, Rate, Train, You vs. peers, Export.
Each tab module holds its handlers (plain functions over core, called directly by the unit tests) and its
layout; this module only places them and refreshes them when the profile changes or the page loads. Nothing a
page shows is read when the UI is built. No SQL and no training here: core does both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from idiolect.core.base import limits

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from idiolect.app import profiles  # noqa: E402
from idiolect.app.common import Ctx, status  # noqa: E402
from idiolect.app.export import ExportTab  # noqa: E402
from idiolect.app.model import ModelTab  # noqa: E402
from idiolect.app.peers import PeersTab  # noqa: E402
from idiolect.app.rate import RateTab  # noqa: E402
from idiolect.app.train import TrainTab  # noqa: E402
from idiolect.app.writing import WritingTab  # noqa: E402
from idiolect.core.base.errors import IdiolectError  # noqa: E402
from idiolect.core.base.paths import ASSETS  # noqa: E402
from idiolect.core.ingest.pool import open_store
from idiolect.core.store import Store  # noqa: E402

CSS_PATH = ASSETS / "app.css"  # shipped as package data (tests/test_packaging.py)
SHORTCUTS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; if (t && (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT')) return;
  const ids = {'g': 'generate-btn', '1': 'up-a', '2': 'down-a', '3': 'up-b', '4': 'down-b'};
  const el = ids[e.key] && document.getElementById(ids[e.key]);
  if (el) { el.click(); e.preventDefault(); }
});
</script>
"""
TABS = (("Your writing", "writing", WritingTab), ("Model", "model", ModelTab), ("Rate", "rate", RateTab),
        ("Train", "train", TrainTab), ("You vs. peers", "peers", PeersTab), ("Export", "export", ExportTab))  # fmt: skip


def build_ui(store: Store) -> gr.Blocks:
    ctx = Ctx(store)
    with gr.Blocks(title="Idiolect") as demo:
        remembered = gr.BrowserState(None, storage_key="idiolect-profile")  # this browser's last profile
        gr.Markdown(
            "# Idiolect\nTune a language model to *your* writing, on this machine. Nothing leaves it unless you "
            "send it: the Export tab says what its API snippet sends."
        )
        profile = profiles.build(ctx)
        status_md = gr.Markdown(elem_id="status")
        tabs = []
        for title, tab_id, cls in TABS:
            with gr.Tab(title, id=tab_id) as tab_block:
                tabs.append(cls(ctx, profile, status_md))
            if hasattr(tabs[-1], "on_select"):  # what a tab re-reads whenever it is opened
                fn, outs = tabs[-1].on_select()
                tab_block.select(fn, [profile], outs)
        outputs = [status_md] + [c for t in tabs for c in t.outputs]

        def views(p):
            """Everything that depends on the chosen profile, read from the database now."""
            return (status(ctx, p), *(v for t in tabs for v in t.views(p)))

        # What a tab sets once its views have arrived (a plot's colours, after its data).
        later = [t for t in tabs if hasattr(t, "after_views")]
        later_outputs = [c for t in later for c in t.after_outputs]

        def after_views(p):
            values = tuple(v for t in later for v in t.after_views(p))
            return values[0] if len(values) == 1 else values  # one output takes a bare value

        def on_load(saved):
            names = profiles.names(ctx)
            chosen = saved if saved in names else (names or [None])[0]
            return (gr.update(choices=names, value=chosen), *views(chosen))

        demo.load(on_load, [remembered], [profile, *outputs]).then(after_views, [profile], later_outputs)
        # The one place a switch of profile is handled: whatever streams for the last profile is stopped, and
        # every view that depends on the profile is read again or cleared (each tab's ``views``).
        cancels = [e for t in tabs for e in getattr(t, "cancels", [])]
        switched = profile.change(views, [profile], outputs, cancels=cancels)
        switched.then(after_views, [profile], later_outputs).then(lambda p: p, [profile], [remembered])
    return demo


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """The host name of a ``Host`` header: ``[::1]:7860`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


class AllowedHostsOnly:
    """ASGI middleware: a request (HTTP or WebSocket) whose ``Host`` is not one of ``allowed`` gets 403. A page
    on a DNS-rebinding domain reaches 127.0.0.1 under its own name, so it is refused before any handler runs."""

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(raw) not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Host not allowed: start the app with --allow-host NAME to answer this name\n"
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def allowed_hosts(args) -> frozenset[str] | None:
    """The host names the app answers: loopback, the --host name, --allow-host names; None: any (opted out,
    or a --share link, which arrives under Gradio's share domain)."""
    if getattr(args, "allow_any_host", False) or getattr(args, "share", False):
        return None
    names = set(LOOPBACK_NAMES) | {host_name(n) for n in getattr(args, "allow_host", []) or []}
    if args.host and args.host not in ("0.0.0.0", "::"):
        names.add(host_name(args.host))
    return frozenset(names)


def loopback_bypasses_proxies(environ=os.environ) -> None:
    """Loopback traffic never goes through a proxy: Gradio checks the server it started with a request to it,
    which an ``HTTP_PROXY`` would otherwise send to the proxy (and the start fails)."""
    for key in ("NO_PROXY", "no_proxy"):
        current = [p.strip() for p in environ.get(key, "").split(",") if p.strip()]
        environ[key] = ",".join(current + [n for n in ("localhost", "127.0.0.1", "::1") if n not in current])


def upload_folder(data_dir: Path) -> Path:
    """A folder of this app process for what the browser uploads (Gradio copies every upload into its cache):
    inside the data folder, not the system temp folder, and removed when the app stops. Folders left by an app
    that was killed are removed at the next start."""
    import shutil
    import tempfile

    from idiolect.core.base.process import process_alive

    for old in data_dir.glob("uploads-*"):
        pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"uploads-{os.getpid()}-", dir=data_dir))


def launch_app(args) -> int:
    import atexit
    import shutil
    import signal
    import sys

    try:
        store = open_store(args.db)
    except IdiolectError as exc:
        print(f"error: {exc}")
        return 1
    uploads = upload_folder(store.path.parent)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)  # read by Gradio when the UI and the server are built
    atexit.register(shutil.rmtree, uploads, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # a polite stop runs the clean-up too
    logging.basicConfig(
        filename=str(store.path.parent / "app.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    demo = build_ui(store)
    auth = args.auth or os.environ.get("IDIOLECT_AUTH")
    auth_pair = None
    if auth:
        if ":" not in auth:
            print("error: --auth takes USER:PASSWORD")
            return 2
        user, password = auth.split(":", 1)
        auth_pair = (user, password)
    loopback_bypasses_proxies()
    hosts = allowed_hosts(args)
    app_kwargs = {}
    if hosts is not None:
        from starlette.middleware import Middleware

        app_kwargs["middleware"] = [Middleware(AllowedHostsOnly, allowed=hosts)]
    try:
        demo.queue(default_concurrency_limit=4).launch(
            app_kwargs=app_kwargs,
            server_name=args.host,
            server_port=args.port,
            inbrowser=not args.no_browser,
            share=bool(args.share),
            auth=auth_pair,
            css_paths=[CSS_PATH],
            head=SHORTCUTS,
            max_file_size=limits.MAX_UPLOAD_BYTES,
            show_error=False,
        )
    except KeyboardInterrupt:  # Ctrl-C: a normal way to stop the app
        pass
    finally:  # the process may end without atexit handlers (core.base.process.exit_process): remove the uploads here
        shutil.rmtree(uploads, ignore_errors=True)
    return 0
