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


def _tokenizer_corpus() -> list[str]:
    """Real text to train the tiny tokenizers on: the bundled peer pool (and the README as a fallback)."""
    import json

    texts = []
    for path in sorted((ROOT / "assets" / "peers" / "default").glob("*.jsonl")):
        texts += [
            json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return texts or [(ROOT / "README.md").read_text(encoding="utf-8")] * 5


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny llama and qwen2 models saved as Hugging Face folders (built once per test session)."""
    from core.tinymodels import ARCHS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    corpus = _tokenizer_corpus()
    return {arch: save_tiny_model(root / arch, arch, corpus, vocab_size=512, seed=0) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from core.gguf_writer import convert_hf_to_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {
        arch: convert_hf_to_gguf(path, root / f"{arch}.gguf", dtype="f32")
        for arch, path in tiny_models.items()
    }


TARGET_WRITER = (
    "ada"  # the bundled writer the training tests personalize to (never a peer, never pretrained on)
)


def default_pool_files() -> list[Path]:
    return sorted((ROOT / "assets" / "peers" / "default").glob("*.jsonl"))


@pytest.fixture(scope="session")
def pretrained_base(tmp_path_factory) -> Path:
    """A tiny qwen2 LM pretrained (about 10 s) on the bundled pool minus the target writer: a base that has
    learned some English, so fine-tuning effects on likelihood mean something."""
    import json

    from core.pretrain import pretrain

    texts = [
        json.loads(line)["text"]
        for f in default_pool_files()
        if f.stem != TARGET_WRITER
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return pretrain(texts * 3, tmp_path_factory.mktemp("pretrained") / "base", steps=300, seed=0)


@pytest.fixture
def target_store(tmp_path):
    """A store with profile 'me' holding the target writer's texts and a pool 'others' of everyone else."""
    import json

    from core.importers import import_peers

    s = Store(tmp_path / "train.db")
    for f in default_pool_files():
        if f.stem != TARGET_WRITER:
            import_peers(s, f, "others")
    pid = s.create_profile("me")
    rows = [
        json.loads(line)
        for line in (ROOT / "assets" / "peers" / "default" / f"{TARGET_WRITER}.jsonl")
        .read_text()
        .splitlines()
    ]
    s.add_samples(pid, [{"prompt": r["prompt"], "text": r["text"]} for r in rows])
    yield s
    s.close()
