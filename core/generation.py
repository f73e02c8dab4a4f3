"""Text generation behind one interface, with two backends:

- :class:`HFGenerator` -- transformers, optionally with PEFT adapters; adapters are loaded once onto the same
  base and switched (or turned off) without reloading it.
- :class:`LlamaCppGenerator` -- llama-cpp-python over a GGUF base, optionally with a GGUF LoRA.

Both take the same :class:`SamplingParams`, format the prompt the same way (the model's chat template, else
the plain format of :func:`core.models.render_prompt`), stream text pieces as they are produced, stop at stop
strings, and stop early when their :class:`Cancel` is set (or when the consumer stops iterating).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from idiolect.core.errors import IdiolectError
from idiolect.core.gguf_writer import gguf_context_length
from idiolect.core.models import load_hf_model, render_prompt


@dataclass
class SamplingParams:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise IdiolectError("max tokens must be at least 1")
        if self.temperature < 0:
            raise IdiolectError("temperature cannot be negative")
        if not 0 < self.top_p <= 1:
            raise IdiolectError("top_p must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_seed(self, seed: int | None = None) -> SamplingParams:
        """These parameters with a concrete seed: ``seed`` if given, else a fresh random one. Stored with a
        generation, it makes that generation reproducible; a fresh one per generation keeps two clicks on the
        same prompt from giving the same text."""
        import secrets

        return replace(self, seed=secrets.randbelow(2**31) if seed is None else int(seed))


class Cancel:
    """Set it from any thread to stop a generation at the next token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class _StopText:
    """Holds back text that might be the start of a stop string; reports when one is complete."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buffer += piece
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.done = True
            out, self.buffer = self.buffer[:cut], ""
            return out
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])),
            default=0,
        )
        out = self.buffer[: len(self.buffer) - keep]
        self.buffer = self.buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class Generator:
    """The interface both backends implement."""

    name = "base"
    model_ref = ""

    def format(self, prompt: str, *, system: str | None = None, context: str | None = None) -> str:
        raise NotImplementedError

    def _stream_formatted(self, text: str, params: SamplingParams, cancel: Cancel) -> Iterator[str]:
        raise NotImplementedError

    def stream(
        self,
        prompt: str,
        params: SamplingParams | None = None,
        *,
        system: str | None = None,
        context: str | None = None,
        cancel: Cancel | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated."""
        params = params or SamplingParams()
        cancel = cancel or Cancel()
        stopper = _StopText(params.stop)
        pieces = self._stream_formatted(self.format(prompt, system=system, context=context), params, cancel)
        try:
            for piece in pieces:
                out = stopper.feed(piece)
                if out:
                    yield out
                if stopper.done or cancel.is_set():
                    break
            else:
                tail = stopper.flush()
                if tail:
                    yield tail
        finally:
            cancel.set()
            pieces.close()

    def generate(self, prompt: str, params: SamplingParams | None = None, **kwargs) -> str:
        return "".join(self.stream(prompt, params, **kwargs))


