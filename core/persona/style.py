"""What makes a writer *them*: DPL differences from representative peers (the POPI summary built from them
is :mod:`idiolect.core.persona.summary`).

DPL (difference-aware personalization, arXiv 2503.02450):
- embed every writer (TF-IDF of words and character n-grams -> SVD, mean over their texts), cluster the pool's
  writers with k-means, take the writer nearest each centroid as a *representative*, and drop the cluster the
  user falls in (those writers are already like the user);
- measure the user against the representatives on three fixed dimensions -- writing style (sentence and word
  length, vocabulary richness, punctuation, lists and paragraphs, contractions, first/second person,
  lower-case starts, emoji), emotional style (VADER sentiment and intensity, positive and negative word shares,
  shouting), semantic style (lexical density, numbers, proper nouns, long words; distinctive words by log-odds
  with an informative Dirichlet prior, Monroe et al. 2008) -- as numbers, z-scores (in units of the pool's
  spread between writers) and plain sentences. Feedback counts too: what thumbs-up generations have that
  thumbs-down ones lack.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import text_digest
from idiolect.core.training.data import MIN_TARGETS
from idiolect.core.training.labels import TAR, feedback_examples, without_own_texts

WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]*")
SENT_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
CONTRACTION_RE = re.compile(r"\b\w+['’](?:s|t|re|ve|ll|d|m)\b", re.IGNORECASE)
FIRST = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours"}
SECOND = {"you", "your", "yours", "yourself", "ya", "u", "ur"}


@dataclass(frozen=True)
class Feature:
    name: str
    dimension: str  # writing | emotional | semantic
    more: str  # what to do, as a bare verb phrase, when the user has more of it ("write longer sentences")
    less: str
    unit: str = ""


FEATURES = (
    Feature("words_per_sentence", "writing", "write longer sentences", "write shorter sentences", "words"),
    Feature("chars_per_word", "writing", "use longer words", "use shorter, plainer words", "letters"),
    Feature("vocabulary_richness", "writing", "use a more varied vocabulary", "repeat the same words more"),
    Feature("words_per_text", "writing", "write longer texts", "keep texts short", "words"),
    Feature("commas", "writing", "use more commas", "use fewer commas", "per 100 words"),
    Feature("exclamations", "writing", "use more exclamation marks", "rarely use exclamation marks", "per 100 words"),
    Feature("questions", "writing", "ask more questions", "ask fewer questions", "per 100 words"),
    Feature("dashes", "writing", "use more dashes", "use fewer dashes", "per 100 words"),
    Feature("semicolons", "writing", "use more semicolons", "avoid semicolons", "per 100 words"),
    Feature("parentheses", "writing", "add more asides in parentheses", "use fewer parentheses", "per 100 words"),
    Feature("list_lines", "writing", "structure answers as lists more often", "write in prose rather than lists", "share of lines"),
    Feature("paragraphs", "writing", "break texts into more paragraphs", "write in fewer paragraphs", "per text"),
    Feature("contractions", "writing", "use more contractions (informal)", "avoid contractions (more formal)", "per 100 words"),
    Feature("first_person", "writing", "write in the first person more (I, my, we)", "rarely say I or we", "per 100 words"),
    Feature("second_person", "writing", "address the reader directly (you)", "rarely address the reader", "per 100 words"),
    Feature("lowercase_starts", "writing", "start sentences in lower case", "capitalise sentence starts", "share"),
    Feature("emoji", "writing", "use emoji", "do not use emoji", "per 100 words"),
    Feature("sentiment", "emotional", "sound more positive", "sound more negative or critical"),
    Feature("intensity", "emotional", "write with stronger feeling", "write in a calmer, more neutral tone"),
    Feature("positive_words", "emotional", "use more positive words", "use fewer positive words", "share"),
    Feature("negative_words", "emotional", "use more negative words", "use fewer negative words", "share"),
    Feature("shouting", "emotional", "write words in CAPITALS for emphasis", "never shout in capitals", "per 100 words"),
    Feature("lexical_density", "semantic", "pack in more content words (dense)", "write in a lighter, more conversational way", "share"),
    Feature("numbers", "semantic", "give more numbers and figures", "give fewer numbers", "per 100 words"),
    Feature("proper_nouns", "semantic", "name more specific things (names, brands, places)", "name fewer specific things", "per 100 words"),
    Feature("long_words", "semantic", "use more long, technical words", "use fewer long words", "share"),
)  # fmt: skip
FEATURE_BY_NAME = {f.name: f for f in FEATURES}


def _stopwords() -> frozenset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


_VADER = None


def _vader():
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return _VADER


def _mattr(words: list[str], window: int = 50) -> float:
    """Moving-average type-token ratio: vocabulary richness that does not fall with text length."""
    if not words:
        return 0.0
    if len(words) <= window:
        return len(set(words)) / len(words)
    counts = Counter(words[:window])
    total = len(counts) / window
    for i in range(window, len(words)):
        counts[words[i]] += 1
        old = words[i - window]
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        total += len(counts) / window
    return total / (len(words) - window + 1)


def text_features(text: str) -> dict[str, float]:
    """The style numbers of one text (rates per 100 words, shares in [0, 1])."""
    words = WORD_RE.findall(text)
    n = max(1, len(words))
    lower = [w.lower() for w in words]
    sentences = [s for s in SENT_SPLIT_RE.split(text) if WORD_RE.search(s)]
    lines = [line for line in text.split("\n") if line.strip()]
    per100 = 100.0 / n
    stop = _stopwords()
    vader = _vader()
    scores = [vader.polarity_scores(s) for s in sentences] or [vader.polarity_scores(text)]
    starts = [s.strip()[0] for s in sentences if s.strip() and s.strip()[0].isalpha()]
    proper = 0
    for s in sentences:
        for w in WORD_RE.findall(s)[1:]:
            if w[0].isupper() and not w.isupper() and w.lower() not in stop and w != "I":
                proper += 1
    return {
        "words_per_sentence": len(words) / max(1, len(sentences)),
        "chars_per_word": sum(len(w) for w in words) / n,
        "vocabulary_richness": _mattr(lower),
        "words_per_text": float(len(words)),
        "commas": text.count(",") * per100,
        "exclamations": text.count("!") * per100,
        "questions": text.count("?") * per100,
        "dashes": (text.count(" - ") + text.count("—") + text.count("–") + text.count("--")) * per100,
        "semicolons": text.count(";") * per100,
        "parentheses": text.count("(") * per100,
        "list_lines": sum(bool(re.match(r"\s*(?:[-*•]|\d+[.)])\s", line)) for line in lines)
        / max(1, len(lines)),
        "paragraphs": float(len([p for p in re.split(r"\n\s*\n", text) if p.strip()])),
        "contractions": len(CONTRACTION_RE.findall(text)) * per100,
        "first_person": sum(w in FIRST for w in lower) * per100,
        "second_person": sum(w in SECOND for w in lower) * per100,
        "lowercase_starts": sum(c.islower() for c in starts) / max(1, len(starts)),
        "emoji": len(EMOJI_RE.findall(text)) * per100,
        "sentiment": statistics.mean(s["compound"] for s in scores),
        "intensity": statistics.mean(abs(s["compound"]) for s in scores),
        "positive_words": statistics.mean(s["pos"] for s in scores),
        "negative_words": statistics.mean(s["neg"] for s in scores),
        "shouting": sum(len(w) >= 2 and w.isupper() and w != "I" for w in words) * per100,
        "lexical_density": sum(w not in stop for w in lower) / n,
        "numbers": len(re.findall(r"\b\d+(?:[.,]\d+)?\b", text)) * per100,
        "proper_nouns": proper * per100,
        "long_words": sum(len(w) >= 7 for w in words) / n,
    }


def writer_features(texts: Sequence[str]) -> dict[str, float]:
    rows = [text_features(t) for t in texts if t.strip()]
    if not rows:
        raise IdiolectError("no text to measure")
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]}


# --------------------------------------------------------------------------------------------------------
# Representatives


def embed_writers(
    texts_by_writer: dict[str, Sequence[str]],
    extra: dict[str, Sequence[str]] | None = None,
    dims: int = 64,
    seed: int = 0,
):
    """(names, unit vectors) for every writer, ``extra`` writers (the user) embedded in the same space."""
    from scipy.sparse import hstack
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    groups = {**texts_by_writer, **(extra or {})}
    names = list(groups)
    docs = [t for n in names for t in groups[n]]
    owner = np.array([i for i, n in enumerate(names) for _ in groups[n]])
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=30_000)
    chars = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True, max_features=30_000
    )
    x = hstack([words.fit_transform(docs), chars.fit_transform(docs)]).tocsr()
    k = max(2, min(dims, x.shape[1] - 1, x.shape[0] - 1))
    z = TruncatedSVD(k, random_state=seed).fit_transform(x)
    vecs = np.stack([z[owner == i].mean(axis=0) for i in range(len(names))])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12
    return names, vecs


def representatives(
    user_texts: Sequence[str], peers: dict[str, Sequence[str]], *, k: int | None = None, seed: int = 0
) -> dict:
    """DPL's representative peers: the writer nearest each k-means centroid, minus the user's own cluster."""
    from sklearn.cluster import KMeans

    if len(peers) < 3:
        raise IdiolectError("the peer pool needs at least 3 writers to pick representatives")
    names, vecs = embed_writers(peers, {"__user__": user_texts}, seed=seed)
    peer_vecs, user_vec = vecs[:-1], vecs[-1]
    peer_names = names[:-1]
    k = k or int(min(8, max(2, round(math.sqrt(len(peer_names))))))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(peer_vecs)
    user_cluster = int(km.predict(user_vec[None])[0])
    reps = []
    for c in range(k):
        members = np.where(km.labels_ == c)[0]
        if c == user_cluster or not len(members):
            continue
        best = members[np.argmin(np.linalg.norm(peer_vecs[members] - km.cluster_centers_[c], axis=1))]
        reps.append(peer_names[best])
    nearest = [peer_names[i] for i in np.argsort(-(peer_vecs @ user_vec))[:5]]
    return {
        "representatives": reps,
        "k": k,
        "user_cluster_size": int((km.labels_ == user_cluster).sum()),
        "nearest_writers": nearest,
    }


# --------------------------------------------------------------------------------------------------------
# Distinctive words


def log_odds(
    target: Sequence[str], other: Sequence[str], prior: Sequence[str], *, top: int = 12, min_count: int = 2
) -> dict:
    """Monroe et al.'s log-odds ratio with an informative Dirichlet prior: words the target uses more (and less)
    than ``other``, as z-scores."""
    stop = _stopwords()

    def counts(texts):
        return Counter(w.lower() for t in texts for w in WORD_RE.findall(t))

    ct, co, cp = counts(target), counts(other), counts(prior)
    nt, no, n_prior = sum(ct.values()), sum(co.values()), sum(cp.values())
    if not nt or not no:
        return {"more": [], "less": []}
    alpha0 = 1000.0
    scores = []
    for w in set(ct) | set(co):
        a = alpha0 * (cp.get(w, 0) + 0.01) / (n_prior + 0.01 * len(cp))
        yt, yo = ct.get(w, 0), co.get(w, 0)
        delta = math.log((yt + a) / (nt + alpha0 - yt - a)) - math.log((yo + a) / (no + alpha0 - yo - a))
        z = delta / math.sqrt(1 / (yt + a) + 1 / (yo + a))
        scores.append((w, z, yt))
    more = [
        (w, round(z, 2))
        for w, z, yt in sorted(scores, key=lambda s: -s[1])
        if yt >= min_count and w not in stop
    ][:top]
    less = [(w, round(z, 2)) for w, z, yt in sorted(scores, key=lambda s: s[1]) if w not in stop][:top]
    return {"more": more, "less": less}


# --------------------------------------------------------------------------------------------------------
# The difference report


def _sentences(rows: list[dict], threshold: float, limit: int) -> list[str]:
    out = []
    for row in sorted(rows, key=lambda r: -abs(r["z_vs_representatives"])):
        z = row["z_vs_representatives"]
        if abs(z) < threshold or len(out) >= limit:
            continue
        f = FEATURE_BY_NAME[row["feature"]]
        phrase = f.more if z > 0 else f.less
        unit = f" {f.unit}" if f.unit else ""
        out.append(
            f"{phrase} ({row['user']:.2f}{unit} vs {row['representatives']:.2f} for typical other writers)"
        )
    return out


def difference_report(
    user_texts: Sequence[str],
    peers: dict[str, Sequence[str]],
    *,
    liked: Sequence[str] = (),
    disliked: Sequence[str] = (),
    seed: int = 0,
    threshold: float = 0.8,
) -> dict:
    """The structured record: representatives, per-feature numbers and z-scores, sentences per dimension,
    distinctive words, and what liked generations have that disliked ones lack."""
    if not user_texts:
        raise IdiolectError("the profile has no writing to compare")
    reps = representatives(user_texts, peers, seed=seed)
    pool_features = {w: writer_features(ts) for w, ts in peers.items()}
    user = writer_features(user_texts)
    rows = []
    for f in FEATURES:
        values = [pf[f.name] for pf in pool_features.values()]
        mean, std = statistics.mean(values), statistics.pstdev(values) or 1e-9
        rep_mean = (
            statistics.mean(pool_features[r][f.name] for r in reps["representatives"])
            if reps["representatives"]
            else mean
        )
        rows.append(
            {
                "feature": f.name,
                "dimension": f.dimension,
                "user": user[f.name],
                "representatives": rep_mean,
                "pool_mean": mean,
                "pool_std": std,
                "z_vs_pool": (user[f.name] - mean) / std,
                "z_vs_representatives": (user[f.name] - rep_mean) / std,
            }
        )
    rep_texts = [t for r in reps["representatives"] for t in peers[r]]
    all_peer_texts = [t for ts in peers.values() for t in ts]
    words = log_odds(user_texts, rep_texts or all_peer_texts, all_peer_texts)
    sentences = {
        dim: _sentences([r for r in rows if r["dimension"] == dim], threshold, 4)
        for dim in ("writing", "emotional", "semantic")
    }
    report = {
        **reps,
        "features": rows,
        "sentences": sentences,
        "distinctive_words": words,
        "n_user_texts": len(user_texts),
        "n_peer_writers": len(peers),
    }
    if liked and disliked:
        fl, fd = writer_features(liked), writer_features(disliked)
        scale = {r["feature"]: r["pool_std"] for r in rows}
        diffs = sorted(((k, (fl[k] - fd[k]) / scale[k]) for k in fl), key=lambda kv: -abs(kv[1]))
        report["feedback"] = {
            "liked": len(liked),
            "disliked": len(disliked),
            "differences": [{"feature": k, "z": round(z, 2)} for k, z in diffs[:6]],
            "sentences": [
                FEATURE_BY_NAME[k].more if z > 0 else FEATURE_BY_NAME[k].less
                for k, z in diffs[:3]
                if abs(z) >= threshold
            ],
            "words": log_odds(liked, disliked, all_peer_texts, top=8, min_count=1),
        }
    return report


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.2f}"


def plain_differences(report: dict, threshold: float = 0.8, limit: int = 12) -> list[str]:
    """The clearest differences as short sentences with rounded numbers, strongest first: "You write longer
    sentences: 24 words vs 15 for most writers." (the z-scores stay in the report, for those who ask)."""
    out = []
    for row in sorted(report["features"], key=lambda r: -abs(r["z_vs_representatives"])):
        z = row["z_vs_representatives"]
        if abs(z) < threshold or len(out) >= limit:
            continue
        f = FEATURE_BY_NAME[row["feature"]]
        unit = f" {f.unit}" if f.unit else ""
        phrase = f.more if z > 0 else f.less
        out.append(
            f"You {phrase}: {_num(row['user'])}{unit} vs {_num(row['representatives'])} for most writers."
        )
    return out


