"""Exporting a profile's adapter and preference summary to a folder the user picks.

Formats:
- ``peft``: the PEFT adapter folder (``PeftModel.from_pretrained``);
- ``gguf``: the GGUF LoRA for llama.cpp, and the base model as GGUF (f16) to load it onto -- when the run trained
  on a GGUF file, the LoRA targets that very file (named by its path in the Modelfile and commands; no base is
  written);
- ``merged``: base + adapter merged into one Hugging Face model (safetensors; from a GGUF base, its dequantized
  weights);

A format the base model's architecture cannot take is refused (when asked for by name) or skipped with its
reason (by default) before any file is written.
- ``summary``: the preference summary as plain text, an OpenAI chat-completions JSON body with the summary as the
  system message, a Python snippet with the official ``openai`` client, an Ollama Modelfile (FROM / ADAPTER /
  SYSTEM) and llama.cpp command lines;
- ``kto-jsonl``, ``dpo-jsonl``, ``llamafactory``: the profile's own texts, ratings and edits as datasets other
  trainers load unchanged (:func:`dataset_files`), with the peer pool as an unlabeled file beside them;
and always ``manifest.json``: base model, training run and its metrics, summary version and score, SHA-256 of
every file written, date.

File names come from the profile name through :func:`safe_name`, so no name can leave the chosen folder.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.store import Store

MODEL_FORMATS = ("peft", "gguf", "merged")
DATASET_FORMATS = ("kto-jsonl", "dpo-jsonl", "llamafactory")
FORMATS = (*MODEL_FORMATS, "summary", *DATASET_FORMATS)
DEFAULT_FORMATS = ("peft", "gguf", "summary")
EXAMPLE_PROMPT = "Write a short note to a friend about your weekend."
API_MODEL = "gpt-4o-mini"


def safe_name(name: str, fallback: str = "profile") -> str:
    """A file-name-safe slug: letters, digits, '.', '-', '_' only, no leading dots, at most 64 characters."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip(".-_")[:64]
    return slug or fallback


@dataclass
class ExportResult:
    folder: Path
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    export_id: int | None = None
    commands: dict[str, str] = field(default_factory=dict)  # what to type to run this export, per runner


def modelfile_text(base_ref: str, lora_ref: str | None, summary: str) -> str:
    """An Ollama Modelfile: FROM the base GGUF, one ADAPTER (the GGUF LoRA), the summary as SYSTEM. Ollama's
    multi-line strings have no escapes, so a ``\"\"\"`` inside the summary is written as ``"" "``."""
    lines = [f"FROM {base_ref}"]
    if lora_ref:
        lines.append(f"ADAPTER {lora_ref}")
    lines.append(f'SYSTEM """{_ollama_safe(summary)}"""')
    return "\n".join(lines) + "\n"


def _ollama_safe(summary: str) -> str:
    text = summary.strip()
    while '"""' in text:
        text = text.replace('"""', '"" "')
    return text


_OLLAMA_COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
                    "message", "requires"}  # fmt: skip


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """``[(command, value)]`` as Ollama's parser (parser/parser.go) reads a Modelfile: a command word, a space, a
    value that runs to the end of the line unless it opens a ``"`` or ``\"\"\"`` string, which runs to its
    closing quotes at a line end; no escapes; ``#`` starts a comment line. Raises ValueError where Ollama would
    refuse the file."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i + 1
            continue
        j = i
        while j < n and text[j].isascii() and text[j].isalpha():
            j += 1
        name = text[i:j].lower()
        if name not in _OLLAMA_COMMANDS or j >= n or text[j] not in " \t":
            raise ValueError(f"not an Ollama command at character {i}: {text[i : j + 10]!r}")
        i = j + 1
        if name == "parameter":
            j = text.find(" ", i)
            name, i = text[i:j], j + 1
        end = text.find("\n", i)
        end = n if end < 0 else end
        value = text[i:end].strip()
        for quote in ('"""', '"'):
            if value.startswith(quote):
                close = i + text[i:].index(quote) + len(quote)
                while True:
                    stop = text.find("\n", close)
                    stop = n if stop < 0 else stop
                    candidate = text[i:stop].strip()
                    if len(candidate) >= 2 * len(quote) and candidate.endswith(quote):
                        value, end = candidate[len(quote) : -len(quote)], stop
                        break
                    if stop >= n:
                        raise ValueError(f"an unclosed {quote} string in {name.upper()}")
                    close = stop + 1
                break
        out.append((name, value))
        i = end + 1
    if not any(name == "from" for name, _ in out):
        raise ValueError("no FROM line")
    return out