class HFGenerator(Generator):
    name = "hf"

    def __init__(self, model, tokenizer, *, model_ref: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_ref = model_ref
        self.adapters: dict[str, str] = {}
        self.active_adapter: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        adapter: str | Path | None = None,
        device: str = "auto",
        quantize: str = "auto",
    ) -> HFGenerator:
        model, tokenizer, _ = load_hf_model(model_dir, device=device, quantize=quantize)
        gen = cls(model, tokenizer, model_ref=str(model_dir))
        if adapter:
            gen.load_adapter(adapter)
        return gen

    # -- adapters ---------------------------------------------------------------------------------------

    def load_adapter(self, path: str | Path, name: str | None = None) -> str:
        """Load a PEFT adapter onto the base (once per content) and make it active; returns its name.

        Adapters are keyed by :func:`adapter_identity` (resolved folder plus the hash of its files), so a run
        that saves to the same folder as an earlier one, or an adapter rewritten in place, is loaded anew and
        never served from the earlier load. An adapter trained on another base model is refused with a
        message that names both."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").exists():
            raise IdiolectError(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
        base = adapter_base(path)
        if base and self.model_ref and not same_model(base, self.model_ref):
            raise IdiolectError(
                f"the adapter {path} was trained on {base}, not on the model in use ({self.model_ref}); "
                "train again on this model, or switch back to that one"
            )
        key = adapter_identity(path)
        folder, digest = key.rsplit(":", 1)
        for loaded, ident in list(self.adapters.items()):
            if ident == key:
                self.set_adapter(loaded)
                return loaded
            if ident.rsplit(":", 1)[0] == folder:  # the same folder rewritten: the old weights are gone
                self._drop(loaded)
        name = name or (re.sub(r"\W", "_", path.name) or "adapter") + "_" + digest[:12]
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001
            if "size mismatch" in str(exc):
                raise IdiolectError(
                    f"the adapter {path} does not fit the model in use ({self.model_ref}): its layer sizes "
                    "differ, so it was trained on another base model"
                ) from exc
            raise IdiolectError(f"cannot load the adapter {path}: {exc}") from exc
        self.model.eval()
        self.adapters[name] = key
        self.set_adapter(name)
        return name

    def _drop(self, name: str) -> None:
        if self.active_adapter == name:
            self.set_adapter(None)
        del self.adapters[name]
        if self.adapters:
            self.model.delete_adapter(name)
        else:  # the last adapter: back to the plain base model
            self.model = self.model.unload()
            self.model.eval()

    def set_adapter(self, name: str | None) -> None:
        """Switch to a loaded adapter, or to the plain base with None."""
        if name is not None:
            if name not in self.adapters:
                raise IdiolectError(
                    f"no adapter {name!r} loaded (loaded: {', '.join(self.adapters) or 'none'})"
                )
            self.model.set_adapter(name)
        self.active_adapter = name

    # -- generation -------------------------------------------------------------------------------------

    def format(self, prompt: str, *, system: str | None = None, context: str | None = None) -> str:
        return render_prompt(self.tokenizer, prompt, system=system, context=context)

    def encode(self, text: str) -> list[int]:
        # A chat template writes its own special tokens (BOS included); the plain format relies on the
        # tokenizer's usual ones.
        return self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]

    def _stream_formatted(self, text: str, params: SamplingParams, cancel: Cancel) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _CancelCriteria(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full(
                    (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
                )

        device = next(self.model.parameters()).device
        ids = torch.tensor([self.encode(text)], device=device)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )
        kwargs = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=params.max_new_tokens,
            do_sample=params.temperature > 0,
            repetition_penalty=params.repetition_penalty,
            stopping_criteria=StoppingCriteriaList([_CancelCriteria()]),
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                adapter_off = self.active_adapter is None and self.adapters
                with torch.inference_mode():
                    if adapter_off:
                        with self.model.disable_adapter():
                            self.model.generate(**kwargs)
                    else:
                        self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="hf-generate", daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            cancel.set()
            thread.join()
        if errors:
            exc = errors[0]
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise IdiolectError("out of GPU memory while generating: lower max tokens") from exc
            raise exc


_LLAMA_PARAMS_LOCK = threading.Lock()


def open_llama(**kwargs):
    """``llama_cpp.Llama(**kwargs)``, with llama.cpp's extra CPU buffer types (AMX, weight repacking) off on
    CPUs with AMX: with them, llama-cpp-python 0.3.36 crashes (segmentation fault) in the first decode of a
    Q4_K_M Gemma 3 file on such a CPU (seen here; the same file runs with them off). The Python wrapper does not
    expose the setting, so the default parameters it starts from are swapped for the duration of the load."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    from idiolect.core.models import cpu_flags

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


def adapter_identity(path: str | Path) -> str:
    """What an adapter folder holds: its resolved path plus a hash of its config and weights files. Two runs
    that save to folders of the same name, or one folder rewritten, give different identities."""
    import hashlib

    path = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.name == "adapter_config.json" or f.name.startswith("adapter_model")):
            h.update(f.name.encode() + b"\x00")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                    h.update(block)
    return f"{path}:{h.hexdigest()}"


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter was trained on: Idiolect's own record (idiolect.json) first, else PEFT's
    ``base_model_name_or_path``."""
    import json

    path = Path(path)
    for name, key in (("idiolect.json", "base"), ("adapter_config.json", "base_model_name_or_path")):
        try:
            value = json.loads((path / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None


def same_model(a: str | Path, b: str | Path) -> bool:
    """Whether two model references (folders or hub ids) name the same model."""
    a, b = str(a), str(b)
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


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
    (cached by folder and modification time), and ``adapter`` may be a GGUF LoRA or a PEFT folder; with the hf
    backend a GGUF model is dequantized (once) and ``adapter`` is a PEFT folder."""
    from idiolect.core.models import local_model_dir, resolve

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


def gguf_lora_for(adapter_dir: Path, model: str, cache: Path | None = None) -> Path:
    """The GGUF LoRA of a PEFT adapter folder for the llama backend: written once into the cache, keyed by the
    adapter's identity (folder + content hash), so a retrained adapter in the same folder gets a new file."""
    import hashlib

    from idiolect.core.gguf_writer import convert_lora_to_gguf
    from idiolect.core.models import local_model_dir
    from idiolect.core.paths import data_dir

    if not (adapter_dir / "adapter_config.json").exists():
        raise IdiolectError(f"{adapter_dir}: give a PEFT adapter folder or a GGUF LoRA file as --adapter")
    cache = cache or data_dir() / "gguf"
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

    from idiolect.core.gguf_writer import convert_hf_to_gguf
    from idiolect.core.models import file_sha256
    from idiolect.core.paths import data_dir

    cache = cache or data_dir() / "gguf"
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
