"""Tab "Train": settings with the objective explained, the run in progress (stage, step, ETA) followed by
polling, cancel/resume, and a comparison of runs (held-out lifts and loss curves on one plot)."""

from __future__ import annotations

import re

import gradio as gr
import pandas as pd

from idiolect.app.common import Ctx, frame, model_of, need, on, plural, signed, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.persona import likeness
from idiolect.core.training import worker
from idiolect.core.training.config import DESCRIPTIONS, TrainConfig, defaults
from idiolect.core.training.runs import estimate_run

DEFAULTS = TrainConfig(
    **{**defaults(), "model": ""}
)  # the CLI's defaults too (idiolect.core.training.config)


def objective_choices() -> list[tuple[str, str]]:
    """(label, value) per objective, the product's default first and marked."""
    names = [DEFAULTS.objective] + [o for o in DESCRIPTIONS if o != DEFAULTS.objective]
    return [(DESCRIPTIONS[o] + (" (default)" if o == DEFAULTS.objective else ""), o) for o in names]


LIFT_YOU, LIFT_PEERS = "held-out lift, you (nats/token)", "held-out lift, peers (nats/token)"
LIFT_HELP = (
    "**Held-out lift**: how much more likely the adapter finds texts it never trained on than the base model does, "
    "in nats per word piece (+0.05 = about 5% more likely per word piece), and on how many texts. Yours should rise; "
    "other writers' should stay near 0. On a few texts it is a rough sign, not a verdict: "
    "*Sounds like me?* on the Rate tab is the test of your own eye."
)


def runs_table(ctx: Ctx, profile: str | None) -> pd.DataFrame:
    prof = ctx.store.find_profile(profile) if profile else None
    rows = (
        [] if prof is None else [worker.status(ctx.store, r["id"]) for r in ctx.store.list_runs(prof["id"])]
    )

    def lift(r, key, count):
        value = signed((r["result"].get("eval") or {}).get(key))
        n = (r["result"].get("counts") or {}).get(count)
        return f"{value} ({plural(n, 'text')})" if value and n else value

    def steps(r):
        kept = (r["result"].get("early_stopping") or {}).get("kept_step")
        shown = f"{r['step']}/{r['total_steps'] or '?'}"
        return shown if kept is None or kept == r["step"] else f"{shown}, kept {kept}"

    def pi(r):
        value = (r["result"].get("pi") or {}).get("pi")
        return "" if value is None else f"{value:.2f}"

    return pd.DataFrame(
        [[r["id"], r["objective"], r["status"], steps(r), pi(r),
          lift(r, "heldout_target_lift", "heldout_tar"), lift(r, "heldout_peer_lift", "heldout_aux"),
          f"lr {r['config'].get('lr')}, r {r['config'].get('lora_r')}, len {r['config'].get('max_length')}",
          likeness.describe(likeness.score(ctx.store, prof["id"], r["id"])), (r["error"] or "")[:80]] for r in rows],
        columns=["run", "objective", "status", "steps", "pi", LIFT_YOU, LIFT_PEERS, "settings",
                 "sounds like me? (Rate tab)", "note"],
    )  # fmt: skip


def current_run(ctx: Ctx, profile: str | None) -> dict | None:
    prof = ctx.store.find_profile(profile) if profile else None
    runs = [] if prof is None else ctx.store.list_runs(prof["id"])
    return worker.status(ctx.store, runs[0]["id"]) if runs else None


def progress_md(ctx: Ctx, profile: str | None) -> str:
    run = current_run(ctx, profile)
    if run is None:
        return "No training run yet."
    total, step = run["total_steps"] or 0, run["step"] or 0
    pct = 100 * step / total if total else 0
    eta = f", about {run['eta_seconds']:.0f} s left" if run.get("eta_seconds") else ""
    bar = f"<progress value='{step}' max='{total or 1}' style='width:100%'></progress>"
    before = re.search(r"(\d+)/(\d+)", run["activity"] or "")
    if step == 0 and before and run["status"] in worker.ACTIVE:  # a pass before the first step (reference log-probs)
        done, of = int(before.group(1)), int(before.group(2))
        bar = f"<progress value='{done}' max='{of or 1}' style='width:100%'></progress>"
        eta = f", that pass {100 * done / (of or 1):.0f}% done"
    msg = (
        f"Run {run['id']} ({run['objective']}): **{run['activity']}**, step {step}/{total or '?'} ({pct:.0f}%)"
        f"{eta}.\n\n{bar}"
    )
    kept = (run.get("result") or {}).get("early_stopping") or {}
    if run["status"] == "completed" and kept.get("message"):
        msg += f"\n\nEarly stopping: {kept['message']}."
    return msg + (f"\n\n{run['error']}" if run["error"] else "")


