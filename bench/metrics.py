"""Text-overlap metrics that compute offline: ROUGE-1 and ROUGE-L (F1), BLEU-4 (smoothed), METEOR.

METEOR's usual synonym module needs WordNet, a download; here it matches exact words first, then Porter stems
(the "exact + stem" METEOR), with the standard parameters (alpha 0.9, beta 3, gamma 0.5). Tokenisation: lower-case
words and numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokens(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def rouge1(candidate: str, reference: str) -> float:
    c, r = Counter(tokens(candidate)), Counter(tokens(reference))
    overlap = sum((c & r).values())
    if not c or not r:
        return 0.0
    return _f1(overlap / sum(c.values()), overlap / sum(r.values()))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    c, r = tokens(candidate), tokens(reference)
    lcs = _lcs(c, r)
    if not c or not r:
        return 0.0
    return _f1(lcs / len(c), lcs / len(r))


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU-4 with add-one smoothing of the n-gram precisions (Lin & Och 2004)."""
    c, r = tokens(candidate), tokens(reference)
    if not c or not r:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        cn = Counter(tuple(c[i : i + n]) for i in range(len(c) - n + 1))
        rn = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
        match, total = sum((cn & rn).values()), max(0, len(c) - n + 1)
        log_p += (
            math.log((match + (n > 1)) / (total + (n > 1))) if total + (n > 1) and match + (n > 1) else -1e9
        )
    brevity = 1.0 if len(c) > len(r) else math.exp(1 - len(r) / len(c))
    return brevity * math.exp(log_p / max_n)


_STEMMER = None


def _stem(word: str) -> str:
    global _STEMMER
    if _STEMMER is None:
        from nltk.stem.porter import PorterStemmer

        _STEMMER = PorterStemmer()
    return _STEMMER.stem(word)


def meteor(
    candidate: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    c, r = tokens(candidate), tokens(reference)
    if not c or not r:
        return 0.0
    align: dict[int, int] = {}
    used: set[int] = set()
    for stage in (lambda w: w, _stem):  # exact, then stem
        for i, w in enumerate(c):
            if i in align:
                continue
            key = stage(w)
            for j, v in enumerate(r):
                if j not in used and stage(v) == key:
                    align[i], _ = j, used.add(j)
                    break
    m = len(align)
    if m == 0:
        return 0.0
    p, rec = m / len(c), m / len(r)
    f_mean = p * rec / (alpha * p + (1 - alpha) * rec)
    chunks = 0
    prev = None
    for i in sorted(align):
        if prev is None or i != prev[0] + 1 or align[i] != prev[1] + 1:
            chunks += 1
        prev = (i, align[i])
    penalty = gamma * (chunks / m) ** beta
    return f_mean * (1 - penalty)


def mean_ci(values: Sequence[float]) -> dict:
    """Mean with a 95% confidence interval (Student t) over targets."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "ci95": None, "n": 0}
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}
