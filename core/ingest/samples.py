"""Importers: the user's own writing (.txt/.md/.jsonl/.json/.csv, and chat histories exported from ChatGPT,
Claude, Open WebUI or as OpenAI-style chat JSONL, with ratings from Open WebUI, TRL and LLaMA-Factory datasets:
see :mod:`idiolect.core.ingest.chat_exports`) and peer pools (Stack Exchange Posts.xml or Posts.xml.gz, JSONL/CSV
``{writer, prompt, text}``).

Every importer follows the same contract: read the whole file, keep each good row, and report each bad
row with where it is and why it was skipped; then write the good rows in one transaction. A problem that
stops reading part-way (a truncated download, say) is reported as the report's ``error`` and the rows read
before it are still kept. A file that cannot be read at all raises :class:`ImportFailed` and changes nothing.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from idiolect.core.base import limits
from idiolect.core.base.errors import IdiolectError, ImportFailed
from idiolect.core.base.text import decode, normalize
from idiolect.core.ingest import chat_exports
from idiolect.core.ingest.files import open_regular, read_bytes
from idiolect.core.ingest.report import ImportReport, Skipped, check_text, optional_text
from idiolect.core.ingest.rows import iter_table, table_format
from idiolect.core.store import Store, check_name

SAMPLE_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")
SPLITS = ("blocks", "file")


_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


# ---------------------------------------------------------------------------------------------------------
# Tabular rows (JSONL / JSON / CSV), shared by own samples and peer pools.


# ---------------------------------------------------------------------------------------------------------
# Own writing.


def _add_sample(
    rows: list[dict], skipped: list[Skipped], where: str, text, source: str, prompt=None, context=None
) -> None:
    """Check one sample and append it to ``rows``, or say in ``skipped`` why not."""
    problem = check_text(text)
    if problem:
        skipped.append(Skipped(where, problem))
        return
    prompt, p1 = optional_text(prompt, "prompt")
    context, p2 = optional_text(context, "context")
    if p1 or p2:
        skipped.append(Skipped(where, p1 or p2))
        return
    clean = normalize(text)
    if not clean:
        skipped.append(Skipped(where, "empty 'text' (only control characters)"))
        return
    rows.append({"prompt": prompt, "context": context, "text": clean, "source": source})


def parse_text_samples(
    text: str, *, split: str = "blocks", source: str, whole: str = "the file"
) -> tuple[list[dict], list[Skipped]]:
    """Plain text (a .txt/.md file or pasted writing): one sample per blank-line-separated block, or the
    whole text as one sample with ``split="file"``."""
    if split not in SPLITS:
        raise IdiolectError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    rows: list[dict] = []
    skipped: list[Skipped] = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if split == "file":
        _add_sample(rows, skipped, whole, text, source)
    else:
        # Blocks lie between blank lines. Found by searching for the separators, not by matching the blocks: a
        # repeated group over a 63 MB block held a backtracking frame per character (7.8 GB); counting lines
        # from the start for each block was quadratic.
        n, line, pos = 0, 1, 0
        for sep in (*_BLANK_LINES.finditer(text), None):
            end = sep.start() if sep else len(text)
            block = text[pos:end]
            if block.strip():
                n += 1
                lead = len(block) - len(block.lstrip("\n"))  # a block may begin with "\n"
                _add_sample(rows, skipped, f"block {n} (line {line + lead})", block, source)
            if sep is None:
                break
            line += text.count("\n", pos, sep.end())
            pos = sep.end()
    return rows, skipped


@dataclass
class SampleFile:
    """What one file of the user's own writing holds: sample rows, rated generations (chat exports and feedback
    datasets), what was skipped and why, and for chat exports what was left out of the kept turns."""

    rows: list[dict]
    skipped: list[Skipped]
    error: str | None = None
    rated: list[dict] = field(default_factory=list)
    format: str | None = None
    left_out: dict[str, int] = field(default_factory=dict)


_CHAT_MARKERS = (b'"mapping"', b'"chat_messages"', b'"history"', b'"messages"', b'"kto_tag"', b'"chosen"')


def _size_limit(path: Path) -> int:
    """Chat exports are allowed to be larger than other files of writing (they are one JSON document)."""
    if path.suffix.lower() not in (".json", ".jsonl", ".ndjson"):
        return limits.MAX_SAMPLE_FILE_BYTES
    try:
        with open_regular(path) as fh:
            head = fh.read(65536)
    except (OSError, ImportFailed):
        return limits.MAX_SAMPLE_FILE_BYTES
    return (
        limits.MAX_CHAT_EXPORT_BYTES
        if any(m in head for m in _CHAT_MARKERS)
        else limits.MAX_SAMPLE_FILE_BYTES
    )


def read_samples(path: str | Path, *, split: str = "blocks", encoding: str = "utf-8") -> SampleFile:
    """The rows ``{prompt, context, text, source}`` of one file of the user's own writing, and what was
    skipped. ``split``: for .txt/.md, ``blocks`` makes one sample per blank-line-separated block, ``file``
    one sample per file. A .json/.jsonl file that is a chat export or a feedback dataset (see
    :mod:`idiolect.core.ingest.chat_exports`) gives the user's own turns as rows and its ratings as ``rated``."""
    path = Path(path)
    if split not in SPLITS:
        raise IdiolectError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    suffix = path.suffix.lower()
    if suffix not in SAMPLE_SUFFIXES:
        raise ImportFailed(
            f"{path.name}: unsupported file type {suffix or '(none)'}; use {', '.join(SAMPLE_SUFFIXES)}"
        )
    fmt = table_format(path)
    first = None
    try:
        if fmt is None:  # .txt / .md
            text = decode(read_bytes(path, limits.MAX_SAMPLE_FILE_BYTES), encoding)
        else:  # read as a stream: one row (one conversation) in memory at a time
            items = iter_table(path, fmt, ("text",), encoding=encoding, limit=_size_limit(path))
            head = []  # the rows up to the first object, which tells a chat export's format
            for entry in items:
                head.append(entry)
                if entry[2] is None and isinstance(entry[1], dict):
                    break
            items = itertools.chain(head, items)
            if fmt in ("json", "jsonl") and head and head[-1][2] is None and isinstance(head[-1][1], dict):
                first = head[-1][1]
    except LookupError:
        raise IdiolectError(f"unknown encoding {encoding!r}") from None
    out = SampleFile([], [])

    def add(where: str, text_value, prompt=None, context=None) -> None:
        _add_sample(out.rows, out.skipped, where, text_value, path.name, prompt, context)

    if fmt is None:  # .txt / .md
        out.rows, out.skipped = parse_text_samples(text, split=split, source=path.name)
        if not out.rows and not out.skipped:
            out.skipped.append(Skipped("the file", "empty file"))
        return out
    out.format = chat_exports.detect(first)
    if out.format is not None:
        parsed = chat_exports.parse(items, out.format, path.name)
        out.skipped = [Skipped(where, reason) for where, reason in parsed.skipped]
        out.left_out = parsed.left_out
        for row in parsed.samples:
            add(row["where"], row["text"], row["prompt"], row["context"])
        for row in parsed.rated:
            problem = check_text(row["text"])
            prompt, p2 = optional_text(row["prompt"], "prompt")
            if problem or p2:
                out.skipped.append(Skipped(row["where"], problem or p2))
                continue
            out.rated.append({**row, "prompt": prompt or "", "text": normalize(row["text"])})
        return out

    for where, item, problem in items:
        if problem:
            out.skipped.append(Skipped(where, problem))
        elif isinstance(item, str):
            add(where, item)
        elif isinstance(item, dict):
            add(where, item.get("text"), item.get("prompt"), item.get("context"))
        else:
            out.skipped.append(
                Skipped(where, f"expected an object with a 'text' field, found {type(item).__name__}")
            )
    return out


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the supported files inside any folder named (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SAMPLE_SUFFIXES))
        else:
            out.append(p)
    return out


