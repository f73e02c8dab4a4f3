"""Export: the GGUF LoRA gives the PEFT model's logits in llama.cpp, a real OpenAI client talks to llama.cpp's
server with the exported files, the merged model matches base + adapter, names stay inside the folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, free_port, random_adapter

from idiolect.core.base.errors import IdiolectError
from idiolect.core.export.bundle import export
from idiolect.core.export.formats import safe_name
from idiolect.core.models.gguf.writer import convert_lora_to_gguf

llama_cpp = pytest.importorskip("llama_cpp")
SUMMARY = "Writes short, plain sentences. Prefers concrete details over adjectives. Never uses emoji."


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gguf_lora_matches_peft_in_llama_cpp(arch, tiny_models, tiny_ggufs, tmp_path):
    from transformers import AutoTokenizer

    peft_model = random_adapter(tiny_models[arch], tmp_path / "adapter")
    lora = convert_lora_to_gguf(tmp_path / "adapter", tiny_models[arch], tmp_path / "lora.gguf")
    tok = AutoTokenizer.from_pretrained(tiny_models[arch])
    ids = tok("My weekend: a long walk, two coffees and a very good book about rivers.")["input_ids"]
    with torch.no_grad():
        tuned = peft_model(torch.tensor([ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(
        str(tiny_ggufs[arch]),
        lora_path=str(lora),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
    )
    llm.eval(ids)
    cpp = np.asarray(llm.scores[: len(ids)])
    scale = np.abs(tuned).max()
    assert np.abs(tuned - cpp).max() / scale < 1e-3
    assert (
        np.abs(tuned - base).max() / scale > 0.1
    )  # the adapter matters: ignoring it would fail the line above


def test_lora_scale_switches_the_persona_at_run_time(tiny_models, tiny_ggufs, tmp_path):
    """One loaded model, the persona turned off, halfway and on again without reloading (llama-server's
    /lora-adapters switch, in process): each scale gives the logits PEFT gives at that scale."""
    from transformers import AutoTokenizer

    from idiolect.core.models.llama import LlamaCppGenerator

    peft_model = random_adapter(tiny_models["llama"], tmp_path / "adapter")
    lora = convert_lora_to_gguf(tmp_path / "adapter", tiny_models["llama"], tmp_path / "lora.gguf")
    ids = AutoTokenizer.from_pretrained(tiny_models["llama"])("A walk, two coffees and a book.")["input_ids"]
    with torch.no_grad():
        tuned = peft_model(torch.tensor([ids])).logits[0, -1].numpy()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([ids])).logits[0, -1].numpy()
    gen = LlamaCppGenerator(tiny_ggufs["llama"], lora_path=lora, n_ctx=256, exact=True)

    def last_logits(scale):
        gen.set_lora_scale(scale)
        gen.llm.eval(ids)
        return np.ctypeslib.as_array(gen.llm._ctx.get_logits(), shape=(gen.llm.n_vocab(),)).copy()

    size = np.abs(tuned).max()
    for scale, expected in ((0.0, base), (1.0, tuned), (0.0, base), (0.5, None)):
        got = last_logits(scale)
        if expected is None:  # halfway: between the two, not either
            assert np.abs(got - base).max() / size > 0.01 and np.abs(got - tuned).max() / size > 0.01
        else:
            assert np.abs(got - expected).max() / size < 1e-3, scale
    with pytest.raises(IdiolectError, match="between 0 and 4"):
        gen.set_lora_scale(-1)
    with pytest.raises(IdiolectError, match="without a LoRA"):
        LlamaCppGenerator(tiny_ggufs["llama"], n_ctx=64).set_lora_scale(1.0)


def test_bad_adapters_are_refused(tiny_models, tmp_path):
    with pytest.raises(IdiolectError, match="not a PEFT adapter"):
        convert_lora_to_gguf(tmp_path, tiny_models["llama"], tmp_path / "x.gguf")


def _trained_profile(store, tiny_models, tmp_path, arch="qwen2"):
    """A profile whose latest completed run points at a real (random, non-zero) adapter."""
    from idiolect.core.training.runs import run_dir

    pid = store.create_profile("Sam O'Neil")
    run = store.create_run(pid, "cbpo", str(tiny_models[arch]), {"model": str(tiny_models[arch]), "steps": 3})
    adapter = run_dir(store, run) / "adapter"  # where a run keeps its adapter
    random_adapter(tiny_models[arch], adapter, seed=2)
    store.update_run(run, status="completed", adapter_path=str(adapter), result={"eval": {"x": 1}})
    store.add_summary(pid, SUMMARY, "dpl", score=0.12)
    return pid, run


def test_export_all_formats_and_serve_with_openai_client(store, tiny_models, tmp_path):
    openai = pytest.importorskip("openai")
    _, run = _trained_profile(store, tiny_models, tmp_path)
    out = tmp_path / "export"
    result = export(store, "Sam O'Neil", out, formats=["peft", "gguf", "merged", "summary"], gguf_dtype="f32")
    names = {p.name for p in result.files}
    slug = safe_name("Sam O'Neil")
    assert re.fullmatch(r"Sam-O-Neil-[0-9a-f]{6}", slug)  # readable, and no other name's
    for expected in (f"{slug}-lora.gguf", f"{slug}-summary.txt", f"{slug}-openai-chat.json", f"{slug}-openai.py",
                     "Modelfile", f"{slug}-llama-cpp.sh", "manifest.json", "adapter_config.json"):  # fmt: skip
        assert expected in names, expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_run"]["id"] == run and manifest["summary"]["version"] == 1
    assert set(manifest["formats"]) == {"peft", "gguf", "merged", "summary"} and not manifest["skipped"]
    for rel, digest in manifest["files"].items():
        import hashlib

        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    modelfile = (out / "Modelfile").read_text()
    base_gguf = next(p for p in result.files if p.suffix == ".gguf" and "lora" not in p.name)
    assert (
        f"FROM ./{base_gguf.name}" in modelfile
        and f"ADAPTER ./{slug}-lora.gguf" in modelfile
        and SUMMARY in modelfile
    )
    body = json.loads((out / f"{slug}-openai-chat.json").read_text())
    assert body["messages"][0] == {"role": "system", "content": SUMMARY}
    compile((out / f"{slug}-openai.py").read_text(), "snippet", "exec")
    assert store.stats()["tables"]["exports"] == 1

    # llama.cpp's OpenAI-compatible server with the exported base + LoRA, spoken to by the official client.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(base_gguf), "--lora_path", str(out / f"{slug}-lora.gguf"),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--chat_format", "chatml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=30
        )
        deadline = time.time() + 120
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.time() < deadline, "server did not start"
                time.sleep(0.5)
        body["model"] = "local"
        reply = client.chat.completions.create(**body, max_tokens=16, temperature=0)
        assert reply.choices[0].message.content is not None
        assert reply.usage.completion_tokens > 0
        # Switching the persona at run time is llama.cpp's own server's (POST /lora-adapters, in the export's
        # commands); llama-cpp-python's server has no such endpoint, which the export's commands do not claim.
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/lora-adapters", timeout=10)
            switchable = True
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            switchable = False
        assert not switchable, "llama-cpp-python's server now has /lora-adapters: test the switch through it"
        assert (
            '"scale": 0.0' in result.commands["persona off"]
            and "/lora-adapters" in result.commands["persona on"]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    # The app's "test it": llama.cpp runs the export as its Modelfile says (base + LoRA + summary as system).
    from idiolect.core.export.tryout import try_export

    assert manifest["llama_cpp"] == {"base": base_gguf.name, "lora": f"{slug}-lora.gguf"}
    assert isinstance(try_export(out, "Describe your morning coffee.", max_new_tokens=8, seed=1), str)
    # Persona strength 0 is the base model alone, with the same summary and seed.
    from idiolect.core.models.llama import LlamaCppGenerator
    from idiolect.core.models.sampling import SamplingParams

    base_only = LlamaCppGenerator(base_gguf).generate(
        "Describe your morning coffee.", SamplingParams(max_new_tokens=8).with_seed(1), system=SUMMARY
    )
    assert try_export(out, "Describe your morning coffee.", max_new_tokens=8, seed=1, scale=0.0) == base_only
    (out / "manifest.json").write_text(json.dumps({**manifest, "llama_cpp": {"base": None, "lora": None}}))
    with pytest.raises(IdiolectError, match="export with the gguf format"):
        try_export(out, "hi")
    with pytest.raises(IdiolectError, match="nothing is exported in .* yet"):
        try_export(tmp_path, "hi")


def test_merged_model_matches_base_plus_adapter(store, tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, run = _trained_profile(store, tiny_models, tmp_path, arch="llama")
    result = export(store, "Sam O'Neil", tmp_path / "out", formats=["merged"])
    merged_dir = next(p.parent for p in result.files if p.name == "config.json")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, store.get_run(run)["adapter_path"]).eval()
    ids = torch.tensor([[3, 40, 41, 42, 43, 100, 200, 300]])
    with torch.no_grad():
        a, b = merged(ids).logits, reference(ids).logits
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_export_errors_and_names(store, tmp_path, tiny_models):
    store.create_profile("fresh")
    with pytest.raises(IdiolectError, match="no trained adapter yet"):
        export(store, "fresh", tmp_path / "o", formats=["peft"])
    with pytest.raises(IdiolectError, match="unknown export format"):
        export(store, "fresh", tmp_path / "o", formats=["zip"])
    pid = store.get_profile("fresh")["id"]
    store.add_summary(pid, SUMMARY, "user")
    result = export(store, "fresh", tmp_path / "only-summary")  # defaults: what exists is exported
    assert (
        set(result.skipped) == {"peft", "gguf"} and (tmp_path / "only-summary" / "fresh-summary.txt").exists()
    )
    for evil in ("../../etc/passwd", "..", "a/b\\c", ""):
        assert (
            "/" not in safe_name(evil) and "\\" not in safe_name(evil) and not safe_name(evil).startswith(".")
        )


def test_cli_export(store, tiny_models, tmp_path):
    _trained_profile(store, tiny_models, tmp_path)
    store.close()
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "export", "--profile", "Sam O'Neil", "--out", str(tmp_path / "cli"),
         "--formats", "peft,summary", "--db", str(store.path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert safe_name("Sam O'Neil") + "-summary.txt" in out.stdout and "manifest.json" in out.stdout


def test_modelfile_follows_ollamas_rules(tmp_path):
    """What `ollama create` reads (parser/parser.go's rules): FROM and one ADAPTER naming GGUF files that exist,
    the SYSTEM text read back unchanged -- also when the summary holds quotes, triple quotes and blank lines."""
    from idiolect.core.export.formats import check_modelfile, modelfile_text, parse_modelfile

    for name in ("base.gguf", "lora.gguf"):
        (tmp_path / name).write_bytes(b"GGUF" + bytes(20))
    summary = 'You write "plainly".\n\nNever use """triple quotes""" or # marks.\nEnd with "quotes"'
    path = tmp_path / "Modelfile"
    path.write_text(modelfile_text("./base.gguf", "./lora.gguf", summary))
    check_modelfile(path, summary)
    commands = dict(parse_modelfile(path.read_text()))
    assert commands["from"] == "./base.gguf" and commands["adapter"] == "./lora.gguf"
    assert commands["system"].startswith('You write "plainly".\n\nNever use "" "triple') and '"""' not in commands[
        "system"]  # fmt: skip
    for bad, why in (
        ("FROM ./base.gguf\nADAPTER ./lora.gguf\nADAPTER ./lora.gguf\n", "at most one ADAPTER"),
        ("FROM ./missing.gguf\n", "cannot be read"),
        ("FROM ./base.gguf\nADAPTER ./Modelfile\n", "not a GGUF file"),
    ):
        path.write_text(bad)
        with pytest.raises(IdiolectError, match=why):
            check_modelfile(path)
    for bad in ('FROM ./base.gguf\nSYSTEM """never closed\n', "SYSTEM hi\n", "FROM ./base.gguf\nBOGUS x\n"):
        with pytest.raises(ValueError):
            parse_modelfile(bad)


def test_summary_without_a_gguf_base_writes_no_modelfile(store, tiny_models, tmp_path):
    _trained_profile(store, tiny_models, tmp_path)
    result = export(store, "Sam O'Neil", tmp_path / "out", formats=["summary"])
    names = {p.name for p in result.files}
    assert safe_name("Sam O'Neil") + "-summary.txt" in names and "Modelfile" not in names
    assert "ollama" not in result.commands
