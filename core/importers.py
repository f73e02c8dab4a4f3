"""Importers: the user's own writing (.txt/.md/.jsonl/.json/.csv, and chat histories exported from ChatGPT,
Claude, Open WebUI or as OpenAI-style chat JSONL, with ratings from Open WebUI, TRL and LLaMA-Factory datasets:
see :mod:`core.chat_exports`) and peer pools (Stack Exchange Posts.xml or Posts.xml.gz, JSONL/CSV
``{writer, prompt, text}``).

Every importer follows the same contract: read the whole file, keep each good row, and report each bad
row with where it is and why it was skipped; then write the good rows in one transaction. A problem that
stops reading part-way (a truncated download, say) is reported as the report's ``error`` and the rows read
before it are still kept. A file that cannot be read at all raises :class:`ImportFailed` and changes nothing.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import re
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from idiolect.core import chat_exports
from idiolect.core.anonymize import pseudonym, scrub
from idiolect.core.errors import IdiolectError, ImportFailed
from idiolect.core.store import Store, check_name
from idiolect.core.text import bad_bytes, decode, html_to_text, normalize

MAX_TEXT_CHARS = 50_000  # about 8,000 words: longer rows are skipped with a reason (split them first)
MAX_SAMPLE_FILE_BYTES = 64 * 1024 * 1024
MAX_CHAT_EXPORT_BYTES = 512 * 1024 * 1024  # a ChatGPT conversations.json of years of use is a few hundred MB
MAX_XML_LINE_BYTES = 8 * 1024 * 1024  # one <row/> of a dump; longer lines are skipped (and never held whole)
MAX_DECOMPRESSED_BYTES = 8 * 1024**3  # a .gz that inflates past this is refused as a likely zip bomb
SAMPLE_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")
PEER_FORMATS = ("auto", "stackexchange", "jsonl", "csv")
SPLITS = ("blocks", "file")

Progress = Callable[[str], None]


@dataclass
class Skipped:
    where: str
    reason: str


@dataclass
class ImportReport:
    source: str
    target: str
    added: int = 0
    duplicates: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    error: str | None = None
    writers: int = 0
    own_added: int = 0  # the user's own texts found in a peer file, added to their profile
    own_removed: int = 0  # ... and removed from the pool where an earlier import had put them
    import_id: int | None = None  # the profile's import-history entry (undo it as a whole)
    format: str | None = None  # a chat export or feedback dataset: which (core.chat_exports.detect)
    ratings: int = 0  # rated generations imported (Open WebUI thumbs, TRL / LLaMA-Factory rows)
    rating_duplicates: int = 0
    left_out: dict[str, int] = field(
        default_factory=dict
    )  # lines of code, logs, quotes left out of chat turns
    dry_run: bool = False  # nothing was written: the counts say what an import would do

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, max_issues: int = 20) -> list[str]:
        verb = "would be added" if self.dry_run else "added"
        kind = f" [{self.format}]" if self.format else ""
        head = f"{self.source}{kind} -> {self.target}: {self.added} {verb}"
        if self.writers:
            head += f" ({self.writers} writers)"
        head += f", {self.duplicates} already there, {len(self.skipped)} skipped"
        if self.ratings or self.rating_duplicates:
            head += f"; ratings: {self.ratings} {verb}, {self.rating_duplicates} already there"
        out = [head]
        if self.left_out:
            out.append(
                "  left out of your chat turns (not your prose): "
                + ", ".join(f"{n} {k} line{'s' if n > 1 else ''}" for k, n in self.left_out.items())
            )
        if self.own_added or self.own_removed:
            out.append(
                f"  your own texts: {self.own_added} added to your profile, kept out of the pool"
                + (f" ({self.own_removed} removed from it)" if self.own_removed else "")
            )
        for issue in self.skipped[:max_issues]:
            out.append(f"  skipped {issue.where}: {issue.reason}")
        if len(self.skipped) > max_issues:
            out.append(f"  ... and {len(self.skipped) - max_issues} more skipped rows")
        if self.error:
            out.append(f"  error: {self.error}")
        return out


def check_text(text, *, field_name: str = "text") -> str | None:
    """None if ``text`` is fit to store, else why not."""
    if text is None:
        return f"missing '{field_name}'"
    if not isinstance(text, str):
        return f"'{field_name}' is a {type(text).__name__}, not text"
    problem = bad_bytes(text)
    if problem:
        return problem + "; re-save the file as UTF-8 or pass its encoding"
    if not text.strip():
        return f"empty '{field_name}'"
    if len(text) > MAX_TEXT_CHARS:
        return f"'{field_name}' is {len(text):,} characters, over the {MAX_TEXT_CHARS:,} limit; split it"
    return None


def _optional(value, field_name: str) -> tuple[str | None, str | None]:
    """An optional text field: (clean value, problem)."""
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, f"'{field_name}' is a {type(value).__name__}, not text"
    problem = bad_bytes(value)
    if problem:
        return None, f"'{field_name}': {problem}"
    if len(value) > MAX_TEXT_CHARS:
        return None, f"'{field_name}' is {len(value):,} characters, over the {MAX_TEXT_CHARS:,} limit"
    return normalize(value) or None, None


def open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file (after following links): a FIFO, a device such as
    ``/dev/zero`` or a socket is refused before a byte is read (it could block forever or never end). The check
    is made on the opened descriptor, so the file cannot be swapped between the check and the read."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise ImportFailed(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFailed(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read it: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise ImportFailed(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImportFailed(f"{path}: not a regular file (a device, pipe or socket): only files are read")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_bytes(path: Path, limit: int) -> bytes:
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise ImportFailed(f"{path.name}: {_human(size)} is over the {_human(limit)} limit per file")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ImportFailed(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    if len(data) > limit:  # grew while being read
        raise ImportFailed(f"{path.name}: over the {_human(limit)} limit per file")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportFailed(f"{path.name}: looks like a binary file, not text")
    return data


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


# ---------------------------------------------------------------------------------------------------------
# Tabular rows (JSONL / JSON / CSV), shared by own samples and peer pools.


def _jsonl_line(lineno: int, line: str) -> Iterable[tuple[str, object | None, str | None]]:
    if not line.strip():
        return
    where = f"line {lineno}"
    try:
        yield where, json.loads(line), None
    except json.JSONDecodeError as exc:
        yield where, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        yield where, None, f"not readable JSON ({exc})"
    except RecursionError:
        yield where, None, "not readable JSON (nested too deeply)"


def _iter_jsonl(text: str) -> Iterable[tuple[str, object | None, str | None]]:
    for lineno, line in enumerate(text.split("\n"), 1):
        yield from _jsonl_line(lineno, line)


def _decoded_chunks(path: Path, encoding: str, limit: int, size: int = 1 << 20) -> Iterable[str]:
    """The file's text in pieces, decoded as :func:`core.text.decode` does (invalid bytes kept as lone
    surrogates for the per-row check; a UTF-8 BOM dropped), with the same refusals as :func:`_read_bytes`."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)(
        errors="surrogateescape"
    )  # LookupError: unknown encoding
    with open_regular(path) as fh:
        total = os.fstat(fh.fileno()).st_size
        if total > limit:
            raise ImportFailed(f"{path.name}: {_human(total)} is over the {_human(limit)} limit per file")
        first, read = True, 0
        while data := fh.read(size):
            read += len(data)
            if read > limit:
                raise ImportFailed(f"{path.name}: over the {_human(limit)} limit per file")
            if first:
                first = False
                if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise ImportFailed(f"{path.name}: looks like a binary file, not text")
                if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
                    data = data.removeprefix(b"\xef\xbb\xbf")
            yield decoder.decode(data)
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


