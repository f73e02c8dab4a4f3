"""Chat histories and feedback datasets from other tools, read into samples and ratings.

A person's largest body of their own writing is usually their chat history. This module reads it from

- a **ChatGPT** data export (``conversations.json``: a tree per conversation, ``mapping`` + ``current_node``),
- an **Open WebUI** chat export (JSON: ``chat.history.messages`` + ``currentId``, thumbs in ``annotation``)
  and its feedback export (``type: rating`` with a ``snapshot`` of the chat),
- a **Claude** export (``conversations.json`` with ``chat_messages``),
- **OpenAI-style chat** JSON/JSONL (``{"messages": [{"role", "content"}]}`` per row),

and the feedback datasets other trainers use, in the direction *into* Idiolect:

- **TRL** unpaired preference rows (``prompt``, ``completion``, ``label``) and paired ones (``prompt``,
  ``chosen``, ``rejected``), standard (strings) or conversational (lists of messages),
- **LLaMA-Factory** KTO rows (``kto_tag`` with alpaca ``instruction/input/output`` or sharegpt ``messages`` /
  ``conversations``) and its ranking rows (``chosen``/``rejected``).

What becomes what:

- **Your turns are samples.** Each user message on the branch the conversation ended on (ChatGPT's
  ``current_node``, Open WebUI's ``currentId``; edits and regenerations left on other branches are drafts) becomes
  one sample; the assistant message it answers is its prompt and the conversation's title its context. System,
  tool and assistant messages, custom instructions and attachments (files, images, their extracted text) are not
  your writing and are never samples.
- **What is left out of a turn** (:func:`own_words`, the documented rule): fenced code blocks (```` ``` ```` or
  ``~~~``); indented code (two or more lines in a row indented by 4+ spaces or a tab); pasted logs (lines that
  start with a timestamp, a log level such as ``ERROR``/``WARN``/``INFO``, ``Traceback``, ``File "...", line N``,
  a stack frame ``at x.y(...)``, a shell or REPL prompt ``$ ``/``>>> ``, an ``...Error:``/``...Exception:``
  line, or lines that are mostly not letters); quoted text (lines starting with ``>``, and paragraphs of 60+
  characters copied from the assistant message being answered). A turn with fewer than
  :data:`MIN_WORDS` words of its own left is skipped with the reason.
- **Thumbs are ratings.** A rated assistant message (Open WebUI) or a labelled row (TRL, LLaMA-Factory) becomes a
  generation with a rating, exactly as if it had been rated in the app: thumbs-up rows are positives, thumbs-down
  rows negatives (:func:`idiolect.core.training.labels.feedback_examples` is the one rule).

Every parser is per row: a conversation or row that cannot be read is one skipped row with its reason, and the
rest of the file still lands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from idiolect.core.ingest.chat_text import MIN_WORDS, content_text, own_words, role_of
from idiolect.core.ingest.feedback_datasets import dataset_rows

MAX_PROMPT_CHARS = 4000  # the answered assistant message is cut to its last this-many characters

CHAT_FORMATS = ("chatgpt", "claude", "openwebui", "openwebui-feedback", "openai-chat")


@dataclass
class Turn:
    role: str  # user | assistant | system | tool
    text: str
    model: str | None = None
    rating: int | None = None  # +1 / -1 where the export carries the user's thumbs
    attachments: int = 0


@dataclass
class Conversation:
    where: str
    title: str | None
    turns: list[Turn]  # the branch the conversation ended on
    rated: list[tuple[str, Turn]] = field(
        default_factory=list
    )  # (the prompt, a rated assistant turn), any branch


@dataclass
class Parsed:
    """What a chat export or dataset yields: samples and ratings as rows, plus what was skipped and left out."""

    samples: list[dict] = field(default_factory=list)  # {where, prompt, context, text}
    rated: list[dict] = field(default_factory=list)  # {where, prompt, text, rating, model}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    left_out: dict[str, int] = field(default_factory=dict)  # what own_words removed from kept turns, in lines


# -------------------------------------------------------------------------------------------------------
# Which format is this?


def detect(item) -> str | None:
    """The format of a file from its first row (a dict), or None when it is none of these."""
    if not isinstance(item, dict):
        return None
    if "mapping" in item and isinstance(item.get("mapping"), dict):
        return "chatgpt"
    if "chat_messages" in item:
        return "claude"
    if item.get("type") == "rating" and isinstance(item.get("data"), dict):
        return "openwebui-feedback"
    chat = item.get("chat")
    if isinstance(chat, dict) and ("history" in chat or "messages" in chat):
        return "openwebui"
    if "kto_tag" in item:
        return "llamafactory-kto"
    if "chosen" in item and "rejected" in item:
        chosen = item["chosen"]
        if isinstance(chosen, dict) or "conversations" in item or "instruction" in item:
            return "llamafactory-ranking"
        return "trl-paired"
    if "completion" in item and "label" in item:
        return "trl-unpaired"
    if isinstance(item.get("messages"), list) and "text" not in item:
        return "openai-chat"
    return None


# -------------------------------------------------------------------------------------------------------
# The rule for what of a turn is the person's own writing.


# -------------------------------------------------------------------------------------------------------
# Message contents in the shapes the tools write.


def _chatgpt(item: dict, where: str) -> Conversation:
    mapping = item["mapping"]
    node_id = item.get("current_node")
    if node_id not in mapping:  # no current node: follow the latest child from the root
        roots = [k for k, v in mapping.items() if not (v or {}).get("parent")]
        node_id = roots[0] if roots else None
        seen = set()
        while node_id is not None and (mapping.get(node_id) or {}).get("children") and node_id not in seen:
            seen.add(node_id)
            node_id = mapping[node_id]["children"][-1]
    chain: list[dict] = []
    seen = set()
    while node_id is not None and node_id in mapping and node_id not in seen:
        seen.add(node_id)
        node = mapping[node_id] or {}
        if node.get("message"):
            chain.append(node["message"])
        node_id = node.get("parent")
    turns = []
    for msg in reversed(chain):
        role = role_of((msg.get("author") or {}).get("role"))
        meta = msg.get("metadata") or {}
        content = msg.get("content") or {}
        if meta.get("is_visually_hidden_from_conversation") or (
            isinstance(content, dict) and content.get("content_type") not in ("text", "multimodal_text")
        ):
            role = "system" if role == "user" else role  # custom instructions, tool calls, browsing, thoughts
        text, other = content_text(content)
        turns.append(
            Turn(
                role,
                text,
                model=meta.get("model_slug"),
                attachments=other + len(meta.get("attachments") or []),
            )
        )
    return Conversation(where, item.get("title"), turns)


def _claude(item: dict, where: str) -> Conversation:
    messages = [m for m in item.get("chat_messages") or [] if isinstance(m, dict)]
    if (
        any("parent_message_uuid" in m for m in messages) and messages
    ):  # a tree: the branch of the last message
        by_id = {m.get("uuid"): m for m in messages}
        chain, node, seen = [], messages[-1], set()
        while node is not None and node.get("uuid") not in seen:
            seen.add(node.get("uuid"))
            chain.append(node)
            node = by_id.get(node.get("parent_message_uuid"))
        messages = list(reversed(chain))
    turns = []
    for m in messages:
        text, other = content_text(m.get("content")) if m.get("content") else (m.get("text") or "", 0)
        if not text and isinstance(m.get("text"), str):
            text = m["text"]
        turns.append(
            Turn(role_of(m.get("sender")), text, attachments=other + len(m.get("attachments") or []) + len(
                m.get("files") or []))
        )  # fmt: skip
    return Conversation(where, item.get("name"), turns)


def _owui_turn(m: dict) -> Turn:
    text, other = content_text(m.get("content"))
    rating = (m.get("annotation") or {}).get("rating") if isinstance(m.get("annotation"), dict) else None
    rating = 1 if isinstance(rating, (int, float)) and rating > 0 else -1 if isinstance(rating, (int, float)) and (
        rating < 0) else None  # fmt: skip
    model = m.get("model") or (m.get("models") or [None])[0]
    return Turn(
        role_of(m.get("role")),
        text,
        model=model,
        rating=rating,
        attachments=other + len(m.get("files") or []),
    )


def _openwebui_chat(chat: dict, where: str, title: str | None) -> Conversation:
    history = chat.get("history") if isinstance(chat.get("history"), dict) else {}
    messages = history.get("messages") if isinstance(history.get("messages"), dict) else {}
    if messages:
        node_id, chain, seen = history.get("currentId"), [], set()
        while node_id in messages and node_id not in seen:
            seen.add(node_id)
            chain.append(messages[node_id])
            node_id = messages[node_id].get("parentId")
        branch = list(reversed(chain))
    else:
        branch = [m for m in chat.get("messages") or [] if isinstance(m, dict)]
        messages = {m.get("id", i): m for i, m in enumerate(branch)}
    conv = Conversation(where, title or chat.get("title"), [_owui_turn(m) for m in branch])
    for m in messages.values():  # ratings on every branch: a thumbs on a regenerated answer still counts
        turn = _owui_turn(m)
        if turn.role == "assistant" and turn.rating is not None:
            parent = messages.get(m.get("parentId")) if m.get("parentId") is not None else None
            prompt = content_text(parent.get("content"))[0] if parent else ""
            conv.rated.append((prompt, turn))
    return conv


def _openwebui(item: dict, where: str) -> Conversation:
    return _openwebui_chat(item["chat"], where, item.get("title"))


def _openwebui_feedback(item: dict, where: str) -> Conversation:
    """One rating of the feedback export: the rated message is found in the chat snapshot it carries."""
    data, meta = item.get("data") or {}, item.get("meta") or {}
    chat = ((item.get("snapshot") or {}).get("chat") or {}).get("chat") or (item.get("snapshot") or {}).get(
        "chat") or {}  # fmt: skip
    messages = ((chat.get("history") or {}).get("messages")) or {}
    msg = messages.get(meta.get("message_id"))
    if msg is None:
        raise ValueError("the rated message is not in the feedback's chat snapshot")
    rating = data.get("rating")
    if not isinstance(rating, (int, float)) or rating == 0:
        raise ValueError(f"no thumbs rating (rating {rating!r})")
    turn = _owui_turn(msg)
    turn.rating = 1 if rating > 0 else -1
    turn.model = data.get("model_id") or turn.model
    parent = messages.get(msg.get("parentId"))
    prompt = content_text(parent.get("content"))[0] if parent else ""
    return Conversation(where, chat.get("title"), [], rated=[(prompt, turn)])


def _openai_chat(item: dict, where: str) -> Conversation:
    turns = []
    for m in item.get("messages") or []:
        if not isinstance(m, dict):
            raise ValueError("a message is not an object")
        text, other = content_text(m.get("content"))
        turns.append(Turn(role_of(m.get("role")), text, attachments=other))
    return Conversation(where, item.get("title"), turns)


CONVERSATION_PARSERS = {
    "chatgpt": _chatgpt,
    "claude": _claude,
    "openwebui": _openwebui,
    "openwebui-feedback": _openwebui_feedback,
    "openai-chat": _openai_chat,
}


def _title(item) -> str | None:
    if not isinstance(item, dict):
        return None
    t = item.get("title") or item.get("name")
    return t if isinstance(t, str) and t.strip() else None


def _conversation_samples(conv: Conversation, out: Parsed) -> None:
    previous_assistant = None
    n_user = 0
    for turn in conv.turns:
        if turn.role == "assistant":
            previous_assistant = turn.text
            continue
        if turn.role != "user":
            continue
        n_user += 1
        where = f"{conv.where} turn {n_user}"
        if not turn.text.strip():
            out.skipped.append(
                (where, "no text (only an attachment)" if turn.attachments else "empty message")
            )
            continue
        text, removed = own_words(turn.text, previous_assistant)
        if len(text.split()) < MIN_WORDS:
            what = ", ".join(f"{n} {k} line{'s' if n > 1 else ''}" for k, n in removed.items())
            reason = (
                f"fewer than {MIN_WORDS} words of your own after leaving out {what}"
                if removed
                else f"fewer than {MIN_WORDS} words"
            )
            out.skipped.append((where, reason))
            continue
        for k, n in removed.items():
            out.left_out[k] = out.left_out.get(k, 0) + n
        prompt = previous_assistant.strip()[-MAX_PROMPT_CHARS:] if previous_assistant else None
        out.samples.append({"where": where, "prompt": prompt or None, "context": conv.title, "text": text})
    for prompt, turn in conv.rated:
        out.rated.append(
            {
                "where": conv.where,
                "prompt": prompt,
                "text": turn.text,
                "rating": turn.rating,
                "model": turn.model,
            }
        )


# -------------------------------------------------------------------------------------------------------
# Feedback datasets (TRL, LLaMA-Factory).


# -------------------------------------------------------------------------------------------------------


def parse(items: Iterable[tuple[str, object | None, str | None]], fmt: str, source: str) -> Parsed:
    """Samples and ratings from the rows of one file in format ``fmt`` (see :func:`detect`); ``items`` are
    ``(where, row, problem)`` as the importers' readers yield them. A row that cannot be read is skipped with its
    reason; a row of another format is skipped as such."""
    out = Parsed()
    for where, item, problem in items:
        if problem:
            out.skipped.append((where, problem))
            continue
        row_fmt = detect(item)
        title = _title(item)
        label = f"{where} ({title[:40]!r})" if title and fmt in CHAT_FORMATS else where
        if row_fmt != fmt and not (fmt == "trl-paired" and row_fmt == "llamafactory-ranking"):
            out.skipped.append((label, f"not a {fmt} row (looks like {row_fmt or 'something else'})"))
            continue
        try:
            if fmt in CONVERSATION_PARSERS:
                _conversation_samples(CONVERSATION_PARSERS[fmt](item, label), out)
            else:
                out.rated.extend(dataset_rows(row_fmt, item, label, source))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, ValueError)
                else f"unreadable {fmt} row ({type(exc).__name__}: {exc})"
            )
            out.skipped.append((label, reason))
    return out
