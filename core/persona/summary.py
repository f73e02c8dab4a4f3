"""POPI (arXiv 2510.17881): the preference summary as the generator-agnostic interface. Candidates are written from the structured differences (and, where configured, by an LLM); each is scored by its lift (mean over the user's held-out texts of log p(text | summary, prompt) - log p(text | prompt), minus the same on other writers' texts, under a generator model); the best is kept with its score (best-of-K)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from idiolect.core.base.identity import text_digest
from idiolect.core.models.loading import pad_id
from idiolect.core.persona.style import SENT_SPLIT_RE, difference_report, profile_data, report_text

GENERIC_SUMMARY = "Write clearly and helpfully."


def _first_sentence(text: str, max_words: int = 20) -> str:
    first = SENT_SPLIT_RE.split(text.strip())[0]
    words = first.split()
    return " ".join(words[:max_words]) + ("..." if len(words) > max_words else "")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_candidates(report: dict, examples: Sequence[str]) -> dict[str, str]:
    """Summaries written from the structured differences, from brief to detailed."""
    s = report["sentences"]
    words = [w for w, _ in report["distinctive_words"]["more"][:10]]
    avoid = [w for w, _ in report["distinctive_words"]["less"][:6]]
    style = [x for dim in ("writing", "emotional", "semantic") for x in s[dim]]
    strip = [re.sub(r" \(.*\)$", "", x) for x in style]
    cands = {}
    if strip:
        cands["concise"] = "Write like this person: " + "; ".join(strip[:3]) + "."
        cands["full"] = (
            "Write in this person's voice. Compared with most writers, they "
            + "; ".join(strip)
            + "."
            + (f" Words they often use: {', '.join(words)}." if words else "")
        )
        cands["style"] = "Match this writing style: " + "; ".join(strip) + "."
    if words:
        cands["vocabulary"] = (
            f"Write as this person does, using their typical words ({', '.join(words)})"
            + (f" and avoiding {', '.join(avoid)}" if avoid else "")
            + "."
        )
    if examples:
        openings = [f'"{_first_sentence(e)}"' for e in examples[:2]]
        cands["voice"] = (
            (_cap("; ".join(strip[:4])) + ". " if strip else "")
            + f"Their writing sounds like: {' / '.join(openings)}"
            + (f" Typical words: {', '.join(words[:8])}." if words else "")
        )
    fb = report.get("feedback")
    if fb and fb["sentences"] and strip:
        cands["with-feedback"] = (
            cands["concise"]
            + " In rated outputs they preferred texts that "
            + "; ".join(fb["sentences"])
            + "."
        )
    return cands


def llm_candidates(report: dict, examples: Sequence[str], writer, n: int = 2) -> dict[str, str]:
    """Summaries written by an LLM from the differences and a few examples. ``writer(prompt) -> str``."""
    prompt = (
        "Here is how one person's writing differs from other writers', measured on their texts:\n"
        + report_text(report)
        + "\n\nTwo of their texts:\n"
        + "\n---\n".join(e[:600] for e in examples[:2])
        + "\n\nWrite a system prompt of at most 100 words that tells an assistant how to write exactly like this "
        "person (tone, sentence shape, vocabulary, structure). Reply with the system prompt only."
    )
    out = {}
    for i in range(n):
        text = (writer(prompt, seed=i) or "").strip().strip('"')
        if text:
            out[f"llm-{i + 1}"] = text[:1500]
    return out


Row = tuple[str | None, str | None, str]  # (prompt, context, text), the user's and the peers' alike


def conditioned_examples(rows: Sequence[Row], tokenizer, system, max_length, response_tokens):
    """The examples a summary is scored on: each row's prompt and context rendered as training renders them
    (the user's texts and the peers' under the same conditioning), ``system`` as the system message, the
    response cut to its first ``response_tokens`` tokens."""
    from idiolect.core.training.data import Example, tokenize

    ex = [Example("tar", p, c, t) for p, c, t in rows]
    tokenize(ex, tokenizer, max_length, system=system)
    for e in ex:
        e.response_ids = e.response_ids[:response_tokens]
    return ex


def _summary_logps(model, tokenizer, rows, system, device, max_length, response_tokens):
    from idiolect.core.training.logprobs import logps_of

    ex = conditioned_examples(rows, tokenizer, system, max_length, response_tokens)
    return logps_of(model, ex, device, pad_id(tokenizer), adapter=False)


def summary_baseline(
    model, tokenizer, user, peers, device="cpu", max_length: int = 512, response_tokens: int = 64
):
    """The no-summary log-probs :func:`summary_lift` compares with: the same for every candidate, so computed
    once and passed to each (``baseline=``)."""
    args = (device, max_length, response_tokens)
    return {
        "user": _summary_logps(model, tokenizer, user, None, *args),
        "peers": _summary_logps(model, tokenizer, peers, None, *args),
    }


def summary_lift(
    model,
    tokenizer,
    summary: str | None,
    user: Sequence[Row],
    peers: Sequence[Row],
    device="cpu",
    max_length: int = 512,
    response_tokens: int = 64,
    baseline: dict | None = None,
) -> dict:
    """POPI's score of a summary s: how much it raises the log-likelihood of the user's held-out texts as the
    system message, log p(text | s, prompt) - log p(text | prompt), minus how much it raises other writers'.

    Every text is scored on its first ``response_tokens`` tokens only: a context of any kind raises a text's
    first tokens most, so whole-text sums would favour writers of long texts and per-token means writers of short
    ones; on equal-length openings neither does. ``lift`` is the difference of the mean per-token gains.
    ``baseline``: :func:`summary_baseline` of the same texts, when scoring several summaries."""
    args = (device, max_length, response_tokens)
    baseline = baseline or summary_baseline(model, tokenizer, user, peers, *args)
    (u0, uc), (p0, pc) = baseline["user"], baseline["peers"]
    u1, _ = _summary_logps(model, tokenizer, user, summary, *args)
    p1, _ = _summary_logps(model, tokenizer, peers, summary, *args)
    user_tok = float(((u1 - u0) / uc).mean())
    peer_tok = float(((p1 - p0) / pc).mean())
    return {
        "lift": user_tok - peer_tok,
        "user_gain_per_token": user_tok,
        "peer_gain_per_token": peer_tok,
        "user_gain": float((u1 - u0).mean()),
        "peer_gain": float((p1 - p0).mean()),
        "summary_tokens": len(tokenizer(summary or "", add_special_tokens=False)["input_ids"]),
    }


def _split_user(texts: list[Row], max_heldout: int = 16):
    from idiolect.core.training.data import is_heldout

    held = [pt for pt in texts if is_heldout(pt[-1], 0.25)][:max_heldout]
    if len(held) < 2:
        held = texts[-max(2, len(texts) // 4) :]
    keep = [pt for pt in texts if pt not in held]
    return keep, held


def _peer_sample(peers: dict[str, list[Row]], n: int) -> list[Row]:
    """Up to ``n`` peer texts, one per writer in turn, in an order fixed by the texts themselves (not by the
    pool's random pseudonyms), so the score does not change when a pool is imported again."""

    def key(pt):
        return text_digest(pt[-1])

    queues = sorted((sorted(ts, key=key) for ts in peers.values()), key=lambda ts: key(ts[0]))
    out: list[Row] = []
    depth = 0
    while len(out) < n and any(len(q) > depth for q in queues):
        out += [q[depth] for q in queues if len(q) > depth][: n - len(out)]
        depth += 1
    return out


def build_summary(
    store,
    profile: str,
    *,
    model: str,
    pool: str = "default",
    writer=None,
    device: str = "auto",
    seed: int = 0,
    progress=None,
) -> dict:
    """Measure the differences, write candidates, score each by lift under ``model``, keep the best (stored as a
    new summary version). ``writer``: an optional LLM (see :func:`openai_compatible_writer`)."""
    from idiolect.core.models.loading import load_hf_model
    from idiolect.core.models.resolve import local_model_dir

    say = progress or (lambda msg: None)
    user, peers, liked, disliked = profile_data(store, profile, pool)
    train_user, held_user = _split_user(user)
    say(f"comparing {len(train_user)} of your texts with {len(peers)} other writers")
    report = difference_report([t for *_, t in train_user], {w: [t for *_, t in ts] for w, ts in peers.items()},
                               liked=liked, disliked=disliked, seed=seed)  # fmt: skip
    examples = [t for *_, t in train_user]
    cands = template_candidates(report, examples)
    if writer is not None:
        say("asking the LLM for summaries")
        cands.update(llm_candidates(report, examples, writer))
    cands["generic"] = GENERIC_SUMMARY
    held_peers = _peer_sample(peers, 32)
    say(f"scoring {len(cands)} summaries under {model}")
    hf, tokenizer, _ = load_hf_model(local_model_dir(model), device=device, quantize="none")
    scored = []
    device_ = next(hf.parameters()).device
    baseline = summary_baseline(
        hf, tokenizer, held_user, held_peers, device=device_
    )  # once, not per candidate
    for name, text in cands.items():
        score = summary_lift(hf, tokenizer, text, held_user, held_peers, device=device_, baseline=baseline)
        scored.append({"name": name, "text": text, **score})
        say(f"  {name}: lift {score['lift']:+.3f}")
    scored.sort(key=lambda c: -c["lift"])
    best = next(c for c in scored if c["name"] != "generic")
    prof = store.get_profile(profile)
    saved = store.add_summary(
        prof["id"],
        best["text"],
        f"popi:{best['name']}",
        score=best["lift"],
        details={"model": model, "candidates": scored, "report": report, "heldout_texts": len(held_user)},
    )
    return {
        "summary": best,
        "version": saved["version"],
        "candidates": scored,
        "report": report,
        "heldout": {"user": held_user, "peers": held_peers},
    }