def _stream_jsonl(chunks: Iterable[str]) -> Iterable[tuple[str, object | None, str | None]]:
    """JSONL rows read piece by piece: one line in memory at a time, never the whole file's rows."""
    rest, lineno = "", 0
    for chunk in chunks:
        parts = chunk.split("\n")
        parts[0] = rest + parts[0]
        rest = parts.pop()
        for line in parts:
            lineno += 1
            yield from _jsonl_line(lineno, line)
    if rest:
        yield from _jsonl_line(lineno + 1, rest)


def _stream_json(chunks: Iterable[str], name: str) -> Iterable[tuple[str, object | None, str | None]]:
    """The items of a JSON document's top-level list, decoded one at a time as the file is read (a chat export
    of hundreds of MB never becomes one object tree), or the document itself when it is one object."""
    decoder = json.JSONDecoder()
    pieces = iter(chunks)
    buf, pos, eof = "", 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        piece = next(pieces, None)
        if piece is None:
            eof = True
            return False
        buf, pos = buf[pos:] + piece, 0
        return True

    def skip_space() -> str | None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return None

    def fail(exc: Exception) -> ImportFailed:
        if isinstance(exc, json.JSONDecodeError):
            return ImportFailed(f"{name}: not valid JSON ({exc.msg} near character {exc.pos})")
        if isinstance(exc, RecursionError):
            return ImportFailed(f"{name}: not readable JSON (nested too deeply)")
        return ImportFailed(f"{name}: not readable JSON ({exc})")

    start = skip_space()
    if start is None:
        raise ImportFailed(f"{name}: the file is empty")
    if start != "[":  # one object (or a mistake): decode the whole document
        while more():
            pass
        try:
            data = json.loads(buf)
        except (ValueError, RecursionError) as exc:
            raise fail(exc) from None
        if not isinstance(data, dict):
            raise ImportFailed(f"{name}: expected a JSON list of objects, found a {type(data).__name__}")
        yield "item 1", data, None
        return
    pos += 1
    n = 0
    while True:
        c = skip_space()
        if c is None:
            raise ImportFailed(f"{name}: not valid JSON (the list is not closed: cut short?)")
        if c == "]":
            return
        if c == "," and n:
            pos += 1
            if skip_space() is None:
                raise ImportFailed(f"{name}: not valid JSON (the list is not closed: cut short?)")
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
                break
            except (ValueError, RecursionError) as exc:
                # Not yet whole (or broken): read on; at the end of the file it is an error.
                if isinstance(exc, RecursionError) or not more():
                    raise fail(exc) from None
        n += 1
        pos = end
        yield f"item {n}", item, None


