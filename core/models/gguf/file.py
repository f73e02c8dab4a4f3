"""Opening a GGUF file: the one place gguf's reader meets a file, so a file it cannot parse is one clear error."""

from __future__ import annotations

import os
from pathlib import Path

from idiolect.core.base.errors import IdiolectError


def open_gguf(path: str | os.PathLike):
    """gguf's reader on ``path``; a file it cannot parse (damaged, cut short, or crafted: a header that claims
    2^40 tensors) is one IdiolectError that names the file, whatever the reader raised inside."""
    import gguf

    name = Path(path).name
    try:
        return gguf.GGUFReader(str(path))
    except MemoryError:
        raise IdiolectError(f"{name}: not a readable GGUF file (its header asks for more memory than there is)") from None
    except Exception as exc:  # noqa: BLE001 - the reader raises IndexError, struct/numpy errors ... on bad input
        raise IdiolectError(f"{name}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
