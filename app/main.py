"""The Gradio app: thin, over core (no training loop and no SQL here). Started by ``python launch.py``.

Tabs, in the order a first-time user follows them: Profile & writing, Model, Rate, Train, You vs. peers, Export.
A status line says what is missing next. Errors reach the page as readable messages, never as tracebacks (the
traceback goes to the log file in the data folder).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from functools import wraps
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core import worker  # noqa: E402
from core.cli import open_store  # noqa: E402
from core.errors import IdiolectError  # noqa: E402
from core.export import DEFAULT_FORMATS, FORMATS, export  # noqa: E402
from core.generation import HFGenerator, SamplingParams  # noqa: E402
from core.importers import import_peers, import_sample_texts, import_samples  # noqa: E402
from core.models import RECOMMENDED, local_model_dir, resolve  # noqa: E402
from core.paths import data_dir  # noqa: E402
from core.store import Store  # noqa: E402
from core.train import TrainConfig, latest_completed_run  # noqa: E402
from core.training_data import feedback_meaning  # noqa: E402

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"


def _frame(rows, **columns) -> pd.DataFrame | None:
    """Plot data with fixed column types, or None when there is none yet: a Gradio plot that first received an
    empty frame draws nothing for later data (seen with Gradio 6.31), one that received None draws fine."""
    if not rows:
        return None
    return pd.DataFrame(rows, columns=list(columns)).astype(columns)


log = logging.getLogger("idiolect.app")
MAX_UPLOAD = "64mb"
SHORTCUTS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; if (t && (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT')) return;
  const ids = {'g': 'generate-btn', '1': 'up-a', '2': 'down-a', '3': 'up-b', '4': 'down-b'};
  const el = ids[e.key] && document.getElementById(ids[e.key]);
  if (el) { el.click(); e.preventDefault(); }
});
</script>
"""


def _readable(fn_name: str, exc: Exception) -> gr.Error:
    """The one message the page shows for a failure; the traceback goes to the log only."""
    if isinstance(exc, gr.Error):
        exc.print_exception = (
            False  # an expected user error: one message on the page, nothing in the terminal
        )
        return exc
    if isinstance(exc, IdiolectError):
        return user_error(str(exc))
    log.error("unexpected error in %s:\n%s", fn_name, traceback.format_exc())
    return user_error(f"Something went wrong ({type(exc).__name__}: {exc}). Details are in the log.")


def user_error(message: str) -> gr.Error:
    """The page's error message. The traceback of a real fault is in app.log already (see _readable); Gradio
    would otherwise print every raised error's traceback to the terminal, expected ones included."""
    return gr.Error(message, print_exception=False)


def friendly(fn):
    """Turn any failure into a readable message on the page."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user sees one line, the log gets the rest
            raise _readable(fn.__name__, exc) from None

    return wrapper


def friendly_stream(fn):
    """The same for a streaming (generator) handler."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _readable(fn.__name__, exc) from None

    return wrapper


class Generators:
    """One loaded base per model, adapters switched onto it (core.generation does the work)."""

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


