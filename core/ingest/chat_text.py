"""What of a chat is the person's own writing: the text of a message (string or parts), its role, and the
documented rule of :func:`own_words` (fenced and indented code, pasted logs, quoted text and paragraphs copied
from the answered message are left out)."""

from __future__ import annotations

import re

from idiolect.core.base.identity import same_text_key

MIN_WORDS = 4  # a turn shorter than this ("ok", "thanks!") shows too little of anyone's style


QUOTE_MIN_CHARS = 60


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


_LOG_LINE = re.compile(
    r"""^\s*(?:
        \[?\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}            # 2024-05-01 12:00 / [2024-05-01T12:00
      | \[?\d{1,2}:\d{2}:\d{2}\b                          # 12:00:01
      | \[?(?:ERROR|WARN|WARNING|INFO|DEBUG|TRACE|FATAL|CRITICAL)\b[\]:\s]
      | Traceback\ \(most\ recent\ call\ last\)
      | File\ "[^"]*",\ line\ \d+
      | at\ [\w.$<>]+\(.*\)\s*$
      | (?:\$|>>>|PS\ [A-Z]:\\[^>]*>)[ ]
      | [\w.]*(?:Error|Exception)(?::|\s*$)
    )""",
    re.VERBOSE,
)


def _mostly_symbols(line: str) -> bool:
    s = line.strip()
    if len(s) < 12:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in s)
    return letters / len(s) < 0.5


def own_words(text: str, answered: str | None = None) -> tuple[str, dict[str, int]]:
    """The person's own words in one chat turn, and how many lines of each kind were left out.

    Linear in the text: one pass over its lines, then one over its paragraphs."""
    removed = {"code": 0, "log": 0, "quoted": 0}
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    fence: str | None = None
    indented: list[str] = []

    def flush_indented() -> None:
        if len(indented) >= 2:
            removed["code"] += len(indented)
        else:
            kept.extend(indented)
        indented.clear()

    for line in lines:
        m = _FENCE.match(line)
        if fence is not None:
            removed["code"] += 1
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
                fence = None
            continue
        if m:
            flush_indented()
            fence = m.group(1)
            removed["code"] += 1
            continue
        if line.strip() and (line.startswith("\t") or line.startswith("    ")):
            indented.append(line)
            continue
        flush_indented()
        if line.lstrip().startswith(">"):
            removed["quoted"] += 1
            continue
        if line.strip() and (_LOG_LINE.match(line) or _mostly_symbols(line)):
            removed["log"] += 1
            continue
        kept.append(line)
    flush_indented()
    out = "\n".join(kept)
    if answered and len(answered) >= QUOTE_MIN_CHARS:
        source = same_text_key(answered)
        paragraphs = re.split(r"\n[ \t]*\n", out)
        mine = []
        for para in paragraphs:
            flat = same_text_key(para)
            if len(flat) >= QUOTE_MIN_CHARS and flat in source:
                removed["quoted"] += para.count("\n") + 1
            else:
                mine.append(para)
        out = "\n\n".join(mine)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, {k: v for k, v in removed.items() if v}


def content_text(content) -> tuple[str, int]:
    """Text of a message's content (a string, a list of parts, or a ChatGPT content object) and the number of
    non-text parts (images, files) it carried."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if isinstance(content, dict):
        ctype = content.get("content_type")
        if ctype in ("text", "multimodal_text") or "parts" in content:
            return content_text(content.get("parts") or [])
        if isinstance(content.get("text"), str) and content.get("type", "text") == "text":
            return content["text"], 0
        return "", 1
    if isinstance(content, list):
        texts, other = [], 0
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type") in ("text", "input_text", "output_text", None)
                and (isinstance(part.get("text"), str))
            ):
                texts.append(part["text"])
            else:
                other += 1
        return "\n\n".join(t for t in texts if t), other
    return "", 1


def role_of(value) -> str:
    value = str(value or "").lower()
    return {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}.get(value, value)
