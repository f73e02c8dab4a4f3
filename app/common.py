"""What every tab shares: the context its handlers work in (the store and the loaded model), the wiring that
turns a failure into one toast, the status line and small formatting helpers.

A tab's handlers are plain functions of ``(ctx, ...)`` that return values and raise ``IdiolectError`` for
anything the user should fix; unit tests call them directly. Only :func:`on` knows about Gradio's events: it
shows such an error as one toast (``gr.Warning``, titled "Could not do that") and leaves every output as it was.
A raised ``gr.Error`` would instead mark each output component with an error badge, over what the user typed.
"""

from __future__ import annotations

import inspect
import logging
import threading
import traceback
from dataclasses import dataclass, field
from functools import wraps

import gradio as gr
import pandas as pd

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.hf_generation import HFGenerator
from idiolect.core.models.registry import default_model
from idiolect.core.models.resolve import local_model_dir
from idiolect.core.store import Store
from idiolect.core.training.runs import latest_completed_run
from idiolect.core.training.worker import ACTIVE

log = logging.getLogger("idiolect.app")


class Generators:
    """One loaded base per model, adapters switched onto it (core.models does the work)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache: dict[str, HFGenerator] = {}

    def get(self, model: str) -> HFGenerator:
        folder = local_model_dir(model)
        key = str(folder.resolve())  # the folder a spec resolves to, not the spec's spelling
        with self.lock:
            if key not in self.cache:
                self.cache.clear()  # one model in memory at a time
                self.cache[key] = HFGenerator.from_pretrained(folder)
            return self.cache[key]


@dataclass
class Ctx:
    store: Store
    generators: Generators = field(default_factory=Generators)


# -- errors ---------------------------------------------------------------------------------------------------


def message_of(where: str, exc: BaseException) -> str:
    """The one line the page shows for a failure. An expected error (bad input, a missing step) is its own
    message and nothing is logged; a real fault's traceback goes to the log (app.log in the data folder)."""
    if isinstance(exc, IdiolectError):
        return str(exc)
    if isinstance(exc, gr.Error):
        return exc.message
    log.error("unexpected error in %s:\n%s", where, traceback.format_exc())
    return f"Something went wrong ({type(exc).__name__}: {exc}). Details are in the log."


def toast(message: str) -> None:
    gr.Warning(message, title="Could not do that", duration=12)


def on(trigger, fn, inputs=None, outputs=None, **kwargs):
    """``trigger(fn, inputs, outputs)`` with failures shown as one toast and no output changed. ``trigger`` is
    an event listener such as ``button.click``; ``fn`` may stream (a generator)."""
    outputs = list(outputs or [])

    def unchanged():
        if not outputs:
            return None
        return gr.skip() if len(outputs) == 1 else tuple(gr.skip() for _ in outputs)

    if inspect.isgeneratorfunction(fn):

        @wraps(fn)
        def wrapper(*args, **kw):
            try:
                yield from fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - the user sees one line, the log gets the rest
                toast(message_of(fn.__name__, exc))
                yield unchanged()

    else:

        @wraps(fn)
        def wrapper(*args, **kw):
            try:
                return fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001
                toast(message_of(fn.__name__, exc))
                return unchanged()

    return trigger(wrapper, inputs, outputs, **kwargs)


# -- reading the profile ----------------------------------------------------------------------------------------


def need(ctx: Ctx, profile: str | None) -> dict:
    if not profile:
        raise IdiolectError("Choose or create a profile first (at the top of the page).")
    return ctx.store.get_profile(profile)


def chosen_model(ctx: Ctx, profile: str) -> tuple[str | None, bool]:
    """(the model the profile uses, whether its person chose it): until one is chosen in the Model tab, the
    offline instruct model where it is installed (registry.default_model)."""
    model = ctx.store.profile_settings(profile).get("model")
    return (model, True) if model else (default_model(), False)


def model_of(ctx: Ctx, profile: str) -> str:
    model, _ = chosen_model(ctx, profile)
    if not model:
        raise IdiolectError("Choose a base model first (tab Model).")
    return model


def status(ctx: Ctx, profile: str | None) -> str:
    """The line under the profile picker: where the profile stands and the next step."""
    store = ctx.store
    if not profile or store.find_profile(profile) is None:
        return "**Next:** create a profile (your name or a nickname) and add some of your writing."
    prof = store.get_profile(profile)
    stats = store.stats()["profiles"][profile]
    steps = [
        (stats["samples"] >= 20, f"add more of your writing ({stats['samples']} samples; 20+ work well)"),
        (chosen_model(ctx, profile)[0] is not None, "choose a base model (tab Model)"),
        (stats["ratings_up"] + stats["ratings_down"] >= 1, "rate a few generations (tab Rate)"),
        (latest_completed_run(store, prof["id"]) is not None, "train your adapter (tab Train)"),
        (bool(store.list_summaries(prof["id"])), "make your preference summary (tab You vs. peers)"),
    ]
    todo = [msg for ok, msg in steps if not ok]
    runs = store.list_runs(prof["id"])
    if runs and runs[0]["status"] in ACTIVE:  # while a run trains, "train your adapter" is not the next step
        todo = [f"run {runs[0]['id']} is training (tab Train shows its progress)"]
    head = (
        f"Profile **{profile}**: {stats['samples']} samples, {stats['ratings_up']} 👍 / "
        f"{stats['ratings_down']} 👎, {stats['runs']} training runs."
    )
    return head + (f" **Next:** {todo[0]}." if todo else " Everything is ready: export it (tab Export).")


# -- formatting -------------------------------------------------------------------------------------------------


def frame(rows, **columns) -> pd.DataFrame | None:
    """Plot data with fixed column types, or None when there is none yet: a Gradio plot that first received an
    empty frame draws nothing for later data (seen with Gradio 6.31), one that received None draws fine."""
    if not rows:
        return None
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)


def signed(x) -> str:
    return "" if x is None else f"{x:+.4f}"


def reports_md(reports) -> str:
    lines = [line for r in reports for line in r.lines()]
    return "```\n" + "\n".join(lines) + "\n```"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
