"""The GGUF written by core runs in llama.cpp exactly as the HF model runs in transformers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.gguf.reader import gguf_context_length
from idiolect.core.models.gguf.writer import convert_hf_to_gguf
from idiolect.core.models.loading import load_hf_model

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "Hello world, this is a plain sentence.",
    "naïve café — 1234567 🍺 résumé\n\n  two spaces\tand a tab",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "Don't we'll they've 3.14159 ...!!! ??",
]


def _llama(path):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=0,
        type_v=0,
        seed=0,
    )


def _relative_logit_error(hf, llm, ids) -> float:
    """Max |transformers - llama.cpp| over the logits of ``ids``, relative to the largest logit."""
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    llm.reset()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_gguf_matches_transformers(arch, tiny_models, tiny_ggufs):
    model, tok, _ = load_hf_model(tiny_models[arch], device="cpu")
    llm = _llama(tiny_ggufs[arch])
    add_bos = tok.bos_token is not None
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=add_bos, special=True) == tok(text)["input_ids"], text

    # Logits on a random prompt.
    rng = random.Random(1)
    words = " ".join(
        rng.choice(["the", "beer", "glass", "cold", "I", "think", "42", "ok,", "really"]) for _ in range(40)
    )
    rel = _relative_logit_error(model, llm, tok(words)["input_ids"])
    assert rel < 1e-3, rel

    # Greedy continuation, token by token.
    prompt = tok("The best part of the weekend was")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id
        )
    hf_new = out[0, len(prompt) :].tolist()
    llm.reset()
    cpp_new = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        if token == llm.token_eos() or len(cpp_new) == len(hf_new):
            break
        cpp_new.append(token)
    assert cpp_new == hf_new
    assert gguf_context_length(tiny_ggufs[arch]) == 512


def test_f16_gguf_is_half_the_size_and_close(tiny_models, tiny_ggufs, tmp_path):
    f16 = convert_hf_to_gguf(tiny_models["qwen2"], tmp_path / "q.gguf", dtype="f16")
    assert f16.stat().st_size < 0.7 * tiny_ggufs["qwen2"].stat().st_size
    a, b = _llama(f16), _llama(tiny_ggufs["qwen2"])
    ids = a.tokenize(b"A short prompt for both files", add_bos=False)
    a.eval(ids)
    b.eval(ids)
    la, lb = np.asarray(a.scores[: len(ids)]), np.asarray(b.scores[: len(ids)])
    assert np.abs(la - lb).max() / np.abs(lb).max() < 2e-2


def test_llama3_rope_scaling_is_carried_over(tmp_path):
    """Llama 3.x models scale RoPE frequencies; the writer adds llama.cpp's rope_freqs tensor for them."""
    from idiolect.bench.tinymodels import build_tiny_model, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["some text to train on, again and again"] * 20, 300, add_bos=True)
    model = build_tiny_model("llama", tok, max_positions=256, seed=3)
    model.config.rope_parameters = {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
    }  # fmt: skip
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    hf, tok, _ = load_hf_model(tmp_path / "m", device="cpu")
    llm = _llama(convert_hf_to_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="f32"))
    assert _relative_logit_error(hf, llm, tok("text to train on " * 8)["input_ids"]) < 1e-3