def _iter_json(text: str, name: str) -> Iterable[tuple[str, object | None, str | None]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailed(
            f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except ValueError as exc:
        raise ImportFailed(f"{name}: not readable JSON ({exc})") from None
    except RecursionError:
        raise ImportFailed(f"{name}: not readable JSON (nested too deeply)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ImportFailed(f"{name}: expected a JSON list of objects, found a {type(data).__name__}")
    for i, item in enumerate(data, 1):
        yield f"item {i}", item, None


def _iter_csv(
    text: str, name: str, delimiter: str | None, required: Sequence[str]
) -> Iterable[tuple[str, object | None, str | None]]:
    csv.field_size_limit(2**31 - 1)  # our own MAX_TEXT_CHARS applies per field, with a clear reason
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFailed(f"{name}: the file is empty") from None
    except csv.Error as exc:
        raise ImportFailed(f"{name}: cannot read the header row: {exc}") from exc
    header = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFailed(
            f"{name}: the header has no {', '.join(repr(c) for c in missing)} column "
            f"(found: {', '.join(header) or 'nothing'})"
        )
    last_end = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            reason = (
                "an unclosed quote runs to the end of the file" if "end of data" in str(exc) else str(exc)
            )
            yield _lines(last_end + 1, reader.line_num), None, f"malformed CSV: {reason}"
            last_end = reader.line_num
            continue
        where = _lines(last_end + 1, reader.line_num)
        last_end = reader.line_num
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) != len(header):
            yield where, None, f"{len(values)} fields where the header has {len(header)} (an unclosed quote?)"
            continue
        yield where, dict(zip(header, values, strict=True)), None


def _lines(start: int, end: int) -> str:
    return f"line {end}" if start >= end else f"lines {start}-{end}"


def _iter_table(
    path: Path, text: str, fmt: str, required: Sequence[str]
) -> Iterable[tuple[str, object | None, str | None]]:
    """(where, item, problem) per row. CSV headers must hold the ``required`` columns."""
    if fmt == "jsonl":
        return _iter_jsonl(text)
    if fmt == "json":
        return _iter_json(text, path.name)
    if fmt in ("csv", "tsv"):
        return _iter_csv(text, path.name, "\t" if fmt == "tsv" else None, required)
    raise ValueError(fmt)


def _table_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}.get(suffix)


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
    prompt, p1 = _optional(prompt, "prompt")
    context, p2 = _optional(context, "context")
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
        return MAX_SAMPLE_FILE_BYTES
    try:
        with open_regular(path) as fh:
            head = fh.read(65536)
    except (OSError, ImportFailed):
        return MAX_SAMPLE_FILE_BYTES
    return MAX_CHAT_EXPORT_BYTES if any(m in head for m in _CHAT_MARKERS) else MAX_SAMPLE_FILE_BYTES


def read_samples(path: str | Path, *, split: str = "blocks", encoding: str = "utf-8") -> SampleFile:
    """The rows ``{prompt, context, text, source}`` of one file of the user's own writing, and what was
    skipped. ``split``: for .txt/.md, ``blocks`` makes one sample per blank-line-separated block, ``file``
    one sample per file. A .json/.jsonl file that is a chat export or a feedback dataset (see
    :mod:`core.chat_exports`) gives the user's own turns as rows and its ratings as ``rated``."""
    path = Path(path)
    if split not in SPLITS:
        raise IdiolectError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    suffix = path.suffix.lower()
    if suffix not in SAMPLE_SUFFIXES:
        raise ImportFailed(
            f"{path.name}: unsupported file type {suffix or '(none)'}; use {', '.join(SAMPLE_SUFFIXES)}"
        )
    fmt = _table_format(path)
    try:
        if fmt in ("json", "jsonl"):  # read as a stream: one row (one conversation) in memory at a time
            chunks = _decoded_chunks(path, encoding, _size_limit(path))
            items = _stream_json(chunks, path.name) if fmt == "json" else _stream_jsonl(chunks)
            head = []  # the rows up to the first object, which tells the format
            for entry in items:
                head.append(entry)
                if entry[2] is None and isinstance(entry[1], dict):
                    break
            items = itertools.chain(head, items)
            first = head[-1][1] if head and head[-1][2] is None and isinstance(head[-1][1], dict) else None
        else:
            text = decode(_read_bytes(path, _size_limit(path)), encoding)
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
    if fmt not in ("json", "jsonl"):
        items = _iter_table(path, text, fmt, ("text",))
        first = None
    out.format = chat_exports.detect(first)
    if out.format is not None:
        parsed = chat_exports.parse(items, out.format, path.name)
        out.skipped = [Skipped(where, reason) for where, reason in parsed.skipped]
        out.left_out = parsed.left_out
        for row in parsed.samples:
            add(row["where"], row["text"], row["prompt"], row["context"])
        for row in parsed.rated:
            problem = check_text(row["text"])
            prompt, p2 = _optional(row["prompt"], "prompt")
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

_ROW_START = re.compile(r"<row\b")


def _open_maybe_gzip(path: Path):
    fh = open_regular(path)
    magic = fh.read(2)
    fh.seek(0)
    if magic != b"\x1f\x8b":
        return fh
    gz = gzip.GzipFile(fileobj=fh, mode="rb")
    gz.myfileobj = fh  # closed with it (what GzipFile does with a file it opened itself)
    return gz


def _bounded_lines(fh, max_line: int, max_total: int):
    """Lines of a binary stream without ever holding more than ``max_line`` bytes of one line: yields
    ``(line, None)`` or ``(None, reason)`` for a line that was too long (its rest is read and dropped). Stops with
    ImportFailed once ``max_total`` bytes have been read (a decompression bomb)."""
    total = 0
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        total += len(line)
        if len(line) > max_line and not line.endswith(b"\n"):
            while True:  # drain the rest of the over-long line in bounded pieces
                rest = fh.readline(max_line)
                total += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
                if total > max_total:
                    raise ImportFailed(
                        f"the file inflates to over {max_total / 2**30:.0f} GiB; refusing it (a zip bomb?)"
                    )
            yield None, f"line longer than {max_line // 2**20} MiB; skipped"
        else:
            yield line, None
        if total > max_total:
            raise ImportFailed(
                f"the file inflates to over {max_total / 2**30:.0f} GiB; refusing it (a zip bomb?)"
            )


_TAG_CHARS = re.compile(r"[\"'>]")


@dataclass
class _RowScan:
    """Where the scan of a growing ``<row`` buffer stands, so each character is looked at once however many
    lines a row spans (searching the whole buffer again per line was quadratic: 141 s for a 0.8 MB row)."""

    pos: int = 0
    quote: str | None = None
    tag_end: int | None = None
    close_from: int = 0


def _row_end(buf: str, scan: _RowScan) -> int | None:
    """The end of the row that starts ``buf``: after ``/>`` of a self-closed start tag, or after ``</row>`` of one
    written ``<row ...></row>`` (valid XML); ``>`` and ``/>`` inside quoted attribute values do not count. None
    while the row is not complete yet."""
    if scan.tag_end is None:
        i, quote, n = scan.pos, scan.quote, len(buf)
        while i < n:
            if quote:
                j = buf.find(quote, i)
                if j < 0:
                    i = n
                    break
                quote, i = None, j + 1
                continue
            m = _TAG_CHARS.search(buf, i)
            if m is None:
                i = n
                break
            i = m.end()
            if m.group() == ">":
                scan.tag_end = scan.close_from = i
                if buf[i - 2] == "/":
                    return i
                break
            quote = m.group()
        scan.pos, scan.quote = i, quote
        if scan.tag_end is None:
            return None
    j = buf.find("</row>", scan.close_from)
    if j < 0:
        scan.close_from = max(scan.tag_end, len(buf) - 5)
        return None
    return j + 6


def _se_site(path: Path) -> str:
    m = re.match(r"(.+?)_Posts\.xml", path.name, re.IGNORECASE)
    return m.group(1) if m else ""


def _se_license(creation_date: str | None) -> str:
    return "CC BY-SA 3.0" if (creation_date or "9999") < "2018-05-02" else "CC BY-SA 4.0"


def read_stackexchange(
    path: str | Path, *, site: str | None = None, progress: Progress | None = None
) -> tuple[list[dict], list[Skipped], str | None]:
    """Answers from a Stack Exchange ``Posts.xml`` (or ``.gz``): rows ``{original_writer, context, text,
    source, attribution, license}``, context = question title + body, HTML turned into clean text.

    Reads the dump one ``<row .../>`` at a time (the dump's one-row-per-line layout, though rows may span
    lines), so a bad row -- invalid UTF-8, broken XML -- costs that row alone, and a truncated file keeps
    every row before the cut."""
    path = Path(path)
    if not path.exists():
        raise ImportFailed(f"{path}: no such file")
    if path.is_dir():
        raise ImportFailed(f"{path}: is a folder, not a file")
    site = site or _se_site(path)
    questions: dict[str, tuple[str, str]] = {}
    answers: list[tuple[str, dict]] = []
    skipped: list[Skipped] = []
    error: str | None = None
    buffer, buffer_line, lineno, saw_posts_end, saw_rows = "", 0, 0, False, False
    scan = _RowScan()
    last_report = time.monotonic()

    def handle(element_text: str, line: int) -> None:
        nonlocal saw_rows
        where = f"line {line}"
        try:
            el = ET.fromstring(element_text)
        except ET.ParseError as exc:
            skipped.append(Skipped(where, f"malformed XML row ({exc})"))
            return
        saw_rows = True
        a = el.attrib
        kind = a.get("PostTypeId")
        post = a.get("Id")
        if kind == "1":
            questions[post] = (a.get("Title", ""), a.get("Body", ""))
        elif kind == "2":
            answers.append((f"post {post} ({where})", a))
        elif kind is None:
            skipped.append(Skipped(where, "row without PostTypeId (is this a Posts.xml?)"))

    try:
        with _open_maybe_gzip(path) as fh:
            for raw, too_long in _bounded_lines(fh, MAX_XML_LINE_BYTES, MAX_DECOMPRESSED_BYTES):
                lineno += 1
                if too_long:
                    skipped.append(Skipped(f"line {lineno}", too_long))
                    buffer = ""
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    skipped.append(
                        Skipped(f"line {lineno}", f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); row dropped")
                    )
                    buffer = ""
                    continue
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                    if not line.lstrip().startswith("<"):
                        raise ImportFailed(f"{path.name}: not XML (is this a Stack Exchange Posts.xml?)")
                if "</posts>" in line:
                    saw_posts_end = True
                if not buffer:
                    m = _ROW_START.search(line)
                    if not m:
                        continue
                    buffer, buffer_line, scan = line[m.start() :], lineno, _RowScan()
                else:
                    buffer += line
                while buffer:
                    end = _row_end(buffer, scan)
                    if end is None:
                        if len(buffer) > 4 * MAX_TEXT_CHARS * 8:
                            skipped.append(Skipped(f"line {buffer_line}", "row never closes; dropped"))
                            buffer = ""
                        break
                    handle(buffer[:end], buffer_line)
                    rest = buffer[end:]
                    m = _ROW_START.search(rest)
                    buffer = rest[m.start() :] if m else ""
                    scan = _RowScan()
                if progress and time.monotonic() - last_report > 1.0:
                    progress(f"read {lineno:,} lines, {len(answers):,} answers")
                    last_report = time.monotonic()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        if lineno == 0:
            raise ImportFailed(f"{path.name}: cannot read it: {exc}") from exc
        error = f"the file is damaged or cut short after line {lineno} ({exc}); rows before it were kept"
    if buffer.strip():
        skipped.append(Skipped(f"line {buffer_line}", "row cut off at the end of the file"))
    if not saw_rows and not skipped:
        raise ImportFailed(f"{path.name}: no <row> elements found (is this a Stack Exchange Posts.xml?)")
    if error is None and not saw_posts_end:
        error = f"the file ends at line {lineno} without </posts> (cut short?); rows before it were kept"

    rows = []
    for where, a in answers:
        owner = a.get("OwnerUserId")
        if not owner:
            skipped.append(Skipped(where, "no author (deleted account or community post)"))
            continue
        parent = questions.get(a.get("ParentId", ""))
        if parent is None:
            skipped.append(Skipped(where, f"its question {a.get('ParentId')} is not in the file"))
            continue
        text = scrub(normalize(html_to_text(a.get("Body", ""))))
        problem = check_text(text)
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        title, qbody = parent
        context = scrub(normalize(title.strip() + "\n\n" + html_to_text(qbody)))
        post_id = a.get("Id")
        attribution = {
            "post": f"https://{site}/a/{post_id}" if site else f"post {post_id}",
            "author": f"https://{site}/users/{owner}" if site else f"user {owner}",
        }
        rows.append(
            {
                "original_writer": f"{site}:{owner}",
                "context": context[:MAX_TEXT_CHARS],
                "text": text,
                "source": f"{site or path.name} answer {post_id}",
                "attribution": json.dumps(attribution),
                "license": _se_license(a.get("CreationDate")),
            }
        )
    return rows, skipped, error


def read_peer_table(
    path: str | Path, *, encoding: str = "utf-8"
) -> tuple[list[dict], list[Skipped], str | None]:
    """Rows from JSONL/JSON/CSV ``{writer, prompt (or context), text}`` with optional ``attribution`` and
    ``license``."""
    path = Path(path)
    fmt = _table_format(path)
    if fmt is None:
        raise ImportFailed(f"{path.name}: peer tables must be .jsonl, .json, .csv or .tsv")
    text = decode(_read_bytes(path, 16 * MAX_SAMPLE_FILE_BYTES), encoding)
    rows: list[dict] = []
    skipped: list[Skipped] = []
    for where, item, problem in _iter_table(path, text, fmt, ("writer", "text")):
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        if not isinstance(item, dict):
            skipped.append(
                Skipped(where, f"expected an object with writer and text, found {type(item).__name__}")
            )
            continue
        writer = item.get("writer")
        if isinstance(writer, int | float):
            writer = str(writer)
        problem = check_text(writer, field_name="writer") or check_text(item.get("text"))
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        context, p1 = _optional(item.get("prompt") or item.get("context"), "prompt")
        attribution, p2 = _optional(item.get("attribution"), "attribution")
        license_, p3 = _optional(item.get("license"), "license")
        if p1 or p2 or p3:
            skipped.append(Skipped(where, p1 or p2 or p3))
            continue
        rows.append(
            {
                "original_writer": writer.strip(),
                "context": scrub(context),
                "text": scrub(normalize(item["text"])),
                "source": path.name,
                "attribution": attribution,
                "license": license_,
            }
        )
    return rows, skipped, None


def detect_peer_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".xml", ".xml.gz")):
        return "stackexchange"
    fmt = _table_format(path)
    if fmt in ("jsonl", "json"):
        return "jsonl"
    if fmt in ("csv", "tsv"):
        return "csv"
    raise ImportFailed(
        f"{path.name}: cannot tell the format from the name; pass --format stackexchange, jsonl or csv"
    )


