"""Tab "Your writing": add writing (paste, files), find it (search, pages), click a row to edit it, tick rows
to delete them (undo brings them back), and the import history with "undo this import"."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import pandas as pd

from idiolect.app.common import Ctx, need, on, plural, reports_md, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.ingest.samples import import_sample_texts, import_samples

PAGE_SIZE = 25
COLUMNS = ["delete?", "id", "source", "prompt", "text"]


# -- handlers ----------------------------------------------------------------------------------------------------


def samples_page(
    ctx: Ctx, profile: str | None, query: str = "", page: int = 1
) -> tuple[pd.DataFrame, str, int]:
    """One page of the profile's samples matching ``query`` (newest first), a line saying which, and the page
    number actually shown (clamped to the pages there are)."""
    prof = ctx.store.find_profile(profile) if profile else None
    if prof is None:
        return pd.DataFrame([], columns=COLUMNS), "No profile chosen.", 1
    page = max(1, int(page or 1))
    rows, total = ctx.store.search_samples(prof["id"], query, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page > pages:  # past the end (fewer matches now): the last page, read again only in this case
        page = pages
        rows, _ = ctx.store.search_samples(prof["id"], query, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    table = pd.DataFrame(
        [[False, r["id"], r["source"] or "", (r["prompt"] or "")[:60], r["text"][:240]] for r in rows],
        columns=COLUMNS,
    )
    what = f"matching “{query.strip()}”" if (query or "").strip() else "in all"
    info = f"{plural(total, 'sample')} {what}; page {page} of {pages}. Click a row to edit it; tick rows to delete."
    return table, info, page


def add_pasted(ctx: Ctx, profile: str | None, text: str) -> str:
    need(ctx, profile)
    report = import_sample_texts(ctx.store, profile, text or "")
    if report.error:
        raise IdiolectError(report.error)
    return reports_md([report])


def add_files(ctx: Ctx, profile: str | None, files, *, dry_run: bool = False, picked_for: str | None = None) -> str:
    """Import the files (writing, chat exports, feedback datasets); ``dry_run`` says what would land and writes
    nothing. ``picked_for``: the profile chosen when the files were picked (the page's upload box); files picked
    for another profile are refused, never imported into this one."""
    need(ctx, profile)
    if not files:
        raise IdiolectError("Pick one or more files first.")
    if picked_for is not None and picked_for != profile:
        raise IdiolectError(
            f"These files were picked for profile {picked_for}, not {profile}: pick them again to add them here."
        )
    paths = [f if isinstance(f, str) else f.name for f in files]
    reports = import_samples(ctx.store, profile, paths, dry_run=dry_run)
    for r in reports:  # the name the user picked, not where the server keeps the upload
        r.source = Path(r.source).name
    text = reports_md(reports)
    return text + ("\nPreview only: nothing was added. **Add files** imports them." if dry_run else "")


def open_sample(ctx: Ctx, profile: str | None, sample_id) -> tuple[int, str, str]:
    """The sample to edit: its id, prompt and whole text (the table shows them cut short)."""
    prof = need(ctx, profile)
    s = ctx.store.get_sample(prof["id"], int(sample_id))
    return s["id"], s["prompt"] or "", s["text"]


def save_sample(ctx: Ctx, profile: str | None, sample_id, prompt: str, text: str) -> str:
    prof = need(ctx, profile)
    if sample_id in (None, "", 0):
        raise IdiolectError("Click the sample to change in the table first.")
    ctx.store.update_sample(prof["id"], int(sample_id), text or "", prompt=(prompt or "").strip() or None)
    return f"Saved sample {int(sample_id)}."


def ticked_ids(table) -> list[int]:
    if table is None or len(table) == 0:
        return []
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table, columns=COLUMNS)
    ticked = frame[frame["delete?"].astype(str).str.lower().isin(["true", "1"])]
    return [
        int(i) for i in pd.to_numeric(ticked["id"], errors="coerce").dropna()
    ]  # a row added in the page has none


def delete_ticked(ctx: Ctx, profile: str | None, table, undo: list) -> tuple[str, list]:
    """Delete the ticked rows; their rows go on the session's undo stack."""
    prof = need(ctx, profile)
    ids = ticked_ids(table)
    if not ids:
        raise IdiolectError("Tick the samples to delete in the table first.")
    gone = ctx.store.delete_samples(prof["id"], ids)
    return f"Deleted {plural(len(gone), 'sample')}. “Undo delete” brings them back.", [
        *undo,
        (prof["id"], gone),
    ]


def undo_delete(ctx: Ctx, profile: str | None, undo: list) -> tuple[str, list]:
    prof = need(ctx, profile)
    for i in range(len(undo) - 1, -1, -1):  # the latest delete of this profile
        pid, rows = undo[i]
        if pid == prof["id"]:
            back = ctx.store.restore_samples(pid, rows)
            return f"Brought back {plural(back, 'sample')}.", undo[:i] + undo[i + 1 :]
    raise IdiolectError("Nothing to undo: no samples of this profile were deleted in this window.")


def import_choices(ctx: Ctx, profile: str | None) -> list[tuple[str, int]]:
    prof = ctx.store.find_profile(profile) if profile else None
    if prof is None:
        return []
    return [
        (f"#{i['id']} {i['source']} ({i['created_at'][:16].replace('T', ' ')}): {i['added']} added, "
         + (f"undone {i['undone_at'][:16].replace('T', ' ')}" if i["undone_at"] else f"{i['remaining']} still here"),
         i["id"])
        for i in ctx.store.list_imports(prof["id"])
    ]  # fmt: skip


def undo_import(ctx: Ctx, profile: str | None, import_id, undo: list) -> tuple[str, list]:
    prof = need(ctx, profile)
    if import_id in (None, ""):
        raise IdiolectError("Choose the import to undo first.")
    gone = ctx.store.undo_import(prof["id"], int(import_id))
    return (
        f"Undid import #{int(import_id)}: removed {plural(len(gone), 'sample')}. “Undo delete” brings them back.",
        [*undo, (prof["id"], gone)],
    )


# -- layout -------------------------------------------------------------------------------------------------------


class WritingTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
        with gr.Row():
            with gr.Column():
                paste = gr.Textbox(
                    label="Paste your writing (blank lines separate samples)", lines=8, elem_id="paste"
                )
                paste_btn = gr.Button("Add pasted text", variant="primary", elem_id="add-paste")
            with gr.Column():
                files = gr.File(
                    label="Or upload .txt / .md / .jsonl / .json / .csv, or a chat export (ChatGPT "
                    "conversations.json, Claude, Open WebUI; your own turns become samples, its thumbs ratings)",
                    file_count="multiple", file_types=[".txt", ".md", ".jsonl", ".ndjson", ".json", ".csv", ".tsv"],
                    elem_id="writing-files",
                )  # fmt: skip
                with gr.Row():
                    preview_btn = gr.Button("Preview (adds nothing)", elem_id="preview-files")
                    files_btn = gr.Button("Add files", elem_id="add-files")
        import_md = gr.Markdown(elem_id="import-report")
        with gr.Row():
            query = gr.Textbox(label="Search your samples", scale=4, elem_id="sample-search", max_lines=1)
            page = gr.Number(1, precision=0, label="Page", minimum=1, scale=1, elem_id="sample-page")
            prev_btn = gr.Button("◀ Previous", scale=1, elem_id="page-prev")
            next_btn = gr.Button("Next ▶", scale=1, elem_id="page-next")
        page_md = gr.Markdown(elem_id="page-info")
        samples = gr.Dataframe(
            pd.DataFrame([], columns=COLUMNS), label="Your samples", interactive=True, wrap=True,
            datatype=["bool", "number", "str", "str", "str"], static_columns=[1, 2, 3, 4], elem_id="samples",
            column_widths=["8%", "6%", "14%", "18%", "54%"],
        )  # fmt: skip
        with gr.Row():
            delete_btn = gr.Button("Delete ticked samples", variant="stop", elem_id="delete-ticked")
            undo_btn = gr.Button("Undo delete", elem_id="undo-delete")
        with gr.Group():
            sample_id = gr.Number(label="Editing sample", precision=0, interactive=False, elem_id="edit-id")
            prompt = gr.Textbox(label="Its prompt (what it answers; may be empty)", elem_id="edit-prompt")
            text = gr.Textbox(label="Its text", lines=5, elem_id="edit-text")
            save_btn = gr.Button("Save change", elem_id="save-sample")
        edit_md = gr.Markdown(elem_id="edit-status")
        with gr.Accordion("Import history", open=False, elem_id="import-history"):
            import_pick = gr.Dropdown([], label="Imports (newest first)", elem_id="import-pick")
            undo_import_btn = gr.Button("Undo this import", variant="stop", elem_id="undo-import")
        undo_state = gr.State([])  # this window's deleted rows, for "Undo delete"

        table_outputs = [samples, page_md, page, import_pick, status_md]

        def refresh(p, q, pg):
            table, info, shown = samples_page(ctx, p, q, pg)
            return table, info, shown, gr.update(choices=import_choices(ctx, p), value=None), status(ctx, p)

        def after(fn):
            """fn's message plus a refreshed table (the page kept)."""

            def run(p, q, pg, *args):
                out = fn(p, *args)
                msg, rest = (out, ()) if isinstance(out, str) else (out[0], out[1:])
                return (msg, *rest, *refresh(p, q, pg))

            run.__name__ = fn.__name__
            return run

        view = [profile, query, page]
        on(paste_btn.click, after(lambda p, t: (add_pasted(ctx, p, t), "")), [*view, paste],
           [import_md, paste, *table_outputs])  # fmt: skip
        picked_for = gr.State(None)  # the profile chosen when the files in the box were picked
        files.upload(lambda p: p, [profile], [picked_for])
        on(
            files_btn.click,
            after(lambda p, f, who: (add_files(ctx, p, f, picked_for=who), None)),
            [*view, files, picked_for],
            [import_md, files, *table_outputs],
        )  # added files leave the box: a second click adds nothing twice
        on(preview_btn.click, lambda p, f, who: add_files(ctx, p, f, dry_run=True, picked_for=who),
           [profile, files, picked_for], [import_md])  # fmt: skip
        on(query.submit, lambda p, q: refresh(p, q, 1), [profile, query], table_outputs)
        on(page.submit, refresh, view, table_outputs)
        on(prev_btn.click, lambda p, q, pg: refresh(p, q, (pg or 1) - 1), view, table_outputs)
        on(next_btn.click, lambda p, q, pg: refresh(p, q, (pg or 1) + 1), view, table_outputs)

        def select(p, evt: gr.SelectData):
            row = evt.row_value or []
            if len(row) < 2 or evt.index[1] == 0:  # ticking the box is not opening the sample
                return gr.skip(), gr.skip(), gr.skip()
            return open_sample(ctx, p, row[1])

        on(samples.select, select, [profile], [sample_id, prompt, text])
        on(save_btn.click, after(lambda p, i, pr, t: save_sample(ctx, p, i, pr, t)), [*view, sample_id, prompt, text],
           [edit_md, *table_outputs])  # fmt: skip
        on(delete_btn.click, after(lambda p, tbl, u: delete_ticked(ctx, p, tbl, u)), [*view, samples, undo_state],
           [edit_md, undo_state, *table_outputs])  # fmt: skip
        on(undo_btn.click, after(lambda p, u: undo_delete(ctx, p, u)), [*view, undo_state],
           [edit_md, undo_state, *table_outputs])  # fmt: skip
        on(undo_import_btn.click, after(lambda p, i, u: undo_import(ctx, p, i, u)), [*view, import_pick, undo_state],
           [edit_md, undo_state, *table_outputs])  # fmt: skip

        # What main refreshes when the profile changes or the page loads.
        # Everything of the last profile is cleared: the upload box (its files were picked for that profile),
        # the reports and the sample being edited. Pasted text not yet added belongs to no profile and stays.
        self.outputs = [samples, page_md, page, import_pick, query, sample_id, prompt, text, files, picked_for,
                        import_md, edit_md]  # fmt: skip

    def views(self, profile):
        table, info, shown = samples_page(self.ctx, profile)
        return (
            table,
            info,
            shown,
            gr.update(choices=import_choices(self.ctx, profile), value=None),
            "",
            None,
            "",
            "",
            None,
            None,
            "",
            "",
        )
