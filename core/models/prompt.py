"""The one prompt renderer, for training, scoring and generation: a prompt (and its context) as the model's user
turn, rendered through the model's chat template when it has one. A text without a prompt answers
:data:`DEFAULT_PROMPT`."""

from __future__ import annotations

from idiolect.core.base.errors import IdiolectError

DEFAULT_PROMPT = "Write a short passage."


def user_message(prompt: str | None, context: str | None = None) -> str:
    """The user turn a model answers: the context (a title, a question's body) and the prompt as paragraphs; no
    prompt (None or blank) is :data:`DEFAULT_PROMPT`."""
    prompt = prompt.strip() if prompt and prompt.strip() else DEFAULT_PROMPT
    return f"{context.strip()}\n\n{prompt}" if context and context.strip() else prompt


def render_prompt(
    tokenizer_or_template, prompt: str | None, *, system: str | None = None, context: str | None = None
) -> str:
    """The text a model continues for ``prompt``: its chat template where it has one (with the generation
    prompt), else a plain format (system, context and prompt as paragraphs, ending in a blank line).

    Takes a tokenizer, or a chat template string (from a GGUF file's metadata) or None."""
    user = user_message(prompt, context)
    template = getattr(tokenizer_or_template, "chat_template", tokenizer_or_template)
    if template:
        from jinja2.exceptions import TemplateError

        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        try:
            if hasattr(tokenizer_or_template, "apply_chat_template"):
                return tokenizer_or_template.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            return _render_jinja(template, messages)
        except TemplateError as exc:  # SecurityError included: the sandbox refused what the template tried
            raise IdiolectError(
                f"the model's chat template cannot be used ({type(exc).__name__}: {exc}); it runs in a sandbox, "
                "and this one is broken or tried something the sandbox refuses"
            ) from None
    head = f"{system.strip()}\n\n" if system and system.strip() else ""
    return f"{head}{user}\n\n"


def _render_jinja(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


CUT_MARK = " …"  # ends a part of the prompt that was cut to fit


def prompt_ids(
    tokenizer, prompt: str | None, *, context: str | None = None, system: str | None = None, budget: int
) -> list[int]:
    """The token ids of :func:`render_prompt` for ``prompt``, at most ``budget`` of them. When the rendered
    prompt is too long, its *text* is cut, never the template: the context loses its end first, then the prompt,
    then the system message (each cut part ends in :data:`CUT_MARK`), so BOS, the turn headers and the
    generation prompt are always there, as they are when the model is used. Only a template longer than the
    budget on its own keeps its head and its tail (the generation prompt) and loses its middle.

    The one place a prompt is fitted to a length: training, scoring and the benchmarks take it."""
    return fit_prompt(tokenizer, prompt, context=context, system=system, budget=budget)[1]


def fit_prompt(
    tokenizer, prompt: str | None, *, context: str | None = None, system: str | None = None, budget: int
) -> tuple[dict, list[int]]:
    """(the parts as cut: ``{"prompt", "context", "system"}``, their token ids): :func:`prompt_ids` with the
    texts it kept, for a generator that renders them itself (llama.cpp)."""
    templated = bool(getattr(tokenizer, "chat_template", None))

    def encode(parts: dict) -> list[int]:
        text = render_prompt(tokenizer, parts["prompt"], context=parts["context"], system=parts["system"])
        return tokenizer(text, add_special_tokens=not templated)["input_ids"]

    parts = {"prompt": prompt, "context": context, "system": system}
    ids = encode(parts)
    for name in ("context", "prompt", "system"):
        if len(ids) <= budget:
            return parts, ids
        text = parts[name]
        if not text or not text.strip():
            continue
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        lo, hi, best = 0, len(pieces) - 1, None  # the most tokens of this part that fit
        while lo <= hi:
            mid = (lo + hi) // 2
            kept = tokenizer.decode(pieces[:mid], skip_special_tokens=True).rstrip() + CUT_MARK
            trial = encode({**parts, name: kept})
            if len(trial) <= budget:
                best, lo = (kept, trial), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return {**parts, name: best[0]}, best[1]
        parts[name] = CUT_MARK.strip()
        ids = encode(parts)
    if len(ids) <= budget:
        return parts, ids
    head = budget // 2
    return parts, ids[:head] + ids[len(ids) - (budget - head) :]
