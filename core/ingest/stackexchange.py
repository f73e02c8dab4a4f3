"""Stack Exchange dumps (Posts.xml, .gz or not) as peer rows: answers with their question as context, read one row at a time within bounds."""

from __future__ import annotations

import gzip
import json
import re
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

from idiolect.core.base import limits
from idiolect.core.base.errors import ImportFailed
from idiolect.core.base.progress import Progress
from idiolect.core.base.text import html_to_text, normalize
from idiolect.core.ingest.anonymize import scrub
from idiolect.core.ingest.files import bounded_lines, open_maybe_gzip
from idiolect.core.ingest.report import Skipped, check_text

_ROW_START = re.compile(r"<row\b")


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


def se_site(path: Path) -> str:
    m = re.match(r"(.+?)_Posts\.xml", path.name, re.IGNORECASE)
    return m.group(1) if m else ""


def _se_license(creation_date: str | None) -> str:
    return "CC BY-SA 3.0" if (creation_date or "9999") < "2018-05-02" else "CC BY-SA 4.0"


@dataclass
class _Reading:
    """Where a read of a dump stands (what the checks at the end need)."""

    lineno: int = 0
    saw_posts_end: bool = False
    error: str | None = None
    cut_off_line: int | None = None  # a row still open when the file ended


def _xml_rows(path: Path, skipped: list[Skipped], state: _Reading, progress: Progress | None, answers: list):
    """The text of each ``<row .../>`` of the dump and its line: a line that is too long or not UTF-8 costs
    its row alone (in ``skipped``); a damaged or truncated file ends the rows (in ``state.error``)."""
    buffer, buffer_line, scan = "", 0, _RowScan()
    last_report = time.monotonic()
    try:
        with open_maybe_gzip(path) as fh:
            for raw, too_long in bounded_lines(fh, limits.MAX_XML_LINE_BYTES, limits.MAX_DECOMPRESSED_BYTES):
                state.lineno += 1
                if too_long:
                    skipped.append(Skipped(f"line {state.lineno}", too_long))
                    buffer = ""
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); row dropped"
                    skipped.append(Skipped(f"line {state.lineno}", why))
                    buffer = ""
                    continue
                if state.lineno == 1:
                    line = line.lstrip("\ufeff")
                    if not line.lstrip().startswith("<"):
                        raise ImportFailed(f"{path.name}: not XML (is this a Stack Exchange Posts.xml?)")
                state.saw_posts_end = state.saw_posts_end or "</posts>" in line
                if not buffer:
                    m = _ROW_START.search(line)
                    if not m:
                        continue
                    buffer, buffer_line, scan = line[m.start() :], state.lineno, _RowScan()
                else:
                    buffer += line
                while buffer:
                    end = _row_end(buffer, scan)
                    if end is None:
                        if len(buffer) > 4 * limits.MAX_TEXT_CHARS * 8:
                            skipped.append(Skipped(f"line {buffer_line}", "row never closes; dropped"))
                            buffer = ""
                        break
                    yield buffer[:end], buffer_line
                    rest = buffer[end:]
                    m = _ROW_START.search(rest)
                    buffer = rest[m.start() :] if m else ""
                    scan = _RowScan()
                if progress and time.monotonic() - last_report > 1.0:
                    progress(f"read {state.lineno:,} lines, {len(answers):,} answers")
                    last_report = time.monotonic()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        if state.lineno == 0:
            raise ImportFailed(f"{path.name}: cannot read it: {exc}") from exc
        state.error = (
            f"the file is damaged or cut short after line {state.lineno} ({exc}); rows before it were kept"
        )
    if buffer.strip():
        state.cut_off_line = buffer_line


_ANSWER_KEYS = ("Id", "OwnerUserId", "ParentId", "CreationDate")


def _answer_parts(a: dict) -> dict:
    """What an answer row keeps while the rest of the dump is read: its ids and date, and its text already cleaned
    and checked, so an answer over the length limit costs its reason, not its megabytes, until the end."""
    text = scrub(normalize(html_to_text(a.get("Body", ""))))
    problem = check_text(text)
    return {**{k: a.get(k) for k in _ANSWER_KEYS}, "text": None if problem else text, "problem": problem}


def _question_context(a: dict) -> str:
    """A question as the context of its answers: title and body as clean text, cut to the text limit."""
    title = a.get("Title", "")
    return scrub(normalize(title.strip() + "\n\n" + html_to_text(a.get("Body", ""))))[: limits.MAX_TEXT_CHARS]


def _answer_row(site: str, path: Path, a: dict, context: str) -> dict | str:
    """One answer (:func:`_answer_parts`) as a peer row, or why it is skipped."""
    if a["problem"]:
        return a["problem"]
    post_id, owner = a.get("Id"), a.get("OwnerUserId")
    attribution = {
        "post": f"https://{site}/a/{post_id}" if site else f"post {post_id}",
        "author": f"https://{site}/users/{owner}" if site else f"user {owner}",
    }
    return {
        "original_writer": f"{site}:{owner}",
        "context": context,
        "text": a["text"],
        "source": f"{site or path.name} answer {post_id}",
        "attribution": json.dumps(attribution),
        "license": _se_license(a.get("CreationDate")),
    }


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
    site = site or se_site(path)
    questions: dict[str, str] = {}  # id -> context, cleaned and cut as it is read
    answers: list[tuple[str, dict]] = []
    skipped: list[Skipped] = []
    state = _Reading()
    saw_rows = False
    for element_text, line in _xml_rows(path, skipped, state, progress, answers):
        where = f"line {line}"
        try:
            el = ET.fromstring(element_text)
        except ET.ParseError as exc:
            skipped.append(Skipped(where, f"malformed XML row ({exc})"))
            continue
        saw_rows = True
        a = el.attrib
        kind = a.get("PostTypeId")
        if kind == "1":
            questions[a.get("Id")] = _question_context(a)
        elif kind == "2":
            answers.append((f"post {a.get('Id')} ({where})", _answer_parts(a)))
        elif kind is None:
            skipped.append(Skipped(where, "row without PostTypeId (is this a Posts.xml?)"))
    if state.cut_off_line is not None:
        skipped.append(Skipped(f"line {state.cut_off_line}", "row cut off at the end of the file"))
    if not saw_rows and not skipped:
        raise ImportFailed(f"{path.name}: no <row> elements found (is this a Stack Exchange Posts.xml?)")
    error = state.error
    if error is None and not state.saw_posts_end:
        error = (
            f"the file ends at line {state.lineno} without </posts> (cut short?); rows before it were kept"
        )
    rows = []
    for where, a in answers:
        parent = questions.get(a.get("ParentId", ""))
        if not a.get("OwnerUserId"):
            row = "no author (deleted account or community post)"
        elif parent is None:
            row = f"its question {a.get('ParentId')} is not in the file"
        else:
            row = _answer_row(site, path, a, parent)
        if isinstance(row, str):
            skipped.append(Skipped(where, row))
        else:
            rows.append(row)
    return rows, skipped, error
