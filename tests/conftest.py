from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
STACKEXCHANGE = SHARED / "data" / "stackexchange"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from core.store import Store  # noqa: E402


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "test.db")
    yield s
    s.close()


def shared_file(name: str) -> Path:
    path = STACKEXCHANGE / name
    if not path.exists():
        pytest.skip(
            f"{path} is absent: the shared Stack Exchange samples live beside the repository in ../shared"
        )
    return path


@pytest.fixture
def beer_posts() -> Path:
    return shared_file("beer.stackexchange.com_Posts.xml.gz")