def check_modelfile(path: Path, summary: str | None = None) -> None:
    """Refuse a Modelfile that ``ollama create`` would refuse or misread: FROM and ADAPTER must name GGUF files
    that exist (a relative path is read from the Modelfile's folder), one ADAPTER at most, and the SYSTEM text
    must read back as the summary."""
    commands = parse_modelfile(path.read_text(encoding="utf-8"))

    def gguf(ref: str, what: str) -> None:
        file = Path(ref).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            with file.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise IdiolectError(
                f"the Modelfile's {what} {ref} cannot be read: {exc.strerror or exc}"
            ) from None
        if magic != b"GGUF":
            raise IdiolectError(f"the Modelfile's {what} {ref} is not a GGUF file")

    froms = [v for c, v in commands if c == "from"]
    adapters = [v for c, v in commands if c == "adapter"]
    if len(froms) != 1 or len(adapters) > 1:
        raise IdiolectError(
            f"a Modelfile takes one FROM and at most one ADAPTER, not {len(froms)} and {len(adapters)}"
        )
    gguf(froms[0], "FROM")
    for ref in adapters:
        gguf(ref, "ADAPTER")
    if summary is not None and [v for c, v in commands if c == "system"] != [_ollama_safe(summary)]:
        raise IdiolectError("the Modelfile's SYSTEM does not read back as the summary")


def _move_into(work: Path, final: Path) -> None:
    """Move each entry of ``work`` into ``final``, replacing what is there under that name: a file or a link is
    unlinked (a link is never followed), a folder removed; then ``work`` itself goes."""
    for entry in sorted(work.iterdir()):
        dest = final / entry.name
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        os.replace(entry, dest)
    work.rmdir()


def run_commands(
    folder: Path, slug: str, base_gguf: str | None, lora_gguf: str | None, *, modelfile: bool | None = None
) -> dict[str, str]:
    """The exact commands that run an export with llama.cpp's server and with Ollama (from any folder)."""
    if not lora_gguf and not base_gguf:
        return {}
    q = shlex.quote
    base = (
        base_gguf
        if base_gguf and Path(base_gguf).is_absolute()
        else str(folder / (base_gguf or "YOUR-BASE-MODEL.gguf"))
    )
    lora = f" --lora {q(str(folder / lora_gguf))}" if lora_gguf else ""
    out = {"llama-server": f"llama-server -m {q(base)}{lora} --port 8080"}
    if lora_gguf:
        # The persona as a switch: loaded but off at start, then its scale set at run time (llama.cpp's server).
        url = "http://127.0.0.1:8080/lora-adapters"
        out["llama-server, persona switchable"] = (
            f"llama-server -m {q(base)}{lora} --lora-init-without-apply --port 8080"
        )
        for name, scale in (("persona on", 1.0), ("persona off", 0.0)):
            body = json.dumps([{"id": 0, "scale": scale}])
            out[name] = f"curl -s {url} -H 'Content-Type: application/json' -d {q(body)}"
    if (folder / "Modelfile").exists() if modelfile is None else modelfile:
        out["ollama"] = (
            f"cd {q(str(folder))} && ollama create {q(slug.lower())} -f Modelfile && ollama run {q(slug.lower())}"
        )
    return out


