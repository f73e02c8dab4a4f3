"""Generation with llama.cpp (llama-cpp-python): a GGUF base with an optional GGUF LoRA at a chosen scale, and the cached GGUF conversions of HF folders and PEFT adapters it runs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.adapters import adapter_identity
from idiolect.core.models.gguf.reader import gguf_context_length
from idiolect.core.models.prompt import render_prompt
from idiolect.core.models.sampling import Cancel, Generator, SamplingParams

_LLAMA_PARAMS_LOCK = threading.Lock()


def open_llama(**kwargs):
    """``llama_cpp.Llama(**kwargs)``, with llama.cpp's extra CPU buffer types (AMX, weight repacking) off on
    CPUs with AMX: with them, llama-cpp-python 0.3.36 crashes (segmentation fault) in the first decode of a
    Q4_K_M Gemma 3 file on such a CPU (seen here; the same file runs with them off). The Python wrapper does not
    expose the setting, so the default parameters it starts from are swapped for the duration of the load."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    from idiolect.core.models.loading import cpu_flags

    if "amx_tile" not in cpu_flags():
        return llama_cpp.Llama(**kwargs)
    with _LLAMA_PARAMS_LOCK:
        original = llama_module.llama_cpp.llama_model_default_params

        def without_extra_bufts():
            params = original()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = without_extra_bufts
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


class LlamaCppGenerator(Generator):
    name = "llama"

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        lora_path: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        exact: bool = False,
    ) -> None:
        """``exact`` keeps the KV cache in f32 (llama.cpp's default f16 costs about 1e-3 relative in the
        logits); the parity tests use it."""

        gguf_path = Path(gguf_path)
        if not gguf_path.is_file():
            raise IdiolectError(f"{gguf_path}: no such GGUF file")
        if lora_path is not None and not Path(lora_path).is_file():
            raise IdiolectError(f"{lora_path}: no such GGUF LoRA file")
        n_ctx = min(n_ctx, gguf_context_length(gguf_path) or n_ctx)
        kwargs = dict(
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_threads=n_threads or max(1, os.cpu_count() or 1),
            n_gpu_layers=n_gpu_layers,
            lora_path=str(lora_path) if lora_path else None,
            verbose=False,
        )
        if exact:
            kwargs.update(type_k=0, type_v=0)  # GGML_TYPE_F32
        try:
            self.llm = open_llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise IdiolectError(f"llama.cpp cannot load {gguf_path}: {exc}") from exc
        self.model_ref = str(gguf_path)
        self.lora_path = str(lora_path) if lora_path else None
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template")
        self.add_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def format(self, prompt: str, *, system: str | None = None, context: str | None = None) -> str:
        return render_prompt(self.chat_template, prompt, system=system, context=context)

    def set_lora_scale(self, scale: float) -> None:
        """How strongly the LoRA applies from the next generation on: 1 as trained, 0 the base alone, values
        between a milder persona. The same switch llama-server offers at ``POST /lora-adapters``."""
        import ctypes

        import llama_cpp

        adapter = getattr(self.llm, "_lora_adapter", None)
        if adapter is None:
            raise IdiolectError("this model was loaded without a LoRA: there is no persona to scale")
        if not 0.0 <= scale <= 4.0:
            raise IdiolectError(f"a LoRA scale is between 0 and 4, not {scale}")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(scale)
        if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, adapters, 1, scales):
            raise IdiolectError("llama.cpp refused the LoRA scale")
        self.llm.reset()  # the cached prompt was computed at the old scale

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    def _stream_formatted(self, text: str, params: SamplingParams, cancel: Cancel) -> Iterator[str]:
        tokens = self.encode(text)
        if len(tokens) + params.max_new_tokens > self.llm.n_ctx():
            raise IdiolectError(
                f"the prompt ({len(tokens)} tokens) plus max tokens ({params.max_new_tokens}) exceed the context "
                f"size {self.llm.n_ctx()}"
            )
        self.llm.reset()
        chunks = self.llm.create_completion(
            tokens,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.temperature > 0 else 1,
            min_p=0.0,
            repeat_penalty=params.repetition_penalty,
            seed=params.seed,
            stream=True,
        )
        try:
            for chunk in chunks:
                if cancel.is_set():
                    break
                piece = chunk["choices"][0]["text"]
                if piece:
                    yield piece
        finally:
            chunks.close()


def gguf_lora_for(adapter_dir: Path, model: str, cache: Path | None = None) -> Path:
    """The GGUF LoRA of a PEFT adapter folder for the llama backend: written once into the cache, keyed by the
    adapter's identity (folder + content hash), so a retrained adapter in the same folder gets a new file."""
    import hashlib

    from idiolect.core.base.paths import GGUF, data_subdir
    from idiolect.core.models.gguf.writer import convert_lora_to_gguf
    from idiolect.core.models.resolve import local_model_dir

    if not (adapter_dir / "adapter_config.json").exists():
        raise IdiolectError(f"{adapter_dir}: give a PEFT adapter folder or a GGUF LoRA file as --adapter")
    cache = cache or data_subdir(GGUF)
    key = hashlib.sha256(adapter_identity(adapter_dir).encode()).hexdigest()[:16]
    out = cache / f"lora-{key}.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".partial-{os.getpid()}")
        convert_lora_to_gguf(adapter_dir, local_model_dir(model), tmp)
        tmp.replace(out)
    return out


def gguf_for(model_dir: Path, cache: Path | None = None) -> Path:
    """The GGUF conversion of an HF folder, written once into the cache and reused: keyed by the folder and the
    content hashes of its config, tokenizer and weight files (hashes remembered per path, size and mtime), so
    rewritten weights get a new file even where they kept the old modification time."""
    import hashlib

    from idiolect.core.base.identity import file_sha256
    from idiolect.core.base.paths import GGUF, data_subdir
    from idiolect.core.models.gguf.writer import convert_hf_to_gguf

    cache = cache or data_subdir(GGUF)
    parts = [str(model_dir.resolve())]
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and (f.suffix == ".safetensors" or f.name in ("config.json", "tokenizer.json")):
            parts.append(f"{f.name}:{file_sha256(f)}")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    out = cache / f"{model_dir.name}-{key}.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".partial-{os.getpid()}")
        try:
            convert_hf_to_gguf(model_dir, tmp, dtype="f16")
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return out
