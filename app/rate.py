"""Tab "Rate": generate two texts for a prompt and rate each one 👍 / 👎 (an edit is learned as your writing)."""

from __future__ import annotations

import random

import gradio as gr
import pandas as pd

from idiolect.app.common import Ctx, model_of, need, on, status
from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.sampling import SamplingParams
from idiolect.core.persona import likeness
from idiolect.core.training.labels import feedback_meaning
from idiolect.core.training.runs import adapter_dir, latest_completed_run

RATING_HELP = (
    "An edit is learned as your own writing: edit a text, then 👍 (the original is left out) or 👎 (the original "
    "is also learned as what you would not write). Rating again replaces the rating; undo takes it back."
)


def prompt_choices(ctx: Ctx, profile: str | None) -> list[str]:
    prof = ctx.store.find_profile(profile) if profile else None
    return [p["text"] for p in ctx.store.list_prompts(prof["id"] if prof else None)]


def history(ctx: Ctx, profile: str | None) -> pd.DataFrame:
    prof = ctx.store.find_profile(profile) if profile else None
    rows = [] if prof is None else ctx.store.list_feedback(prof["id"])[::-1][:50]
    return pd.DataFrame(
        [[f["created_at"][:19], "👍" if f["rating"] > 0 else "👎", f["prompt"][:60],
          (f["edited_text"] or f["text"])[:120], "yes" if f["edited_text"] else ""] for f in rows],
        columns=["when", "rating", "prompt", "text", "edited"],
    )  # fmt: skip


def _buttons(enabled: bool):
    return [gr.update(interactive=enabled) for _ in range(6)]


def generate_pair(ctx: Ctx, profile, prompt_pick, prompt_own, temperature, max_tokens, seed):
    """Stream two generations. While they stream, the rating buttons are off and the texts read-only (a rating
    always belongs to the pair on screen; an edit is never overwritten); the stored ids arrive only when both
    texts are complete. Yields (text A, text B, ids, label, *6 button updates)."""
    store = ctx.store
    prof = need(ctx, profile)
    prompt = (prompt_own or "").strip() or prompt_pick
    if not prompt:
        raise IdiolectError("Pick or type a prompt.")
    if prompt_own and prompt_own.strip():
        store.add_prompts([{"text": prompt_own.strip()}], profile_id=prof["id"])
    model = model_of(ctx, profile)
    seed = str(seed or "").strip()
    if seed and not seed.isdigit():
        raise IdiolectError(
            f"The seed must be a whole number (or empty for a new one each time), not {seed!r}."
        )
    gen = ctx.generators.get(model)
    run = latest_completed_run(store, prof["id"], model_dir=gen.model_ref)
    other = latest_completed_run(store, prof["id"])
    note = ""
    if run is None and other is not None:
        note = (
            f" (your latest adapter, run {other['id']}, was trained on another base model: train on this one to "
            "compare)"
        )
    first = SamplingParams(max_new_tokens=int(max_tokens), temperature=float(temperature)).with_seed(
        int(seed) if seed else None
    )
    outputs = ["", ""]
    # Blind: the adapter's side is drawn at random and named only after a rating. A seed of its own per side:
    # with no adapter yet, both sides are the base and must differ.
    adapter_side = random.randrange(2) if run else None
    sides = [
        (
            str(adapter_dir(ctx.store, run)) if side == adapter_side else None,
            first.with_seed(first.seed + side),
        )
        for side in (0, 1)
    ]

    def frame(ids, label, done):
        box = gr.update(interactive=done)
        return (gr.update(value=outputs[0], **box), gr.update(value=outputs[1], **box), ids, label,
                *_buttons(done))  # fmt: skip

    who = (
        "which one is your adapter is shown after you rate"
        if run
        else "both are the base model: no adapter yet"
    )
    yield frame([None, None], "Generating A ...", False)
    ids = [None, None]
    for side, (adapter, sp) in enumerate(sides):
        gen.set_adapter(gen.load_adapter(adapter) if adapter else None)
        for piece in gen.stream(prompt, sp):
            outputs[side] += piece
            yield frame([None, None], f"Generating {'AB'[side]} ... ({who})", False)
        ids[side] = store.add_generation(
            prof["id"], prompt, outputs[side], model=model, adapter=adapter, params=sp.to_dict()
        )
    yield frame(
        ids,
        f"Now rate each with 👍 / 👎 (keys 1-4): {who}{note}; seeds {sides[0][1].seed} / {sides[1][1].seed}",
        True,
    )


