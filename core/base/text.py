"""Turning raw input into clean text: HTML to plain text, newline and control-character normalisation,
byte decoding that reports where a file is not valid in its encoding."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK_TAGS = {
    "p", "div", "blockquote", "pre", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr",
    "hr", "section", "article", "header", "footer", "dl", "dt", "dd", "figure",
}  # fmt: skip
_SKIP_TAGS = {"script", "style", "head", "title"}
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\udc80-\udcff]")
_LONE_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")  # e.g. a JSON "\ud800" escape: not text SQLite can store


class _HTMLToText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.pre_depth = 0
        self.skip_depth = 0
        self.lists: list[list] = []  # stack of [kind, counter]
        self.quote_depth = 0

    def _flush(self) -> None:
        text = "".join(self.current)
        self.current = []
        if self.pre_depth:
            text = text.strip("\n")
        else:
            text = re.sub(r"[ \t\r\n\f\v]+", " ", text).strip()
        if text:
            if self.quote_depth:
                text = "\n".join("> " + line for line in text.split("\n"))
            self.blocks.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self.skip_depth += 1
            return
        if tag == "br":
            if self.pre_depth:
                self.current.append("\n")
            else:
                self._flush()
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "pre":
            self.pre_depth += 1
        elif tag == "blockquote":
            self.quote_depth += 1
        elif tag in ("ul", "ol"):
            self.lists.append([tag, 0])
        elif tag == "li":
            if self.lists and self.lists[-1][0] == "ol":
                self.lists[-1][1] += 1
                self.current.append(f"{self.lists[-1][1]}. ")
            else:
                self.current.append("- ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.current.append(f" {alt} ")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        elif tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()

    def handle_data(self, data):
        if not self.skip_depth:
            self.current.append(data)


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: one blank line between blocks, '- '/'1. ' list items, '> ' quotes,
    code blocks verbatim, link text kept (the link target dropped), images by their alt text."""
    parser = _HTMLToText()
    parser.feed(html or "")
    parser.close()
    parser._flush()
    # Consecutive list items read better on adjacent lines.
    out: list[str] = []
    for block in parser.blocks:
        if out and _is_item(block) and _is_item(out[-1].rsplit("\n", 1)[-1]):
            out[-1] += "\n" + block
        else:
            out.append(block)
    return "\n\n".join(out)


def _is_item(line: str) -> bool:
    return line.startswith("- ") or bool(re.match(r"\d+\. ", line))


def normalize(text: str) -> str:
    """Unix newlines, no control characters but tab/newline, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def decode(data: bytes, encoding: str = "utf-8") -> str:
    """Decode bytes without failing: invalid bytes become lone surrogates, which :func:`bad_bytes` finds
    again per row, so one bad row is reported and skipped while the rest of the file is kept."""
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig") and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode(encoding, errors="surrogateescape")


def bad_bytes(text: str | None) -> str | None:
    """None if the text decoded cleanly, else a description of the first invalid byte."""
    if not text:
        return None
    m = _SURROGATE_RE.search(text)
    if m is None:
        lone = _LONE_SURROGATE_RE.search(text)
        if lone is not None:
            return f"a lone surrogate (U+{ord(lone.group()):04X}) at character {lone.start() + 1}: not valid Unicode"
        return None
    byte = ord(m.group()) - 0xDC00
    return f"invalid bytes for the file's encoding (0x{byte:02x} at character {m.start() + 1})"