RUN_COLOURS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
               "#bab0ac")  # fmt: skip


def curves(ctx: Ctx, profile: str | None, run_ids=None):
    """The loss plot's data: the chosen runs (default: the latest); hidden when there is none (Gradio's plot
    keeps its last drawing when given no data: the last profile's curves would stay)."""
    data = loss_per_step(ctx, profile, run_ids)
    return gr.update(value=data, visible=data is not None)


def colours(ctx: Ctx, profile: str | None, run_ids=None):
    """The loss plot's colours, one per run shown, sent after its data (:func:`curves`). Gradio's plot (6.31)
    draws the series it saw when its colour map last changed: with data alone, a run ticked later was not drawn;
    with data and colours together, the colours arrived first and the plot lagged one change behind."""
    return gr.update(
        color_map={
            series_name(r): RUN_COLOURS[r["id"] % len(RUN_COLOURS)]
            for r in shown_runs(ctx, profile, run_ids)
            if any(m.get("loss") is not None for m in ctx.store.run_metrics(r["id"]))  # drawn: it has a point
        }
    )


def series_name(run: dict) -> str:
    """A run's name in the loss plot (its series, its legend entry, its key in the colour map)."""
    return f"run {run['id']} ({run['objective']})"


def shown_runs(ctx: Ctx, profile: str | None, run_ids=None) -> list[dict]:
    """The runs the loss plot shows: the ticked ones of the profile, else its latest run."""
    prof = ctx.store.find_profile(profile) if profile else None
    if prof is None:
        return []
    runs = {r["id"]: r for r in ctx.store.list_runs(prof["id"])}
    return [runs[i] for i in [int(i) for i in (run_ids or []) if int(i) in runs] or list(runs)[:1]]


def loss_per_step(ctx: Ctx, profile: str | None, run_ids=None):
    """Loss per step of the chosen runs (default: the latest), one series per run; None when there is none."""
    rows = [
        {"step": m["step"], "loss": m["loss"], "run": series_name(r)}
        for r in shown_runs(ctx, profile, run_ids)
        for m in ctx.store.run_metrics(r["id"])
        if m.get("loss") is not None
    ]
    return frame(rows, step=int, loss=float, run=str)


def run_choices(ctx: Ctx, profile: str | None) -> list[tuple[str, int]]:
    prof = ctx.store.find_profile(profile) if profile else None
    runs = [] if prof is None else ctx.store.list_runs(prof["id"])
    return [(series_name(r), r["id"]) for r in runs]  # no status: it would go stale


