"""Tab "Export": write the adapter (PEFT, GGUF LoRA), the preference summary and the files that run them; then
download them (each file or one zip), copy the summary, and the exact llama-server and Ollama commands."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import gradio as gr

from idiolect.app.common import Ctx, need, on, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.paths import EXPORTS, data_subdir
from idiolect.core.export.bundle import DEFAULT_FORMATS, FORMATS, export
from idiolect.core.export.formats import safe_name
from idiolect.core.export.tryout import try_export
from idiolect.core.training.runs import runs_with_adapter


def downloads_folder() -> Path:
    """Where the Export tab's downloads are copied: the app process's own folder inside the data folder (Gradio
    serves downloads from it; only this user can read it; removed with the uploads when the app stops). Outside
    the app (handlers called directly), a private folder in the system temp folder."""
    app_dir = os.environ.get("GRADIO_TEMP_DIR")
    if app_dir:
        folder = Path(app_dir) / "downloads"
    else:
        folder = Path(tempfile.gettempdir()) / f"idiolect-downloads-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def export_folder(ctx: Ctx, profile: str, folder: str | None) -> Path:
    """The folder the tab exports into: exports/<profile> in the data folder when none is given, and a relative
    folder inside exports/ too (the app's working folder is nothing the user chose)."""
    base = data_subdir(EXPORTS)
    text = (folder or "").strip()
    if not text:
        return base / safe_name(profile)
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def download_copy(folder: Path, files: list[Path], slug: str) -> list[str]:
    """The exported files and one zip of them, copied into :func:`downloads_folder` (the newest export only)."""
    out = downloads_folder() / slug
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    zipped = out / f"{slug}-export.zip"
    copies = []
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            rel = f.relative_to(folder)
            z.write(f, rel)
            dest = out / "files" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
            copies.append(str(dest))
    return [str(zipped), *copies]


def run_choices(ctx: Ctx, profile: str | None) -> list[tuple[str, int]]:
    """The profile's runs with an adapter to export (:func:`runs_with_adapter`), newest first, each named by its objective, base model and
    finishing time."""
    prof = ctx.store.find_profile(profile) if profile else None
    runs = [] if prof is None else runs_with_adapter(ctx.store, prof["id"])
    return [(f"run {r['id']} ({r['objective']}, {Path(str(r['config'].get('model') or r['model'])).name}, "
             f"{(r['finished_at'] or '')[:16].replace('T', ' ')})", r["id"]) for r in runs]  # fmt: skip


def default_formats(ctx: Ctx, profile: str | None) -> list[str]:
    """The formats ticked for a profile: the adapter's when it has a trained run, the summary when it has one."""
    prof = ctx.store.find_profile(profile) if profile else None
    if prof is None:
        return list(DEFAULT_FORMATS)
    has_run, has_summary = bool(run_choices(ctx, profile)), bool(ctx.store.list_summaries(prof["id"]))
    wanted = [f for f in DEFAULT_FORMATS if (has_summary if f == "summary" else has_run)]
    return wanted or list(DEFAULT_FORMATS)


def do_export(ctx: Ctx, profile, formats, folder, run_id=None):
    """Export the chosen run (default: the latest) in the chosen formats; what was written, named."""
    need(ctx, profile)
    run_id = int(run_id) if run_id not in (None, "") else None
    result = export(ctx.store, profile, export_folder(ctx, profile, folder), formats=formats or None, run_id=run_id)
    files = "\n".join(f"- `{p.relative_to(result.folder)}`" for p in result.files)
    skipped = "".join(f"\n- skipped {k}: {v}" for k, v in result.skipped.items())
    summary = next((p.read_text() for p in result.files if p.name.endswith("-summary.txt")), "")
    snippet = next((p.read_text() for p in result.files if p.name.endswith("-openai.py")), "")
    commands = "\n".join(f"# {name}\n{cmd}" for name, cmd in result.commands.items())
    downloads = download_copy(result.folder, result.files, safe_name(profile))
    run = result.manifest.get("training_run") or {}
    what = f"run {run['id']} ({run.get('objective')})" if run.get("id") else "no adapter (summary only)"
    return f"Exported {what} to `{result.folder}`:\n{files}{skipped}", summary, snippet, commands, downloads


def try_it(ctx: Ctx, profile, folder, prompt, strength: float = 1.0) -> str:
    """The exported GGUF LoRA answers a prompt in llama.cpp, as it will for the user, at a persona strength
    (the LoRA's scale: 0 the base alone, 1 as trained)."""
    need(ctx, profile)
    if not (prompt or "").strip():
        raise IdiolectError("Type a prompt for the test.")
    return try_export(export_folder(ctx, profile, folder), prompt.strip(), max_new_tokens=120, scale=float(strength))


class ExportTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
        with gr.Row():
            run_pick = gr.Dropdown([], value=None, label="Run to export (newest first)", elem_id="export-run", scale=2)
            formats = gr.CheckboxGroup(
                list(FORMATS), value=list(DEFAULT_FORMATS), label="Formats", elem_id="formats", scale=3
            )
        folder = gr.Textbox(
            label="Folder (default: exports/<profile> in the data folder; a relative folder goes inside exports/)",
            elem_id="export-folder",
        )
        export_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
        report = gr.Markdown(elem_id="export-report")
        downloads = gr.File(label="Download (the zip holds every file)", file_count="multiple", interactive=False,
                            elem_id="export-downloads")  # fmt: skip
        commands = gr.Code(label="Run it (llama.cpp server, Ollama)", language="shell", elem_id="export-commands",
                           buttons=["copy"])  # fmt: skip
        summary = gr.Code(label="Summary (copy into any system prompt)", language=None, elem_id="export-summary",
                          buttons=["copy"])  # fmt: skip
        snippet = gr.Code(label="Python (official openai client). Running it sends the summary and the prompt to "
                          "OpenAI, or to the server OPENAI_BASE_URL names; nothing else leaves this machine",
                          language="python", buttons=["copy"], elem_id="export-snippet")  # fmt: skip
        with gr.Group():
            test_prompt = gr.Textbox(label="Test the export: llama.cpp answers with your GGUF LoRA and summary",
                                     value="Describe your morning coffee.", elem_id="export-test-prompt")  # fmt: skip
            strength = gr.Slider(0, 2, value=1, step=0.25, elem_id="export-strength",
                                 label="Persona strength (the LoRA's scale: 0 = the base model alone, 1 = as trained)")  # fmt: skip
            test_btn = gr.Button("Test it in llama.cpp", elem_id="export-test")
            test_out = gr.Textbox(
                label="Its answer", lines=5, interactive=False, elem_id="export-test-answer"
            )

        def run(p, f, d, r):
            return (*do_export(ctx, p, f, d, r), status(ctx, p))

        exporting = on(export_btn.click, run, [profile, formats, folder, run_pick],
                       [report, summary, snippet, commands, downloads, status_md])  # fmt: skip
        testing = on(
            test_btn.click,
            lambda p, d, q, k: try_it(ctx, p, d, q, k),
            [profile, folder, test_prompt, strength],
            [test_out],
        )
        # Main refreshes these per profile: its runs and formats, and the last profile's export cleared.
        self.outputs = [run_pick, formats, report, summary, snippet, commands, downloads, test_out]
        self.cancels = [exporting, testing]

    def views(self, profile):
        choices = run_choices(self.ctx, profile)
        return (gr.update(choices=choices, value=choices[0][1] if choices else None),
                gr.update(value=default_formats(self.ctx, profile)), "", "", "", "", None, "")  # fmt: skip