def import_peers(
    store: Store,
    path: str | Path,
    pool: str,
    *,
    fmt: str = "auto",
    site: str | None = None,
    description: str | None = None,
    license: str | None = None,
    progress: Progress | None = None,
    me: str | None = None,
    me_profile: str | None = None,
) -> ImportReport:
    """Build (or extend) a peer pool from a file, anonymizing on the way in: writer ids become pseudonyms
    keyed by the pool's salt, and e-mails, URLs, phone numbers and @handles are scrubbed from the texts.
    Attribution (licence, post and author links) is kept in its own column, never as the writer's name.

    ``me``: the user's own id in the file (a Stack Exchange user id, or the ``writer`` value of a table). Those
    texts are never peers -- left out of the pool, and removed if an earlier import put them there -- and, with
    ``me_profile``, they become that profile's samples (the question as the prompt)."""
    path = Path(path).expanduser()
    pool = check_name(pool, "pool")
    if fmt not in PEER_FORMATS:
        raise IdiolectError(f"format must be one of {', '.join(PEER_FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        fmt = detect_peer_format(path)
    if fmt == "stackexchange":
        rows, skipped, error = read_stackexchange(path, site=site, progress=progress)
        site = site or _se_site(path)
        source = f"Stack Exchange {site}".strip()
        license = license or "CC BY-SA 3.0 (posts before 2018-05-02) / 4.0 (after); attribution per text"
    else:
        rows, skipped, error = read_peer_table(path)
        source = path.name
    report = ImportReport(source=str(path), target=f"pool {pool}", skipped=skipped, error=error)
    own: list[dict] = []
    if me is not None:
        me = str(me).strip()
        mine = [r["original_writer"] in (me, f"{site}:{me}") for r in rows]
        own = [r for r, m in zip(rows, mine, strict=True) if m]
        rows = [r for r, m in zip(rows, mine, strict=True) if not m]
        if not own:
            report.error = (
                report.error or f"no texts by {me!r} in {path.name}: check the id (nothing was imported)"
            )
            return report
    if not rows and not own and store.find_pool(pool) is None:
        return report  # nothing to add: don't create an empty pool
    if progress:
        progress(f"writing {len(rows):,} texts to pool {pool}")
    with store.write():
        pool_row = store.ensure_pool(pool, description=description, source=source, license=license)
        for row in rows:
            row["writer"] = pseudonym(pool_row["salt"], row.pop("original_writer"))
        result = store.add_peer_texts(pool_row["id"], rows)
        if own:
            report.own_removed = store.remove_pool_writer(
                pool_row["id"], pseudonym(pool_row["salt"], own[0]["original_writer"])
            )
            if me_profile:
                profile_row, _ = store.ensure_profile(me_profile)
                samples = [
                    {"prompt": r.get("context"), "text": r["text"], "source": f"{source} (own)"} for r in own
                ]
                added = store.add_samples(
                    profile_row["id"], samples, import_source=f"{Path(path).name} (own answers)"
                )
                report.own_added = len(added.added)
    report.added, report.duplicates = len(result.added), len(result.duplicates)
    added_idx = set(range(len(rows))) - set(result.duplicates)
    report.writers = len({rows[i]["writer"] for i in added_idx})
    return report
