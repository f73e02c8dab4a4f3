"""The one prompt renderer, for training, scoring and generation: a prompt (and its context) as the model's user
turn, rendered through the model's chat template when it has one. A text without a prompt answers
:data:`DEFAULT_PROMPT`."""

from __future__ import annotations

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
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        if hasattr(tokenizer_or_template, "apply_chat_template"):
            return tokenizer_or_template.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return _render_jinja(template, messages)
    head = f"{system.strip()}\n\n" if system and system.strip() else ""
    return f"{head}{user}\n\n"


def _render_jinja(template: str, messages: list[dict]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )
