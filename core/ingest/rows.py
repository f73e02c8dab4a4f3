"""Rows of a JSONL, JSON or CSV file as (where, item, problem), read as a stream: one row (one conversation) in memory at a time, for own writing and peer tables alike."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from idiolect.core.base.errors import ImportFailed
from idiolect.core.ingest.files import decoded_chunks


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


def stream_jsonl(chunks: Iterable[str]) -> Iterable[tuple[str, object | None, str | None]]:
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


class _ValueEnd:
    """Where one JSON object, array or string ends, found as its text arrives in pieces: a regular expression
    jumps between the characters that matter (quotes, backslashes, brackets), and the state (depth, inside a
    string, after a backslash) carries from piece to piece, so each character is looked at once."""

    _OUTSIDE = re.compile(r'["\[\]{}]')
    _INSIDE = re.compile(r'["\\]')

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped = 0, False, False

    def feed(self, text: str, i: int = 0) -> int | None:
        """The index in ``text`` just past the value's end, scanning from ``i``; None: not in this piece."""
        n = len(text)
        while i < n:
            if self.escaped:
                self.escaped, i = False, i + 1
            elif self.in_string:
                m = self._INSIDE.search(text, i)
                if m is None:
                    return None
                i = m.end()
                if m.group() == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
                    if self.depth == 0:
                        return i
            else:
                m = self._OUTSIDE.search(text, i)
                if m is None:
                    return None
                i, ch = m.end(), m.group()
                if ch == '"':
                    self.in_string = True
                elif ch in "[{":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth <= 0:
                        return i
        return None


class _JsonText:
    """A JSON document read in pieces: a buffer, a position in it, and the errors worded for the user."""

    def __init__(self, chunks: Iterable[str], name: str) -> None:
        self.pieces, self.name = iter(chunks), name
        self.buf, self.pos = "", 0
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        piece = next(self.pieces, None)
        if piece is None:
            return False
        self.buf, self.pos = self.buf[self.pos :] + piece, 0
        return True

    def skip_space(self) -> str | None:
        """The next character that is not white space (None at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None

    def fail(self, exc: Exception) -> ImportFailed:
        if isinstance(exc, json.JSONDecodeError):
            return ImportFailed(f"{self.name}: not valid JSON ({exc.msg} near character {exc.pos})")
        if isinstance(exc, RecursionError):
            return ImportFailed(f"{self.name}: not readable JSON (nested too deeply)")
        return ImportFailed(f"{self.name}: not readable JSON ({exc})")

    def cut_short(self) -> ImportFailed:
        return ImportFailed(f"{self.name}: not valid JSON (the list is not closed: cut short?)")

    def value(self) -> object:
        """The value at the position, decoded, the position moved past it. An object, array or string is read
        until its end is found (each character scanned once, :class:`_ValueEnd`) and decoded once: time linear in
        its size, however many pieces it spans. A number, true, false or null is short (a long number is refused
        by the decoder itself)."""
        if self.buf[self.pos] in '{["':
            scan = _ValueEnd()
            if scan.feed(self.buf, self.pos) is None:
                parts, end = [self.buf[self.pos :]], None
                while end is None:
                    piece = next(self.pieces, None)
                    if piece is None:
                        raise self.cut_short()
                    end = scan.feed(piece)
                    parts.append(piece)
                self.buf, self.pos = "".join(parts), 0
            try:
                item, self.pos = self.decoder.raw_decode(self.buf, self.pos)
            except (ValueError, RecursionError) as exc:
                raise self.fail(exc) from None
            return item
        while True:
            try:
                item, self.pos = self.decoder.raw_decode(self.buf, self.pos)
                return item
            except (ValueError, RecursionError) as exc:  # not yet whole (or broken): read on
                if isinstance(exc, RecursionError) or not self.more():
                    raise self.fail(exc) from None


def stream_json(chunks: Iterable[str], name: str) -> Iterable[tuple[str, object | None, str | None]]:
    """The items of a JSON document's top-level list, decoded one at a time as the file is read (a chat export
    of hundreds of MB never becomes one object tree), or the document itself when it is one object."""
    doc = _JsonText(chunks, name)
    start = doc.skip_space()
    if start is None:
        raise ImportFailed(f"{name}: the file is empty")
    if start != "[":  # one object (or a mistake): decode the whole document
        while doc.more():
            pass
        try:
            data = json.loads(doc.buf)
        except (ValueError, RecursionError) as exc:
            raise doc.fail(exc) from None
        if not isinstance(data, dict):
            raise ImportFailed(f"{name}: expected a JSON list of objects, found a {type(data).__name__}")
        yield "item 1", data, None
        return
    doc.pos += 1
    n = 0
    while True:
        c = doc.skip_space()
        if c is None:
            raise doc.cut_short()
        if c == "]":
            return
        if c == "," and n:
            doc.pos += 1
            if doc.skip_space() is None:
                raise doc.cut_short()
        item = doc.value()
        n += 1
        yield f"item {n}", item, None


_EOL = re.compile(r"\r\n|\r|\n")


def _lines_of(chunks: Iterable[str]) -> Iterator[str]:
    """Lines with their endings (\\r\\n, \\r or \\n, as ``newline=""`` reads them) from text in pieces."""
    rest = ""
    for chunk in chunks:
        buf, pos = rest + chunk, 0
        for m in _EOL.finditer(buf):
            if m.end() == len(buf) and m.group() == "\r":
                break  # may be the first half of a \r\n split between pieces
            yield buf[pos : m.end()]
            pos = m.end()
        rest = buf[pos:]
    if rest:
        yield rest


def iter_csv(
    chunks: Iterable[str], name: str, delimiter: str | None, required: Sequence[str]
) -> Iterable[tuple[str, object | None, str | None]]:
    """CSV rows read line by line (a quoted field may span lines), the delimiter sniffed from the first 8 KiB
    unless given."""
    csv.field_size_limit(2**31 - 1)  # our own MAX_TEXT_CHARS applies per field, with a clear reason
    lines = _lines_of(chunks)
    head: list[str] = []
    while sum(map(len, head)) < 8192 and (line := next(lines, None)) is not None:
        head.append(line)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff("".join(head)[:8192], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
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


def iter_table(
    path: Path, fmt: str, required: Sequence[str], *, encoding: str, limit: int
) -> Iterable[tuple[str, object | None, str | None]]:
    """(where, item, problem) per row of a file of ``fmt`` (:func:`table_format`), read as a stream of at most
    ``limit`` bytes. CSV headers must hold the ``required`` columns. ``LookupError``: an unknown encoding (raised
    on the first row)."""
    chunks = decoded_chunks(path, encoding, limit)
    if fmt == "jsonl":
        return stream_jsonl(chunks)
    if fmt == "json":
        return stream_json(chunks, path.name)
    if fmt in ("csv", "tsv"):
        return iter_csv(chunks, path.name, "\t" if fmt == "tsv" else None, required)
    raise ValueError(fmt)


def table_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}.get(suffix)