def reveal(ctx: Ctx, profile, ids) -> str:
    """Which model and adapter wrote each side (shown once the user has rated)."""
    prof = need(ctx, profile)
    runs = {
        str(adapter_dir(ctx.store, r)): r["id"]
        for r in ctx.store.list_runs(prof["id"])
        if r["status"] == "completed"
    }
    shown = [(side, ctx.store.get_generation(gid)) for side, gid in enumerate(ids or []) if gid is not None]
    parts = [
        f"{'AB'[side]} was "
        + (f"your adapter (run {runs.get(g['adapter'], '?')})" if g["adapter"] else "the base model")
        for side, g in shown
    ]
    model = shown[0][1]["model"] if shown else None
    return "; ".join(parts) + (f" (base `{model}`)." if model else ".")


def rate(ctx: Ctx, profile, ids, side: int, rating: int, shown_text: str) -> str:
    prof = need(ctx, profile)
    if not ids or ids[side] is None:
        raise IdiolectError("Generate first (and let both texts finish), then rate.")
    saved = ctx.store.rate(prof["id"], ids[side], rating, edited_text=shown_text)
    mark = "👍" if rating > 0 else "👎"
    edited = saved["edited_text"] is not None
    if not saved["changed"]:
        return f"{'AB'[side]} already has this rating ({mark}); nothing changed."
    what = feedback_meaning(rating, edited)
    return f"Saved {mark} for {'AB'[side]}" + (" with your edit" if edited else "") + f": {what}."


def undo(ctx: Ctx, profile, ids, side: int) -> str:
    prof = need(ctx, profile)
    if not ids or ids[side] is None:
        raise IdiolectError("Nothing to undo: generate and rate first.")
    had = ctx.store.undo_rating(prof["id"], ids[side])
    return f"Took back the rating of {'AB'[side]}." if had else f"{'AB'[side]} has no rating to undo."


def transcript(history: list[dict], message: str) -> str:
    """The prompt of a chat reply: the conversation so far, then the new message. Stored as the generation's
    prompt, so a rated reply trains in the context it was written in (rendered as the training texts are)."""
    turns = [
        f"{'Me' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in history if m.get("content")
    ]
    return "\n\n".join([*turns, message]) if turns else message


def chat_reply(ctx: Ctx, profile, history: list[dict] | None, message: str, temperature, max_tokens):
    """Stream the reply of the profile's latest adapter (the base before any training) to ``message`` after
    ``history``; yields (history, generation ids by message index). Every reply is stored and can be rated."""
    prof = need(ctx, profile)
    message = (message or "").strip()
    if not message:
        raise IdiolectError("Type a message first.")
    model = model_of(ctx, profile)
    gen = ctx.generators.get(model)
    run = latest_completed_run(ctx.store, prof["id"], model_dir=gen.model_ref)
    adapter = str(adapter_dir(ctx.store, run)) if run else None
    gen.set_adapter(gen.load_adapter(adapter) if adapter else None)
    history = list(history or [])
    prompt = transcript(history, message)
    params = SamplingParams(max_new_tokens=int(max_tokens), temperature=float(temperature)).with_seed()
    history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    for piece in gen.stream(prompt, params):
        history[-1]["content"] += piece
        yield history, None
    gid = ctx.store.add_generation(prof["id"], prompt, history[-1]["content"], model=model, adapter=adapter,
                                   params=params.to_dict())  # fmt: skip
    yield history, {len(history) - 1: gid}


def chat_rate(ctx: Ctx, profile, ids: dict, index, liked) -> str:
    """👍 / 👎 on a chat reply (``ids`` maps message index to its stored generation)."""
    prof = need(ctx, profile)
    index = index[0] if isinstance(index, list | tuple) else index
    gid = (ids or {}).get(index, (ids or {}).get(str(index)))
    if gid is None:
        raise IdiolectError("Only the assistant's finished replies can be rated.")
    rating = 1 if liked is True or liked == "Like" else -1
    saved = ctx.store.rate(prof["id"], int(gid), rating)
    return f"Saved {'👍' if rating > 0 else '👎'} for that reply: {feedback_meaning(rating, False)}." if saved[
        "changed"] else "That reply already has this rating."  # fmt: skip


