"""The shapes of progress callbacks: ``Progress(message)`` for work told in words (an import, a conversion),
``Counted(done, total, what)`` for work counted in units (bytes of a download or a hash)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]
Counted = Callable[[int, int, str], None]