def import_samples(
    store: Store,
    profile: str,
    paths: Sequence[str | Path],
    *,
    split: str = "blocks",
    encoding: str = "utf-8",
    dry_run: bool = False,
) -> list[ImportReport]:
    """Add the user's own writing from files to a profile (created if new). One report per file; a file
    that cannot be read gets a report with its error and the other files still land. ``dry_run``: read and
    check everything, write nothing, and report what an import would add."""
    profile = check_name(profile)
    parsed: list[tuple[ImportReport, SampleFile]] = []
    for path in expand_paths(paths):
        report = ImportReport(source=str(path), target=f"profile {profile}", dry_run=dry_run)
        content = SampleFile([], [])
        try:
            content = read_samples(path, split=split, encoding=encoding)
        except ImportFailed as exc:
            report.error = str(exc)
        except (
            ValueError,
            RecursionError,
            MemoryError,
            OSError,
            UnicodeError,
        ) as exc:  # one file, not the rest
            report.error = f"{path.name}: cannot read it ({type(exc).__name__}: {exc})"
        report.skipped, report.format, report.left_out = content.skipped, content.format, content.left_out
        report.error = report.error or content.error
        parsed.append((report, content))
    if not parsed:
        raise ImportFailed("no files to import (the folders named hold no .txt/.md/.jsonl/.json/.csv files)")
    if dry_run:
        prof = store.find_profile(profile)
        for report, content in parsed:
            counts = store.preview_import(prof["id"] if prof else None, content.rows, content.rated)
            report.added, report.duplicates = counts["added"], counts["duplicates"]
            report.ratings, report.rating_duplicates = counts["ratings"], counts["rating_duplicates"]
        return [report for report, _ in parsed]
    if not any(c.rows or c.rated for _, c in parsed) and store.find_profile(profile) is None:
        return [report for report, _ in parsed]  # nothing to add: don't create an empty profile
    with store.write():
        prof, _ = store.ensure_profile(profile)
        for report, content in parsed:
            if content.rows or content.rated:
                result = store.add_samples(
                    prof["id"], content.rows, import_source=Path(report.source).name, rated=content.rated
                )
                report.added, report.duplicates = len(result.added), len(result.duplicates)
                report.ratings, report.rating_duplicates = (
                    len(result.rated_added),
                    len(result.rated_duplicates),
                )
                report.import_id = result.import_id
    return [report for report, _ in parsed]


def import_sample_texts(store: Store, profile: str, texts: str, *, split: str = "blocks") -> ImportReport:
    """Pasted writing: the same rules as a .txt file."""
    profile = check_name(profile)
    report = ImportReport(source="pasted text", target=f"profile {profile}")
    rows, report.skipped = parse_text_samples(texts, split=split, source="pasted", whole="the pasted text")
    if not rows and not report.skipped:
        report.error = "nothing to add: the text is empty"
        return report
    with store.write():
        prof, _ = store.ensure_profile(profile)
        result = store.add_samples(prof["id"], rows, import_source="pasted text")
    report.added, report.duplicates = len(result.added), len(result.duplicates)
    report.import_id = result.import_id
    return report


# ---------------------------------------------------------------------------------------------------------
# Peer pools.
