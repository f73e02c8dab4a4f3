"""Every size limit of Idiolect, in one place (SECURITY.md's table cites them).

Importers read these through the module (``limits.MAX_...``) at call time, so a test can lower one."""

from __future__ import annotations

import shutil
from pathlib import Path

from idiolect.core.base.errors import IdiolectError

MAX_TEXT_CHARS = 50_000  # about 8,000 words: longer rows are skipped with a reason (split them first)
MAX_SAMPLE_FILE_BYTES = 64 * 2**20  # one file of the user's own writing
MAX_CHAT_EXPORT_BYTES = 512 * 2**20  # a ChatGPT conversations.json of years of use is a few hundred MB
MAX_PEER_TABLE_BYTES = 16 * MAX_SAMPLE_FILE_BYTES  # a JSONL/JSON/CSV peer table (read as a stream)
MAX_XML_LINE_BYTES = 8 * 2**20  # one <row/> of a dump; longer lines are skipped (and never held whole)
MAX_DECOMPRESSED_BYTES = 8 * 2**30  # a .gz that inflates past this is refused as a likely zip bomb
MAX_UPLOAD_BYTES = MAX_CHAT_EXPORT_BYTES  # the app's upload cap: the largest file an importer takes
MIN_FREE_DISK_BYTES = 512 * 2**20  # downloads and conversions leave this much of the disk free


def check_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse, in words, work that would leave less than :data:`MIN_FREE_DISK_BYTES` free in ``folder``."""
    free = shutil.disk_usage(folder).free
    if needed > free - MIN_FREE_DISK_BYTES:
        raise IdiolectError(
            f"{what} needs {needed / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free in {folder}"
        )
