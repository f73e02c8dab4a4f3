"""What makes a writer *them*: DPL differences from representative peers, and the POPI preference summary.

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

POPI (arXiv 2510.17881): the summary is the generator-agnostic interface. Several candidates are written (from
the structured differences; and, where a capable generator is configured, by that LLM), each is scored by its
*lift* -- mean over the user's held-out texts of log p(text | summary, prompt) - log p(text | prompt), minus the
same on other writers' texts, under a generator model -- and the best is kept with its score (best-of-K, the
affordable form of POPI's optimisation on one machine).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from idiolect.core.errors import IdiolectError
from idiolect.core.training_data import TAR, feedback_examples

WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]*")
SENT_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
CONTRACTION_RE = re.compile(r"\b\w+['’](?:s|t|re|ve|ll|d|m)\b", re.IGNORECASE)
FIRST = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours"}
SECOND = {"you", "your", "yours", "yourself", "ya", "u", "ur"}
GENERIC_SUMMARY = "Write clearly and helpfully."


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
# POPI summaries


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


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the endpoint's origin: the key never goes to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from urllib.parse import urlsplit

        old, new = urlsplit(req.full_url), urlsplit(newurl)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise IdiolectError(
                f"the summary writer redirected to another host ({new.scheme}://{new.hostname}); not following it "
                "with your key: use the final address as --llm-url"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def openai_compatible_writer(url: str, api_key: str | None, model: str):
    """A ``writer`` that asks an OpenAI-compatible chat endpoint (``url`` up to /v1). The key is sent in the
    Authorization header only, never to another origin (a redirect elsewhere is refused), never logged or
    stored: an answer that contains it has it removed. Any failure of the endpoint is one line."""
    opener = urllib.request.build_opener(_SameOriginRedirects())

    def write(prompt: str, seed: int = 0) -> str:
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.7,
                "seed": seed,
            }
        ).encode()
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if api_key:
            req.add_unredirected_header("Authorization", f"Bearer {api_key}")
        try:
            with opener.open(req, timeout=120) as resp:
                raw = resp.read(8 * 1024 * 1024)
                kind = resp.headers.get("Content-Type", "")
        except OSError as exc:
            raise IdiolectError(
                f"the summary writer at {url} did not answer: {getattr(exc, 'reason', exc)}"
            ) from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise IdiolectError(
                f"the summary writer at {url} did not answer as an OpenAI-compatible endpoint "
                f"({kind or 'no content type'}, {len(raw)} bytes); check --llm-url (it ends before /chat/completions)"
            ) from None
        return content.replace(api_key, "[key removed]") if api_key else content

    return write


def _summary_logps(model, tokenizer, pairs, system, device, max_length, response_tokens):
    from idiolect.core.train import logps_of
    from idiolect.core.training_data import DEFAULT_PROMPT, Example, tokenize

    ex = [Example("tar", p or DEFAULT_PROMPT, None, t) for p, t in pairs]
    tokenize(ex, tokenizer, max_length, system=system)
    for e in ex:
        e.response_ids = e.response_ids[:response_tokens]
    return logps_of(model, ex, device, tokenizer.pad_token_id or 0, adapter=False)


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
    user: Sequence[tuple[str | None, str]],
    peers: Sequence[tuple[str | None, str]],
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


# --------------------------------------------------------------------------------------------------------
# Putting it together for a profile


def _split_user(texts: list[tuple[str | None, str]], max_heldout: int = 16):
    from idiolect.core.training_data import _heldout

    held = [pt for pt in texts if _heldout(pt[1], 0.25)][:max_heldout]
    if len(held) < 2:
        held = texts[-max(2, len(texts) // 4) :]
    keep = [pt for pt in texts if pt not in held]
    return keep, held


def _peer_sample(peers: dict[str, list[tuple[str | None, str]]], n: int) -> list[tuple[str | None, str]]:
    """Up to ``n`` peer texts, one per writer in turn, in an order fixed by the texts themselves (not by the
    pool's random pseudonyms), so the score does not change when a pool is imported again."""

    def key(pt):
        return hashlib.sha256(pt[1].encode("utf-8", "surrogatepass")).hexdigest()

    queues = sorted((sorted(ts, key=key) for ts in peers.values()), key=lambda ts: key(ts[0]))
    out: list[tuple[str | None, str]] = []
    depth = 0
    while len(out) < n and any(len(q) > depth for q in queues):
        out += [q[depth] for q in queues if len(q) > depth][: n - len(out)]
        depth += 1
    return out


def profile_data(store, profile: str, pool: str = "default", *, max_writers: int = 200, max_texts: int = 20):
    prof = store.get_profile(profile)
    user = [(s["prompt"], s["text"]) for s in store.list_samples(prof["id"])]
    liked, disliked = [], []
    for f in store.list_feedback(prof["id"]):
        for kind, text in feedback_examples(f["rating"], f["text"], f["edited_text"]):
            (liked if kind == TAR else disliked).append(text)
    if len(user) < 4:
        raise IdiolectError(
            f"profile {profile!r} has {len(user)} samples; add at least 4 to compare with others"
        )
    own = {" ".join(t.split()) for _, t in user}
    by_writer: dict[str, list[tuple[str | None, str]]] = {}
    for p in store.peer_texts(store.get_pool(pool)["id"]):
        if " ".join(p["text"].split()) not in own:
            by_writer.setdefault(p["writer"], []).append((p["context"], p["text"]))

    # Ordered by the texts, not by the pseudonyms (which differ each time a pool is imported), so that the
    # representatives and the scores come out the same for the same writing.
    def order(w):
        return (
            -len(by_writer[w]),
            hashlib.sha256(by_writer[w][0][1].encode("utf-8", "surrogatepass")).hexdigest(),
        )

    writers = sorted((w for w, ts in by_writer.items() if len(ts) >= 2), key=order)
    peers = {w: by_writer[w][:max_texts] for w in writers[:max_writers]}
    return user, peers, liked, disliked


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
    from idiolect.core.models import load_hf_model, local_model_dir

    say = progress or (lambda msg: None)
    user, peers, liked, disliked = profile_data(store, profile, pool)
    train_user, held_user = _split_user(user)
    say(f"comparing {len(train_user)} of your texts with {len(peers)} other writers")
    report = difference_report([t for _, t in train_user], {w: [t for _, t in ts] for w, ts in peers.items()},
                               liked=liked, disliked=disliked, seed=seed)  # fmt: skip
    examples = [t for _, t in train_user]
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