LIKENESS_HELP = (
    "One of these texts is yours, one your adapter wrote for the same prompt: pick the one you wrote. Your text is "
    "one the adapter never trained on; both are cut to the same length. The score is how often the adapter fooled "
    "you (50% = you cannot tell them apart)."
)


def new_likeness_test(ctx: Ctx, profile, temperature, max_tokens) -> dict:
    """A "Sounds like me?" test for the profile's latest adapter on the model in use."""
    prof = need(ctx, profile)
    gen = ctx.generators.get(model_of(ctx, profile))
    run = latest_completed_run(ctx.store, prof["id"], model_dir=gen.model_ref)
    if run is None:
        raise IdiolectError(
            "Train an adapter on this model first (tab Train): the test asks it to write like you."
        )
    params = SamplingParams(max_new_tokens=int(max_tokens), temperature=float(temperature))

    def generate(prompt, context):
        gen.set_adapter(gen.load_adapter(str(adapter_dir(ctx.store, run))))
        return gen.generate(prompt, params.with_seed(), context=context)

    return {**likeness.start_test(ctx.store, prof["id"], run, generate), "run": run["id"]}


def pick_likeness(ctx: Ctx, profile, test_id, side: int) -> str:
    prof = need(ctx, profile)
    if test_id is None:
        raise IdiolectError("Start a test first.")
    result = likeness.answer(ctx.store, prof["id"], int(test_id), side)
    own, run = result["own_side"] + 1, result["run_id"]
    verdict = (
        f"Right: you wrote text {own}; text {3 - own} was your adapter (run {run})."
        if result["right"]
        else f"Fooled: you wrote text {own}; text {3 - own} was your adapter (run {run})."
    )
    return f"{verdict} Run {run} has {likeness.describe(result['score'])}."


