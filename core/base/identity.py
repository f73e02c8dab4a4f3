"""What makes two texts the same text: the one identity rule of the store, the importers, training and the
benchmarks.

- :func:`same_text_key`: a text in Unicode NFC with its whitespace normalised (runs of spaces, tabs and newlines
  are one space, the ends stripped); two texts with the same key are the same writing. :func:`same_name` is the
  same rule for names.
- :func:`content_hash`: the hash of one or more such parts (a sample's prompt, context and text), stored in the
  ``content_hash`` columns and in a run's data record.
- :func:`text_fraction`: a stable number in [0, 1] drawn from a text's exact characters (lone surrogates
  included), for held-out splits that do not move when rows are added or imported again.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

from idiolect.core.base.progress import Counted


def same_text_key(text: str | None) -> str:
    """Unicode NFC (one form for "é" typed as one character or as "e" + an accent), whitespace runs as one
    space, the ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text or "").split())


def same_name(name: str | None) -> str:
    """A profile's or a pool's name as stored and looked up: NFC, the ends stripped (see :func:`same_text_key`)."""
    return unicodedata.normalize("NFC", (name or "").strip())


def content_hash(*parts: str | None) -> str:
    """Hash that decides whether two texts are the same sample (whitespace-normalised)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(same_text_key(part).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def text_digest(text: str) -> str:
    """SHA-256 of a text's exact characters (lone surrogates kept, never an encoding error)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def text_fraction(text: str) -> float:
    """A stable number in [0, 1] from the text: ``text_fraction(t) < f`` holds out about a fraction f."""
    return int(text_digest(text)[:8], 16) / 0xFFFFFFFF


def sha256_file(path: str | os.PathLike, *, progress: Counted | None = None) -> str:
    """SHA-256 of a file, read in 8 MB blocks (``progress(done, total, label)`` after each)."""
    import hashlib

    path = Path(path)
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, total, f"checking {path.name}")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, progress: Counted | None = None) -> str:
    """:func:`sha256_file`, remembered per (path, inode, size, modification and change times) in the data folder,
    so a multi-GB GGUF is hashed once and not at every start. The change time (ctime) moves on every write and
    cannot be set back by a tool that restores the modification time, so rewritten content is hashed anew."""
    from idiolect.core.base.paths import DEQUANTIZED, data_subdir

    path = Path(path).resolve()
    st = path.stat()
    memo_path = data_subdir(DEQUANTIZED) / "hashes.json"
    key = f"{path}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = sha256_file(path, progress=progress)
    memo[key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".hashes-{os.getpid()}.json")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass  # only a cache
    return digest
