"""The one rule from a rating to training labels, and the profile's data as preference datasets for other trainers (TRL, LLaMA-Factory)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from idiolect.core.base.identity import same_text_key
from idiolect.core.models.prompt import user_message
from idiolect.core.store import Store

TAR, AUX, NEG = "tar", "aux", "neg"  # the three sets: the user's texts, other writers' (unlabeled), negatives


def without_own_texts(peers: list[dict], own_texts) -> list[dict]:
    """Peer rows without the user's own texts (a text of yours in a pool is never someone else's writing)."""
    own = {same_text_key(t) for t in own_texts}
    return [p for p in peers if same_text_key(p["text"]) not in own]


def feedback_examples(rating: int, text: str, edited_text: str | None) -> list[tuple[str, str]]:
    """The one rule from a current rating to training labels, as ``[(TAR or NEG, text)]``:

    - 👍: the generation is a positive (what you would write);
    - 👎: the generation is a negative (what you would not write);
    - an edit is always a positive: the edited text is what you would have written. With 👍 the original
      generation is left out (good, but you improved it); with 👎 it is also a negative.
    """
    if edited_text:
        return [(TAR, edited_text)] + ([(NEG, text)] if rating < 0 else [])
    return [(TAR if rating > 0 else NEG, text)]


def feedback_meaning(rating: int, edited: bool) -> str:
    """What a rating does to training, in words for the person who gave it (from :func:`feedback_examples`)."""
    labels = {k for k, _ in feedback_examples(rating, "generated", "edit" if edited else None)}
    if edited:
        return "your edit is learned as your own writing" + (
            ", the generated text as what you would not write" if NEG in labels else ""
        )
    return "learned as what you would write" if TAR in labels else "learned as what you would not write"


PAIRS_PER_PROMPT = 4


@dataclass
class PreferenceData:
    """What a profile knows, in the shapes preference trainers take. Prompts are the user turn a model answers
    (:func:`idiolect.core.models.prompt.user_message`, as in training)."""

    unpaired: list[dict]  # {prompt, completion, label (bool), source}
    pairs: list[dict]  # {prompt, chosen, rejected, source}
    unlabeled: list[dict]  # {prompt, completion, writer}: the peer pool, other writers' texts


def preference_data(store: Store, profile: str, *, pool: str | None = "default") -> PreferenceData:
    """The profile's positives and negatives by the one rule of :func:`feedback_examples` (own samples are
    positives), the pairs they imply, and the peer pool's texts as the unlabeled set.

    Pairs: an edit over the text it edits where the rule keeps that text as a negative (👎; under 👍 the
    original is left out, so it is never "rejected"); and, at most :data:`PAIRS_PER_PROMPT` per prompt, each
    positive (own text, thumbs-up, edit) over a negative of the same prompt."""
    prof = store.get_profile(profile)
    unpaired: list[dict] = []
    by_prompt: dict[str, dict[str, list[str]]] = defaultdict(lambda: {TAR: [], NEG: []})
    pairs: list[dict] = []
    for s in store.list_samples(prof["id"]):
        prompt = user_message(s["prompt"], s["context"])
        unpaired.append(
            {"prompt": prompt, "completion": s["text"], "label": True, "source": f"sample:{s['id']}"}
        )
        by_prompt[prompt][TAR].append(s["text"])
    for f in store.list_feedback(prof["id"]):
        prompt = user_message(f["prompt"])
        labelled = feedback_examples(f["rating"], f["text"], f["edited_text"])
        for kind, text in labelled:
            unpaired.append(
                {"prompt": prompt, "completion": text, "label": kind == TAR, "source": f"feedback:{f['id']}"}
            )
            by_prompt[prompt][kind].append(text)
        if f["edited_text"] and (NEG, f["text"]) in labelled:  # the rule keeps the original only under 👎
            pairs.append({"prompt": prompt, "chosen": f["edited_text"], "rejected": f["text"],
                          "source": f"feedback:{f['id']}:edit"})  # fmt: skip
    paired = {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}
    for prompt, texts in by_prompt.items():
        made = 0
        for neg in texts[NEG]:
            for pos in texts[TAR]:
                if made >= PAIRS_PER_PROMPT:
                    break
                if (prompt, pos, neg) in paired:
                    continue
                pairs.append({"prompt": prompt, "chosen": pos, "rejected": neg, "source": "same prompt"})
                made += 1
    unlabeled = []
    if pool is not None and store.find_pool(pool):
        own = [u["completion"] for u in unpaired if u["label"]]
        for p in without_own_texts(store.peer_texts(store.get_pool(pool)["id"]), own):
            unlabeled.append({"prompt": user_message(None, p["context"]), "completion": p["text"],
                              "writer": p["writer"]})  # fmt: skip
    return PreferenceData(unpaired, pairs, unlabeled)