def config_of(ctx: Ctx, profile, objective, steps, epochs, lr, batch, lora_r, max_length) -> TrainConfig:
    need(ctx, profile)
    try:
        cfg = TrainConfig(
            model=model_of(ctx, profile), objective=objective or DEFAULTS.objective, steps=int(steps or 0) or None,
            epochs=int(epochs or DEFAULTS.epochs), lr=float(lr), batch_size=int(batch), lora_r=int(lora_r),
            max_length=int(max_length),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise IdiolectError(f"Check the settings: {exc}") from None
    return cfg


def start(ctx: Ctx, profile, *settings) -> str:
    run_id = worker.start(ctx.store, profile, config_of(ctx, profile, *settings))
    return f"Run {run_id} started in a worker process."


def estimate_md(ctx: Ctx, profile, *settings) -> str:
    """What the run would take, before it starts, from what this machine measured."""
    cfg = config_of(ctx, profile, *settings)
    e = estimate_run(ctx.store, profile, cfg)
    head = f"{e['steps']} steps over {e['target_texts']} of your texts."
    if e["validation_texts"]:
        head += (f" {e['validation_texts']} more are not trained on: they are scored during the run to keep its "
                 "best step, which can end it early.")
    if e["seconds"] is None:
        return head + " Time and memory: no run on this model has been measured on this machine yet; the first " \
            "run's progress shows its speed."  # fmt: skip
    minutes = e["seconds"] / 60
    took = f"about {minutes:.0f} min" if minutes >= 1 else f"about {e['seconds']:.0f} s"
    mem = f", peak memory about {e['peak_memory_mb'] / 1024:.1f} GiB" if e["peak_memory_mb"] else ""
    return f"{head} On this machine: {took}{mem} (scaled from run {e['based_on_run']} on the same model)."


def cancel(ctx: Ctx, profile) -> str:
    run = current_run(ctx, profile)
    if run is None or run["status"] not in worker.ACTIVE:
        raise IdiolectError("Nothing is training.")
    worker.cancel(ctx.store, run["id"])
    return f"Cancelling run {run['id']}: it stops within a few seconds and keeps its last whole step."


def resume(ctx: Ctx, profile) -> str:
    run = current_run(ctx, profile)
    if run is None:
        raise IdiolectError("No run to resume.")
    worker.resume(ctx.store, run["id"])
    return f"Run {run['id']} resumed from its last checkpoint."


def active(ctx: Ctx, profile) -> bool:
    run = current_run(ctx, profile)
    return run is not None and run["status"] in worker.ACTIVE


class TrainTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
        objective = gr.Radio(
            objective_choices(), value=DEFAULTS.objective, label="Objective", elem_id="objective"
        )
        with gr.Row():
            steps = gr.Number(
                value=0, precision=0, label="Steps (0: by epochs)", elem_id="train-steps", minimum=0
            )
            epochs = gr.Number(value=DEFAULTS.epochs, precision=0, label="Epochs (passes over your texts)",
                               elem_id="train-epochs", minimum=1)  # fmt: skip
            lr = gr.Number(value=DEFAULTS.lr, label="Learning rate", elem_id="train-lr")
        with gr.Row():
            batch = gr.Number(value=DEFAULTS.batch_size, precision=0, label="Your texts per step", minimum=1,
                              elem_id="train-batch")  # fmt: skip
            lora_r = gr.Number(value=DEFAULTS.lora_r, precision=0, label="LoRA rank (alpha = 2 x rank)", minimum=1,
                               elem_id="train-rank")  # fmt: skip
            max_length = gr.Number(value=DEFAULTS.max_length, precision=0, label="Max tokens per text", minimum=16,
                                   elem_id="train-max-length")  # fmt: skip
        with gr.Row():
            estimate_btn = gr.Button("Estimate time and memory", elem_id="estimate-train")
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-train")
            cancel_btn = gr.Button("Cancel", elem_id="cancel-train")
            resume_btn = gr.Button("Resume", elem_id="resume-train")
        train_msg = gr.Markdown(elem_id="train-msg")
        progress = gr.Markdown(elem_id="train-progress")
        runs = gr.Dataframe(runs_table(ctx, None), label="Runs", interactive=False, elem_id="runs")
        gr.Markdown(LIFT_HELP, elem_id="lift-help")
        compare = gr.CheckboxGroup([], label="Compare runs (loss per step)", elem_id="compare-runs")
        plot = gr.LinePlot(None, x="step", y="loss", color="run", title="Training loss per run", height=280,
                           elem_id="loss-plot", visible=False)  # fmt: skip
        timer = gr.Timer(2.0, active=False)

        settings = [profile, objective, steps, epochs, lr, batch, lora_r, max_length]

        def begin(*args):
            msg = start(ctx, *args)
            return msg, gr.Timer(active=True), gr.update(choices=run_choices(ctx, args[0]))

        on(start_btn.click, begin, settings, [train_msg, timer, compare])
        on(estimate_btn.click, lambda *a: estimate_md(ctx, *a), settings, [train_msg])
        on(cancel_btn.click, lambda p: cancel(ctx, p), [profile], [train_msg])
        on(resume_btn.click, lambda p: (resume(ctx, p), gr.Timer(active=True)), [profile], [train_msg, timer])
        on(compare.change, lambda p, ids: curves(ctx, p, ids), [profile, compare], [plot]).then(
            lambda p, ids: colours(ctx, p, ids), [profile, compare], [plot]
        )

        def poll(p, ids):
            return (progress_md(ctx, p), curves(ctx, p, ids), runs_table(ctx, p), gr.Timer(active=active(ctx, p)),
                    status(ctx, p))  # fmt: skip

        timer.tick(poll, [profile, compare], [progress, plot, runs, timer, status_md]).then(
            lambda p, ids: colours(ctx, p, ids), [profile, compare], [plot]
        )  # a new run becomes the one shown: its colour
        self.outputs = [progress, plot, runs, compare, timer, train_msg]
        self._fresh = [progress, runs]
        self.after_outputs = [plot]

    def after_views(self, profile):
        return (colours(self.ctx, profile),)

    def on_select(self):
        """Opening the tab re-reads the run and the runs table (a "Sounds like me?" answer given on the Rate tab
        shows here at once); the comparison picked stays."""
        return (lambda p: (progress_md(self.ctx, p), runs_table(self.ctx, p))), self._fresh

    def views(self, profile):
        ctx = self.ctx
        return (progress_md(ctx, profile), curves(ctx, profile), runs_table(ctx, profile),
                gr.update(choices=run_choices(ctx, profile), value=[]), gr.Timer(active=active(ctx, profile)), "")  # fmt: skip
