"""Tab "Model": this machine, the recommended base models, the model in use and the models on disk."""

from __future__ import annotations

import os

import gradio as gr

from idiolect.app.common import Ctx, chosen_model, need, on, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.inventory import delete_model, models_on_disk
from idiolect.core.models.registry import OFFLINE_MODELS, RECOMMENDED, offline_installed
from idiolect.core.models.resolve import local_model_dir, resolve


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
        lines.append("No CUDA GPU: training runs on the CPU (slow for models above ~0.5B parameters)")
    return "\n\n".join(lines)


def recommended_md() -> str:
    return "\n".join(
        f"- **{m.id}**: {m.params_b:.2f}B, ~{m.download_gb:.1f} GB, {m.license}. {m.notes} ({m.supports()})"
        for m in RECOMMENDED
    )


def models_md(ctx: Ctx, profile: str | None = None) -> str:
    """The model in use and the models on this machine, read now."""
    store = ctx.store
    current, chosen = chosen_model(ctx, profile) if profile and store.find_profile(profile) else (None, False)
    if current and not chosen:
        lines = [f"**In use by {profile}:** `{current}` (the default until you choose one: an offline instruct "
                 "model, so Rate and Chat answer your prompts; training uses it too)"]  # fmt: skip
    else:
        lines = [f"**In use by {profile}:** `{current}`" if current else "**In use:** none chosen yet"]
    lines.append(
        "**On this machine** (type the path or id below, or an offline model's name: "
        + ", ".join(f"`{m.spec}`" for m in OFFLINE_MODELS)
        + "):"
    )
    lines += [
        f"- {disk_row(m, code=True)}" + (f" -- {m['name']}" if m["kind"] == "offline" else "")
        for m in models_on_disk()
    ] or ["- none yet"]
    return "\n".join(lines)


def disk_row(m: dict, *, code: bool = False) -> str:
    """One model on disk, in words: a dequantized copy names the GGUF file it was made from and the folder it is
    in (its path is the file's: the row used to read as the file itself)."""
    q = (lambda t: f"`{t}`") if code else (lambda t: t)  # noqa: E731
    size = f" ({m['bytes'] / 1e9:.2f} GB)" if m["bytes"] else ""
    if m["kind"] == "dequantized":
        return f"dequantized copy of {q(m['path'])} in {q(m.get('folder', '?'))}{size}"
    return f"{m['kind']}: {q(m['path'])}{size}"


def model_choices(ctx: Ctx, profile: str | None) -> dict:
    """The dropdown of models to pick: the offline models installed here, then the recommended hub models; the
    profile's model selected when it is one of them."""
    offline = [(f"{m.spec}: {m.label}", m.spec) for m in OFFLINE_MODELS if offline_installed(m.spec)]
    choices = offline + [(m.id, m.id) for m in RECOMMENDED]
    current = chosen_model(ctx, profile)[0] if profile and ctx.store.find_profile(profile) else None
    values = [v for _, v in choices]
    return gr.update(choices=choices, value=current if current in values else values[0])


def disk_choices() -> list[tuple[str, str]]:
    return [(disk_row(m), f"{m['kind']}|{m['path']}") for m in models_on_disk() if m["kind"] != "offline"]


def delete_from_disk(ctx: Ctx, choice: str | None, confirmed: bool) -> str:
    """Delete a model on disk; refused while a profile uses it (a dequantized copy is a cache: always allowed)."""
    if not choice:
        raise IdiolectError("Choose the model to delete first.")
    if not confirmed:
        raise IdiolectError("Tick “yes, delete it” first: a deleted download has to be downloaded again.")
    kind, _, path = choice.partition("|")
    users = [
        p["name"]
        for p in ctx.store.list_profiles()
        if ctx.store.profile_settings(p["name"]).get("model") == path
    ]
    if users and kind != "dequantized":
        raise IdiolectError(f"{path} is in use by {', '.join(users)}: choose another model for them first.")
    freed = delete_model(path, kind=kind)
    return f"Deleted {kind} model {path} ({freed / 1e9:.2f} GB freed)."


def choose_model(ctx: Ctx, profile: str | None, recommended: str, custom: str, progress=None) -> str:
    need(ctx, profile)
    spec = (custom or "").strip() or recommended
    if not spec:
        raise IdiolectError("Pick a recommended model or give a folder, GGUF file or Hugging Face id.")
    source = resolve(spec)

    def cb(done, total, name):
        if progress is not None:
            progress(done / total if total else None, desc=name)

    if source.kind == "hub":
        path = local_model_dir(spec, progress=cb)
        msg = f"Downloaded {spec} to {path}."
    elif source.kind == "gguf":
        # A GGUF file is a training base: dequantized once (cached by its hash); exports target the file.
        from idiolect.core.models.registry import OFFLINE

        path = local_model_dir(spec, progress=cb)
        msg = f"Using the GGUF file {source.ref} (its weights for training are in {path})."
        if spec in OFFLINE and OFFLINE[spec].notice:
            msg += f" {OFFLINE[spec].notice}"
    else:
        msg = f"Using the folder {source.ref}."
    ctx.store.update_profile_settings(profile, model=spec)
    return msg


class ModelTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
        device = gr.Markdown(elem_id="device")
        recommended = gr.Dropdown(
            [m.id for m in RECOMMENDED], label="Offline and recommended base models", value=RECOMMENDED[0].id,
            elem_id="model-pick",
        )  # its choices are read per page load (views): the offline models installed here come first
        gr.Markdown(recommended_md())
        on_disk = gr.Markdown(elem_id="models-on-disk")
        custom = gr.Textbox(
            label="Or: a local model folder, a Hugging Face id, or a GGUF file", elem_id="custom-model"
        )
        model_btn = gr.Button("Use this model", variant="primary", elem_id="use-model")
        model_md = gr.Markdown(elem_id="model-status")
        with gr.Accordion("Delete a model from disk", open=False), gr.Row():
            to_delete = gr.Dropdown([], label="Model on disk", scale=3, elem_id="model-delete-pick")
            sure = gr.Checkbox(label="yes, delete it", scale=1)
            delete_btn = gr.Button("Delete", variant="stop", scale=1, elem_id="model-delete")

        def use(p, rec, cus, progress=gr.Progress()):
            return choose_model(ctx, p, rec, cus, progress), status(ctx, p), models_md(ctx, p)

        on(model_btn.click, use, [profile, recommended, custom], [model_md, status_md, on_disk])

        def remove(p, choice, ok):
            msg = delete_from_disk(ctx, choice, ok)
            return msg, models_md(ctx, p), gr.update(choices=disk_choices(), value=None), False

        on(delete_btn.click, remove, [profile, to_delete, sure], [model_md, on_disk, to_delete, sure])
        self.outputs = [device, on_disk, to_delete, recommended]

    def views(self, profile):
        return (device_md(), models_md(self.ctx, profile), gr.update(choices=disk_choices(), value=None),
                model_choices(self.ctx, profile))  # fmt: skip
