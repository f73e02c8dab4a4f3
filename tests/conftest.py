from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
STACKEXCHANGE = SHARED / "data" / "stackexchange"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from idiolect.core.store import Store  # noqa: E402


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
    """Real text to train the tiny tokenizers on: the bundled peer pool."""
    from idiolect.core.ingest.pool import default_pool_rows

    return [r["text"] for rows in default_pool_rows().values() for r in rows]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny llama, qwen2, qwen3 and gemma3 models saved as Hugging Face folders (built once per test session)."""
    from idiolect.bench.tinymodels import ARCHS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    corpus = _tokenizer_corpus()
    return {arch: save_tiny_model(root / arch, arch, corpus, vocab_size=512, seed=0) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """f32 GGUF bases of the tiny models whose architecture the GGUF base writer takes."""
    from idiolect.core.models.gguf.writer import convert_hf_to_gguf, export_problem

    root = tmp_path_factory.mktemp("gguf")
    return {
        arch: convert_hf_to_gguf(path, root / f"{arch}.gguf", dtype="f32")
        for arch, path in tiny_models.items()
        if export_problem(path, "base") is None
    }


TARGET_WRITER = (
    "ada"  # the bundled writer the training tests personalize to (never a peer, never pretrained on)
)


def wait_until(predicate, timeout: float = 180.0, every: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    raise AssertionError("timed out")


def at_a_terminal() -> None:
    """``preexec_fn`` for a child that Ctrl-C must reach: SIGINT back to its default, as a terminal starts a
    program, whatever the test runner inherited (SIG_IGN under nohup or from a shell's background job)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_app(port: int, proc, log=None, timeout: float = 120.0) -> None:
    """Wait until the app started as ``proc`` answers on 127.0.0.1:``port`` (never through a proxy; an HTTP
    error, e.g. a login wall's, is an answer); fail with the end of its terminal output (``log``, a path) if it
    exits first, or after ``timeout`` seconds."""
    import time
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + timeout
    while True:
        try:
            opener.open(f"http://127.0.0.1:{port}/", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:] if log else "the app exited"
            assert time.time() < deadline, "the app did not start"
            time.sleep(0.5)


@contextlib.contextmanager
def running_app(home, log: Path, *args: str, env: dict | None = None):
    """The app as a user starts it, ``python launch.py --no-browser --port PORT ARGS`` with ``IDIOLECT_HOME=home``
    (and ``env`` on top of this process's environment; a None there unsets a variable), its terminal output in
    ``log``; yields ``(url, proc)`` once it answers, and stops it afterwards."""
    import subprocess

    port = free_port()
    env = {k: v for k, v in {**os.environ, "IDIOLECT_HOME": str(home), **(env or {})}.items() if v is not None}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--no-browser", "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            wait_for_app(port, proc, log)
            yield f"http://127.0.0.1:{port}/", proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def free_port() -> int:
    """A free TCP port on the loopback address."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pretrained_base(tmp_path_factory) -> Path:
    """A tiny qwen2 LM pretrained (about 10 s) on the bundled pool minus the target writer: a base that has
    learned some English, so fine-tuning effects on likelihood mean something."""
    from idiolect.bench.pretrain import pretrain
    from idiolect.core.ingest.pool import default_pool_rows

    texts = [r["text"] for stem, rows in default_pool_rows().items() if stem != TARGET_WRITER for r in rows]
    return pretrain(texts * 3, tmp_path_factory.mktemp("pretrained") / "base", steps=300, seed=0)


@pytest.fixture
def target_store(tmp_path):
    """A store with profile 'me' holding the target writer's texts and a pool 'others' of everyone else."""
    from idiolect.core.ingest.peers import import_peers
    from idiolect.core.ingest.pool import DEFAULT_POOL_DIR, default_pool_rows

    s = Store(tmp_path / "train.db")
    for f in sorted(DEFAULT_POOL_DIR.glob("*.jsonl")):
        if f.stem != TARGET_WRITER:
            import_peers(s, f, "others")
    pid = s.create_profile("me")
    s.add_samples(
        pid, [{"prompt": r["prompt"], "text": r["text"]} for r in default_pool_rows()[TARGET_WRITER]]
    )
    yield s
    s.close()


# Debian's Chromium, driven by Playwright in the browser tests (no browser download; .ci/run installs it).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]  # fmt: skip


def random_adapter(base_dir, out_dir, seed=1):
    """A LoRA with non-zero A and B on every linear layer, saved as a PEFT folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False),
    )
    peft_model.save_pretrained(out_dir)
    return peft_model.eval()


def cancelled_at(store, run_id: int, step: int) -> dict:
    """Run ``run_id`` in process and cancel it as the user would once ``step`` is done; returns its result."""
    from idiolect.core.training.trainer import Trainer

    holder = {}

    def stop(done, total, metrics):
        if done == step:
            holder["trainer"].request_stop()

    holder["trainer"] = Trainer(store, run_id, progress=stop)
    return holder["trainer"].run()
