"""DPL differences on texts whose styles are known by construction; POPI summaries on real writers."""

from __future__ import annotations

import random
import re

import pytest
from conftest import shared_file

from idiolect.core.persona.style import (
    difference_report,
    log_odds,
    report_text,
    representatives,
    text_features,
)
from idiolect.core.persona.summary import GENERIC_SUMMARY, build_summary, summary_lift, template_candidates


def test_text_features_measure_what_they_say():
    f = text_features("I love it!!! So good. We'll go again 🎉")
    assert f["exclamations"] == pytest.approx(3 * 100 / 8)  # 3 marks in 8 words
    assert f["sentiment"] > 0.4 and f["first_person"] > 0 and f["contractions"] > 0 and f["emoji"] > 0
    assert text_features("One two three. Four five six.")["words_per_sentence"] == 3
    assert text_features("Shopping:\n- milk\n- eggs\n- bread")["list_lines"] == pytest.approx(0.75)
    assert text_features("this is bad. it was awful. terrible stuff.")["lowercase_starts"] == 1.0
    assert text_features("this is bad. it was awful. terrible stuff.")["sentiment"] < -0.3
    assert (
        text_features("We met Anna in Paris at the Louvre in 2019 and paid 17.50 euros.")["proper_nouns"] > 15
    )
    assert text_features("We met Anna in Paris at the Louvre in 2019 and paid 17.50 euros.")["numbers"] > 10
    assert text_features("the the the the dog dog")["vocabulary_richness"] == pytest.approx(2 / 6)


CALM = ["The report was reviewed by the committee and approved after a short discussion.",
        "Our meeting concluded at noon; the minutes will be circulated tomorrow morning.",
        "The committee considered the budget carefully and recommended modest changes.",
        "Attendance was steady throughout the quarter, according to the register."]  # fmt: skip
LISTS = ["Plan:\n- buy paint\n- sand the door\n- two coats", "Steps:\n- boil water\n- add pasta\n- drain",
         "Packing:\n- socks\n- charger\n- passport", "To do:\n- call the bank\n- pay rent\n- email the boss"]  # fmt: skip
HYPE = ["OMG this is amazing!!! love love love it 🎉", "best day EVER!!! cannot believe how good it was 😍",
        "wow!!! the new album is incredible, so happy!!!", "yes!!! we won the match, absolutely brilliant 🎉🎉"]  # fmt: skip


def _pool(seed=0):
    rng = random.Random(seed)
    peers = {}
    for name, base in (("calm", CALM), ("lists", LISTS), ("hype", HYPE)):
        for i in range(4):
            peers[f"{name}-{i}"] = [t + " " + rng.choice(["", "Indeed.", "Again.", "Noted."]) for t in base]
    return peers


def test_representatives_leave_out_the_users_own_cluster():
    peers = _pool()
    user = [
        "sooo good!!! love this place 🎉",
        "amazing night!!! best food EVER 😍",
        "wow wow wow!!! happy 🎉",
    ]
    reps = representatives(user, peers, k=3, seed=0)
    assert len(reps["representatives"]) == 2
    assert not any(r.startswith("hype") for r in reps["representatives"])
    assert {r.split("-")[0] for r in reps["representatives"]} == {"calm", "lists"}
    assert all(w.startswith("hype") for w in reps["nearest_writers"][:3])


def test_difference_report_names_the_known_differences():
    peers = _pool()
    user = ["sooo good!!! love this place 🎉", "amazing night!!! best food EVER 😍", "wow wow wow!!! happy 🎉",
            "great match!!! we won, brilliant 🎉"]  # fmt: skip
    report = difference_report(user, peers, seed=0)
    z = {r["feature"]: r["z_vs_representatives"] for r in report["features"]}
    assert z["exclamations"] > 1 and z["emoji"] > 1 and z["sentiment"] > 1 and z["list_lines"] < 0
    text = report_text(report)
    assert "use more exclamation marks" in text and "sound more positive" in text
    cands = template_candidates(report, user)
    assert {"concise", "full", "style"} <= set(cands)
    assert all("writes" not in c for c in cands.values())  # bare verbs: "they use ...", "you use ..."


def test_feedback_differences():
    peers = _pool()
    liked = ["Short. Clear. Done.", "Yes. Fine. Next.", "Good plan. Go."]
    disliked = ["Well, I was thinking that perhaps, if it is not too much trouble, we could consider another option",
                "It seems to me that there might possibly be several different ways in which one could approach it"]  # fmt: skip
    report = difference_report(CALM, peers, liked=liked, disliked=disliked, seed=0)
    fb = {d["feature"]: d["z"] for d in report["feedback"]["differences"]}
    assert fb.get("words_per_sentence", 0) < 0 or fb.get("words_per_text", 0) < 0


def test_log_odds_finds_distinctive_words():
    user = ["the hops give this beer its bitterness, hops hops"] * 3
    others = ["the coffee is strong and the milk is warm"] * 3
    words = log_odds(user, others, user + others)
    assert words["more"][0][0] == "hops"
    assert "coffee" in [w for w, _ in words["less"]]