def test_sentencepiece_tokenizer_with_space_prefix(tmp_path):
    """A Llama 2 / Mistral style tokenizer (SentencePiece BPE that puts "▁" before the text) on a llama model:
    llama.cpp splits text as transformers does and computes the same logits."""
    from conftest import _tokenizer_corpus

    from idiolect.bench.tinymodels import build_tiny_model, train_spm_tokenizer

    tok = train_spm_tokenizer(_tokenizer_corpus(), 400, space_prefix=True)
    build_tiny_model("llama", tok, seed=5).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    hf, tok, _ = load_hf_model(tmp_path / "m", device="cpu")
    llm = _llama(convert_hf_to_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="f32"))
    for text in TEXTS + ["   leading spaces", "word"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
    assert tok.convert_ids_to_tokens(tok("word")["input_ids"])[1].startswith("\u2581")  # the prefix is there
    assert _relative_logit_error(hf, llm, tok("the beer glass is cold, I think " * 4)["input_ids"]) < 1e-3


def test_each_architecture_says_what_it_supports(tiny_models, tmp_path):
    from idiolect.core.models.gguf.writer import SUPPORT, convert_lora_to_gguf, export_problem

    assert SUPPORT["MistralForCausalLM"].name == "llama" and SUPPORT["Gemma3ForCausalLM"].name == "gemma3"
    for arch in ("llama", "qwen2", "qwen3", "gemma3"):
        assert export_problem(tiny_models[arch], "lora") is None
    assert export_problem(tiny_models["gemma3"], "base") is None
    # What llama.cpp's gemma3 graph cannot run is refused before a byte is written.
    import shutil

    odd = tmp_path / "odd-gemma"
    shutil.copytree(tiny_models["gemma3"], odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "query_pre_attn_scalar": 99}))
    with pytest.raises(IdiolectError, match="query_pre_attn_scalar 99 differs from head_dim"):
        convert_hf_to_gguf(odd, tmp_path / "g.gguf")
    (odd / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": 50.0}))
    with pytest.raises(IdiolectError, match="attention logit softcapping"):
        convert_hf_to_gguf(odd, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()
    # A gemma3 LoRA is written (llama.cpp reads it on top of the user's own gemma3 GGUF: test_real_model.py).
    from peft import LoraConfig, get_peft_model

    from idiolect.core.models.loading import load_hf_model

    base, _, _ = load_hf_model(tiny_models["gemma3"], device="cpu")
    get_peft_model(
        base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
    ).save_pretrained(tmp_path / "adapter")
    out = convert_lora_to_gguf(tmp_path / "adapter", tiny_models["gemma3"], tmp_path / "g-lora.gguf")
    import gguf

    reader = gguf.GGUFReader(str(out))
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    assert reader.fields[gguf.Keys.General.ARCHITECTURE].contents() == "gemma3"


def test_unsupported_models_get_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(IdiolectError, match="cannot be written as a GGUF base model here"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(IdiolectError, match="no config.json"):
        convert_hf_to_gguf(tmp_path / "nothing", tmp_path / "x.gguf")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_gguf_dequantized_back_to_the_same_weights(arch, tiny_models, tiny_ggufs, tmp_path, monkeypatch):
    """A GGUF base is a training base: dequantized one block of rows at a time (never the whole model) into a
    Hugging Face folder whose weights are exactly those the f32 GGUF was written from (llama q/k rows and
    Gemma's norm offsets undone), and whose tokenizer splits text the same way."""
    from safetensors.torch import load_file

    from idiolect.core.models.gguf.cache import dequantized_dir

    monkeypatch.setenv("IDIOLECT_HOME", str(tmp_path / "home"))
    out = dequantized_dir(tiny_ggufs[arch])
    got = load_file(str(out / "model.safetensors"))
    want = load_file(str(tiny_models[arch] / "model.safetensors"))
    assert set(got) == set(want)
    for name, tensor in want.items():  # exact, but for Gemma's norms: (w + 1) - 1 rounds in float32
        assert torch.allclose(got[name], tensor, rtol=0, atol=1e-7 if "norm" in name else 0), name
    model, tok, _ = load_hf_model(out, device="cpu")
    ref, ref_tok, _ = load_hf_model(tiny_models[arch], device="cpu")
    ids = ref_tok(TEXTS[0])["input_ids"]
    assert tok(TEXTS[0])["input_ids"] == ids
    with torch.no_grad():
        assert torch.allclose(model(torch.tensor([ids])).logits, ref(torch.tensor([ids])).logits, atol=1e-5)
