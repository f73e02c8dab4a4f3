"""Where Idiolect keeps its files by default (the user's data directory, via platformdirs).

``IDIOLECT_HOME`` overrides the data directory (tests and portable installs use it)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "idiolect"
# The ``idiolect`` package's folder (the repository root in a checkout; core/base/ is two levels below it).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# What ships with the program (package data in an installed copy): the bundled peer pool, prompts, the app's CSS.
ASSETS = PACKAGE_ROOT / "assets"


def data_dir() -> Path:
    home = os.environ.get("IDIOLECT_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_db_path() -> Path:
    return data_dir() / "idiolect.db"


# Every folder Idiolect keeps inside the data folder (a run's own files are beside its database: runs/ID).
DEQUANTIZED = "dequantized"  # GGUF files dequantized for transformers, one folder per file content
GGUF = "gguf"  # GGUF conversions of HF folders and PEFT adapters for llama.cpp, keyed by content
MODELS = "models"  # model files Idiolect assembled (the offline model)
EXPORTS = "exports"  # the app's default export folder, one per profile


def data_subdir(name: str) -> Path:
    """A folder inside the data folder (one of the names above); not created here."""
    return data_dir() / name
