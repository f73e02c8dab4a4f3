"""What every generator shares: sampling parameters, a cancel flag, stop strings cut from the stream, and the Generator interface."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from idiolect.core.base.errors import IdiolectError


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
