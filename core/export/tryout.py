"""Test it: llama.cpp loads an export's base, GGUF LoRA and summary and answers a prompt at a chosen persona strength; and the merged model (base + adapter in one folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

from idiolect.core.base.errors import IdiolectError


def try_export(
    folder: str | Path, prompt: str, *, max_new_tokens: int = 80, seed: int | None = None, scale: float = 1.0
) -> str:
    """Run an export as a user will: llama.cpp loads its base GGUF with its GGUF LoRA and the summary as the
    system prompt (what its Modelfile says), and answers ``prompt``; ``scale`` sets the LoRA's strength (the
    persona switch llama-server offers at /lora-adapters)."""
    import json as _json

    from idiolect.core.models.llama import LlamaCppGenerator
    from idiolect.core.models.sampling import SamplingParams

    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise IdiolectError(f"nothing is exported in {folder} yet: export first (with the gguf format)")
    try:
        manifest = _json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IdiolectError(f"{folder} holds no readable export (manifest.json: {exc})") from None
    files = manifest.get("llama_cpp") or {}
    if not files.get("lora") or not files.get("base"):
        raise IdiolectError("this export has no GGUF LoRA and base to run: export with the gguf format")
    base = Path(files["base"]) if Path(files["base"]).is_absolute() else folder / files["base"]
    summary = next(iter(sorted(folder.glob("*-summary.txt"))), None)
    gen = LlamaCppGenerator(base, lora_path=folder / files["lora"])
    if scale != 1.0:
        gen.set_lora_scale(scale)
    system = summary.read_text(encoding="utf-8").strip() if summary else None
    return gen.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens).with_seed(seed), system=system)


def merge_adapter(base_dir: Path, adapter_dir: Path, dest: Path) -> list[Path]:
    """Base + adapter in full precision (never onto a 4-bit base), merged and saved with the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    shutil.rmtree(dest, ignore_errors=True)
    merged.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)
    return sorted(p for p in dest.rglob("*") if p.is_file())