def build_ui(store: Store) -> gr.Blocks:
    generators = Generators()

    # -- helpers over core ----------------------------------------------------------------------------

    def profiles() -> list[str]:
        return [p["name"] for p in store.list_profiles()]

    def need(profile: str | None) -> dict:
        if not profile:
            raise user_error("Choose or create a profile first (tab Profile & writing).")
        return store.get_profile(profile)

    def model_of(profile: str) -> str:
        model = store.profile_settings(profile).get("model")
        if not model:
            raise user_error("Choose a base model first (tab Model).")
        return model

    def latest_adapter(profile: str) -> str | None:
        run = latest_completed_run(store, store.get_profile(profile)["id"])
        return run["adapter_path"] if run else None

    def status(profile: str | None) -> str:
        if not profile or store.find_profile(profile) is None:
            return "**Next:** create a profile (your name or a nickname) and add some of your writing."
        stats = store.stats()["profiles"][profile]
        steps = [
            (stats["samples"] >= 20, f"add more of your writing ({stats['samples']} samples; 20+ work well)"),
            (bool(store.profile_settings(profile).get("model")), "choose a base model (tab Model)"),
            (stats["ratings_up"] + stats["ratings_down"] >= 1, "rate a few generations (tab Rate)"),
            (latest_adapter(profile) is not None, "train your adapter (tab Train)"),
            (
                bool(store.list_summaries(store.get_profile(profile)["id"])),
                "make your preference summary (tab You vs. peers)",
            ),
        ]
        todo = [msg for ok, msg in steps if not ok]
        head = (
            f"Profile **{profile}**: {stats['samples']} samples, {stats['ratings_up']} 👍 / "
            f"{stats['ratings_down']} 👎, {stats['runs']} training runs."
        )
        return head + (f" **Next:** {todo[0]}." if todo else " Everything is ready: export it (tab Export).")

    def samples_table(profile: str | None):
        prof = store.find_profile(profile) if profile else None
        rows = [] if prof is None else store.list_samples(prof["id"])
        return pd.DataFrame(
            [[s["id"], s["source"] or "", (s["prompt"] or "")[:60], s["text"][:240]] for s in rows],
            columns=["id", "source", "prompt", "text"],
        )

    def reports_md(reports) -> str:
        lines = [line for r in reports for line in r.lines()]
        return "```\n" + "\n".join(lines) + "\n```"

    # -- Profile & writing ----------------------------------------------------------------------------

    @friendly
    def add_pasted(profile, text):
        need(profile)
        report = import_sample_texts(store, profile, text or "")
        if report.error:
            raise user_error(report.error)
        return reports_md([report]), samples_table(profile), status(profile), ""

    @friendly
    def add_files(profile, files):
        need(profile)
        if not files:
            raise user_error("Pick one or more files first.")
        reports = import_samples(store, profile, [f if isinstance(f, str) else f.name for f in files])
        return reports_md(reports), samples_table(profile), status(profile)

    @friendly
    def load_sample(profile, sample_id):
        prof = need(profile)
        if sample_id in (None, ""):
            raise user_error("Give the id of the sample to load.")
        return store.get_sample(prof["id"], int(sample_id))["text"]

    @friendly
    def save_sample(profile, sample_id, text):
        prof = need(profile)
        if sample_id in (None, ""):
            raise user_error("Give the id of the sample to change.")
        store.update_sample(prof["id"], int(sample_id), text or "")  # its prompt stays as it was
        return samples_table(profile), status(profile)

    @friendly
    def delete_sample(profile, sample_id):
        prof = need(profile)
        if sample_id in (None, ""):
            raise user_error("Give the id of the sample to delete.")
        store.delete_sample(prof["id"], int(sample_id))
        return samples_table(profile), status(profile)

    # -- Model ----------------------------------------------------------------------------------------

    def device_md() -> str:
        import psutil
        import torch

        mem = psutil.virtual_memory()
        lines = [
            f"CPU: {os.cpu_count()} cores, {mem.total / 2**30:.1f} GiB RAM ({mem.available / 2**30:.1f} GiB free)"
        ]
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            lines.append(
                f"GPU: {torch.cuda.get_device_name(0)}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free): QLoRA 4-bit"
            )
        else:
            lines.append(
                "No CUDA GPU: training runs on the CPU in fp32 (slow for models above ~0.5B parameters)"
            )
        return "\n\n".join(lines)

    @friendly
    def choose_model(profile, recommended, custom, progress=gr.Progress()):
        need(profile)
        spec = (custom or "").strip() or recommended
        if not spec:
            raise user_error("Pick a recommended model or give a folder, GGUF file or Hugging Face id.")
        source = resolve(spec)

        def cb(done, total, name):
            progress(done / total if total else None, desc=name)

        if source.kind == "hub":
            path = local_model_dir(spec, progress=cb)
            msg = f"Downloaded {spec} to {path}."
        elif source.kind == "gguf":
            # A GGUF file is a training base: dequantized once (cached by its hash); exports target the file.
            from core.models import OFFLINE_NOTICE

            path = local_model_dir(spec, progress=cb)
            msg = f"Using the GGUF file {source.ref} (its weights for training are in {path})."
            if spec == "offline":
                msg += f" {OFFLINE_NOTICE}"
        else:
            msg = f"Using the folder {source.ref}."
        store.update_profile_settings(profile, model=spec)
        return msg, status(profile), models_md(profile)

    def models_md(profile=None) -> str:
        """The model in use and the models on this machine, read now."""
        from core.models import models_on_disk

        current = (
            store.profile_settings(profile).get("model") if profile and store.find_profile(profile) else None
        )
        lines = [f"**In use by {profile}:** `{current}`" if current else "**In use:** none chosen yet"]
        on_disk = models_on_disk()
        lines.append("**On this machine** (type the path or id below, or `offline` for the offline model):")
        lines += [
            f"- {m['kind']}: `{m['path']}`"
            + (f" ({m['bytes'] / 1e9:.2f} GB)" if m["bytes"] else "")
            + (f" -- {m['name']}" if m["kind"] == "offline" else "")
            for m in on_disk
        ] or ["- none yet"]
        return "\n".join(lines)

    # -- Rate -----------------------------------------------------------------------------------------

    def prompt_choices(profile):
        prof = store.find_profile(profile) if profile else None
        return [p["text"] for p in store.list_prompts(prof["id"] if prof else None)]

    def rating_buttons(enabled: bool):
        return [gr.update(interactive=enabled) for _ in range(6)]

    @friendly_stream
    def generate_pair(profile, prompt_pick, prompt_own, temperature, max_tokens, seed):
        """Stream two generations. While they stream, the rating buttons are off and the texts read-only (a
        rating always belongs to the pair on screen; an edit is never overwritten); the stored ids arrive
        only when both texts are complete."""
        prof = need(profile)
        prompt = (prompt_own or "").strip() or prompt_pick
        if not prompt:
            raise user_error("Pick or type a prompt.")
        if prompt_own and prompt_own.strip():
            store.add_prompts([{"text": prompt_own.strip()}], profile_id=prof["id"])
        model = model_of(profile)
        gen = generators.get(model)
        run = latest_completed_run(store, prof["id"], model_dir=gen.model_ref)
        other = latest_completed_run(store, prof["id"])
        note = ""
        if run is None and other is not None:
            note = (
                f" (your latest adapter, run {other['id']}, was trained on another base model: "
                "train on this one to compare)"
            )
        base = SamplingParams(max_new_tokens=int(max_tokens), temperature=float(temperature))
        seed = str(seed or "").strip()
        if seed and not seed.isdigit():
            raise user_error(
                f"The seed must be a whole number (or empty for a new one each time), not {seed!r}."
            )
        first = base.with_seed(int(seed) if seed else None)
        outputs, labels = ["", ""], ["base model", "..."]
        sides = []
        for side in (0, 1):
            adapter = run["adapter_path"] if (side == 1 and run) else None
            # A seed of its own per side: with no adapter yet, both sides are the base and must differ.
            sides.append((adapter, first.with_seed(first.seed + side)))

        def frame(ids, label, done):
            box = gr.update(interactive=done)
            return (gr.update(value=outputs[0], **box), gr.update(value=outputs[1], **box), ids, label,
                    *rating_buttons(done))  # fmt: skip

        yield frame([None, None], "Generating A ...", False)
        ids = [None, None]
        for side, (adapter, sp) in enumerate(sides):
            if adapter:
                gen.set_adapter(gen.load_adapter(adapter))
                labels[1] = f"your adapter (run {run['id']})"
            else:
                gen.set_adapter(None)
                labels[side] = "base model"
            for piece in gen.stream(prompt, sp):
                outputs[side] += piece
                yield frame(
                    [None, None], f"Generating {'AB'[side]} ... (A: {labels[0]} · B: {labels[1]})", False
                )
            ids[side] = store.add_generation(
                prof["id"], prompt, outputs[side], model=model, adapter=adapter, params=sp.to_dict()
            )
        yield frame(
            ids,
            f"A: {labels[0]} · B: {labels[1]}{note} — rate each with 👍 / 👎 (keys 1-4); seeds "
            f"{sides[0][1].seed} / {sides[1][1].seed}",
            True,
        )

    def stopped():
        return ("Stopped. Generate again to get a pair you can rate.", [None, None], *rating_buttons(False))

    def history(profile):
        prof = store.find_profile(profile) if profile else None
        rows = [] if prof is None else store.list_feedback(prof["id"])[::-1][:50]
        return pd.DataFrame(
            [
                [
                    f["created_at"][:19],
                    "👍" if f["rating"] > 0 else "👎",
                    f["prompt"][:60],
                    (f["edited_text"] or f["text"])[:120],
                    "yes" if f["edited_text"] else "",
                ]
                for f in rows
            ],
            columns=["when", "rating", "prompt", "text", "edited"],
        )

    def rater(side: int, rating: int):
        @friendly
        def rate(profile, ids, text_a, text_b):
            prof = need(profile)
            if not ids or ids[side] is None:
                raise user_error("Generate first (and let both texts finish), then rate.")
            shown = (text_a, text_b)[side]
            saved = store.rate(prof["id"], ids[side], rating, edited_text=shown)
            mark = "👍" if rating > 0 else "👎"
            edited = saved["edited_text"] is not None
            what = feedback_meaning(rating, edited)
            msg = (
                f"Saved {mark} for {'AB'[side]}" + (" with your edit" if edited else "") + f": {what}."
                if saved["changed"]
                else f"{'AB'[side]} already has this rating ({mark}); nothing changed."
            )
            return msg, history(profile), status(profile)

        return rate

    def undoer(side: int):
        @friendly
        def undo(profile, ids):
            prof = need(profile)
            if not ids or ids[side] is None:
                raise user_error("Nothing to undo: generate and rate first.")
            had = store.undo_rating(prof["id"], ids[side])
            msg = f"Took back the rating of {'AB'[side]}." if had else f"{'AB'[side]} has no rating to undo."
            return msg, history(profile), status(profile)

        return undo

    # -- Train ----------------------------------------------------------------------------------------

    def runs_table(profile):
        prof = store.find_profile(profile) if profile else None
        rows = [] if prof is None else [worker.status(store, r["id"]) for r in store.list_runs(prof["id"])]
        return pd.DataFrame(
            [
                [
                    r["id"],
                    r["objective"],
                    r["status"],
                    f"{r['step']}/{r['total_steps'] or '?'}",
                    _fmt((r["result"].get("eval") or {}).get("heldout_target_lift")),
                    _fmt((r["result"].get("eval") or {}).get("heldout_peer_lift")),
                    (r["error"] or "")[:80],
                ]
                for r in rows
            ],  # fmt: skip
            columns=[
                "run",
                "objective",
                "status",
                "steps",
                "held-out lift (you)",
                "held-out lift (peers)",
                "note",
            ],
        )

    def current_run(profile):
        prof = store.find_profile(profile) if profile else None
        runs = [] if prof is None else store.list_runs(prof["id"])
        return worker.status(store, runs[0]["id"]) if runs else None

    def train_view(profile):
        run = current_run(profile)
        if run is None:
            return (
                "No training run yet.",
                _frame([], step=int, value=float, series=str),
                runs_table(profile),
            )
        total, step = run["total_steps"] or 0, run["step"] or 0
        pct = 100 * step / total if total else 0
        eta = f", about {run['eta_seconds']:.0f} s left" if run.get("eta_seconds") else ""
        bar = f"<progress value='{step}' max='{total or 1}' style='width:100%'></progress>"
        msg = f"Run {run['id']} ({run['objective']}): **{run['activity']}**, step {step}/{total or '?'} ({pct:.0f}%){eta}.\n\n{bar}"
        if run["error"]:
            msg += f"\n\n{run['error']}"
        metrics = store.run_metrics(run["id"])
        rows = [
            {"step": m["step"], "value": m.get(k), "series": name}
            for m in metrics
            for k, name in (("loss", "loss"), ("reward_margin", "reward margin"))
            if m.get(k) is not None
        ]
        return msg, _frame(rows, step=int, value=float, series=str), runs_table(profile)

    @friendly
    def start_training(profile, objective, steps, lr, batch):
        need(profile)
        cfg = TrainConfig(
            model=model_of(profile),
            objective=objective,
            steps=int(steps) or None,
            lr=float(lr),
            batch_size=int(batch),
        )
        run_id = worker.start(store, profile, cfg)
        return f"Run {run_id} started in a worker process.", gr.Timer(active=True)

    @friendly
    def cancel_training(profile):
        run = current_run(profile)
        if run is None or run["status"] not in worker.ACTIVE:
            raise user_error("Nothing is training.")
        worker.cancel(store, run["id"])
        return f"Cancelling run {run['id']}: it stops within a few seconds and keeps its last whole step."

    @friendly
    def resume_training(profile):
        run = current_run(profile)
        if run is None:
            raise user_error("No run to resume.")
        worker.resume(store, run["id"])
        return f"Run {run['id']} resumed from its last checkpoint.", gr.Timer(active=True)

    def train_outputs(profile):
        """The train view and the poll timer, on while the profile's run is active."""
        msg, plot, table = train_view(profile)
        run = current_run(profile)
        return msg, plot, table, gr.Timer(active=run is not None and run["status"] in worker.ACTIVE)

    def poll(profile):
        return *train_outputs(profile), status(profile)

    # -- You vs. peers --------------------------------------------------------------------------------

    @friendly
    def analyze(profile, pool, progress=gr.Progress()):
        from core.profile import build_summary, report_text

        need(profile)
        progress(0.1, desc="comparing with other writers and scoring summaries")
        result = build_summary(store, profile, model=model_of(profile), pool=pool or "default")
        report = result["report"]
        bars = _frame(
            [
                {
                    "feature": r["feature"].replace("_", " "),
                    "z": round(r["z_vs_representatives"], 2),
                    "dimension": r["dimension"],
                }
                for r in report["features"]
            ],
            feature=str,
            z=float,
            dimension=str,
        )
        best = result["summary"]
        generic = next((c for c in result["candidates"] if c["name"] == "generic"), None)
        score = (
            f"Summary v{result['version']}: lift **{best['lift']:+.4f}** nats/token (candidate '{best['name']}')"
            + (f"; a generic summary scores {generic['lift']:+.4f}." if generic else ".")
        )
        md = report_text(report) + f"\n\nRepresentative peers: {', '.join(report['representatives'])}."
        return md, bars, best["text"], score, status(profile)

    @friendly
    def save_summary_edit(profile, text):
        prof = need(profile)
        saved = store.add_summary(prof["id"], text or "", "user")
        return f"Saved your edit as summary v{saved['version']}.", status(profile)

    def latest_summary(profile):
        prof = store.find_profile(profile) if profile else None
        rows = [] if prof is None else store.list_summaries(prof["id"])
        if not rows:
            return "", "No summary yet."
        s = rows[0]
        score = f"lift {s['score']:+.4f}" if s["score"] is not None else "edited by you"
        return s["text"], f"Summary v{s['version']} ({s['source']}, {score})."

    # -- Export ---------------------------------------------------------------------------------------

    @friendly
    def do_export(profile, formats, folder):
        need(profile)
        folder = (folder or "").strip() or str(data_dir() / "exports" / profile)
        result = export(store, profile, folder, formats=formats or None)
        files = "\n".join(f"- `{p.relative_to(result.folder)}`" for p in result.files)
        skipped = "".join(f"\n- skipped {k}: {v}" for k, v in result.skipped.items())
        summary = next((p.read_text() for p in result.files if p.name.endswith("-summary.txt")), "")
        snippet = next((p.read_text() for p in result.files if p.name.endswith("-openai.py")), "")
        return f"Exported to `{result.folder}`:\n{files}{skipped}", summary, snippet, status(profile)

    # -- layout ---------------------------------------------------------------------------------------

    # Nothing the page shows is read here: every choice and view is filled per page load (demo.load below),
    # so a reload or a second tab shows what is in the database now.
    with gr.Blocks(title="Idiolect") as demo:
        remembered = gr.BrowserState(None, storage_key="idiolect-profile")  # this browser's last profile
        gr.Markdown(
            "# Idiolect\nTune a language model to *your* writing, on this machine. Nothing leaves it."
        )
        with gr.Row():
            profile = gr.Dropdown([], value=None, label="Profile", scale=2, elem_id="profile")
            new_name = gr.Textbox(label="New profile", placeholder="e.g. sam", scale=2, elem_id="new-profile")
            create_btn = gr.Button("Create profile", scale=1, elem_id="create-profile")
        status_md = gr.Markdown(status(None), elem_id="status")

        with gr.Tab("Profile & writing", id="writing"):
            with gr.Row():
                with gr.Column():
                    paste = gr.Textbox(
                        label="Paste your writing (blank lines separate samples)", lines=8, elem_id="paste"
                    )
                    paste_btn = gr.Button("Add pasted text", variant="primary", elem_id="add-paste")
                with gr.Column():
                    files = gr.File(label="Or upload .txt / .md / .jsonl / .json / .csv", file_count="multiple",
                                    file_types=[".txt", ".md", ".jsonl", ".json", ".csv", ".tsv"])  # fmt: skip
                    files_btn = gr.Button("Add files")
            import_md = gr.Markdown(elem_id="import-report")
            samples = gr.Dataframe(
                samples_table(None), label="Your samples", interactive=False, wrap=True, elem_id="samples"
            )
            with gr.Row():
                sample_id = gr.Number(label="Sample id", precision=0)
                load_btn = gr.Button("Load")
                save_btn = gr.Button("Save change")
                del_btn = gr.Button("Delete", variant="stop")
            sample_text = gr.Textbox(label="Sample text", lines=4)
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

        with gr.Tab("Model", id="model"):
            gr.Markdown(device_md())
            recommended = gr.Dropdown(
                [m.id for m in RECOMMENDED], label="Recommended base models", value=RECOMMENDED[0].id
            )
            gr.Markdown(
                "\n".join(
                    f"- **{m.id}**: {m.params_b:.2f}B, ~{m.download_gb:.1f} GB, {m.license}. {m.notes} "
                    f"({m.supports()})"
                    for m in RECOMMENDED
                )
            )
            on_disk_md = gr.Markdown(elem_id="models-on-disk")
            custom = gr.Textbox(
                label="Or: a local model folder, a Hugging Face id, or a GGUF file", elem_id="custom-model"
            )
            model_btn = gr.Button("Use this model", variant="primary", elem_id="use-model")
            model_md = gr.Markdown(elem_id="model-status")

        with gr.Tab("Rate", id="rate"):
            with gr.Row():
                prompt_pick = gr.Dropdown([], label="Prompt", scale=3, elem_id="prompt-pick")
                prompt_own = gr.Textbox(label="...or your own prompt", scale=3, elem_id="prompt-own")
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=0.8, step=0.05, label="Temperature")
                max_tokens = gr.Slider(16, 512, value=160, step=16, label="Max tokens")
                # A textbox, not gr.Number: an empty Number comes back as 0, which would fix the seed.
                seed = gr.Textbox("", label="Seed (empty: a new one each time)", elem_id="seed", max_lines=1)
            with gr.Row():
                gen_btn = gr.Button("Generate (g)", variant="primary", elem_id="generate-btn")
                stop_btn = gr.Button("Stop", elem_id="stop-btn")
            pair_md = gr.Markdown(elem_id="pair-label")
            gr.Markdown(
                "An edit is learned as your own writing: edit a text, then 👍 (the original is left out) or 👎 "
                "(the original is also learned as what you would not write). Rating again replaces the rating; "
                "undo takes it back.",
                elem_id="rating-help",
            )
            ids_state = gr.State([None, None])
            with gr.Row():
                with gr.Column():
                    text_a = gr.Textbox(label="A", lines=8, elem_id="text-a", interactive=False)
                    with gr.Row():
                        up_a = gr.Button("👍 A (1)", elem_id="up-a", interactive=False)
                        down_a = gr.Button("👎 A (2)", elem_id="down-a", interactive=False)
                        undo_a = gr.Button("Undo A", elem_id="undo-a", interactive=False)
                with gr.Column():
                    text_b = gr.Textbox(label="B", lines=8, elem_id="text-b", interactive=False)
                    with gr.Row():
                        up_b = gr.Button("👍 B (3)", elem_id="up-b", interactive=False)
                        down_b = gr.Button("👎 B (4)", elem_id="down-b", interactive=False)
                        undo_b = gr.Button("Undo B", elem_id="undo-b", interactive=False)
            rate_md = gr.Markdown(elem_id="rate-status")
            hist = gr.Dataframe(history(None), label="Your ratings", interactive=False, wrap=True)

        with gr.Tab("Train", id="train"):
            with gr.Row():
                objective = gr.Radio(
                    ["cbpo", "sft", "bco"],
                    value="cbpo",
                    label="Objective (C-BPO: yours vs. peers, PU-corrected)",
                )
                steps = gr.Number(value=0, precision=0, label="Steps (0 = 3 epochs)", elem_id="train-steps")
                lr = gr.Number(value=1e-4, label="Learning rate", elem_id="train-lr")
                batch = gr.Number(value=4, precision=0, label="Your texts per batch")
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", elem_id="start-train")
                cancel_btn = gr.Button("Cancel", elem_id="cancel-train")
                resume_btn = gr.Button("Resume", elem_id="resume-train")
            train_msg = gr.Markdown(elem_id="train-msg")
            progress_md = gr.Markdown(elem_id="train-progress")
            plot = gr.LinePlot(_frame([], step=int, value=float, series=str), x="step", y="value", color="series",
                               title="Loss and reward margin (yours minus peers')", height=280)  # fmt: skip
            runs = gr.Dataframe(runs_table(None), label="Runs", interactive=False)
            timer = gr.Timer(2.0, active=False)

        with gr.Tab("You vs. peers", id="peers"):
            pool_pick = gr.Dropdown([], value=None, label="Compare with pool", elem_id="pool-pick")
            analyze_btn = gr.Button("Compare and write my summary", variant="primary", elem_id="analyze")
            report_md = gr.Markdown(elem_id="report")
            bars = gr.BarPlot(_frame([], feature=str, z=float, dimension=str), x="feature", y="z", color="dimension", color_map={"writing": "#4c78a8", "emotional": "#f58518", "semantic": "#e45756"},
                              title="You vs. representative writers (z-scores)", x_label_angle=-45, height=320)  # fmt: skip
            summary_box = gr.Textbox(
                "",
                label="Your preference summary (editable; give it to any chat model)",
                lines=6,
                elem_id="summary",
            )
            score_md = gr.Markdown("No summary yet.", elem_id="summary-score")
            save_summary_btn = gr.Button("Save my edit as a new version")

        with gr.Tab("Export", id="export"):
            formats = gr.CheckboxGroup(
                list(FORMATS), value=list(DEFAULT_FORMATS), label="Formats", elem_id="formats"
            )
            folder = gr.Textbox(
                label="Folder (default: exports/<profile> in the data folder)", elem_id="export-folder"
            )
            export_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
            export_md = gr.Markdown(elem_id="export-report")
            export_summary = gr.Code(
                label="Summary (copy into any system prompt)", language=None, elem_id="export-summary"
            )
            export_snippet = gr.Code(label="Python (official openai client)", language="python")

        # -- events -----------------------------------------------------------------------------------
        def profile_views(p):
            """Everything that depends on the chosen profile, read from the database now."""
            s_text, s_info = latest_summary(p)
            train_msg_, plot_, runs_, timer_ = train_outputs(p)
            return (
                status(p),
                samples_table(p),
                gr.update(choices=prompt_choices(p), value=None),
                history(p),
                runs_,
                s_text,
                s_info,
                train_msg_,
                plot_,
                timer_,
            )

        profile_outputs = [status_md, samples, prompt_pick, hist, runs, summary_box, score_md, progress_md, plot,
                           timer]  # fmt: skip

        def pool_choices(current=None):
            names = [p["name"] for p in store.list_pools()]
            value = (
                current if current in names else ("default" if "default" in names else (names or [None])[0])
            )
            return gr.update(choices=names, value=value)

        def on_load(saved):
            names = profiles()
            chosen = saved if saved in names else (names or [None])[0]
            return (gr.update(choices=names, value=chosen), pool_choices(), *profile_views(chosen))

        @friendly
        def create_profile(name: str):
            name = (name or "").strip()
            store.create_profile(name)
            return gr.update(choices=profiles(), value=name), ""

        def import_pool(f, n, current):
            if not f:
                raise user_error("Pick a file first.")
            report = import_peers(store, f if isinstance(f, str) else f.name, n or "imported")
            return reports_md([report]), pool_choices(current)

        demo.load(on_load, [remembered], [profile, pool_pick, *profile_outputs]).then(
            models_md, [profile], [on_disk_md]
        )
        create_btn.click(create_profile, [new_name], [profile, new_name])
        profile.change(profile_views, [profile], profile_outputs).then(lambda p: p, [profile], [remembered])
        paste_btn.click(add_pasted, [profile, paste], [import_md, samples, status_md, paste])
        files_btn.click(add_files, [profile, files], [import_md, samples, status_md])
        load_btn.click(load_sample, [profile, sample_id], [sample_text])
        save_btn.click(save_sample, [profile, sample_id, sample_text], [samples, status_md])
        del_btn.click(delete_sample, [profile, sample_id], [samples, status_md])
        pool_btn.click(friendly(import_pool), [pool_file, pool_name, pool_pick], [pool_md, pool_pick])
        model_btn.click(choose_model, [profile, recommended, custom], [model_md, status_md, on_disk_md])
        rate_buttons = [up_a, down_a, up_b, down_b, undo_a, undo_b]
        generating = gen_btn.click(
            generate_pair,
            [profile, prompt_pick, prompt_own, temperature, max_tokens, seed],
            [text_a, text_b, ids_state, pair_md, *rate_buttons],
        )
        stop_btn.click(stopped, None, [pair_md, ids_state, *rate_buttons], cancels=[generating])
        for btn, side, rating in ((up_a, 0, 1), (down_a, 0, -1), (up_b, 1, 1), (down_b, 1, -1)):
            btn.click(rater(side, rating), [profile, ids_state, text_a, text_b], [rate_md, hist, status_md])
        for btn, side in ((undo_a, 0), (undo_b, 1)):
            btn.click(undoer(side), [profile, ids_state], [rate_md, hist, status_md])
        start_btn.click(start_training, [profile, objective, steps, lr, batch], [train_msg, timer])
        cancel_btn.click(cancel_training, [profile], [train_msg])
        resume_btn.click(resume_training, [profile], [train_msg, timer])
        timer.tick(poll, [profile], [progress_md, plot, runs, timer, status_md])
        analyze_btn.click(analyze, [profile, pool_pick], [report_md, bars, summary_box, score_md, status_md])
        save_summary_btn.click(save_summary_edit, [profile, summary_box], [score_md, status_md])
        export_btn.click(
            do_export, [profile, formats, folder], [export_md, export_summary, export_snippet, status_md]
        )
    return demo


def _fmt(x) -> str:
    return "" if x is None else f"{x:+.4f}"


def launch_app(args) -> int:
    try:
        store = open_store(args.db)
    except IdiolectError as exc:
        print(f"error: {exc}")
        return 1
    logging.basicConfig(
        filename=str(store.path.parent / "app.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    demo = build_ui(store)
    auth = args.auth or os.environ.get("IDIOLECT_AUTH")
    auth_pair = None
    if auth:
        if ":" not in auth:
            print("error: --auth takes USER:PASSWORD")
            return 2
        user, password = auth.split(":", 1)
        auth_pair = (user, password)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host,
        server_port=args.port,
        inbrowser=not args.no_browser,
        share=bool(args.share),
        auth=auth_pair,
        css_paths=[CSS_PATH] if CSS_PATH.exists() else None,
        head=SHORTCUTS,
        max_file_size=MAX_UPLOAD,
        show_error=False,
    )
    return 0
