"""Benchmarks, run through `python launch.py bench NAME ...`; each writes JSON and a Markdown table.

Imported only when a bench command runs: the app and the other commands never load benchmark code."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(parser: argparse.ArgumentParser, add_db: Callable[[argparse.ArgumentParser], None]) -> None:
    """One subcommand per benchmark, each with its own options (and ``--db`` after the name)."""
    from idiolect.bench import device, generation, imports, personalization, protocol, training

    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    specs = [
        ("generation", "tokens/s of the transformers and llama.cpp backends on the same model",
         generation.__doc__, raw, generation.add_arguments),
        ("training", "training tokens/s and memory: Idiolect C-BPO vs TRL's KTOTrainer on the same work",
         training.__doc__, raw, training.add_arguments),
        ("pretrain", "pretrain a small LM on given texts (the base for quality benchmarks; cached)",
         personalization.__doc__, raw, personalization.add_pretrain_arguments),
        ("personalization",
         "does it write like you? objectives ranked on real writers (tune, then report; paired, resumable)",
         protocol.__doc__, raw, protocol.add_arguments),
        ("imports", "peak memory and wall time of the largest and slowest-to-parse imports allowed",
         imports.__doc__, raw, imports.add_arguments),
        ("device", "the GPU figures in one command: QLoRA training vs TRL, generation, a protocol slice",
         device.__doc__, raw, device.add_arguments),
    ]  # fmt: skip
    for name, help_text, description, formatter, add_arguments in specs:
        extra = {"formatter_class": formatter} if formatter else {}
        bp = sub.add_parser(name, help=help_text, description=description, **extra)
        add_arguments(bp)
        add_db(bp)


def run(args: argparse.Namespace) -> None:
    from idiolect.bench import device, generation, imports, personalization, protocol, training

    {
        "generation": generation.run,
        "training": training.run,
        "pretrain": personalization.pretrain_cmd,
        "personalization": protocol.personalization_cmd,
        "imports": imports.run,
        "device": device.run,
    }[args.bench](args)


def main(args: argparse.Namespace) -> int:
    """``launch.py bench NAME ...``: parse the benchmark's own options (``args.bench_args``) and run it."""
    from idiolect.core.cli import add_db

    parser = argparse.ArgumentParser(
        prog="launch.py bench",
        description="Run a benchmark; each writes NAME.json and NAME.md into its --out folder.",
    )
    add_parsers(parser, add_db)
    bench_args = parser.parse_args(args.bench_args)
    if not hasattr(bench_args, "db"):
        bench_args.db = getattr(args, "db", None)
    run(bench_args)
    return 0