def report_text(report: dict) -> str:
    """The report as plain sentences for people, one per line."""
    lines = [f"- {s}" for s in plain_differences(report)]
    more = [w for w, _ in report["distinctive_words"]["more"][:10]]
    if more:
        lines.append("- Words you use far more than others: " + ", ".join(more) + ".")
    fb = report.get("feedback")
    if fb and fb["sentences"]:
        lines.append(
            "- The generations you liked, against those you disliked: " + "; ".join(fb["sentences"]) + "."
        )
    return "\n".join(lines) or "No clear differences yet: add more of your writing."


# --------------------------------------------------------------------------------------------------------
# Putting it together for a profile


def profile_data(store, profile: str, pool: str = "default", *, max_writers: int = 200, max_texts: int = 20):
    prof = store.get_profile(profile)
    # (prompt, context, text) for the user and the peers alike: a summary is scored under the same conditioning
    # for both, the one training uses (models.prompt.user_message).
    user = [(s["prompt"], s["context"], s["text"]) for s in store.list_samples(prof["id"])]
    liked, disliked = [], []
    for f in store.list_feedback(prof["id"]):
        for kind, text in feedback_examples(f["rating"], f["text"], f["edited_text"]):
            (liked if kind == TAR else disliked).append(text)
    if len(user) < MIN_TARGETS:
        raise IdiolectError(
            f"profile {profile!r} has {len(user)} samples; add at least {MIN_TARGETS} to compare with others"
        )
    by_writer: dict[str, list[tuple[str | None, str | None, str]]] = {}
    for p in without_own_texts(store.peer_texts(store.get_pool(pool)["id"]), [t for *_, t in user]):
        by_writer.setdefault(p["writer"], []).append((None, p["context"], p["text"]))

    # Ordered by the texts, not by the pseudonyms (which differ each time a pool is imported), so that the
    # representatives and the scores come out the same for the same writing.
    def order(w):
        return (
            -len(by_writer[w]),
            text_digest(by_writer[w][0][-1]),
        )

    writers = sorted((w for w, ts in by_writer.items() if len(ts) >= 2), key=order)
    peers = {w: by_writer[w][:max_texts] for w in writers[:max_writers]}
    return user, peers, liked, disliked