@pytest.fixture(scope="module")
def se_base(tmp_path_factory):
    """A tiny LM pretrained on the shared Stack Exchange texts (about 15 s)."""
    from idiolect.bench.pretrain import pretrain
    from idiolect.core.ingest.stackexchange import read_stackexchange

    texts = []
    for name in ("beer.stackexchange.com_Posts.xml.gz", "coffee.stackexchange.com_Posts.xml.gz"):
        rows, _, _ = read_stackexchange(shared_file(name))
        texts += [r["context"][:300] + "\n\n" + r["text"] for r in rows]
    return pretrain(texts, tmp_path_factory.mktemp("se") / "base", steps=400, seed=0)


def test_popi_summary_beats_generic_and_another_writers(store, se_base, capsys):
    from collections import Counter

    from idiolect.core.ingest.peers import import_peers
    from idiolect.core.models.loading import load_hf_model

    import_peers(store, shared_file("beer.stackexchange.com_Posts.xml.gz"), "beer")
    pool = store.get_pool("beer")
    top = [w for w, _ in Counter(p["writer"] for p in store.peer_texts(pool["id"])).most_common(3)]
    for i, writer in enumerate(top):
        pid = store.create_profile(f"writer{i}")
        store.add_samples(
            pid, [{"prompt": p["context"], "text": p["text"]} for p in store.peer_texts(pool["id"], [writer])]
        )
    results = [build_summary(store, f"writer{i}", model=str(se_base), pool="beer") for i in range(2)]
    mine, other = results
    generic = next(c for c in mine["candidates"] if c["name"] == "generic")
    model, tok, _ = load_hf_model(se_base, device="cpu")
    held = mine["heldout"]
    others_summary = summary_lift(model, tok, other["summary"]["text"], held["user"], held["peers"])
    # The no-summary pass computed once gives the same score as computed per candidate.
    from idiolect.core.persona.summary import summary_baseline

    once = summary_baseline(model, tok, held["user"], held["peers"])
    cached = summary_lift(model, tok, other["summary"]["text"], held["user"], held["peers"], baseline=once)
    assert cached["lift"] == pytest.approx(others_summary["lift"], abs=1e-6)
    chosen = mine["summary"]["lift"]
    with capsys.disabled():
        print(f"\nPOPI lift for writer0: chosen {chosen:+.4f} ({mine['summary']['name']}), generic {generic['lift']:+.4f}, "
              f"writer1's summary {others_summary['lift']:+.4f}")  # fmt: skip
    assert chosen > 0
    assert chosen > generic["lift"] and generic["text"] == GENERIC_SUMMARY
    assert chosen > others_summary["lift"]
    saved = store.list_summaries(store.get_profile("writer0")["id"])[0]
    assert saved["score"] == pytest.approx(chosen) and saved["source"].startswith("popi:")
    assert len(saved["details"]["candidates"]) == len(mine["candidates"])


def test_cli_summary(target_store, pretrained_base):
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "summary", "--profile", "me", "--model", str(pretrained_base),
         "--pool", "others", "--db", str(target_store.path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Representative peers:" in out.stdout and "Summary v1 (lift" in out.stdout
    assert "a generic summary scores" in out.stdout
    assert target_store.list_summaries(target_store.get_profile("me")["id"])[0]["version"] == 1


def test_plain_differences_are_sentences_with_rounded_numbers():
    from idiolect.core.persona.style import plain_differences

    user = ["sooo good!!! love this place 🎉", "amazing night!!! best food EVER 😍", "wow wow wow!!! happy 🎉",
            "great match!!! we won, brilliant 🎉"]  # fmt: skip
    lines = plain_differences(difference_report(user, _pool(), seed=0))
    assert any(
        s.startswith("You use more exclamation marks: ") and s.endswith(" for most writers.") for s in lines
    )
    assert not any(re.search(r"\d\.\d{3}", s) or "z" in s.split(":")[0] for s in lines)  # no raw floats, no z


def test_protocol_popi_scores_the_user_and_the_peers_under_the_same_conditioning(store, tiny_models):
    """A user's sample and a peer's text that answer the same question are scored with the same prompt (the
    question, as training renders it, under the summary): the user's texts were once scored without their
    question and the peers' with theirs, so a summary's lift measured the prompt, not the person."""
    from transformers import AutoTokenizer

    from idiolect.core.persona.style import profile_data
    from idiolect.core.persona.summary import conditioned_examples

    question = "Which roast do you buy for an espresso at home?"
    pool = store.ensure_pool("site")
    store.add_peer_texts(pool["id"], [{"writer": f"w{w}", "context": question if k == 0 else f"Other {w} {k}",
                                       "text": f"Peer {w} says this, answer {k}."}
                                      for w in range(3) for k in range(3)])  # fmt: skip
    pid = store.create_profile("me")
    store.add_samples(pid, [{"context": question if i == 0 else f"Mine {i}", "text": f"My answer, take {i}."}
                            for i in range(6)])  # fmt: skip
    user, peers, _liked, _disliked = profile_data(store, "me", "site")
    mine = next(r for r in user if r[-1] == "My answer, take 0.")
    theirs = next(r for rows in peers.values() for r in rows if r[-1] == "Peer 0 says this, answer 0.")
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    a, b = conditioned_examples([mine, theirs], tok, "Write plainly.", 256, 32)
    assert a.prompt_ids == b.prompt_ids
    assert question in tok.decode(a.prompt_ids) and "Write plainly." in tok.decode(a.prompt_ids)
