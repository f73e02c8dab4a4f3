"""The process itself: whether another process is alive, its memory, and how a headless command ends."""

from __future__ import annotations

import os
import resource
import sys


def exit_process(code: int) -> None:
    """End a headless command with ``code``, skipping native teardown once torch has run.

    Everything a command writes is committed (SQLite) or moved into place (files) before it returns, so
    nothing is left to do at exit but the C++ destructors of torch's thread pools, which now and then abort
    the process ("terminate called without an active exception", exit -6) after a run that succeeded.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if "torch" in sys.modules:
        import logging

        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def process_alive(pid: int | None) -> bool:
    """Whether a process with this id runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and the process's RSS stays high)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device: str) -> float:
    """The process's peak memory: allocated GPU memory on CUDA, else the peak resident set."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
