"""Resolving model names and downloading through huggingface_hub, against a stand-in hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import threading
from collections import namedtuple
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.registry import RECOMMENDED
from idiolect.core.models.resolve import download, local_model_dir, resolve

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Answers the few Hub API calls a download makes, like the real Hub does, for one repository; other
    repositories get the Hub's error codes (RepoNotFound, GatedRepo)."""

    def __init__(self, repo: str, folder):
        self.repo = repo
        self.files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
        self.gated = set()
        self.requests = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self, head):
                hub.requests.append(self.path)
                path = unquote(urlparse(self.path).path)
                m = re.match(r"/(?:api/models/)?([^/]+/[^/?]+)", path)
                repo = m.group(1) if m else ""
                if repo in hub.gated:
                    return self._send(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, head)
                if repo != hub.repo:
                    return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                if path.startswith(f"/api/models/{repo}/tree/"):
                    tree = [
                        {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for n, b in hub.files.items()
                    ]
                    return self._send(
                        200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head
                    )
                if path.startswith(f"/api/models/{repo}"):
                    info = {
                        "id": repo,
                        "sha": SHA,
                        "siblings": [{"rfilename": n, "size": len(b)} for n, b in hub.files.items()],
                    }
                    return self._send(
                        200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head
                    )
                m = re.match(rf"/{re.escape(repo)}/resolve/[^/]+/(.+)", path)
                if m and m.group(1) in hub.files:
                    body = hub.files[m.group(1)]
                    etag = '"' + hashlib.sha256(body).hexdigest() + '"'
                    return self._send(200, body, {"X-Repo-Commit": SHA, "ETag": etag}, head)
                return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)

            def do_GET(self):
                self._handle(False)

            def do_HEAD(self):
                self._handle(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tiny_models):
    h = FakeHub("acme/tiny-chat", tiny_models["qwen2"])
    yield h
    h.close()


def test_download_with_progress_then_from_cache_offline(hub, tmp_path):
    seen = []
    path = download(
        "acme/tiny-chat",
        endpoint=hub.endpoint,
        cache_dir=tmp_path,
        progress=lambda d, t, n: seen.append((d, t)),
    )
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    total = len(hub.files["model.safetensors"])
    assert seen and max(d for d, _ in seen) >= total  # progress reached the end of the largest file
    hub.close()  # no network from here on: the cache answers
    again = download("acme/tiny-chat", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert again == path


def test_download_errors_are_readable(hub, tmp_path, monkeypatch):
    with pytest.raises(IdiolectError, match="no model called acme/missing"):
        download("acme/missing", endpoint=hub.endpoint, cache_dir=tmp_path)
    hub.gated.add("acme/locked")
    with pytest.raises(IdiolectError, match="acme/locked is gated: accept its licence"):
        download("acme/locked", endpoint=hub.endpoint, cache_dir=tmp_path)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    with pytest.raises(IdiolectError, match=r"needs 0\.0 GB but only 0\.0 GB is free"):
        download("acme/tiny-chat", endpoint=hub.endpoint, cache_dir=tmp_path)
    monkeypatch.undo()
    with pytest.raises(
        IdiolectError, match=r"cannot reach Hugging Face to download acme/tiny-chat \(no network\?\)"
    ):
        download("acme/tiny-chat", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "other")


def test_resolve(tmp_path, tiny_models, tiny_ggufs):
    assert resolve(str(tiny_models["llama"])).kind == "folder"
    assert resolve(str(tiny_ggufs["llama"])).kind == "gguf"
    assert resolve("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    for bad, msg in [
        ("", "no model given"),
        ("./nowhere/model", "no such file or folder"),
        ("not an id", "not a Hugging Face id"),
    ]:
        with pytest.raises(IdiolectError, match=msg):
            resolve(bad)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(IdiolectError, match="must be .gguf"):
        resolve(str(tmp_path / "weights.bin"))


def test_a_gguf_file_is_dequantized_once_into_a_training_folder(
    tiny_models, tiny_ggufs, tmp_path, monkeypatch
):
    from idiolect.core.models.gguf.cache import gguf_source
    from idiolect.core.models.loading import load_hf_model

    monkeypatch.setenv("IDIOLECT_HOME", str(tmp_path / "home"))
    folder = local_model_dir(str(tiny_ggufs["llama"]))
    assert gguf_source(folder)["gguf"] == str(tiny_ggufs["llama"].resolve())
    # The same file under another name is the same cache entry (keyed by content).
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(tiny_ggufs["llama"].read_bytes())
    assert local_model_dir(str(copy)) == folder
    # Its weights are the model's own: the same logits as the HF model the GGUF was written from.
    original, tok, _ = load_hf_model(tiny_models["llama"], device="cpu")
    dequantized, _, _ = load_hf_model(folder, device="cpu")
    ids = torch.tensor([tok("The best part of the weekend was the quiet morning.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, dequantized(ids).logits, atol=1e-4)
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(IdiolectError, match="not a readable GGUF file|cannot dequantize"):
        local_model_dir(str(tmp_path / "bad.gguf"))
    # The Model tab's delete: the dequantized copy (a cache) goes; the user's own GGUF file is never touched.
    from idiolect.core.models.inventory import delete_model, models_on_disk

    listed = [m for m in models_on_disk() if m["kind"] == "dequantized"]
    assert [Path(m["folder"]) for m in listed] == [folder]
    with pytest.raises(IdiolectError, match="not a model this app keeps"):
        delete_model(str(tmp_path / "bad.gguf"))
    assert delete_model(listed[0]["path"], kind="dequantized") > 0
    assert not folder.exists() and tiny_ggufs["llama"].exists()


def test_recommended_list_is_well_formed():
    ids = [m.id for m in RECOMMENDED]
    assert len(ids) == len(set(ids)) >= 5
    assert all(resolve(i).kind == "hub" for i in ids)
    assert any(m.gated for m in RECOMMENDED) and all(m.params_b > 0 for m in RECOMMENDED)
    by_id = {m.id: m for m in RECOMMENDED}
    mistral = by_id["mistralai/Mistral-7B-Instruct-v0.3"]
    assert mistral.gguf_lora and mistral.gguf_base and "GGUF base export" in mistral.supports()
    assert by_id["google/gemma-3-1b-it"].gguf_base  # SentencePiece tokenizers are written too
    assert by_id["Qwen/Qwen3-0.6B"].gguf_base and by_id["Qwen/Qwen3-0.6B"].cpu_trainable
    smol3 = by_id["HuggingFaceTB/SmolLM3-3B"]
    assert not smol3.gguf_lora and "no GGUF base export" in smol3.supports()
