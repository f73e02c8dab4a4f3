"""Reading the files people hand in, within bounds: only regular files, a size limit per file, text decoded in pieces, .gz inflated with a cap, lines never held past a limit."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from pathlib import Path

from idiolect.core.base.errors import ImportFailed


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


def read_bytes(path: Path, limit: int) -> bytes:
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise ImportFailed(
                f"{path.name}: {human_size(size)} is over the {human_size(limit)} limit per file"
            )
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ImportFailed(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    if len(data) > limit:  # grew while being read
        raise ImportFailed(f"{path.name}: over the {human_size(limit)} limit per file")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportFailed(f"{path.name}: looks like a binary file, not text")
    return data


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def decoded_chunks(path: Path, encoding: str, limit: int, size: int = 1 << 20) -> Iterable[str]:
    """The file's text in pieces, decoded as :func:`idiolect.core.base.text.decode` does (invalid bytes kept as lone
    surrogates for the per-row check; a UTF-8 BOM dropped), with the same refusals as :func:`read_bytes`."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)(
        errors="surrogateescape"
    )  # LookupError: unknown encoding
    with open_regular(path) as fh:
        total = os.fstat(fh.fileno()).st_size
        if total > limit:
            raise ImportFailed(
                f"{path.name}: {human_size(total)} is over the {human_size(limit)} limit per file"
            )
        first, read = True, 0
        while data := fh.read(size):
            read += len(data)
            if read > limit:
                raise ImportFailed(f"{path.name}: over the {human_size(limit)} limit per file")
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


def open_maybe_gzip(path: Path):
    fh = open_regular(path)
    magic = fh.read(2)
    fh.seek(0)
    if magic != b"\x1f\x8b":
        return fh
    gz = gzip.GzipFile(fileobj=fh, mode="rb")
    gz.myfileobj = fh  # closed with it (what GzipFile does with a file it opened itself)
    return gz


def bounded_lines(fh, max_line: int, max_total: int):
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
