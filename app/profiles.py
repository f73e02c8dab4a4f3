"""The profile bar at the top of the page: choose, create, rename and delete a profile (a delete names what it
deletes and waits for a confirmation)."""

from __future__ import annotations

import gradio as gr

from idiolect.app.common import Ctx, need, on, plural
from idiolect.core.training.worker import delete_profile


def names(ctx: Ctx) -> list[str]:
    return [p["name"] for p in ctx.store.list_profiles()]


def create(ctx: Ctx, name: str) -> str:
    name = (name or "").strip()
    ctx.store.create_profile(name)
    return name


def rename(ctx: Ctx, profile: str | None, new_name: str) -> str:
    need(ctx, profile)
    return ctx.store.rename_profile(profile, new_name)["name"]


def what_delete_removes(ctx: Ctx, profile: str | None) -> str:
    """The confirmation text: everything that deleting the profile removes, counted."""
    need(ctx, profile)
    f = ctx.store.profile_footprint(profile)
    parts = [plural(f["samples"], "sample"), plural(f["ratings"], "rating"),
             plural(f["generations"], "generated text"),
             plural(f["runs"], "training run") + " with their adapters", plural(f["summaries"], "summary version")]  # fmt: skip
    return (
        f"**Delete profile {profile}?** This removes {', '.join(parts)}. Exported files elsewhere stay. "
        "It cannot be undone."
    )


def delete(ctx: Ctx, profile: str | None) -> str:
    need(ctx, profile)
    gone = delete_profile(ctx.store, profile)
    return f"Deleted profile {profile} ({plural(gone['samples'], 'sample')}, {plural(gone['runs'], 'run')})."


def build(ctx: Ctx):
    """The bar's components; returns (profile dropdown, a refresh hook for main to chain after changes)."""
    with gr.Row():
        profile = gr.Dropdown([], value=None, label="Profile", scale=2, elem_id="profile")
        new_name = gr.Textbox(label="New profile", placeholder="e.g. sam", scale=2, elem_id="new-profile")
        create_btn = gr.Button("Create profile", scale=1, elem_id="create-profile")
    with gr.Accordion("Rename or delete this profile", open=False, elem_id="profile-manage"):
        with gr.Row():
            rename_box = gr.Textbox(label="New name", scale=2, elem_id="rename-profile")
            rename_btn = gr.Button("Rename", scale=1, elem_id="rename-btn")
            ask_btn = gr.Button("Delete profile…", variant="stop", scale=1, elem_id="delete-profile")
        with gr.Group(visible=False) as confirm_box:
            confirm_md = gr.Markdown(elem_id="delete-confirm")
            with gr.Row():
                yes_btn = gr.Button("Yes, delete it", variant="stop", elem_id="delete-yes")
                no_btn = gr.Button("Keep it", elem_id="delete-no")
        manage_md = gr.Markdown(elem_id="profile-manage-status")

    def do_create(n):
        made = create(ctx, n)  # first: the choices must hold the new name
        return gr.update(choices=names(ctx), value=made), ""

    on(create_btn.click, do_create, [new_name], [profile, new_name])

    def do_rename(p, n):
        new = rename(ctx, p, n)
        return gr.update(choices=names(ctx), value=new), "", f"Renamed {p} to {new}."

    on(rename_btn.click, do_rename, [profile, rename_box], [profile, rename_box, manage_md])
    on(ask_btn.click, lambda p: (what_delete_removes(ctx, p), gr.update(visible=True)), [profile],
       [confirm_md, confirm_box])  # fmt: skip
    no_btn.click(lambda: gr.update(visible=False), None, [confirm_box])

    def do_delete(p):
        msg = delete(ctx, p)
        left = names(ctx)
        return gr.update(choices=left, value=left[0] if left else None), gr.update(visible=False), msg

    on(yes_btn.click, do_delete, [profile], [profile, confirm_box, manage_md])
    return profile
