""" "Sounds like me?": held-out texts only, same prompt, same length, random sides, one answer per test."""

from __future__ import annotations

import json
import random

import pytest

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import content_hash
from idiolect.core.models.prompt import DEFAULT_PROMPT
from idiolect.core.persona import likeness
from idiolect.core.training.runs import run_dir

OWN_A = "I grind the beans coarse and let them bloom for forty seconds before the slow pour, every single morning."
OWN_B = " ".join(["Tea is fine too, when the day is long and the kettle is already warm on the stove."] * 2)


def a_run(store, pid, heldout):
    run = store.create_run(pid, "cbpo", "tiny", {"steps": 2})
    store.update_run(run, status="completed")
    rows = [{"source": f"sample:{i}", "hash": content_hash(p, None, t), "prompt": p, "context": None, "text": t}
            for i, (p, t) in enumerate(heldout)]  # fmt: skip
    run_dir(store, run).mkdir(parents=True)
    trained = [
        {"source": "sample:9", "hash": "h", "prompt": None, "context": None, "text": "trained on " * 20}
    ]
    record = {"version": 1, "total_steps": 2, "sets": {"train": {"tar": trained}, "heldout": {"tar": rows}}}
    (run_dir(store, run) / "data.json").write_text(json.dumps(record))
    return store.get_run(run)


def test_a_test_shows_a_held_out_text_and_the_adapters_answer_to_its_prompt(store):
    pid = store.create_profile("ana")
    with pytest.raises(IdiolectError, match="held none of your texts out"):
        likeness.next_item(store, pid, a_run(store, pid, [(None, "too short to test")]))
    run = a_run(store, pid, [(None, OWN_B), ("How do you brew?", OWN_A)])
    asked = []

    def generate(prompt, context):
        asked.append(prompt)
        return "A long answer from the adapter that goes on and on " * 5

    first = likeness.start_test(store, pid, run, generate, rng=random.Random(1))
    assert asked == [
        "How do you brew?"
    ]  # the text with its own prompt first; the adapter answers that prompt
    own_side = store.likeness_tests(pid)[0]["own_side"]
    assert first["texts"][own_side].startswith("I grind the beans")
    assert len(first["texts"][0].split()) == len(first["texts"][1].split())  # same length: no give-away
    assert "trained on" not in " ".join(first["texts"])  # never a text the adapter trained on
    result = likeness.answer(store, pid, first["id"], 1 - own_side)
    assert not result["right"] and result["score"] == {"answered": 1, "fooled": 1, "rate": 1.0}
    with pytest.raises(IdiolectError, match="answered already"):
        likeness.answer(store, pid, first["id"], own_side)
    second = likeness.start_test(store, pid, run, generate, rng=random.Random(2))
    assert (
        asked[-1] == DEFAULT_PROMPT
    )  # the least-tested text next; prompt-less texts were trained on this one
    assert likeness.answer(store, pid, second["id"], store.likeness_tests(pid)[1]["own_side"])["right"]
    assert likeness.score(store, pid, run["id"]) == {"answered": 2, "fooled": 1, "rate": 0.5}
    assert (
        likeness.describe(likeness.score(store, pid))
        == "fooled you 1 of 2 times (50%; 50% = indistinguishable)"
    )
    other = store.create_profile("bo")
    with pytest.raises(IdiolectError, match="no likeness_test"):
        likeness.answer(store, other, second["id"], 0)


def test_sides_are_drawn_at_random(store):
    pid = store.create_profile("ana")
    run = a_run(store, pid, [("Q?", OWN_A)])
    rng = random.Random(0)
    for _ in range(40):
        likeness.start_test(store, pid, run, lambda p, c: "words " * 30, rng=rng)
    sides = [t["own_side"] for t in store.likeness_tests(pid)]
    assert 10 < sum(sides) < 30