def _latest_completed_run(store: Store, profile_id: int, run_id: int | None) -> dict | None:
    if run_id is not None:
        run = store.get_run(run_id)
        if run["profile_id"] != profile_id:
            raise IdiolectError(f"run {run_id} belongs to another profile")
        if run["status"] != "completed" or not run["adapter_path"]:
            raise IdiolectError(f"run {run_id} has no finished adapter (status: {run['status']})")
        return run
    from idiolect.core.training.runs import latest_completed_run

    return latest_completed_run(store, profile_id)


def _training_data(run: dict) -> dict | None:
    """The rows a run trained and was evaluated on (source id and content hash of each), from its record."""
    from idiolect.core.training.runs import read_data_record, record_summary

    record_path = Path((run["result"].get("data") or {}).get("record") or "")
    try:
        record = read_data_record(record_path.parent) if record_path.name else None
    except IdiolectError:
        record = None
    if record is None:
        return None
    return {"sha256": run["result"]["data"].get("sha256"), "rows": record_summary(record)}


def summary_files(
    folder: Path, slug: str, summary: str, *, base_gguf: str | None, lora_gguf: str | None
) -> list[Path]:
    """The summary in every form an API model or a local runner takes."""
    written = []
    txt = folder / f"{slug}-summary.txt"
    txt.write_text(summary.strip() + "\n", encoding="utf-8")
    body = {
        "model": API_MODEL,
        "messages": [
            {"role": "system", "content": summary.strip()},
            {"role": "user", "content": EXAMPLE_PROMPT},
        ],
    }
    chat = folder / f"{slug}-openai-chat.json"
    chat.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    snippet = folder / f"{slug}-openai.py"
    snippet.write_text(
        f'''"""Use the preference summary with any OpenAI-compatible chat API (set OPENAI_API_KEY; for a local server,
also OPENAI_BASE_URL, e.g. http://127.0.0.1:8000/v1)."""
from openai import OpenAI

SUMMARY = {json.dumps(summary.strip(), ensure_ascii=False)}

client = OpenAI()
reply = client.chat.completions.create(
    model={json.dumps(API_MODEL)},
    messages=[{{"role": "system", "content": SUMMARY}}, {{"role": "user", "content": {json.dumps(EXAMPLE_PROMPT)}}}],
)
print(reply.choices[0].message.content)
''',
        encoding="utf-8",
    )
    written += [txt, chat, snippet]
    # A base written into the folder is named relative to it; the user's own GGUF by its absolute path.
    base_ref = (base_gguf if Path(base_gguf).is_absolute() else f"./{base_gguf}") if base_gguf else None
    if base_ref:  # Ollama needs the base as a GGUF file: without one there is no valid Modelfile to write
        modelfile = folder / "Modelfile"
        modelfile.write_text(
            modelfile_text(base_ref, lora_gguf and f"./{lora_gguf}", summary), encoding="utf-8"
        )
        check_modelfile(modelfile, summary)
        written.append(modelfile)
    base_ref = base_ref or "YOUR-BASE-MODEL.gguf"
    lora_arg = f" --lora {shlex.quote(lora_gguf)}" if lora_gguf else ""
    lora_path = f" --lora_path {shlex.quote(lora_gguf)}" if lora_gguf else ""
    cmd = folder / f"{slug}-llama-cpp.sh"
    cmd.write_text(
        "#!/bin/sh\n# Run from this folder. llama.cpp's CLI:\n"
        f'llama-cli -m {shlex.quote(base_ref)}{lora_arg} -sys "$(cat {shlex.quote(txt.name)})" -cnv\n'
        "# or an OpenAI-compatible server (pip install 'llama-cpp-python[server]'); send "
        f"{chat.name} to it:\n"
        f"# python -m llama_cpp.server --model {shlex.quote(base_ref)}{lora_path} --host 127.0.0.1 --port 8000\n",
        encoding="utf-8",
    )
    written.append(cmd)
    return written


