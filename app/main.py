"""The Gradio app: thin, over core. Started by ``python launch.py`` (127.0.0.1, analytics off).

This first version covers the foundation: profiles, adding writing (paste or upload), the samples list,
peer pools, and the counts. Rating, training, the profile view and export come as their core parts land.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from core.cli import open_store  # noqa: E402
from core.errors import IdiolectError  # noqa: E402
from core.importers import import_peers, import_sample_texts, import_samples  # noqa: E402
from core.store import Store  # noqa: E402

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"


def _report_md(reports) -> str:
    lines = []
    for report in reports:
        lines.extend(report.lines())
    return "```\n" + "\n".join(lines) + "\n```"


def build_ui(store: Store) -> gr.Blocks:
    def profiles() -> list[str]:
        return [p["name"] for p in store.list_profiles()]

    def status(profile: str | None) -> str:
        if not profile:
            return "**Next:** create a profile (your name or a nickname)."
        prof = store.find_profile(profile)
        if prof is None:
            return "**Next:** create a profile."
        n = len(store.list_samples(prof["id"]))
        if n < 20:
            return f"Profile **{profile}**: {n} samples. **Next:** add more of your writing (20+ short texts help)."
        return f"Profile **{profile}**: {n} samples."

    def samples_table(profile: str | None) -> list[list]:
        prof = store.find_profile(profile) if profile else None
        if prof is None:
            return []
        return [
            [s["id"], s["source"] or "", (s["prompt"] or "")[:80], s["text"][:200]]
            for s in store.list_samples(prof["id"])
        ]

    def create(name: str):
        try:
            store.create_profile(name)
        except IdiolectError as exc:
            gr.Warning(str(exc))
            return gr.update(), gr.update(), gr.update()
        return (
            gr.update(choices=profiles(), value=name.strip()),
            status(name.strip()),
            samples_table(name.strip()),
        )

    def add_paste(profile: str | None, text: str):
        if not profile:
            raise gr.Error("Choose or create a profile first.")
        try:
            report = import_sample_texts(store, profile, text or "")
        except IdiolectError as exc:
            raise gr.Error(str(exc)) from None
        return _report_md([report]), status(profile), samples_table(profile), ""

    def add_files(profile: str | None, files):
        if not profile:
            raise gr.Error("Choose or create a profile first.")
        if not files:
            raise gr.Error("Pick one or more files first.")
        paths = [f if isinstance(f, str) else f.name for f in files]
        try:
            reports = import_samples(store, profile, paths)
        except IdiolectError as exc:
            raise gr.Error(str(exc)) from None
        return _report_md(reports), status(profile), samples_table(profile)

    def delete(profile: str | None, sample_id):
        if not profile or sample_id in (None, ""):
            raise gr.Error("Give the id of the sample to delete.")
        store.delete_sample(int(sample_id))
        return status(profile), samples_table(profile)

    def pools_table() -> list[list]:
        return [
            [p["name"], *store.pool_stats(p["id"]).values(), p["license"] or ""] for p in store.list_pools()
        ]

    def add_pool(path, name: str):
        if not path:
            raise gr.Error("Pick a Posts.xml(.gz), .jsonl or .csv file.")
        try:
            report = import_peers(store, path if isinstance(path, str) else path.name, name or "imported")
        except IdiolectError as exc:
            raise gr.Error(str(exc)) from None
        return _report_md([report]), pools_table()

    with gr.Blocks(title="Idiolect") as demo:
        gr.Markdown(
            "# Idiolect\nTune a language model to *your* writing, on this machine. Nothing leaves it."
        )
        with gr.Tab("Profile & writing"):
            with gr.Row():
                profile = gr.Dropdown(profiles(), label="Profile", value=(profiles() or [None])[0], scale=2)
                new_name = gr.Textbox(label="New profile", placeholder="e.g. sam", scale=2)
                create_btn = gr.Button("Create", scale=1)
            status_md = gr.Markdown(status((profiles() or [None])[0]))
            with gr.Row():
                with gr.Column():
                    paste = gr.Textbox(
                        label="Paste your writing (blank lines separate samples)", lines=8, max_lines=20
                    )
                    paste_btn = gr.Button("Add pasted text", variant="primary")
                with gr.Column():
                    files = gr.File(
                        label="Or upload .txt / .md / .jsonl / .json / .csv",
                        file_count="multiple",
                        file_types=[".txt", ".md", ".jsonl", ".json", ".csv", ".tsv"],
                    )
                    files_btn = gr.Button("Add files")
            report_md = gr.Markdown()
            samples = gr.Dataframe(
                samples_table((profiles() or [None])[0]),
                headers=["id", "source", "prompt", "text"],
                label="Your samples",
                interactive=False,
                wrap=True,
            )
            with gr.Row():
                del_id = gr.Number(label="Sample id", precision=0)
                del_btn = gr.Button("Delete sample", variant="stop")
        with gr.Tab("Peers"):
            gr.Markdown(
                "Other writers' texts: what makes you *you* is measured against them. A default pool ships with the "
                "app; you can add a Stack Exchange `Posts.xml(.gz)` or a JSONL/CSV of `{writer, prompt, text}`. "
                "Writers get pseudonyms and contact details are scrubbed on import."
            )
            pools = gr.Dataframe(
                pools_table(),
                headers=["pool", "texts", "writers", "writers with 3+", "license"],
                interactive=False,
            )
            with gr.Row():
                pool_file = gr.File(
                    label="Peer file", file_types=[".xml", ".gz", ".jsonl", ".json", ".csv", ".tsv"]
                )
                pool_name = gr.Textbox(label="Pool name", value="imported")
            pool_btn = gr.Button("Import peers")
            pool_report = gr.Markdown()

        create_btn.click(create, [new_name], [profile, status_md, samples])
        profile.change(lambda p: (status(p), samples_table(p)), [profile], [status_md, samples])
        paste_btn.click(add_paste, [profile, paste], [report_md, status_md, samples, paste])
        files_btn.click(add_files, [profile, files], [report_md, status_md, samples])
        del_btn.click(delete, [profile, del_id], [status_md, samples])
        pool_btn.click(add_pool, [pool_file, pool_name], [pool_report, pools])
    return demo


def launch_app(args) -> int:
    try:
        store = open_store(args.db)
    except IdiolectError as exc:
        print(f"error: {exc}")
        return 1
    demo = build_ui(store)
    auth = args.auth or os.environ.get("IDIOLECT_AUTH")
    auth_pair = None
    if auth:
        if ":" not in auth:
            print("error: --auth takes USER:PASSWORD")
            return 2
        user, password = auth.split(":", 1)
        auth_pair = (user, password)
    demo.queue().launch(
        server_name=args.host,
        server_port=args.port,
        inbrowser=not args.no_browser,
        share=bool(args.share),
        auth=auth_pair,
        css_paths=[CSS_PATH] if CSS_PATH.exists() else None,
        show_error=False,
    )
    return 0