class RateTab:
    def __init__(self, ctx: Ctx, profile, status_md) -> None:
        self.ctx = ctx
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
        gr.Markdown(RATING_HELP, elem_id="rating-help")
        ids_state = gr.State([None, None])
        with gr.Row():
            with gr.Column():
                text_a = gr.Textbox(label="A", lines=8, elem_id="text-a", interactive=False)
                with gr.Row():
                    up_a = gr.Button("👍 A is good (1)", elem_id="up-a", interactive=False)
                    down_a = gr.Button("👎 A is not me (2)", elem_id="down-a", interactive=False)
                    undo_a = gr.Button("Undo A", elem_id="undo-a", interactive=False)
            with gr.Column():
                text_b = gr.Textbox(label="B", lines=8, elem_id="text-b", interactive=False)
                with gr.Row():
                    up_b = gr.Button("👍 B is good (3)", elem_id="up-b", interactive=False)
                    down_b = gr.Button("👎 B is not me (4)", elem_id="down-b", interactive=False)
                    undo_b = gr.Button("Undo B", elem_id="undo-b", interactive=False)
        rate_md = gr.Markdown(elem_id="rate-status")
        hist = gr.Dataframe(history(ctx, None), label="Your ratings", interactive=False, wrap=True)
        with gr.Accordion("Chat with your adapter and rate any reply", open=False, elem_id="chat"):
            chatbot = gr.Chatbot([], height=360, elem_id="chatbot", label="Chat (your latest adapter)")
            chat_in = gr.Textbox(label="Message", placeholder="Type and press Enter", elem_id="chat-input")
            chat_md = gr.Markdown(elem_id="chat-status")
            chat_ids = gr.State({})
        with gr.Accordion(
            "Sounds like me? Tell your writing from your adapter's", open=False, elem_id="likeness"
        ):
            gr.Markdown(LIKENESS_HELP)
            like_btn = gr.Button("New test", variant="primary", elem_id="likeness-new")
            like_prompt = gr.Markdown(elem_id="likeness-prompt")
            with gr.Row():
                like_texts = [gr.Textbox(label=f"Text {i + 1}", lines=6, interactive=False, elem_id=f"likeness-{i}")
                              for i in (0, 1)]  # fmt: skip
            with gr.Row():
                picks = [gr.Button(f"I wrote text {i + 1}", interactive=False, elem_id=f"likeness-pick-{i}")
                         for i in (0, 1)]  # fmt: skip
            like_md = gr.Markdown(elem_id="likeness-result")
            like_state = gr.State(None)

        buttons = [up_a, down_a, up_b, down_b, undo_a, undo_b]

        def stream_pair(p, pick, own, temp, tokens, sd):
            yield from generate_pair(ctx, p, pick, own, temp, tokens, sd)

        generating = on(gen_btn.click, stream_pair, [profile, prompt_pick, prompt_own, temperature, max_tokens, seed],
                        [text_a, text_b, ids_state, pair_md, *buttons])  # fmt: skip
        # Cancel first, then say so: a piece streamed just before the cancel cannot overwrite "Stopped".
        stop_btn.click(None, None, None, cancels=[generating]).then(
            lambda: ("Stopped. Generate again to get a pair you can rate.", [None, None], *_buttons(False)),
            None, [pair_md, ids_state, *buttons],
        )  # fmt: skip
        for btn, side, rating in ((up_a, 0, 1), (down_a, 0, -1), (up_b, 1, 1), (down_b, 1, -1)):

            def press(p, ids, a, b, side=side, rating=rating):
                msg = rate(ctx, p, ids, side, rating, (a, b)[side])
                return f"{msg} {reveal(ctx, p, ids)}", history(ctx, p), status(ctx, p)

            on(btn.click, press, [profile, ids_state, text_a, text_b], [rate_md, hist, status_md])
        for btn, side in ((undo_a, 0), (undo_b, 1)):

            def take_back(p, ids, side=side):
                return undo(ctx, p, ids, side), history(ctx, p), status(ctx, p)

            on(btn.click, take_back, [profile, ids_state], [rate_md, hist, status_md])

        def new_test(p, temp, tokens):
            t = new_likeness_test(ctx, p, temp, tokens)
            prompt = f"**Prompt:** {t['prompt']}" + (
                f"\n\n**Context:** {t['context'][:300]}" if t["context"] else ""
            )
            return (prompt, *t["texts"], t["id"], gr.update(interactive=True), gr.update(interactive=True),
                    "Which one did you write?")  # fmt: skip

        testing = on(like_btn.click, new_test, [profile, temperature, max_tokens],
                     [like_prompt, *like_texts, like_state, *picks, like_md])  # fmt: skip
        for side, btn in enumerate(picks):

            def choose(p, test_id, side=side):
                return (pick_likeness(ctx, p, test_id, side), None, gr.update(interactive=False),
                        gr.update(interactive=False))  # fmt: skip

            on(btn.click, choose, [profile, like_state], [like_md, like_state, *picks])

        def send(p, hist_, msg, temp, tokens, ids):
            for history_, new in chat_reply(ctx, p, hist_, msg, temp, tokens):
                yield history_, "", ({**ids, **new} if new else gr.skip())

        chatting = on(chat_in.submit, send, [profile, chatbot, chat_in, temperature, max_tokens, chat_ids],
                      [chatbot, chat_in, chat_ids])  # fmt: skip

        def liked(p, ids, data: gr.LikeData):
            return chat_rate(ctx, p, ids, data.index, data.liked), history(ctx, p), status(ctx, p)

        on(chatbot.like, liked, [profile, chat_ids], [chat_md, hist, status_md])
        # What main refreshes when the profile changes or the page loads: the profile's prompts and ratings, and
        # everything of the profile shown before (a pair, a chat, a "Sounds like me?" test) cleared.
        self.outputs = [prompt_pick, hist, text_a, text_b, ids_state, pair_md, rate_md, *buttons, chatbot, chat_ids,
                        chat_md, like_prompt, *like_texts, like_state, *picks, like_md]  # fmt: skip
        self.cancels = [generating, chatting, testing]  # a switch of profile stops what streams for the last one

    def views(self, profile):
        def off():  # a new update per component: Gradio consumes the one it is given
            return gr.update(value="", interactive=False)

        return (gr.update(choices=prompt_choices(self.ctx, profile), value=None), history(self.ctx, profile),
                off(), off(), [None, None], "", "", *_buttons(False), [], {}, "", "", "", "", None,
                *(gr.update(interactive=False) for _ in range(2)), "")  # fmt: skip
