"""Feedback datasets of other trainers read into ratings: TRL's unpaired and paired rows and LLaMA-Factory's KTO and ranking rows (standard or conversational)."""

from __future__ import annotations

from idiolect.core.ingest.chat_text import content_text, role_of

DATASET_FORMATS = ("trl-unpaired", "trl-paired", "llamafactory-kto", "llamafactory-ranking")


def _last_user(messages: list) -> str:
    users = [content_text(m.get("content", m.get("value")))[0] for m in messages
             if isinstance(m, dict) and role_of(m.get("role", m.get("from"))) == "user"]  # fmt: skip
    return users[-1] if users else ""


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError("expected a list of messages")
    return [
        {
            "role": role_of(m.get("role", m.get("from"))),
            "content": content_text(m.get("content", m.get("value")))[0],
        }
        for m in value
    ]


def _text_or_last(value, what: str) -> str:
    """A completion as a string, or the last assistant message of a conversational one."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # LLaMA-Factory's {"from": "gpt", "value": ...}
        return content_text(value.get("content", value.get("value")))[0]
    msgs = _messages(value)
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    if not answers:
        raise ValueError(f"'{what}' has no assistant message")
    return answers[-1]


def _prompt_of(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _last_user(_messages(value))


def _label(value) -> int:
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, (int, float)) and value in (0, 1, -1):
        return 1 if value > 0 else -1
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return 1 if value.strip().lower() in ("true", "1") else -1
    raise ValueError(f"the label is {value!r}, not true or false")


def dataset_rows(fmt: str, item: dict, where: str, source: str) -> list[dict]:
    model = f"imported ({source})"
    if fmt == "trl-unpaired":
        return [{"where": where, "prompt": _prompt_of(item.get("prompt")),
                 "text": _text_or_last(item["completion"], "completion"), "rating": _label(item["label"]),
                 "model": model}]  # fmt: skip
    if fmt == "trl-paired":
        prompt = item.get("prompt")
        prompt = _prompt_of(prompt) if prompt is not None else _last_user(_messages(item["chosen"]))
        return [
            {"where": where, "prompt": prompt, "text": _text_or_last(item[k], k), "rating": r, "model": model}
            for k, r in (("chosen", 1), ("rejected", -1))
        ]
    if fmt == "llamafactory-kto":
        if "instruction" in item:
            prompt = "\n\n".join(p for p in (item.get("instruction"), item.get("input")) if p)
            text = item.get("output")
        else:
            msgs = _messages(item.get("messages", item.get("conversations")))
            if not msgs or msgs[-1]["role"] != "assistant":
                raise ValueError("the conversation does not end with the rated assistant message")
            prompt, text = _last_user(msgs[:-1]), msgs[-1]["content"]
        if not isinstance(text, str):
            raise ValueError("no output text")
        return [
            {
                "where": where,
                "prompt": prompt,
                "text": text,
                "rating": _label(item["kto_tag"]),
                "model": model,
            }
        ]
    if fmt == "llamafactory-ranking":
        if "instruction" in item:
            prompt = "\n\n".join(p for p in (item.get("instruction"), item.get("input")) if p)
        else:
            prompt = _last_user(_messages(item.get("conversations", item.get("messages"))))
        return [
            {"where": where, "prompt": prompt, "text": _text_or_last(item[k], k), "rating": r, "model": model}
            for k, r in (("chosen", 1), ("rejected", -1))
        ]
    raise ValueError(fmt)
