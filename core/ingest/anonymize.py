"""Anonymization of other writers' texts on import: pseudonymous writer ids, and e-mail addresses, URLs,
phone numbers and @handles replaced by placeholders ([email], [link], [phone], [user])."""

from __future__ import annotations

import hashlib
import hmac
import re

EMAIL_RE = re.compile(
    r"(?<![\w.+-])[\w.+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,10}\.[A-Za-z]{2,24}\b"
)
# A scheme URL, a www. host, or a bare host name with a common top-level domain (optionally a path).
_TLDS = (
    "com|org|net|edu|gov|mil|int|io|co|uk|de|fr|info|biz|ly|me|us|ca|au|nl|be|it|es|ru|jp|cn|in|br|ch|se|no|"
    "dk|fi|pl|cz|at|nz|ie|tv|app|dev|xyz|eu|pt|gr|hu|ro|za|mx|ar|kr|tw|hk|sg|ai|gl|gg|fm|to|cc|ws|beer|coffee"
)
TLDS = frozenset(_TLDS.split("|"))
URL_RE = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"]+", re.IGNORECASE)
# Bare host names: dotted runs of labels, found in one pass, then cut at their last known top-level domain in
# Python. (A regex that searched for the TLD itself backtracked over "a.a.a.a...": quadratic, 16 KB took 53 s.)
HOSTLIKE_RE = re.compile(r"\b[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+\b(?:/[^\s<>\"]*)?")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,5}\)\s?|\d{2,5}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)"
)
HANDLE_RE = re.compile(r"(?<![\w@.\-/])@[A-Za-z0-9_]{2,30}\b")
_TRAILING = ".,;:!?)]}'\""


def _url(m: re.Match) -> str:
    url = m.group()
    stripped = url.rstrip(_TRAILING)
    # Keep an opening parenthesis balanced: "(see example.com/x)" keeps its ")".
    return "[link]" + url[len(stripped) :]


def _host(m: re.Match) -> str:
    """A dotted run is a link up to its last label that is a known top-level domain (with the path only when
    that label ends the run): "see.example.com.au/x" -> "[link]"; "a.b" -> unchanged."""
    text = m.group()
    host, slash, path = text.partition("/")
    labels = host.split(".")
    if len(labels) > 127:  # longer than any DNS name: not a host
        return text
    for i in range(len(labels) - 1, 0, -1):
        if labels[i].lower() in TLDS:
            if i == len(labels) - 1:
                return _url(m)
            return "[link]." + ".".join(labels[i + 1 :]) + slash + path
    return text


def _phone(m: re.Match) -> str:
    digits = sum(c.isdigit() for c in m.group())
    return "[phone]" if 9 <= digits <= 15 else m.group()


def scrub(text: str | None) -> str | None:
    """Replace e-mail addresses, URLs, phone numbers and @handles with placeholders."""
    if not text:
        return text
    text = EMAIL_RE.sub("[email]", text)
    text = URL_RE.sub(_url, text)
    text = HOSTLIKE_RE.sub(_host, text)
    text = PHONE_RE.sub(_phone, text)
    text = HANDLE_RE.sub("[user]", text)
    return text


def pseudonym(salt: str, original_id: str) -> str:
    """A stable pseudonym for a writer within one pool (keyed by the pool's secret salt, so ids that are
    easy to guess, such as small user numbers, cannot be recovered by hashing them)."""
    digest = hmac.new(
        salt.encode(), str(original_id).strip().encode("utf-8", "surrogatepass"), hashlib.sha256
    )
    return "peer-" + digest.hexdigest()[:10]
