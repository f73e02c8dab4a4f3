"""The GGUF written by core runs in llama.cpp exactly as the HF model runs in transformers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from core.errors import IdiolectError
from core.gguf_writer import convert_hf_to_gguf, gguf_context_length
from core.models import load_hf_model

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


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
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
    ids = tok(words)["input_ids"]
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].numpy()
    llm.reset()
    llm.eval(ids)
    cpp_logits = np.asarray(llm.scores[: len(ids)])
    rel = np.abs(hf_logits - cpp_logits).max() / np.abs(hf_logits).max()
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
    from core.tinymodels import build_tiny_model, train_bpe_tokenizer

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
    ids = tok("text to train on " * 8)["input_ids"]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.abs(ref - got).max() / np.abs(ref).max() < 1e-3


def test_unsupported_models_get_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(IdiolectError, match="cannot be converted to GGUF here"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(IdiolectError, match="no config.json"):
        convert_hf_to_gguf(tmp_path / "nothing", tmp_path / "x.gguf")
