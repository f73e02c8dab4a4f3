"""Tab "You vs. peers": how your writing differs from other writers', the preference summary (POPI) chosen by
how much it helps the base model predict your held-out writing, and the peer pools (import your own)."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from idiolect.app.common import Ctx, frame, model_of, need, on, reports_md, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.ingest.peers import import_peers


def pool_choices(ctx: Ctx, current: str | None = None):
    names = [p["name"] for p in ctx.store.list_pools()]
    value = current if current in names else ("default" if "default" in names else (names or [None])[0])
    return gr.update(choices=names, value=value)


def analyze(ctx: Ctx, profile, pool, progress=None):
    from idiolect.core.persona.style import report_text
    from idiolect.core.persona.summary import build_summary

    need(ctx, profile)
    if progress is not None:
        progress(0.1, desc="comparing with other writers and scoring summaries")
    result = build_summary(ctx.store, profile, model=model_of(ctx, profile), pool=pool or "default")
    report = result["report"]
    bars = frame(
        [{"feature": r["feature"].replace("_", " "), "z": round(r["z_vs_representatives"], 2),
          "dimension": r["dimension"]} for r in report["features"]],
        feature=str, z=float, dimension=str,
    )  # fmt: skip
    best = result["summary"]
    generic = next((c for c in result["candidates"] if c["name"] == "generic"), None)
    score = f"Summary v{result['version']}: " + score_words(
        best["lift"], generic["lift"] if generic else None
    )
    md = (
        "**How you write, compared with other writers**\n\n"
        + report_text(report)
        + "\n\n**The writers you were compared with** (one typical writer per group of similar writers):\n\n"
        + writers_md(ctx, pool or "default", report["representatives"])
    )
    return md, bars, best["text"], score


def percent(lift: float) -> str:
    """A lift in nats per token as the change in how likely the model finds each piece of your text."""
    return f"{100 * (math.exp(lift) - 1):+.1f}%"


def score_words(lift: float | None, generic: float | None = None) -> str:
    if lift is None:
        return "edited by you (not scored)."
    out = (
        f"given this summary as its instructions, the base model finds your held-out writing {percent(lift)} "
        "more likely, word piece by word piece, than with no instructions"
    )
    return out + (f" (a generic summary: {percent(generic)})." if generic is not None else ".")


def writers_md(ctx: Ctx, pool: str, writers: list[str]) -> str:
    """Writer A, B, C ... with one short excerpt each (their pseudonyms stay internal)."""
    texts = ctx.store.peer_texts(ctx.store.get_pool(pool)["id"], writers=writers)
    first = {}
    for t in texts:
        first.setdefault(t["writer"], t["text"])
    lines = []
    for i, w in enumerate(writers):
        words = first.get(w, "").split()
        excerpt = " ".join(words[:30]) + (" …" if len(words) > 30 else "")
        lines.append(f"- **Writer {chr(65 + i)}**: “{excerpt}”")
    return "\n".join(lines) or "- none"


def summary_history(ctx: Ctx, profile) -> pd.DataFrame:
    prof = ctx.store.find_profile(profile) if profile else None
    rows = [] if prof is None else ctx.store.list_summaries(prof["id"])
    return pd.DataFrame(
        [[s["version"], s["created_at"][:16].replace("T", " "), "you" if s["source"] == "user" else f"Idiolect ({s['source'].split(':')[-1]})",
          "not scored" if s["score"] is None else percent(s["score"]), s["text"][:120]] for s in rows],
        columns=["version", "when", "written by", "helps the model by", "summary"],
    )  # fmt: skip


def history_md(ctx: Ctx, profile) -> str:
    """The versions as a Markdown table (a gr.Dataframe in this tab did not redraw when updated, Gradio 6.31)."""
    table = summary_history(ctx, profile)
    if table.empty:
        return "No versions of your summary yet."
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    rows = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table.itertuples(index=False)]
    return "**Versions of your summary**\n\n" + "\n".join(rows)


def save_summary(ctx: Ctx, profile, text) -> str:
    prof = need(ctx, profile)
    saved = ctx.store.add_summary(prof["id"], text or "", "user")
    return f"Saved your edit as summary v{saved['version']}."


def latest_summary(ctx: Ctx, profile) -> tuple[str, str]:
    prof = ctx.store.find_profile(profile) if profile else None
    rows = [] if prof is None else ctx.store.list_summaries(prof["id"])
    if not rows:
        return "", "No summary yet."
    s = rows[0]
    return s["text"], f"Summary v{s['version']}: " + score_words(s["score"])


def import_pool(ctx: Ctx, f, name) -> str:
    if not f:
        raise IdiolectError("Pick a file first.")
    report = import_peers(ctx.store, f if isinstance(f, str) else f.name, name or "imported")
    if report.error:
        raise IdiolectError(report.error)
    return reports_md([report])


class PeersTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
        pool_pick = gr.Dropdown([], value=None, label="Compare with pool", elem_id="pool-pick")
        analyze_btn = gr.Button("Compare and write my summary", variant="primary", elem_id="analyze")
        report_md = gr.Markdown(elem_id="report")
        with gr.Accordion("The numbers behind it (how far you are from typical writers, in standard deviations)",
                          open=False):  # fmt: skip
            bars = gr.BarPlot(None, x="feature", y="z", color="dimension",
                              color_map={"writing": "#4c78a8", "emotional": "#f58518", "semantic": "#e45756"},
                              title="You vs. typical writers (z-scores)", x_label_angle=-45, height=320)  # fmt: skip
        summary_box = gr.Textbox(
            "",
            label="Your preference summary (editable; give it to any chat model)",
            lines=6,
            elem_id="summary",
        )
        score_md = gr.Markdown("No summary yet.", elem_id="summary-score")
        save_btn = gr.Button("Save my edit as a new version")
        history = gr.Markdown(elem_id="summary-history")
        with gr.Accordion("Peer pools (other writers)", open=False):
            gr.Markdown("A bundled pool ships with the app. Add a Stack Exchange `Posts.xml(.gz)` or a JSONL/CSV of "
                        "`{writer, prompt, text}`; writers get pseudonyms and contact details are scrubbed.")  # fmt: skip
            with gr.Row():
                pool_file = gr.File(
                    label="Peer file", file_types=[".xml", ".gz", ".jsonl", ".json", ".csv", ".tsv"]
                )
                pool_name = gr.Textbox(label="Pool name", value="imported")
            pool_btn = gr.Button("Import peers")
            pool_md = gr.Markdown()

        def run_analysis(p, pool, progress=gr.Progress()):
            return (*analyze(ctx, p, pool, progress), history_md(ctx, p), status(ctx, p))

        analysing = on(analyze_btn.click, run_analysis, [profile, pool_pick],
                       [report_md, bars, summary_box, score_md, history, status_md])  # fmt: skip
        on(save_btn.click, lambda p, t: (save_summary(ctx, p, t), history_md(ctx, p), status(ctx, p)),
           [profile, summary_box], [score_md, history, status_md])  # fmt: skip
        on(pool_btn.click, lambda f, n, cur: (import_pool(ctx, f, n), pool_choices(ctx, cur)),
           [pool_file, pool_name, pool_pick], [pool_md, pool_pick])  # fmt: skip
        # Main refreshes these per profile; the last profile's comparison and chart are cleared.
        self.outputs = [pool_pick, summary_box, score_md, history, report_md, bars]
        self.cancels = [analysing]

    def views(self, profile):
        text, info = latest_summary(self.ctx, profile)
        return pool_choices(self.ctx), text, info, history_md(self.ctx, profile), "", None
