"""The headless command line behind ``python launch.py SUBCOMMAND``. With no subcommand, launch.py starts
the UI instead (app/ owns that; this module never imports Gradio)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.paths import default_db_path
from idiolect.core.ingest.peers import PEER_FORMATS, import_peers
from idiolect.core.ingest.pool import open_store
from idiolect.core.ingest.samples import SPLITS, import_samples


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
    ui.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name (repeatable); by default only loopback names "
        "and the --host name are answered, so a web page cannot reach the app by DNS rebinding",
    )
    ui.add_argument(
        "--allow-any-host",
        action="store_true",
        help="answer requests for any host name (turns that check off)",
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
    p.add_argument(
        "--me",
        metavar="USER_ID",
        help="your own id in the file (Stack Exchange user id, or the table's writer): your texts are kept out of "
        "the pool (and removed if an earlier import added them); with --profile they become your samples",
    )
    p.add_argument("--profile", help="with --me: the profile your own texts are added to (created if new)")
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
            "the good rows are kept; samples already there are not added twice. Chat histories are recognised "
            "by their shape: a ChatGPT export's conversations.json, a Claude export, an Open WebUI chat or "
            "feedback export, OpenAI-style {messages: [...]} JSONL; your own turns become samples (code blocks, "
            "pasted logs and quoted text left out: README, 'Bring your chat history') and Open WebUI thumbs "
            "become ratings. TRL (prompt/completion/label, prompt/chosen/rejected) and LLaMA-Factory (kto_tag, "
            "chosen/rejected) datasets become rated generations."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--profile", required=True, help="profile name (created if new)")
    p.add_argument(
        "--split", choices=SPLITS, default="blocks", help=".txt/.md: samples per block or per file"
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default: utf-8)")
    p.add_argument(
        "--dry-run", action="store_true", help="read and check everything, write nothing: what would be added"
    )
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
        "train",
        help="train the profile's LoRA adapter (C-BPO, or a baseline), with a progress bar",
        description=(
            "Train a LoRA adapter for a profile (QLoRA on CUDA, fp32 LoRA on CPU). cbpo: C-BPO -- your texts, "
            "thumbs-up and edits are positives, thumbs-down are negatives, the peer pool is the unlabeled set with "
            "the PU correction; bco: BCO with peers as plain negatives; kto: KTO with peers as undesirable; sft: plain "
            "fine-tuning on your texts; "
            "cbpo_pi0: C-BPO without the PU correction. Ctrl-C stops after a checkpoint; --resume RUN_ID "
            "continues a stopped, cancelled or crashed run. The adapter is saved as a PEFT folder and recorded."
        ),
    )
    p.add_argument("--profile", help="profile name")
    p.add_argument(
        "--model",
        help="Hugging Face id, local model folder, or a .gguf file (dequantized once, cached by its hash; the GGUF "
        "LoRA export then targets that very file)",
    )
    from idiolect.core.training import config as train_config

    train_config.add_arguments(p)  # every setting's flag, default and help from TrainConfig: one source
    p.add_argument("--resume", type=int, metavar="RUN_ID", help="continue this run instead of starting one")
    p.add_argument("--background", action="store_true", help="start a worker process and return at once")
    _add_db(p)

    p = sub.add_parser(
        "summary",
        help="how your writing differs from other writers', and the preference summary chosen by its lift",
        description=(
            "Compare a profile's writing with representative peers (DPL: clusters of the pool's writers, the writer "
            "nearest each centre, your own cluster left out) on writing, emotional and semantic style; write several "
            "candidate summaries (from the differences, and by an LLM when --llm-url or --llm-local is given); score "
            "each by its lift under --model (how much it raises the likelihood of your held-out texts, minus other "
            "writers'); keep the best as a new summary version."
        ),
    )
    p.add_argument("--profile", required=True)
    p.add_argument(
        "--model", help="generator that scores the summaries (default: the base of the latest run)"
    )
    p.add_argument("--pool", default="default", help="peer pool to compare with (default: the bundled pool)")
    p.add_argument(
        "--llm-url", help="an OpenAI-compatible endpoint (up to /v1) that writes candidate summaries"
    )
    p.add_argument(
        "--llm-model", default="gpt-4o-mini", help="model name for --llm-url (default: gpt-4o-mini)"
    )
    p.add_argument(
        "--llm-local", action="store_true", help="let --model itself write candidate summaries too"
    )
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    _add_db(p)

    p = sub.add_parser(
        "export",
        help="write the adapter (PEFT, GGUF LoRA, merged) and the preference summary to a folder",
        description=(
            "Export a profile's latest trained adapter and preference summary into --out: peft (adapter folder), "
            "gguf (GGUF LoRA + the base as GGUF, for llama.cpp / llama-cpp-python / Ollama), merged (base + adapter "
            "as one HF model), summary (plain text, OpenAI chat JSON, a Python snippet, an Ollama Modelfile, "
            "llama.cpp command lines); kto-jsonl, dpo-jsonl (TRL's unpaired and paired preference formats) and "
            "llamafactory (a dataset_dir with dataset_info.json) hold your texts, ratings and edits for other "
            "trainers, with the peer pool as an unlabeled file beside them. A manifest.json lists every file "
            "with its SHA-256."
        ),
    )
    p.add_argument("--profile", required=True)
    p.add_argument("--out", required=True, help="the folder to write into (created if needed)")
    p.add_argument(
        "--formats",
        default=None,
        help="comma-separated: peft,gguf,merged,summary,kto-jsonl,dpo-jsonl,llamafactory "
        "(default: peft,gguf,summary)",
    )
    p.add_argument("--run", type=int, help="export this training run (default: the latest completed one)")
    p.add_argument(
        "--gguf-dtype", choices=("f16", "f32"), default="f16", help="GGUF precision (default: f16)"
    )
    _add_db(p)

    p = sub.add_parser(
        "models",
        help="list the recommended base models, or download one",
        description="List the recommended base models; with --download ID, fetch one into the Hugging Face cache.",
    )
    p.add_argument("--download", metavar="ID", help="download this model (with progress)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)

    # The benchmarks' own options are read by idiolect.bench, imported only when a bench command runs.
    p = sub.add_parser(
        "bench",
        help="benchmarks that write JSON + a Markdown table (launch.py bench --help lists them)",
        add_help=False,
        prefix_chars="\x01",  # everything after "bench", options included, goes to the benchmarks' parser
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "stats",
        help="counts per table, peer pool and profile",
        description="Counts of rows per table, texts and writers per peer pool, and per-profile counts.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_db(p)
    return parser


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{message:<70}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def cmd_import_peers(args) -> int:
    with open_store(args.db) as store:
        if args.profile and not args.me:
            raise IdiolectError("--profile goes with --me USER_ID (your id in the file)")
        report = import_peers(
            store, args.path, args.pool, fmt=args.format, site=args.site, progress=_progress, me=args.me,
            me_profile=args.profile,
        )  # fmt: skip
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
        reports = import_samples(
            store, args.profile, args.paths, split=args.split, encoding=args.encoding, dry_run=args.dry_run
        )
        if args.json:
            print(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            for report in reports:
                print("\n".join(report.lines()))
            profile = store.find_profile(args.profile)
            if args.dry_run:
                print("dry run: nothing was written")
            elif profile:
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
    from idiolect.core.models.generation import open_generator
    from idiolect.core.models.sampling import SamplingParams

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


def cmd_train(args) -> int:
    import signal
    import time

    from idiolect.core.training import config as train_config
    from idiolect.core.training import worker
    from idiolect.core.training.trainer import Trainer

    with open_store(args.db) as store:
        if args.resume is not None:
            run_id = worker.reopen_run(store, args.resume)["id"]
        else:
            if not args.profile or not args.model:
                raise IdiolectError("train needs --profile and --model (or --resume RUN_ID)")
            cfg = train_config.from_args(args, args.model)
            if args.background:
                run_id = worker.start(store, args.profile, cfg)
                print(f"run {run_id} started in the background; `launch.py stats` shows it")
                return 0
            run_id = worker.new_run(store, args.profile, cfg)  # refused here, no failed run is left behind
        timing: dict = {}

        def progress(step: int, total: int, m: dict) -> None:
            # The ETA counts steps only: the clock starts at the first step of this process, after the model
            # loaded and the one-off reference pass ran.
            now = time.monotonic()
            timing.setdefault("t0", now)
            timing.setdefault("s0", step)
            done = step - timing["s0"]
            eta = (
                (now - timing["t0"]) / done * (total - step) if done else m.get("seconds", 0) * (total - step)
            )
            bar = "#" * int(30 * step / total)
            _progress(
                f"run {run_id} [{bar:<30}] {step}/{total} loss {m.get('loss', 0):.4f} "
                f"margin {m.get('reward_margin', 0):+.3f} {m.get('tokens_per_s', 0):,.0f} tok/s ETA {eta:,.0f}s"
            )

        print(f"run {run_id}: training {store.get_run(run_id)['objective']} ...", file=sys.stderr)
        trainer = Trainer(store, run_id, progress=progress)

        def on_interrupt(signum, frame):
            # The first Ctrl-C stops at the last whole step and checkpoints it; a second one stops at once.
            if trainer.stop_requested:
                raise KeyboardInterrupt
            print("\nstopping: saving a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)
            trainer.request_stop()

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            result = trainer.run()
        except KeyboardInterrupt:
            print(f"\nstopped; continue with: launch.py train --resume {run_id}", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGINT, previous)
        if result.get("status") == "cancelled":
            where = (
                f"at step {result['step']} (checkpoint saved)"
                if result.get("step")
                else "before training began"
            )
            print(f"\nstopped {where}; continue with: launch.py train --resume {run_id}", file=sys.stderr)
            return 130
        if sys.stderr.isatty():
            print(file=sys.stderr)
        run = store.get_run(run_id)
        if result.get("status") != "completed":
            print(f"run {run_id} {result.get('status')} at step {result.get('step')}")
            return 1
        ev = result["eval"]
        print(f"run {run_id} completed: adapter in {run['adapter_path']}")
        print(f"  pi = {result['pi'].get('pi')} ({result['pi'].get('source')})")
        for who in ("target", "peer"):
            lift = ev.get(f"heldout_{who}_lift")
            if lift is not None:
                print(
                    f"  held-out {who} texts: log-likelihood per token {ev[f'heldout_{who}_ll_base']:.4f} -> "
                    f"{ev[f'heldout_{who}_ll']:.4f} ({lift:+.4f})"
                )
    return 0


def cmd_summary(args) -> int:
    import os

    from idiolect.core.persona.llm_client import openai_compatible_writer
    from idiolect.core.persona.style import report_text
    from idiolect.core.persona.summary import build_summary

    with open_store(args.db) as store:
        model = args.model
        if not model:
            runs = [
                r
                for r in store.list_runs(store.get_profile(args.profile)["id"])
                if r["status"] == "completed"
            ]
            if not runs:
                raise IdiolectError("name a model to score summaries with: --model HF_ID_OR_FOLDER")
            model = runs[0]["config"]["model"]
        writer = None
        if args.llm_url:
            # The key comes from the environment only, so it never lands in shell history or logs.
            writer = openai_compatible_writer(
                args.llm_url, os.environ.get("IDIOLECT_LLM_API_KEY"), args.llm_model
            )
        elif args.llm_local:
            from idiolect.core.models.hf_generation import HFGenerator
            from idiolect.core.models.resolve import local_model_dir
            from idiolect.core.models.sampling import SamplingParams

            gen = HFGenerator.from_pretrained(local_model_dir(model))

            def writer(prompt, seed=0):
                return gen.generate(prompt, SamplingParams(max_new_tokens=160, temperature=0.7, seed=seed))

        result = build_summary(
            store,
            args.profile,
            model=model,
            pool=args.pool,
            writer=writer,
            progress=lambda m: print(m, file=sys.stderr),
        )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(report_text(result["report"]))
    print(f"\nRepresentative peers: {', '.join(result['report']['representatives'])}")
    print(
        f"\nSummary v{result['version']} (lift {result['summary']['lift']:+.3f}, candidate '{result['summary']['name']}'):"
    )
    print(result["summary"]["text"])
    generic = next((c for c in result["candidates"] if c["name"] == "generic"), None)
    if generic:
        print(f"(a generic summary scores {generic['lift']:+.3f})")
    return 0


def cmd_export(args) -> int:
    from idiolect.core.export.bundle import export

    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
    with open_store(args.db) as store:
        result = export(
            store, args.profile, args.out, formats=formats, run_id=args.run, gguf_dtype=args.gguf_dtype
        )
    print(f"exported to {result.folder}:")
    for path in result.files:
        print(f"  {path.relative_to(result.folder)}")
    for fmt, why in result.skipped.items():
        print(f"  skipped {fmt}: {why}")
    return 0


def cmd_models(args) -> int:
    from idiolect.core.models.inventory import models_on_disk
    from idiolect.core.models.registry import RECOMMENDED
    from idiolect.core.models.resolve import download

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
    on_disk = models_on_disk()
    if args.json:
        print(json.dumps({"recommended": [m.to_dict() for m in RECOMMENDED], "on_disk": on_disk}, indent=2))
        return 0
    print("Recommended (Hugging Face ids; --download ID fetches one):")
    for m in RECOMMENDED:
        gated = " (gated)" if m.gated else ""
        print(f"  {m.id:<40} {m.params_b:>5.2f}B  ~{m.download_gb:>4.1f} GB  {m.license}{gated}  {m.notes}")
    print("On this machine (what --model takes; a local folder or any .gguf file works too):")
    for m in on_disk or [{"kind": "", "name": "none yet", "path": "", "bytes": 0}]:
        size = f"{m['bytes'] / 1e9:6.2f} GB" if m["bytes"] else " " * 9
        print(f"  {m['kind']:<12} {size}  {m['path'] or m['name']}")
    return 0


def cmd_bench(args) -> int:
    from idiolect import bench

    parser = argparse.ArgumentParser(
        prog="launch.py bench",
        description="Run a benchmark; each writes NAME.json and NAME.md into its --out folder.",
    )
    bench.add_parsers(parser, _add_db)
    bench_args = parser.parse_args(args.bench_args)
    if not hasattr(bench_args, "db"):
        bench_args.db = getattr(args, "db", None)
    bench.run(bench_args)
    return 0


COMMANDS = {
    "import-peers": cmd_import_peers,
    "add-samples": cmd_add_samples,
    "generate": cmd_generate,
    "train": cmd_train,
    "export": cmd_export,
    "summary": cmd_summary,
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