def _conversation(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def _write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def dataset_files(folder: Path, slug: str, data, wanted) -> tuple[list[Path], dict[str, str]]:
    """The profile's data (:func:`core.training_data.preference_data`) as datasets for other trainers:

    - ``kto-jsonl``: TRL's unpaired preference format, conversational (``prompt`` / ``completion`` as messages,
      ``label`` true for your writing, thumbs-up and edits, false for thumbs-down), for ``KTOTrainer`` /
      ``BCOTrainer``;
    - ``dpo-jsonl``: TRL's paired format (``prompt`` / ``chosen`` / ``rejected``), for ``DPOTrainer``;
    - ``llamafactory``: a folder with ``dataset_info.json`` naming a KTO set (sharegpt ``messages`` +
      ``kto_tag``) and a ranking set (``conversations`` + ``chosen`` / ``rejected``), for ``dataset_dir``;

    and, with any of them, the peer pool as ``{slug}-peers-unlabeled.jsonl`` (TRL prompt-completion rows): neither
    TRL's nor LLaMA-Factory's formats have a place for unlabeled texts, so they sit beside the datasets for a
    trainer that takes them (C-BPO, BCO's density-ratio classifier)."""
    files: list[Path] = []
    skipped: dict[str, str] = {}
    if "kto-jsonl" in wanted:
        rows = (
            {"prompt": _conversation("user", r["prompt"]), "completion": _conversation("assistant", r["completion"]),
             "label": r["label"]}
            for r in data.unpaired
        )  # fmt: skip
        files.append(_write_jsonl(folder / f"{slug}-kto.jsonl", rows))
    if "dpo-jsonl" in wanted:
        if data.pairs:
            rows = (
                {"prompt": _conversation("user", r["prompt"]), "chosen": _conversation("assistant", r["chosen"]),
                 "rejected": _conversation("assistant", r["rejected"])}
                for r in data.pairs
            )  # fmt: skip
            files.append(_write_jsonl(folder / f"{slug}-dpo.jsonl", rows))
        else:
            skipped["dpo-jsonl"] = (
                "no pairs yet: edit a generation, or rate a thumbs-down answer to a prompt you also wrote or "
                "liked an answer to"
            )
    if "llamafactory" in wanted:
        sub = folder / f"{slug}-llamafactory"
        sub.mkdir(exist_ok=True)
        kto = [
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
             "kto_tag": r["label"]}
            for r in data.unpaired
        ]  # fmt: skip
        ranking = [
            {"conversations": [{"from": "human", "value": r["prompt"]}],
             "chosen": {"from": "gpt", "value": r["chosen"]}, "rejected": {"from": "gpt", "value": r["rejected"]}}
            for r in data.pairs
        ]  # fmt: skip
        tags = {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        }
        info = {
            f"{slug}_kto": {"file_name": f"{slug}_kto.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "kto_tag": "kto_tag"}, "tags": tags},
        }  # fmt: skip
        (sub / f"{slug}_kto.json").write_text(json.dumps(kto, indent=1, ensure_ascii=False), encoding="utf-8")
        files.append(sub / f"{slug}_kto.json")
        if ranking:
            info[f"{slug}_dpo"] = {"file_name": f"{slug}_dpo.json", "formatting": "sharegpt", "ranking": True,
                                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}  # fmt: skip
            (sub / f"{slug}_dpo.json").write_text(
                json.dumps(ranking, indent=1, ensure_ascii=False), encoding="utf-8"
            )
            files.append(sub / f"{slug}_dpo.json")
        (sub / "dataset_info.json").write_text(
            json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        files.append(sub / "dataset_info.json")
    if files and data.unlabeled:
        rows = (
            {"prompt": _conversation("user", r["prompt"]), "completion": _conversation("assistant", r["completion"])}
            for r in data.unlabeled
        )  # fmt: skip
        files.append(_write_jsonl(folder / f"{slug}-peers-unlabeled.jsonl", rows))
    return files, skipped


def export(
    store: Store,
    profile: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] | list[str] | None = None,
    run_id: int | None = None,
    gguf_dtype: str = "f16",
) -> ExportResult:
    from idiolect.core.base.identity import sha256_file
    from idiolect.core.models.gguf.cache import gguf_source
    from idiolect.core.models.gguf.writer import convert_hf_to_gguf, convert_lora_to_gguf
    from idiolect.core.models.resolve import local_model_dir, resolve

    prof = store.get_profile(profile)
    asked = tuple(formats) if formats else None
    wanted = asked or DEFAULT_FORMATS
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise IdiolectError(f"unknown export format {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    run = _latest_completed_run(store, prof["id"], run_id)
    summaries = store.list_summaries(prof["id"])
    summary = summaries[0] if summaries else None
    needs_run = [f for f in wanted if f in MODEL_FORMATS]
    if needs_run and run is None and (asked or not summary):
        raise IdiolectError(
            f"profile {profile!r} has no trained adapter yet: train one first (launch.py train)"
        )
    if "summary" in wanted and summary is None and asked and "summary" in asked:
        raise IdiolectError(
            f"profile {profile!r} has no preference summary yet: make one first (launch.py summary)"
        )

    # Everything that can refuse is decided before the first file is written.
    adapter_dir = Path(run["adapter_path"]) if run else None
    base_spec = run["config"].get("model") if run else None
    base_dir = None
    base_gguf_file = None  # the user's own GGUF base, when the run trained on one
    skipped: dict[str, str] = {}
    for fmt in MODEL_FORMATS:
        if fmt in wanted and run is None:
            skipped[fmt] = "no trained adapter"
    if run and ("gguf" in wanted or "merged" in wanted):
        from idiolect.core.models.gguf.writer import export_problem

        base_dir = local_model_dir(base_spec)
        source = resolve(base_spec)
        if source.kind == "gguf":
            # The LoRA targets the user's own GGUF: the same quantized weights it was trained against.
            base_gguf_file = source.path
        problems = {
            "gguf": export_problem(base_dir, "lora")
            or (None if base_gguf_file else export_problem(base_dir, "base")),
            "merged": None,
        }
        for fmt, problem in problems.items():
            if fmt in wanted and problem:
                if asked and fmt in asked:
                    raise IdiolectError(f"cannot export {fmt}: {problem}")
                skipped[fmt] = problem

    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IdiolectError(f"cannot create the export folder {folder}: {exc.strerror or exc}") from exc
    # Written into a fresh folder inside the chosen one, then moved into place entry by entry: a failure (a full
    # disk) leaves nothing half-written, and a link planted in the folder is replaced, never written through.
    final = folder
    try:
        work = Path(tempfile.mkdtemp(prefix=".idiolect-export-", dir=final))
    except OSError as exc:
        raise IdiolectError(f"cannot write into the export folder {final}: {exc.strerror or exc}") from None
    folder = work
    try:
        slug = safe_name(prof["name"])
        result = ExportResult(folder=final.resolve(), skipped=skipped)
        base_gguf_name = lora_gguf_name = None

        if run and "peft" in wanted:
            dest = folder / f"{slug}-peft"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(adapter_dir, dest)
            result.files += sorted(p for p in dest.rglob("*") if p.is_file())
        if base_dir is not None and "gguf" in wanted and "gguf" not in result.skipped:
            lora_gguf = folder / f"{slug}-lora.gguf"
            convert_lora_to_gguf(
                adapter_dir, base_dir, lora_gguf, dtype="f32" if gguf_dtype == "f32" else "f16"
            )
            lora_gguf_name = lora_gguf.name
            result.files.append(lora_gguf)
            if base_gguf_file is not None:
                base_gguf_name = str(base_gguf_file)  # referred to where it is, not copied
            else:
                base_gguf = folder / f"{safe_name(base_dir.name, 'base')}-{gguf_dtype}.gguf"
                convert_hf_to_gguf(base_dir, base_gguf, dtype=gguf_dtype)
                base_gguf_name = base_gguf.name
                result.files.append(base_gguf)
        if base_dir is not None and "merged" in wanted and "merged" not in result.skipped:
            result.files += _merge(base_dir, adapter_dir, folder / f"{slug}-merged")

        if "summary" in wanted:
            if summary:
                result.files += summary_files(
                    folder, slug, summary["text"], base_gguf=base_gguf_name, lora_gguf=lora_gguf_name
                )
            else:
                result.skipped["summary"] = "no preference summary yet"

        datasets = [f for f in wanted if f in DATASET_FORMATS]
        if datasets:
            from idiolect.core.training.labels import preference_data

            pool = run["config"].get("pool", "default") if run else "default"
            written, why = dataset_files(
                folder, slug, preference_data(store, prof["name"], pool=pool), datasets
            )
            result.files += written
            result.skipped.update(why)

        manifest = {
            "idiolect_export": 1,
            "profile": prof["name"],
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "formats": [f for f in wanted if f not in result.skipped],
            "skipped": result.skipped,
            "base_model": base_spec,
            "base_model_dir": str(base_dir) if base_dir else None,
            "base_gguf": None
            if base_gguf_file is None
            else {"path": str(base_gguf_file), "sha256": (gguf_source(base_dir) or {}).get("sha256")},
            "training_run": None
            if run is None
            else {
                "id": run["id"],
                "objective": run["objective"],
                "config": run["config"],
                "result": run["result"],
                "finished_at": run["finished_at"],
                "training_data": _training_data(run),
            },
            "summary": None
            if summary is None
            else {"version": summary["version"], "source": summary["source"], "score": summary["score"]},
            "files": {str(p.relative_to(folder)): sha256_file(p) for p in result.files},
        }
        result.commands = run_commands(
            final, slug, base_gguf_name, lora_gguf_name, modelfile=(folder / "Modelfile").exists()
        )
        manifest["commands"] = result.commands
        manifest["llama_cpp"] = {"base": base_gguf_name, "lora": lora_gguf_name}
        manifest_path = folder / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        result.files.append(manifest_path)
        _move_into(work, final)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError):
            why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise IdiolectError(f"export to {final} failed ({why}); nothing was written") from None
        raise
    result.files = [final / p.relative_to(work) for p in result.files]
    result.manifest = manifest
    result.export_id = store.add_export(
        prof["id"],
        str(result.folder),
        manifest["formats"],
        manifest,
        run_id=run["id"] if run else None,
        summary_id=summary["id"] if summary else None,
    )
    return result


def try_export(
    folder: str | Path, prompt: str, *, max_new_tokens: int = 80, seed: int | None = None, scale: float = 1.0
) -> str:
    """Run an export as a user will: llama.cpp loads its base GGUF with its GGUF LoRA and the summary as the
    system prompt (what its Modelfile says), and answers ``prompt``; ``scale`` sets the LoRA's strength (the
    persona switch llama-server offers at /lora-adapters)."""
    import json as _json

    from idiolect.core.models.llama import LlamaCppGenerator
    from idiolect.core.models.sampling import SamplingParams

    folder = Path(folder)
    try:
        manifest = _json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IdiolectError(f"{folder} holds no readable export (manifest.json: {exc})") from None
    files = manifest.get("llama_cpp") or {}
    if not files.get("lora") or not files.get("base"):
        raise IdiolectError("this export has no GGUF LoRA and base to run: export with the gguf format")
    base = Path(files["base"]) if Path(files["base"]).is_absolute() else folder / files["base"]
    summary = next(iter(sorted(folder.glob("*-summary.txt"))), None)
    gen = LlamaCppGenerator(base, lora_path=folder / files["lora"])
    if scale != 1.0:
        gen.set_lora_scale(scale)
    system = summary.read_text(encoding="utf-8").strip() if summary else None
    return gen.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens).with_seed(seed), system=system)


def _merge(base_dir: Path, adapter_dir: Path, dest: Path) -> list[Path]:
    """Base + adapter in full precision (never onto a 4-bit base), merged and saved with the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    shutil.rmtree(dest, ignore_errors=True)
    merged.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)
    return sorted(p for p in dest.rglob("*") if p.is_file())
