"""The bundled peer pool: enough writers, enough texts each, and voices that really differ."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from idiolect.core.ingest.pool import DEFAULT_POOL, DEFAULT_POOL_DIR, bundled_prompt_sets, ensure_defaults

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
URL = re.compile(r"https?://|\bwww\.", re.IGNORECASE)


def load_pool() -> dict[str, list[dict]]:
    by_writer = defaultdict(list)
    for path in sorted(DEFAULT_POOL_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                by_writer[row["writer"]].append(row)
    return by_writer


def test_pool_size_and_shared_prompts():
    pool = load_pool()
    prompts = {p["key"]: p["text"] for p in bundled_prompt_sets()["everyday"]}
    assert len(pool) >= 30
    for writer, rows in pool.items():
        assert len(rows) >= 12, writer
        for row in rows:
            assert prompts[row["prompt_id"]] == row["prompt"]
            assert row["text"].strip()
            assert not EMAIL.search(row["text"]) and not URL.search(row["text"]), (writer, row["text"][:60])
    # Everyone answers the same everyday prompts, so differences are voice, not topic.
    answered = Counter(r["prompt_id"] for rows in pool.values() for r in rows)
    assert all(n >= 30 for n in answered.values())


def test_voices_are_distinct_enough_to_tell_apart():
    """Authorship attribution, cross-validated: a character n-gram classifier trained on the other answers of
    each writer names the writer of a held-out answer far more often than chance (1/32), although every answer
    is to a different prompt (so topic does not give it away)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    pool = load_pool()
    texts = [r["text"] for rows in pool.values() for r in rows]
    writers = [w for w, rows in pool.items() for _ in rows]
    clf = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
        LogisticRegression(C=10, max_iter=3000),
    )
    accuracy = cross_val_score(
        clf, texts, writers, cv=StratifiedKFold(7, shuffle=True, random_state=0)
    ).mean()
    assert accuracy > 0.55, f"attribution accuracy {accuracy:.2f} (chance {1 / len(pool):.2f})"


def test_lengths_vary_across_writers():
    pool = load_pool()
    mean_words = sorted(sum(len(r["text"].split()) for r in rows) / len(rows) for rows in pool.values())
    assert mean_words[-1] / mean_words[0] > 4


def test_loaded_on_first_start_and_only_once(store):
    ensure_defaults(store)
    pool = store.get_pool(DEFAULT_POOL)
    stats = store.pool_stats(pool["id"])
    assert stats["writers"] == len(load_pool()) and stats["writers_with_3_plus"] >= 30
    assert len(store.list_prompts()) == len(bundled_prompt_sets()["everyday"])
    ensure_defaults(store)
    assert store.pool_stats(pool["id"]) == stats
    assert len(store.list_prompts()) == len(bundled_prompt_sets()["everyday"])
