"""The headless command line behind ``python launch.py SUBCOMMAND``. With no subcommand, launch.py starts
the UI instead (app/ owns that; this module never imports Gradio)."""

from __future__ import annotations

import json
import sys

from idiolect.core.base.errors import IdiolectError
from idiolect.core.ingest.peers import import_peers
from idiolect.core.ingest.pool import open_store
from idiolect.core.ingest.samples import import_samples
from idiolect.core.training.runs import adapter_dir, latest_completed_run, seconds_left


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
    with open_store(args.db, read_only_ok=True) as store:
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


def _train_progress(run_id: int):
    """The CLI's progress line of a training run, with the time left from this process's step times."""
    seen: list[float] = []

    def progress(step: int, total: int, m: dict) -> None:
        seen.append(m.get("seconds") or 0)
        eta = seconds_left(seen[-20:], total - step) or 0
        bar = "#" * int(30 * step / total)
        _progress(
            f"run {run_id} [{bar:<30}] {step}/{total} loss {m.get('loss', 0):.4f} "
            f"margin {m.get('reward_margin', 0):+.3f} {m.get('tokens_per_s', 0):,.0f} tok/s ETA {eta:,.0f}s"
        )

    return progress


def _train_report(store, run_id: int, result: dict) -> int:
    if result.get("status") == "cancelled":
        where = (
            f"at step {result['step']} (checkpoint saved)" if result.get("step") else "before training began"
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
    print(f"run {run_id} completed: adapter in {adapter_dir(store, run)}")
    print(f"  pi = {result['pi'].get('pi')} ({result['pi'].get('source')})")
    kept = result.get("early_stopping") or {}
    if kept.get("message"):
        print(f"  early stopping: {kept['message']}")
    for who in ("target", "peer"):
        lift = ev.get(f"heldout_{who}_lift")
        if lift is not None:
            print(
                f"  held-out {who} texts: log-likelihood per token {ev[f'heldout_{who}_ll_base']:.4f} -> "
                f"{ev[f'heldout_{who}_ll']:.4f} ({lift:+.4f})"
            )
    return 0


def cmd_train(args) -> int:
    import signal

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
        print(f"run {run_id}: training {store.get_run(run_id)['objective']} ...", file=sys.stderr)
        trainer = Trainer(store, run_id, progress=_train_progress(run_id))

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
        return _train_report(store, run_id, result)


def cmd_summary(args) -> int:
    import os

    from idiolect.core.persona.llm_client import openai_compatible_writer
    from idiolect.core.persona.style import report_text
    from idiolect.core.persona.summary import build_summary

    with open_store(args.db) as store:
        model = args.model
        if not model:
            run = latest_completed_run(store, store.get_profile(args.profile)["id"])
            if run is None:
                raise IdiolectError("name a model to score summaries with: --model HF_ID_OR_FOLDER")
            model = run["config"]["model"]
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
