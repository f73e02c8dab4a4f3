"""The command line's parser: the app's options, and one parser function per subcommand (their handlers are
:mod:`idiolect.core.cli.commands`)."""

from __future__ import annotations

import argparse

from idiolect.core.base.paths import default_db_path
from idiolect.core.ingest.peers import PEER_FORMATS
from idiolect.core.ingest.samples import SPLITS


def add_db(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help=f"the SQLite file to use (default: {default_db_path()}; env IDIOLECT_HOME moves the folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the app's options, and one subcommand per parser function below."""
    parser = _app_options()
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    _import_peers_parser(sub)
    _add_samples_parser(sub)
    _generate_parser(sub)
    _train_parser(sub)
    _summary_parser(sub)
    _export_parser(sub)
    _models_parser(sub)
    _bench_parser(sub)
    _stats_parser(sub)
    return parser


def _app_options() -> argparse.ArgumentParser:
    """The top-level parser with the options of the app (no subcommand)."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description=(
            "Idiolect: tune an LLM to one person, on their own machine. With no subcommand, opens the app "
            "in the browser (on 127.0.0.1 only, unless told otherwise)."
        ),
    )
    add_db(parser, top=True)
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
    return parser


def _import_peers_parser(sub) -> None:
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
    add_db(p)


def _add_samples_parser(sub) -> None:
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
    add_db(p)


def _generate_parser(sub) -> None:
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
    add_db(p)


def _train_parser(sub) -> None:
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
    add_db(p)


def _summary_parser(sub) -> None:
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
    add_db(p)


def _export_parser(sub) -> None:
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
    add_db(p)


def _models_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the recommended base models, or download one",
        description="List the recommended base models; with --download ID, fetch one into the Hugging Face cache.",
    )
    p.add_argument("--download", metavar="ID", help="download this model (with progress)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db(p)


def _bench_parser(sub) -> None:
    # The benchmarks' own options are read by idiolect.bench, imported only when a bench command runs.
    p = sub.add_parser(
        "bench",
        help="benchmarks that write JSON + a Markdown table (launch.py bench --help lists them)",
        add_help=False,
        prefix_chars="\x01",  # everything after "bench", options included, goes to the benchmarks' parser
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)


def _stats_parser(sub) -> None:
    p = sub.add_parser(
        "stats",
        help="counts per table, peer pool and profile",
        description="Counts of rows per table, texts and writers per peer pool, and per-profile counts.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_db(p)
