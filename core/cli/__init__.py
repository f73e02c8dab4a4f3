"""The headless command line behind ``python launch.py SUBCOMMAND``: its parser (:mod:`.parser`, a function per
subcommand) and its commands (:mod:`.commands`). With no subcommand, launch.py starts the UI instead (app/
owns that; nothing here imports Gradio), and ``bench`` runs :mod:`idiolect.bench` (launch.py dispatches it, so
core never imports benchmark code)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from idiolect.core.base.errors import IdiolectError
from idiolect.core.cli import commands
from idiolect.core.cli.parser import add_db, build_parser

__all__ = ["COMMANDS", "add_db", "build_parser", "main", "run"]

COMMANDS = {
    "import-peers": commands.cmd_import_peers,
    "add-samples": commands.cmd_add_samples,
    "generate": commands.cmd_generate,
    "train": commands.cmd_train,
    "export": commands.cmd_export,
    "summary": commands.cmd_summary,
    "models": commands.cmd_models,
    "stats": commands.cmd_stats,
}


def run(args: argparse.Namespace, command: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Run a parsed subcommand (or ``command`` for it: launch.py's ``bench``); user-facing errors become one
    ``error:`` line and exit code 1."""
    try:
        return (command or COMMANDS[args.command])(args)
    except IdiolectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None or args.command not in COMMANDS:
        # Only launch.py starts the UI; importing app/ from core would pull Gradio into core.
        print(
            f"run `python launch.py {args.command or ''}` (the app, or bench), or see --help", file=sys.stderr
        )
        return 2
    return run(args)
