"""Text generation behind one interface, with two backends:

- :class:`HFGenerator` -- transformers, optionally with PEFT adapters; adapters are loaded once onto the same
  base and switched (or turned off) without reloading it.
- :class:`LlamaCppGenerator` -- llama-cpp-python over a GGUF base, optionally with a GGUF LoRA.

Both take the same :class:`SamplingParams`, format the prompt the same way (the model's chat template, else
the plain format of :func:`idiolect.core.models.prompt.render_prompt`), stream text pieces as they are produced, stop at stop
strings, and stop early when their :class:`Cancel` is set (or when the consumer stops iterating).
"""

from __future__ import annotations

from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.hf_generation import HFGenerator
from idiolect.core.models.llama import LlamaCppGenerator, gguf_for, gguf_lora_for
from idiolect.core.models.sampling import Generator


def open_generator(
    model: str,
    *,
    backend: str = "hf",
    adapter: str | None = None,
    device: str = "auto",
    quantize: str = "auto",
    gguf_cache: Path | None = None,
) -> Generator:
    """A generator for what the user named. With the llama backend an HF model is converted to GGUF first
    (cached by the folder and its files' content hashes), and ``adapter`` may be a GGUF LoRA or a PEFT folder; with the hf
    backend a GGUF model is dequantized (once) and ``adapter`` is a PEFT folder."""
    from idiolect.core.models.resolve import local_model_dir, resolve

    if backend not in ("hf", "llama"):
        raise IdiolectError(f"backend must be hf or llama, not {backend!r}")
    source = resolve(model)
    if backend == "hf":
        return HFGenerator.from_pretrained(
            local_model_dir(model), adapter=adapter, device=device, quantize=quantize
        )
    lora = None
    if adapter:  # a GGUF LoRA as it is; a PEFT folder converted once (cached by its content)
        lora = (
            Path(adapter)
            if str(adapter).endswith(".gguf")
            else gguf_lora_for(Path(adapter), model, gguf_cache)
        )
    path = source.path if source.kind == "gguf" else gguf_for(local_model_dir(model), gguf_cache)
    return LlamaCppGenerator(path, lora_path=lora)
