"""Generation with transformers: an HF folder with an optional PEFT adapter, streamed token by token."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.adapters import adapter_base, adapter_identity, same_model
from idiolect.core.models.loading import load_hf_model
from idiolect.core.models.prompt import render_prompt
from idiolect.core.models.sampling import Cancel, Generator, SamplingParams


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
