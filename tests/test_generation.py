"""Generation backends: streaming, cancellation, stop strings, seeds, adapters, prompt formats, errors."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from conftest import ROOT

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.generation import open_generator
from idiolect.core.models.hf_generation import HFGenerator
from idiolect.core.models.llama import LlamaCppGenerator
from idiolect.core.models.sampling import Cancel, SamplingParams

GREEDY = SamplingParams(max_new_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def hf_qwen(tiny_models):
    return HFGenerator.from_pretrained(tiny_models["qwen2"], device="cpu")


@pytest.fixture(scope="module")
def cpp_qwen(tiny_ggufs):
    return LlamaCppGenerator(tiny_ggufs["qwen2"], exact=True, n_threads=2)


def test_prompt_formats(tiny_models, hf_qwen, cpp_qwen):
    chat = "<|im_start|>user\nWrite a review.<|im_end|>\n<|im_start|>assistant\n"
    assert hf_qwen.format("Write a review.") == chat == cpp_qwen.format("Write a review.")
    with_system = hf_qwen.format("Hi", system="Be brief.")
    assert (
        with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")
        and cpp_qwen.format("Hi", system="Be brief.") == with_system
    )
    plain = HFGenerator.from_pretrained(tiny_models["llama"], device="cpu")  # no chat template
    assert (
        plain.format("Write a review.", system="Be brief.", context="A thread.")
        == "Be brief.\n\nA thread.\n\nWrite a review.\n\n"
    )
    assert plain.encode("x")[0] == plain.tokenizer.bos_token_id


def test_backends_agree_on_greedy_token_ids(hf_qwen, cpp_qwen):
    text = hf_qwen.format("Tell me about your weekend.")
    ids = hf_qwen.encode(text)
    assert cpp_qwen.encode(text) == ids
    with torch.no_grad():
        out = hf_qwen.model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, pad_token_id=0)
    expected = out[0, len(ids) :].tolist()
    got = [
        t for t, _ in zip(cpp_qwen.llm.generate(ids, top_k=1, temp=0.0, reset=True), expected, strict=False)
    ]
    assert got == expected


@pytest.mark.parametrize("backend", ["hf", "llama"])
def test_streaming_is_incremental_and_cancellable(backend, hf_qwen, cpp_qwen):
    gen = hf_qwen if backend == "hf" else cpp_qwen
    params = SamplingParams(max_new_tokens=60, temperature=0.7, seed=1)
    pieces = list(gen.stream("Say something.", params))
    assert len(pieces) >= 3 and all(pieces)
    assert "".join(pieces) == gen.generate("Say something.", params)
    cancel = Cancel()
    got = []
    for piece in gen.stream(
        "Say something.", SamplingParams(max_new_tokens=400, temperature=0.7, seed=1), cancel=cancel
    ):
        got.append(piece)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3
    assert not [t for t in threading.enumerate() if t.name == "hf-generate"]
    # Abandoning the iterator also stops the work.
    stream = gen.stream("Say something.", SamplingParams(max_new_tokens=400, temperature=0.7, seed=1))
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "hf-generate"]


@pytest.mark.parametrize("backend", ["hf", "llama"])
def test_stop_strings_and_seeds(backend, hf_qwen, cpp_qwen):
    gen = hf_qwen if backend == "hf" else cpp_qwen
    full = gen.generate("Write a short post.", GREEDY)
    assert len(full) > 20
    stop = full[10:14]
    cut = gen.generate(
        "Write a short post.", SamplingParams(max_new_tokens=40, temperature=0, stop=["\x00never", stop])
    )
    assert cut == full[: full.index(stop)]
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, seed=7)
    assert gen.generate("Hi", sampled) == gen.generate("Hi", sampled)


def test_adapters_switch_without_reloading_the_base(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model

    from idiolect.core.models.loading import load_hf_model

    for i, seed in enumerate((1, 2)):
        base, _, _ = load_hf_model(tiny_models["qwen2"], device="cpu")
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            base,
            LoraConfig(
                r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
            ),
        )
        peft_model.save_pretrained(tmp_path / f"adapter{i}")
    gen = HFGenerator.from_pretrained(tiny_models["qwen2"], device="cpu")
    base_out = gen.generate("Review a restaurant.", GREEDY)
    embed = gen.model.get_input_embeddings().weight
    first = gen.load_adapter(tmp_path / "adapter0")
    out0 = gen.generate("Review a restaurant.", GREEDY)
    second = gen.load_adapter(tmp_path / "adapter1")
    out1 = gen.generate("Review a restaurant.", GREEDY)
    assert len({base_out, out0, out1}) == 3
    gen.set_adapter(None)
    assert gen.generate("Review a restaurant.", GREEDY) == base_out
    gen.set_adapter(first)
    assert gen.generate("Review a restaurant.", GREEDY) == out0
    assert gen.model.get_input_embeddings().weight is embed  # the same base tensors throughout
    assert set(gen.adapters) == {first, second}
    with pytest.raises(IdiolectError, match="no adapter"):
        gen.set_adapter("missing")
    with pytest.raises(IdiolectError, match="not a PEFT adapter"):
        gen.load_adapter(tmp_path)


def test_bad_inputs_give_clear_errors(tmp_path, tiny_models):
    with pytest.raises(IdiolectError, match="no such file or folder"):
        open_generator(str(tmp_path / "missing"))
    with pytest.raises(IdiolectError, match="holds no model"):
        open_generator(str(tmp_path))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(IdiolectError, match="cannot load"):
        LlamaCppGenerator(broken)
    with pytest.raises(IdiolectError, match="GGUF LoRA"):
        open_generator(str(tiny_models["qwen2"]), backend="llama", adapter=str(tmp_path))
    with pytest.raises(IdiolectError, match="max tokens"):
        SamplingParams(max_new_tokens=0)


def test_llama_backend_takes_a_peft_adapter_folder(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model

    from idiolect.core.models.gguf.writer import convert_lora_to_gguf
    from idiolect.core.models.loading import load_hf_model

    base, _, _ = load_hf_model(tiny_models["qwen2"], device="cpu")
    torch.manual_seed(3)
    get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "adapter")
    model = str(tiny_models["qwen2"])
    plain = open_generator(model, backend="llama", gguf_cache=tmp_path / "cache")
    on_the_fly = open_generator(
        model, backend="llama", adapter=str(tmp_path / "adapter"), gguf_cache=tmp_path / "cache"
    )
    explicit = open_generator(
        model,
        backend="llama",
        adapter=str(convert_lora_to_gguf(tmp_path / "adapter", tiny_models["qwen2"], tmp_path / "x.gguf")),
        gguf_cache=tmp_path / "cache",
    )
    outs = [g.generate("Review a restaurant.", GREEDY) for g in (plain, on_the_fly, explicit)]
    assert outs[1] == outs[2] != outs[0]
    assert len(list((tmp_path / "cache").glob("lora-*.gguf"))) == 1


def test_cli_generate_streams_and_fails_in_one_line(tiny_models, tmp_path):
    env_home = {"IDIOLECT_HOME": str(tmp_path)}
    import os

    env = {**os.environ, **env_home}
    for backend in ("hf", "llama"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "launch.py"), "generate", "--model", str(tiny_models["llama"]), "--backend",
             backend, "--prompt", "Hello", "--max-tokens", "12", "--temperature", "0"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip()
    assert list((tmp_path / "gguf").glob("*.gguf"))  # the llama backend converted and cached the HF folder
    bad = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "generate", "--model", str(tmp_path / "nope"), "--prompt", "x"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: ")


def test_generation_benchmark_writes_json_and_markdown(tiny_models, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "bench", "generation", "--model", str(tiny_models["llama"]),
         "--tokens", "8", "--runs", "2", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert [r["backend"] for r in result["rows"]] == ["transformers fp32", "llama.cpp f32", "llama.cpp f16"]
    assert all(r["decode tokens/s (median)"] > 0 for r in result["rows"])
    assert result["matmul_gflops_fp32"] > 0
    assert "| transformers fp32 |" in (tmp_path / "out" / "generation.md").read_text()


def test_gguf_conversion_cache_is_keyed_by_content(tiny_models, tmp_path):
    """The llama backend's GGUF of an HF folder is reused while the weights are the same and made anew when
    they change, even where the new weights keep the old modification time (a copy with -p, a restore)."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    from idiolect.core.models.llama import gguf_for

    folder = tmp_path / "m"
    shutil.copytree(tiny_models["qwen2"], folder)
    first = gguf_for(folder, tmp_path / "cache")
    assert gguf_for(folder, tmp_path / "cache") == first
    weights = folder / "model.safetensors"
    st = weights.stat()
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = gguf_for(folder, tmp_path / "cache")
    assert second != first and second.exists()
    assert not list((tmp_path / "cache").glob("*.partial*"))
