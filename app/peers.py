"""Tab "You vs. peers": how your writing differs from other writers', the preference summary (POPI) chosen by
how much it helps the base model predict your held-out writing, and the peer pools (import your own)."""

from __future__ import annotations

import gradio as gr

from app.common import Ctx, frame, model_of, need, on, reports_md, status
from core.errors import IdiolectError
from core.importers import import_peers


def pool_choices(ctx: Ctx, current: str | None = None):
    names = [p["name"] for p in ctx.store.list_pools()]
    value = current if current in names else ("default" if "default" in names else (names or [None])[0])
    return gr.update(choices=names, value=value)


def analyze(ctx: Ctx, profile, pool, progress=None):
    from core.profile import build_summary, report_text

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
    score = (
        f"Summary v{result['version']}: lift **{best['lift']:+.4f}** nats/token (candidate '{best['name']}')"
        + (f"; a generic summary scores {generic['lift']:+.4f}." if generic else ".")
    )
    md = report_text(report) + f"\n\nRepresentative peers: {', '.join(report['representatives'])}."
    return md, bars, best["text"], score


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
    score = f"lift {s['score']:+.4f}" if s["score"] is not None else "edited by you"
    return s["text"], f"Summary v{s['version']} ({s['source']}, {score})."


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
        bars = gr.BarPlot(None, x="feature", y="z", color="dimension",
                          color_map={"writing": "#4c78a8", "emotional": "#f58518", "semantic": "#e45756"},
                          title="You vs. representative writers (z-scores)", x_label_angle=-45, height=320)  # fmt: skip
        summary_box = gr.Textbox(
            "",
            label="Your preference summary (editable; give it to any chat model)",
            lines=6,
            elem_id="summary",
        )
        score_md = gr.Markdown("No summary yet.", elem_id="summary-score")
        save_btn = gr.Button("Save my edit as a new version")
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
            return (*analyze(ctx, p, pool, progress), status(ctx, p))

        on(
            analyze_btn.click,
            run_analysis,
            [profile, pool_pick],
            [report_md, bars, summary_box, score_md, status_md],
        )
        on(save_btn.click, lambda p, t: (save_summary(ctx, p, t), status(ctx, p)), [profile, summary_box],
           [score_md, status_md])  # fmt: skip
        on(pool_btn.click, lambda f, n, cur: (import_pool(ctx, f, n), pool_choices(ctx, cur)),
           [pool_file, pool_name, pool_pick], [pool_md, pool_pick])  # fmt: skip
        self.outputs = [pool_pick, summary_box, score_md]

    def views(self, profile):
        text, info = latest_summary(self.ctx, profile)
        return pool_choices(self.ctx), text, info
