"""Idiolect's one entry point (``python launch.py`` in a checkout, the ``idiolect`` command when installed).

idiolect                 open the app in the browser (127.0.0.1, a free port)
idiolect SUBCOMMAND ...  headless: add-samples, train, export, stats, ... (see --help)
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, before anything imports Gradio
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str] | None = None) -> int:
    from idiolect.core.cli import build_parser, run

    args = build_parser().parse_args(argv)
    if args.command == "bench":  # benchmark code is loaded by this command only
        from idiolect.bench import main as bench_main

        return run(args, bench_main)
    if args.command is not None:
        return run(args)
    try:
        from idiolect.app.main import launch_app
    except ImportError as exc:  # httpx refuses at import when a SOCKS proxy is set and socksio is missing
        if "socks" not in str(exc).lower():
            raise
        print("error: a SOCKS proxy is set (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) and the package socksio is not "
              "installed: `pip install socksio`, or unset the proxy for Idiolect (the app itself only talks to 127.0.0.1)")
        return 1
    return launch_app(args)


def console_main() -> None:
    from idiolect.core.base.process import exit_process

    exit_process(main())


if __name__ == "__main__":
    console_main()
