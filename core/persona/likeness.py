""" "Sounds like me?": the test a person trusts most. The app shows one of the user's own held-out texts and the
adapter's answer to the same prompt, unlabelled and in random order; the user picks the one they wrote. The
score is the share of answered tests in which the adapter fooled its own author (50% = indistinguishable).

Honest by construction:
- the user's text is one the run held out (``runs/<id>/data.json``: never trained on), so the adapter cannot
  have memorized it; a run without held-out texts cannot be tested;
- both texts answer the same prompt (a sample without one was trained as an answer to ``DEFAULT_PROMPT``, so
  that is the prompt both answer), and both are cut to the same number of words, so length gives nothing away;
- the side is drawn at random per test and the pick is stored with it; the least-tested held-out text comes
  first, so a score over a few tests is not one text seen again and again.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from idiolect.core.base.errors import IdiolectError
from idiolect.core.models.prompt import DEFAULT_PROMPT
from idiolect.core.store import Store
from idiolect.core.training.labels import TAR
from idiolect.core.training.runs import read_data_record, run_dir

MIN_WORDS, MAX_WORDS = 12, 90


def heldout_texts(store: Store, run: dict) -> list[dict]:
    """The user's own texts the run never trained on: ``{prompt, context, text, hash}`` each."""
    record = read_data_record(run_dir(store, run["id"]))
    rows = ((record or {}).get("sets", {}).get("heldout", {}) or {}).get(TAR, [])
    return [r for r in rows if len(r["text"].split()) >= MIN_WORDS]


def same_length(a: str, b: str) -> tuple[str, str]:
    """Both texts cut to the same number of words (the shorter one's, at most MAX_WORDS), both ending in "…"
    when either was cut (a mark on one side only would say which text was the longer)."""
    wa, wb = a.split(), b.split()
    n = min(len(wa), len(wb), MAX_WORDS)
    mark = " …" if max(len(wa), len(wb)) > n else ""
    return " ".join(wa[:n]) + mark, " ".join(wb[:n]) + mark


def next_item(store: Store, profile_id: int, run: dict) -> dict:
    """The held-out text to test next: the least tested one for this run (ties: the one with a prompt of its
    own, then the order of the record)."""
    rows = heldout_texts(store, run)
    if not rows:
        raise IdiolectError(
            f"run {run['id']} held none of your texts out (texts of {MIN_WORDS}+ words that it never trained on), "
            "so there is nothing to test it on: add more writing and train again"
        )
    used = Counter(t["own_hash"] for t in store.likeness_tests(profile_id, run["id"]))
    return min(rows, key=lambda r: (used[r["hash"]], r["prompt"] is None))


def start_test(
    store: Store, profile_id: int, run: dict, generate: Callable[[str, str | None], str], *, rng=None
) -> dict:
    """Make one test: the adapter's answer (``generate(prompt, context)``, with the run's adapter loaded) to
    the prompt of one of the user's held-out texts. Returns ``{id, prompt, texts: [side 0, side 1]}``."""
    rng = rng or random.Random()
    item = next_item(store, profile_id, run)
    prompt = item["prompt"] or DEFAULT_PROMPT
    model_text = generate(prompt, item["context"]).strip()
    if not model_text:
        raise IdiolectError("the adapter gave an empty answer; try again")
    own, theirs = same_length(item["text"], model_text)
    own_side = rng.randrange(2)
    texts = [theirs, own] if own_side else [own, theirs]
    test_id = store.add_likeness_test(profile_id, run["id"], prompt, own, item["hash"], theirs, own_side)
    return {"id": test_id, "prompt": prompt, "context": item["context"], "texts": texts}


def answer(store: Store, profile_id: int, test_id: int, picked_side: int) -> dict:
    """Keep the pick; returns the test with ``right`` (the user found their own text) and the score so far."""
    test = store.answer_likeness_test(profile_id, test_id, int(picked_side))
    return {
        **test,
        "right": test["picked_side"] == test["own_side"],
        "score": score(store, profile_id, test["run_id"]),
    }


def score(store: Store, profile_id: int, run_id: int | None = None) -> dict:
    """Answered tests and how many fooled the author; ``rate`` is None before the first answer."""
    answered = [t for t in store.likeness_tests(profile_id, run_id) if t["picked_side"] is not None]
    fooled = sum(t["picked_side"] != t["own_side"] for t in answered)
    return {"answered": len(answered), "fooled": fooled, "rate": fooled / len(answered) if answered else None}


def describe(s: dict) -> str:
    if not s["answered"]:
        return "not tested yet"
    return (
        f"fooled you {s['fooled']} of {s['answered']} times ({100 * s['rate']:.0f}%; 50% = indistinguishable)"
    )
