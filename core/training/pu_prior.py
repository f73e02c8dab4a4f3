"""The class prior pi of C-BPO: how much of the peer (unlabeled) set is target-like.

Estimated once per user before training: a classifier g separates the user's texts (labeled) from other
writers' texts (unlabeled), with cross-validated scores so no text is scored by a model that saw it. If peers
are a mix of a share pi of target-like texts and (1 - pi) true negatives, then for any threshold t,
P_peers(g > t) = pi * P_user(g > t) + (1 - pi) * P_neg(g > t). Taking t where true negatives rarely score (the
median score of the user's own texts) gives ``pi ~= P_peers(g > t) / P_user(g > t)`` (an upper bound that is
tight when the classes separate), capped at 0.9 since the PU risk divides by 1 - pi.

Validated on mixtures of known pi (tests/test_objectives.py, ``-k protocol``): a Stack Exchange writer's 20
training texts against 120 peer texts of which a share 0 / 0.1 / 0.2 are that writer's other texts, 5 random
draws each, on the two beer writers with 44+ texts: means 0.07 / 0.20 / 0.32 and 0.17 / 0.29 / 0.43. So it is
what the derivation says, an upper bound: it grows with the true share and sits 0.07-0.23 above it (single
draws up to +0.3), never below it by more than 0.05. With 12 texts and 60 peers (13 writers) the bias is +0.28
on average (up to +0.7). The tightest bound over the 50th-80th percentiles instead of the median cut the
12-text bias to +0.08 but fell to 0.04 for a true 0.25 at 20 texts, so the median stays: a small set's pi
over-states how much of the pool is like the user, which makes C-BPO push peers down less.

Why ranks and not the Elkan & Noto ratio of mean probabilities: a regularised text classifier's probabilities
sit near 0.5 even when it ranks perfectly (measured on the bundled pool: AUC 1.0 yet mean-ratio pi ~0.7), and a
ratio of ranks does not depend on calibration. Users whose writing is much like everyone else's get a higher
pi, so less of the shared task knowledge is penalized.

Features: TF-IDF of word 1-2-grams and character 2-4-grams (style and content), logistic regression with
balanced class weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def estimate_class_prior(
    target_texts: Sequence[str], peer_texts: Sequence[str], *, cap: float = 0.9, folds: int = 5, seed: int = 0
) -> dict:
    """``{"pi", "auc", "threshold", "peers_above", "target_above", "n_target", "n_peers"}``; pi is 0 when there
    are too few texts to estimate it (fewer than 4 on either side)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n_t, n_p = len(target_texts), len(peer_texts)
    out = {"n_target": n_t, "n_peers": n_p}
    if min(n_t, n_p) < 4:
        return {**out, "pi": 0.0, "auc": None, "note": "too few texts to estimate pi; using 0"}
    texts = list(target_texts) + list(peer_texts)
    y = np.array([1] * n_t + [0] * n_p)
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=50_000)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=50_000)
    # Fitting the vocabularies on all texts leaks no labels; the classifier itself is cross-validated.
    x = hstack([words.fit_transform(texts), chars.fit_transform(texts)]).tocsr()
    k = max(2, min(folds, n_t, n_p))
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    g = cross_val_predict(
        clf, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba"
    )[:, 1]
    g_t, g_p = g[y == 1], g[y == 0]
    threshold = float(np.median(g_t))
    above_t, above_p = float((g_t > threshold).mean()), float((g_p > threshold).mean())
    pi = min(cap, above_p / above_t) if above_t > 0 else cap
    return {
        **out,
        "pi": round(pi, 4),
        "auc": round(float(roc_auc_score(y, g)), 4),
        "threshold": threshold,
        "peers_above": above_p,
        "target_above": above_t,
    }


def run_prior(cfg, target_texts: Sequence[str], peer_texts: Sequence[str]) -> dict:
    """pi for a run with config ``cfg`` (a TrainConfig): the one given, 0 for objectives without a PU term, else
    estimated on the run's training texts. ``source`` says which."""
    if cfg.pi is not None:
        return {"pi": cfg.pi, "source": "given"}
    if cfg.objective != "cbpo":
        return {"pi": 0.0, "source": f"not used by {cfg.objective}"}
    return {**estimate_class_prior(target_texts, peer_texts, seed=cfg.seed), "source": "estimated"}
