"""The headless command line behind ``python launch.py SUBCOMMAND``. With no subcommand, launch.py starts
the UI instead (app/ owns that; this module never imports Gradio)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from core.errors import IdiolectError
from core.importers import PEER_FORMATS, SPLITS, import_peers, import_samples
from core.paths import default_db_path
from core.peers import ensure_defaults
from core.store import Store


def _add_db(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help=f"the SQLite file to use (default: {default_db_path()}; env IDIOLECT_HOME moves the folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description=(
            "Idiolect: tune an LLM to one person, on their own machine. With no subcommand, opens the app "
            "in the browser (on 127.0.0.1 only, unless told otherwise)."
        ),
    )
    _add_db(parser, top=True)
    ui = parser.add_argument_group("app options (no subcommand)")
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    ui.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    ui.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    ui.add_argument(
        "--share", action="store_true", help="also make a public Gradio share link (off by default)"
    )
    ui.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        default=None,
        help="require this login (or set IDIOLECT_AUTH=USER:PASSWORD)",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "import-peers",
        help="build or extend a peer pool from a Stack Exchange Posts.xml(.gz) or a JSONL/CSV file",
        description=(
            "Import other writers' texts as a peer pool. Stack Exchange Posts.xml or Posts.xml.gz: each answer "
            "becomes a text, its question (title + body) the context, grouped by author. JSONL/JSON/CSV: rows "
            "with 'writer', 'text' and optionally 'prompt' (or 'context'), 'attribution', 'license'. Writers get "
            "pseudonyms; e-mails, URLs, phone numbers and @handles are scrubbed; attribution is kept apart. "
            "Re-importing a file adds only what is new."
        ),
    )
    p.add_argument("path", help="the file to import")
    p.add_argument("--pool", required=True, help="pool name (created if new)")
    p.add_argument(
        "--format", choices=PEER_FORMATS, default="auto", help="file format (default: from the name)"
    )
    p.add_argument(
        "--site", help="Stack Exchange site host for attribution links (default: from the file name)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_db(p)

    p = sub.add_parser(
        "add-samples",
        help="add your own writing to a profile from .txt/.md/.jsonl/.json/.csv files or folders",
        description=(
            "Add a person's own writing to a profile (created if new). .txt/.md: one sample per blank-line-"
            "separated block (or per file with --split file). .jsonl/.json: objects with 'text' and optional "
            "'prompt' and 'context' (or plain strings). .csv/.tsv: a header row with a 'text' column, optional "
            "'prompt' and 'context'. Folders are searched for these files. Bad rows are reported and skipped; "
            "the good rows are kept; samples already there are not added twice."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--profile", required=True, help="profile name (created if new)")
    p.add_argument(
        "--split", choices=SPLITS, default="blocks", help=".txt/.md: samples per block or per file"
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default: utf-8)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    _add_db(p)

    p = sub.add_parser(
        "generate",
        help="generate text from a model (Hugging Face id, local folder or GGUF file), streamed",
        description=(
            "Generate a continuation of --prompt, streamed to stdout. --backend hf runs transformers (with a PEFT "
            "adapter folder as --adapter); --backend llama runs llama.cpp (a GGUF file, or an HF folder converted "
            "to GGUF once and cached; --adapter takes a GGUF LoRA). The model's chat template is used where it "
            "has one."
        ),
    )
    p.add_argument("--model", required=True, help="Hugging Face id, model folder, or .gguf file")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--system", help="a system message (e.g. a preference summary)")
    p.add_argument("--adapter", help="PEFT adapter folder (hf) or GGUF LoRA file (llama)")
    p.add_argument("--backend", choices=("hf", "llama"), default="hf", help="inference backend (default: hf)")
    p.add_argument("--max-tokens", type=int, default=200, help="most new tokens (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default: 0.8)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    p.add_argument("--seed", type=int, default=None, help="random seed for repeatable sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="hf backend device")
    _add_db(p)

    p = sub.add_parser(
        "models",
        help="list the recommended base models, or download one",
        description="List the recommended base models; with --download ID, fetch one into the Hugging Face cache.",
    )
    p.add_argument("--download", metavar="ID", help="download this model (with progress)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)

    p = sub.add_parser(
        "bench",
        help="benchmarks that write JSON + a Markdown table",
        description="Run a benchmark; each writes NAME.json and NAME.md into its --out folder.",
    )
    bench_sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    from bench import generation as bench_generation

    bp = bench_sub.add_parser(
        "generation",
        help="tokens/s of the transformers and llama.cpp backends on the same model",
        description=bench_generation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_generation.add_arguments(bp)
    _add_db(p)

    p = sub.add_parser(
        "stats",
        help="counts per table, peer pool and profile",
        description="Counts of rows per table, texts and writers per peer pool, and per-profile counts.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)
    return parser


def open_store(db: str | None) -> Store:
    """Open (and migrate) the database, and load the bundled defaults on first start."""
    store = Store(db or default_db_path())
    if store.backup_path:
        print(
            f"note: upgraded the database; the previous version is saved as {store.backup_path}",
            file=sys.stderr,
        )
    ensure_defaults(store)
    return store


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{message:<70}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def cmd_import_peers(args) -> int:
    with open_store(args.db) as store:
        report = import_peers(
            store, args.path, args.pool, fmt=args.format, site=args.site, progress=_progress
        )
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print("\n".join(report.lines()))
            pool = store.find_pool(args.pool)
            if pool:
                s = store.pool_stats(pool["id"])
                print(
                    f"pool {args.pool}: {s['texts']} texts by {s['writers']} writers "
                    f"({s['writers_with_3_plus']} with 3 or more texts)"
                )
    return 0 if report.ok else 1


def cmd_add_samples(args) -> int:
    with open_store(args.db) as store:
        reports = import_samples(store, args.profile, args.paths, split=args.split, encoding=args.encoding)
        if args.json:
            print(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            for report in reports:
                print("\n".join(report.lines()))
            profile = store.find_profile(args.profile)
            if profile:
                print(f"profile {profile['name']}: {len(store.list_samples(profile['id']))} samples in all")
    return 0 if all(r.ok for r in reports) else 1


def cmd_stats(args) -> int:
    with open_store(args.db) as store:
        stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"database: {stats['db']} (schema v{stats['schema_version']})")
    for table, n in stats["tables"].items():
        print(f"  {table:<12} {n:>8}")
    for name, s in stats["pools"].items():
        print(
            f"pool {name}: {s['texts']} texts, {s['writers']} writers ({s['writers_with_3_plus']} with 3+ texts)"
        )
    for name, s in stats["profiles"].items():
        print(
            f"profile {name}: {s['samples']} samples, {s['generations']} generations, "
            f"{s['ratings_up']} thumbs-up, {s['ratings_down']} thumbs-down, {s['runs']} training runs"
        )
    return 0


def cmd_generate(args) -> int:
    from core.generation import SamplingParams, open_generator

    params = SamplingParams(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    gen = open_generator(args.model, backend=args.backend, adapter=args.adapter, device=args.device)
    for piece in gen.stream(args.prompt, params, system=args.system):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_models(args) -> int:
    from core.models import RECOMMENDED, download

    if args.download:
        last = [0.0]

        def progress(done: int, total: int, name: str) -> None:
            import time

            now = time.monotonic()
            if now - last[0] > 0.5 or done == total:
                last[0] = now
                pct = f"{100 * done / total:5.1f}%" if total else ""
                _progress(f"downloading {name[:40]} {done / 1e6:8.1f} MB {pct}")

        path = download(args.download, progress=progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(path)
        return 0
    if args.json:
        print(json.dumps([m.to_dict() for m in RECOMMENDED], indent=2))
        return 0
    for m in RECOMMENDED:
        gated = " (gated)" if m.gated else ""
        print(f"{m.id:<40} {m.params_b:>5.2f}B  ~{m.download_gb:>4.1f} GB  {m.license}{gated}  {m.notes}")
    return 0


def cmd_bench(args) -> int:
    from bench import generation as bench_generation

    {"generation": bench_generation.run}[args.bench](args)
    return 0


COMMANDS = {
    "import-peers": cmd_import_peers,
    "add-samples": cmd_add_samples,
    "generate": cmd_generate,
    "models": cmd_models,
    "bench": cmd_bench,
    "stats": cmd_stats,
}


def run(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; user-facing errors become one ``error:`` line and exit code 1."""
    try:
        return COMMANDS[args.command](args)
    except IdiolectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        # Only launch.py starts the UI; importing app/ from core would pull Gradio into core.
        print("no subcommand given; run `python launch.py` to open the app, or see --help", file=sys.stderr)
        return 2
    return run(args)


def console_main() -> None:
    sys.exit(main())
