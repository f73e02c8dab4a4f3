"""``bench personalization``: does training make a model write like the person? A protocol that can rank
objectives (docs/benchmarks.md, "The personalization protocol", states it; it was committed before any report).

    python launch.py bench personalization --phase tune   --peers BEER --peers COFFEE --base MODEL --out DIR
    python launch.py bench personalization --phase report --peers BEER --peers COFFEE --base MODEL --out DIR \\
        --settings DIR/tuning.json

Writers: those with at least ``--min-texts`` answers in the given dumps, shuffled with the protocol's seed; the
first ``--tuning-targets`` are tuning writers, the next ``--report-targets`` report writers (disjoint, random).
Each target's answers are split by question: held-out questions (a quarter, at least 3, those that other writers
answered too first) and training texts. The target's peers are every other writer's answers except those to the
target's held-out questions, so no text a metric is measured on was trained on, in any role.

Training: the product's own trainer (early stopping on a validation slice of the training texts included), the
same budget in epochs for every objective, the same settings where one is shared (batch, length, beta), and the
same number of settings tried per objective in the tuning phase (``--grid``: learning rates). The tuning phase
chooses, per objective, the setting with the best mean D among those whose mean target lift is >= 0 on the
tuning writers only, and writes it to ``tuning.json``; the report phase takes that file (committed first) and
never changes it.

Metrics per (target, objective, seed), each cell written to ``cells/`` as soon as it is done (a report that is
stopped resumes where it stopped), with dl(y | q) the per-token log-likelihood gain of the adapter over the base:

- **D** (primary), same-question discrimination: mean over held-out questions q of [dl(target's answer | q) -
  mean over other writers j of dl(j's answer | q)];
- target_lift: dl over the target's held-out answers, pooled per token (the guardrail: >= 0);
- peer_lift: dl over the other writers' answers to the same held-out questions; pair_auc: how often
  dl(target's answer) > dl(another's answer to the same question);
- attribution: the probability a multi-class authorship classifier (char 2-4 + word 1-2-gram TF-IDF, logistic
  regression, trained on the training texts of the phase's targets plus distractor writers) gives the true
  writer for the adapter's greedy answer to each held-out question; its floor is the base model's answers, its
  ceiling the writer's own held-out answers (both reported); rougeL: of the answer against the writer's real one.

Base log-likelihoods and base generations are computed once per target and shared by all objectives and seeds;
reference log-probs are cached per sample (training.reference). Statistics: seeds averaged within a target, then
per objective a mean with a t-interval over targets, and paired differences against C-BPO (objective minus cbpo,
per target) with a t-interval and a bootstrap interval over targets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from idiolect.core.base.identity import same_text_key, text_fraction
from idiolect.core.training.config import DEFAULT_BETA

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("base", "sft", "kto", "bco", "cbpo", "cbpo_pi0")
REFERENCE = "cbpo"  # the product's method: every paired difference is against it
# Ablations are not tuned: they run at the setting chosen for the objective they ablate, so that the one thing
# that differs is what they take away (cbpo_pi0: C-BPO with pi = 0, the PU correction off).
ABLATIONS = {"cbpo_pi0": "cbpo"}
PROTOCOL_SEED = 20261202  # draws the writers; fixed so tuning and report writers never change between runs


def _ctx(row: dict) -> str:
    return (row.get("context") or "").strip()


def load_rows(paths: list[str]) -> list[dict]:
    from idiolect.bench.personalization import read_rows

    rows = []
    for path in paths:
        rows += read_rows(path)
    return [r for r in rows if _ctx(r) and r["text"].strip()]


def draw_writers(rows: list[dict], n_tune: int, n_report: int, min_texts: int) -> tuple[list[str], list[str]]:
    """(tuning writers, report writers): disjoint, drawn at random (the protocol's seed) from the writers with
    at least ``min_texts`` answers."""
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["writer"]] += 1
    eligible = sorted(w for w, n in counts.items() if n >= min_texts)
    if len(eligible) < n_tune + n_report:
        raise SystemExit(
            f"only {len(eligible)} writers have {min_texts}+ texts; ask for fewer than {n_tune} + {n_report}"
        )
    random.Random(PROTOCOL_SEED).shuffle(eligible)
    return eligible[:n_tune], eligible[n_tune : n_tune + n_report]


def split_target(rows: list[dict], writer: str) -> dict:
    """The target's training texts, held-out answers, the other writers' answers to those questions, and the
    target's peers (everyone else, minus the answers to the held-out questions)."""
    by_q: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_q[_ctx(r)].append(r)
    own = sorted((r for r in rows if r["writer"] == writer), key=lambda r: text_fraction(r["text"]))
    shared = [r for r in own if any(o["writer"] != writer for o in by_q[_ctx(r)])]
    k = max(3, len(own) // 4)
    held = (shared + [r for r in own if r not in shared])[:k]
    held_q = {_ctx(r) for r in held}
    train = [r for r in own if _ctx(r) not in held_q]
    held_keys = {same_text_key(r["text"]) for r in held}
    train = [r for r in train if same_text_key(r["text"]) not in held_keys]
    others = {q: [o for o in by_q[q] if o["writer"] != writer] for q in held_q}
    peers = [r for r in rows if r["writer"] != writer and _ctx(r) not in held_q]
    return {"writer": writer, "train": train, "heldout": held, "others": others, "peers": peers}


# --------------------------------------------------------------------------------------------------------
# Scoring


def _examples(rows, tokenizer, max_length):
    from idiolect.core.training.data import Example, tokenize

    ex = [Example("tar", None, r["context"], r["text"]) for r in rows]
    tokenize(ex, tokenizer, max_length)
    return ex


def text_scores(
    model, tokenizer, rows, *, adapter: bool, max_length: int, device, autocast
) -> list[list[float]]:
    """[summed log-prob, tokens] of each row's answer given its question."""
    from idiolect.core.models.loading import pad_id
    from idiolect.core.training.logprobs import logps_of

    if not rows:
        return []
    sums, counts = logps_of(model, _examples(rows, tokenizer, max_length), device, pad_id(tokenizer),
                            adapter=adapter, autocast=autocast)  # fmt: skip
    return [[float(s), float(c)] for s, c in zip(sums, counts, strict=True)]


def _scored_rows(split: dict) -> list[dict]:
    return split["heldout"] + [o for q in sorted(split["others"]) for o in split["others"][q]]


def discrimination(split: dict, base: list, tuned: list) -> dict:
    """D, target lift, peer lift and pair AUC from the base's and the adapter's scores of :func:`_scored_rows`."""
    rows = _scored_rows(split)
    gain = [(t[0] - b[0]) / max(1.0, b[1]) for b, t in zip(base, tuned, strict=True)]
    held = split["heldout"]
    n = len(held)
    tokens = sum(b[1] for b in base[:n])
    target_lift = sum(t[0] - b[0] for b, t in zip(base[:n], tuned[:n], strict=True)) / max(1.0, tokens)
    by_q: dict[str, list[float]] = defaultdict(list)
    for row, g in zip(rows[n:], gain[n:], strict=True):
        by_q[_ctx(row)].append(g)
    d_terms, peer_gains, wins = [], [], []
    for row, g in zip(held, gain[:n], strict=True):
        others = by_q.get(_ctx(row), [])
        if others:
            d_terms.append(g - sum(others) / len(others))
            peer_gains += others
            wins += [1.0 if g > o else 0.5 if g == o else 0.0 for o in others]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"discrimination": mean(d_terms), "target_lift": target_lift, "peer_lift": mean(peer_gains),
            "pair_auc": mean(wins), "questions": len(d_terms), "pairs": len(wins)}  # fmt: skip


class Attribution:
    """Who wrote it: a multi-class classifier over the phase's targets and distractor writers."""

    def __init__(self, texts_by_writer: dict[str, list[str]]) -> None:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self._hstack = hstack
        writers = sorted(texts_by_writer)
        texts = [t for w in writers for t in texts_by_writer[w]]
        labels = [w for w in writers for _ in texts_by_writer[w]]
        self.words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50_000)
        self.chars = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=50_000
        )
        x = hstack([self.words.fit_transform(texts), self.chars.fit_transform(texts)]).tocsr()
        self.clf = LogisticRegression(C=10.0, max_iter=3000).fit(x, labels)

    def probability(self, texts: list[str], writer: str) -> list[float]:
        if not texts:
            return []
        x = self._hstack([self.words.transform(texts), self.chars.transform(texts)]).tocsr()
        column = list(self.clf.classes_).index(writer)
        return [float(p) for p in self.clf.predict_proba(x)[:, column]]


def generate_answers(
    base: str, adapter_dir: str | None, tokenizer, rows, *, gen_tokens: int, max_length: int
):
    """Greedy answers to the rows' questions: llama.cpp with the GGUF LoRA on the original file when the base is
    a GGUF (what a user runs), else transformers; the question fitted as training fits it."""
    from idiolect.core.models.generation import open_generator
    from idiolect.core.models.prompt import fit_prompt
    from idiolect.core.models.resolve import resolve
    from idiolect.core.models.sampling import SamplingParams

    backend = "llama" if resolve(base).kind == "gguf" else "hf"
    gen = open_generator(base, backend=backend, adapter=adapter_dir, device="cpu", quantize="none")
    params = SamplingParams(max_new_tokens=gen_tokens, temperature=0.0, repetition_penalty=1.1, seed=0)
    out = []
    try:
        for r in rows:
            parts, _ = fit_prompt(tokenizer, None, context=r["context"], budget=max_length // 2)
            out.append(gen.generate(parts["prompt"] or "", params, context=parts["context"]))
    finally:
        close = getattr(getattr(gen, "llm", None), "close", None)
        if close:
            close()
    return out


# --------------------------------------------------------------------------------------------------------
# Cells


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


def _slug(writer: str) -> str:
    return writer.replace(".stackexchange.com", "").replace(":", "-")


class Target:
    """One target's work folder: its store (profile + peer pool), base scores and base generations (cached)."""

    def __init__(self, split: dict, work: Path, ctx: dict) -> None:
        from idiolect.core.store import Store

        self.split, self.ctx = split, ctx
        self.name = _slug(split["writer"])
        self.dir = work / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.dir / "bench.db")
        if self.store.find_profile("target") is None:
            pool = self.store.ensure_pool("peers")
            self.store.add_peer_texts(pool["id"], [{"writer": r["writer"], "context": r["context"],
                                                    "text": r["text"]} for r in split["peers"]])  # fmt: skip
            pid = self.store.create_profile("target")
            self.store.add_samples(
                pid, [{"context": r["context"], "text": r["text"]} for r in split["train"]]
            )
        self.rows = _scored_rows(split)

    def base(self) -> dict:
        """Base scores and answers, computed once per (target, base, length)."""
        c = self.ctx
        key = hashlib.sha256(json.dumps([c["base"], c["max_length"], c["gen_tokens"]]).encode()).hexdigest()[
            :16
        ]
        path = self.dir / f"base-{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        scores = text_scores(c["model"], c["tokenizer"], self.rows, adapter=False, max_length=c["max_length"],
                             device=c["device"], autocast=c["autocast"])  # fmt: skip
        answers = generate_answers(c["base"], None, c["tokenizer"], self.split["heldout"], gen_tokens=c["gen_tokens"],
                                   max_length=c["max_length"])  # fmt: skip
        data = {"scores": scores, "answers": answers}
        _write_json(path, data)
        return data


def run_cell(target: Target, objective: str, settings: dict, seed: int, ctx: dict) -> dict:
    """Train one adapter with the product's trainer and measure it; the base row needs no training."""
    from peft import PeftModel

    from idiolect.bench.metrics import rouge_l
    from idiolect.core.training.config import TrainConfig
    from idiolect.core.training.runs import adapter_dir, create_run
    from idiolect.core.training.trainer import Trainer

    base = target.base()
    held = target.split["heldout"]
    t0 = time.monotonic()
    out: dict = {"target": target.split["writer"], "objective": objective, "seed": seed, "settings": settings}
    if objective == "base":
        answers = base["answers"]
        out.update(discrimination(target.split, base["scores"], base["scores"]))
    else:
        cfg = TrainConfig(model=ctx["base"], objective=objective, pool="peers", batch_size=ctx["batch"],
                          max_length=ctx["max_length"], heldout_fraction=0.0, save_every=10**6, seed=seed,
                          device=ctx["device_arg"], quantize="none", **settings)  # fmt: skip
        run = create_run(target.store, "target", cfg)
        result = Trainer(target.store, run).run()
        folder = str(adapter_dir(target.store, target.store.get_run(run)))
        model = PeftModel.from_pretrained(ctx["model"], folder).eval()
        try:
            tuned = text_scores(model, ctx["tokenizer"], target.rows, adapter=True, max_length=ctx["max_length"],
                                device=ctx["device"], autocast=ctx["autocast"])  # fmt: skip
        finally:
            ctx["model"] = model.unload()
        answers = generate_answers(ctx["base"], folder, ctx["tokenizer"], held, gen_tokens=ctx["gen_tokens"],
                                   max_length=ctx["max_length"])  # fmt: skip
        out.update(discrimination(target.split, base["scores"], tuned))
        out["training"] = {"steps": result.get("steps"), "pi": (result.get("pi") or {}).get("pi"),
                           "early_stopping": {k: (result.get("early_stopping") or {}).get(k)
                                              for k in ("kept_step", "stopped_at", "total_steps", "message")}}  # fmt: skip
    probs = ctx["attribution"].probability(answers, target.split["writer"])
    out["attribution"] = sum(probs) / len(probs)
    out["rougeL"] = sum(rouge_l(a, r["text"]) for a, r in zip(answers, held, strict=True)) / len(held)
    out["answers"] = answers[:2]
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def cell_path(out: Path, phase: str, writer: str, label: str, seed: int) -> Path:
    return out / "cells" / phase / _slug(writer) / f"{label}-s{seed}.json"


# --------------------------------------------------------------------------------------------------------
# Statistics

METRICS = ("discrimination", "target_lift", "peer_lift", "pair_auc", "attribution", "rougeL")


def per_target(cells: list[dict], labels: list[str]) -> dict[str, dict[str, dict]]:
    """{target: {label: metrics averaged over its seeds}} for the targets that have every label (so every
    comparison is paired, on the same targets)."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        grouped[c["target"]][c["label"]].append(c)
    out = {}
    for target, by_label in grouped.items():
        if not all(label in by_label for label in labels):
            continue
        out[target] = {}
        for label in labels:
            runs = by_label[label]
            out[target][label] = {
                m: (sum(v) / len(v) if (v := [r[m] for r in runs if r.get(m) is not None]) else None)
                for m in METRICS
            } | {"seeds": sorted(r["seed"] for r in runs)}
    return out


def bootstrap_ci(values: list[float], *, resamples: int = 4000, seed: int = 0) -> list[float] | None:
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    return [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]]


def summarize(table: dict[str, dict[str, dict]], labels: list[str], reference: str | None) -> dict:
    """Per label: each metric's mean and t-interval over targets; ``paired``: per-target differences of D
    against ``reference`` (label minus reference) with a t-interval and a bootstrap interval."""
    from idiolect.bench.metrics import mean_ci

    summary = {}
    for label in labels:
        row = {}
        for m in METRICS:
            ci = mean_ci([t[label][m] for t in table.values()])
            row[m], row[f"{m}_ci"] = ci["mean"], ci["ci95"]
        summary[label] = row
    paired = {}
    if reference in labels:
        for label in labels:
            if label == reference:
                continue
            diffs = _diffs(table, label, reference, "discrimination")
            ci = mean_ci(diffs)
            paired[f"{label}-{reference}"] = {"mean": ci["mean"], "ci": ci["ci95"], "bootstrap_ci": bootstrap_ci(diffs),
                                              "n": len(diffs)}  # fmt: skip
    return {"objectives": summary, "paired": paired, "paired_metrics": paired_metrics(table, labels, reference)}


def paired_metrics(table: dict[str, dict[str, dict]], labels: list[str], reference: str | None) -> dict:
    """Every metric, paired per target against ``reference`` (label minus reference): mean and t-interval.
    The secondary metrics (attribution, ROUGE-L, lifts) compared the way D is."""
    from idiolect.bench.metrics import mean_ci

    out = {}
    for label in labels if reference in labels else []:
        if label == reference:
            continue
        out[f"{label}-{reference}"] = {}
        for m in METRICS:
            ci = mean_ci(_diffs(table, label, reference, m))
            out[f"{label}-{reference}"][m] = {"mean": ci["mean"], "ci": ci["ci95"]}
    return out


def _diffs(table: dict[str, dict[str, dict]], label: str, reference: str, metric: str) -> list[float]:
    """Per target, ``metric`` of ``label`` minus that of ``reference`` (targets where both have it)."""
    return [t[label][metric] - t[reference][metric] for t in table.values()
            if t[label][metric] is not None and t[reference][metric] is not None]  # fmt: skip


def choose_settings(summary: dict, candidates: dict[str, tuple[str, dict]]) -> dict[str, dict]:
    """Per objective, from its candidates (label -> (objective, settings)): the best mean D among those whose
    mean target lift is >= 0 on the tuning writers; where none keeps it, the best target lift. Every objective
    is chosen the same way from as many settings."""
    by_objective: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for label, (objective, settings) in candidates.items():
        if objective != "base":  # nothing to choose
            by_objective[objective].append((label, settings))
    chosen = {}
    for objective, options in by_objective.items():
        rows = [(label, settings, summary[label]) for label, settings in options if label in summary]
        keep = [
            r for r in rows if (r[2]["target_lift"] or -math.inf) >= 0 and r[2]["discrimination"] is not None
        ]
        label, settings, row = (max(keep, key=lambda r: r[2]["discrimination"]) if keep
                                else max(rows, key=lambda r: r[2]["target_lift"] or -math.inf))  # fmt: skip
        chosen[objective] = {"settings": settings, "label": label, "discrimination": row["discrimination"],
                             "target_lift": row["target_lift"],
                             "rule": "best D with target lift >= 0" if keep else "none kept target lift >= 0: best lift",
                             "candidates": {lb: {"discrimination": summary[lb]["discrimination"],
                                                 "target_lift": summary[lb]["target_lift"]}
                                            for lb, _ in options if lb in summary}}  # fmt: skip
    return chosen


# --------------------------------------------------------------------------------------------------------
# The command


def plan(args) -> dict[str, tuple[str, dict]]:
    """label -> (objective, trainer settings). Tune: every objective at every learning rate of the grid (the
    same number of settings each); report: each objective at its frozen setting from ``--settings``."""
    objectives = [o for o in args.objectives.split(",") if o]
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        raise SystemExit(f"unknown objectives {sorted(unknown)}; choose from {', '.join(OBJECTIVES)}")
    shared = {"epochs": args.epochs, "beta": args.beta}
    if args.phase == "report":
        if not args.settings:
            raise SystemExit(
                "--phase report needs --settings TUNING.json (chosen on the tuning writers, committed)"
            )
        frozen = json.loads(Path(args.settings).read_text())["chosen"]
        tuned = lambda o: ABLATIONS.get(o, o)  # noqa: E731
        missing = [o for o in objectives if o != "base" and tuned(o) not in frozen]
        if missing:
            raise SystemExit(f"{args.settings} has no setting for {missing}")
        return {o: (o, {} if o == "base" else frozen[tuned(o)]["settings"]) for o in objectives}
    out = {}
    for o in objectives:
        if o == "base":
            out["base"] = ("base", {})
            continue
        if o in ABLATIONS:  # run in the report at its objective's chosen setting
            continue
        for lr in (float(x) for x in args.grid.split(",")):
            out[f"{o}@lr={lr:g}"] = (o, {**shared, "lr": lr})
    return out


def distractors(rows: list[dict], exclude: set[str], n: int) -> dict[str, list[str]]:
    counts: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["writer"] not in exclude:
            counts[r["writer"]].append(r["text"])
    writers = sorted(w for w, ts in counts.items() if len(ts) >= 6)
    random.Random(PROTOCOL_SEED + 1).shuffle(writers)
    return {w: counts[w] for w in writers[:n]}


def _context(args) -> dict:
    from idiolect.core.models.loading import load_hf_model
    from idiolect.core.models.resolve import local_model_dir
    from idiolect.core.training.logprobs import autocast_dtype

    model, tokenizer, desc = load_hf_model(local_model_dir(args.base), device=args.device, quantize="none")
    return {"base": args.base, "model": model, "tokenizer": tokenizer, "device": desc["device"], "device_arg": args.device,
            "autocast": autocast_dtype(args.precision, desc["device"], desc["params"]), "max_length": args.max_length,
            "gen_tokens": args.gen_tokens, "batch": args.batch}  # fmt: skip


def personalization_cmd(args) -> dict:
    started = time.monotonic()
    out = Path(args.out)
    rows = load_rows(args.peers)
    tune_w, report_w = draw_writers(rows, args.tuning_targets, args.report_targets, args.min_texts)
    writers = tune_w if args.phase == "tune" else report_w
    labels = plan(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = {w: split_target(rows, w) for w in writers}
    ctx = None
    cells = []
    stopped = None
    for w in writers:
        target = None
        for label, (objective, settings) in labels.items():
            for seed in seeds if objective != "base" else seeds[:1]:
                path = cell_path(out, args.phase, w, label, seed)
                if path.exists():
                    cells.append(json.loads(path.read_text()))
                    continue
                if stopped or (args.budget_hours is not None and time.monotonic() - started >= 3600 * args.budget_hours):
                    stopped = stopped or f"the budget of {args.budget_hours} h ran out; run again to go on"
                    continue
                if ctx is None:
                    ctx = _context(args)
                    texts = {v: [r["text"] for r in splits[v]["train"]] for v in writers}
                    ctx["attribution"] = Attribution(
                        {**texts, **distractors(rows, set(tune_w + report_w), args.distractors)}
                    )
                target = target or Target(splits[w], out / "work" / args.phase, ctx)
                print(f"[{time.monotonic() - started:6.0f}s] {_slug(w)} {label} seed {seed}", file=sys.stderr)
                cell = run_cell(target, objective, settings, seed, ctx)
                cell["label"] = label
                if objective == "base":
                    cell["attribution_ceiling"] = _mean(ctx["attribution"].probability(
                        [r["text"] for r in splits[w]["heldout"]], w))  # fmt: skip
                _write_json(path, cell)
                cells.append(cell)
        if target is not None:
            target.store.close()
    return write_report(
        args, out, cells, labels, seeds, tune_w, report_w, stopped, time.monotonic() - started
    )


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def write_report(args, out, cells, labels, seeds, tune_w, report_w, stopped, seconds) -> dict:
    from idiolect.bench.report import write
    from idiolect.core.training.config import DEFAULT_OBJECTIVE

    names = list(labels)
    table = per_target(cells, names)
    reference = REFERENCE if REFERENCE in names else None
    summary = summarize(table, names, reference)
    base_cells = {c["target"]: c for c in cells if c["label"] == "base"}
    ceiling = _mean([base_cells[t]["attribution_ceiling"] for t in table if t in base_cells])
    result = {
        "model": str(args.base),
        "phase": args.phase,
        "protocol": {
            "targets": len(table),
            "seeds": len(seeds),
            "tuning_targets": len(tune_w),
            "report_targets_drawn": len(report_w),
            "budget_epochs": args.epochs,
            "min_texts": args.min_texts,
            "batch": args.batch,
            "max_length": args.max_length,
            "beta": args.beta,
            "gen_tokens": args.gen_tokens,
            "grid_lr": args.grid if args.phase == "tune" else None,
            "writers": tune_w if args.phase == "tune" else report_w,
            "protocol_seed": PROTOCOL_SEED,
            "distractors": args.distractors,
        },  # fmt: skip
        "default_objective": DEFAULT_OBJECTIVE,
        "settings": {label: {"objective": o, **s} for label, (o, s) in labels.items()},
        "objectives": summary["objectives"],
        "paired": summary["paired"],
        "paired_metrics": summary["paired_metrics"],
        "attribution_ceiling": ceiling,
        "complete": stopped is None and len(table) == len({c["target"] for c in cells}) and bool(table),
        "note": stopped,
        "per_target": table,
        "seconds": round(seconds),
    }
    if args.phase == "tune":
        result["chosen"] = choose_settings(summary["objectives"], labels)
        if result["complete"]:  # only a finished tuning phase freezes settings for a report
            _write_json(
                out / "tuning.json",
                {"chosen": result["chosen"], "protocol": result["protocol"], "model": str(args.base)},
            )
        else:
            result["note"] = (result["note"] or "") + "; tuning.json is written once every tuning cell is done"
    else:
        result["settings_file"] = {
            "path": args.settings,
            "sha256": hashlib.sha256(Path(args.settings).read_bytes()).hexdigest(),
        }
    rows = [{"objective": label, **{m: _cell(summary["objectives"][label], m) for m in METRICS},
             "D vs cbpo (paired)": _paired(summary["paired"].get(f"{label}-{REFERENCE}"))} for label in names]  # fmt: skip
    command = "python launch.py bench personalization " + " ".join(
        sys.argv[3:] if sys.argv[1:3] == ["bench", "personalization"] else []
    )
    # One folder holds both phases: the tuning phase's table must survive the report's.
    _, md = write(out, "personalization" if args.phase == "report" else "personalization-tune", result, rows,
                  f"Personalization, {args.phase} phase, base {Path(str(args.base)).name}: {len(table)} targets x {len(seeds)} "
                  "seed(s); mean ± 95% t-interval half-width over targets; every metric on texts no objective trained on",
                  command.strip())  # fmt: skip
    extra = f"\nAttribution: floor = the base's answers (base row), ceiling = the writers' own held-out answers: {ceiling}.\n"
    if summary["paired_metrics"]:
        extra += f"\nEvery metric paired per target against {REFERENCE} (objective minus {REFERENCE}; mean [95% t-interval]):\n\n"
        extra += "| objective | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n"
        for key, row in summary["paired_metrics"].items():
            extra += f"| {key.rsplit('-', 1)[0]} | " + " | ".join(_paired(row[m]) or "n/a" for m in METRICS) + " |\n"
    png = plot(table, names, md.with_suffix(".png")) if table else None
    if png:
        extra += f"\n![D per target; target lift against peer lift]({png.name})\n"
    if stopped:
        extra += f"\n**Incomplete:** {stopped}.\n"
    md.write_text(md.read_text() + extra)
    print(md.read_text())
    return result


def plot(table: dict[str, dict[str, dict]], labels: list[str], path: Path) -> Path | None:
    """Two panels, one point per target: D per objective (a bar at its mean), and target lift against peer lift
    (above the diagonal: more like the person than like whoever else answered the same questions)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[dev]')", file=sys.stderr)
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    lim = [0.0, 0.0]
    for i, label in enumerate(labels):
        rows = [t[label] for t in table.values()]
        d = [r["discrimination"] for r in rows if r["discrimination"] is not None]
        if d:
            left.scatter([i] * len(d), d, color=f"C{i}", alpha=0.45, s=16)
            left.hlines(sum(d) / len(d), i - 0.3, i + 0.3, color=f"C{i}", lw=2.5)
        pts = [(r["peer_lift"], r["target_lift"]) for r in rows if None not in (r["peer_lift"], r["target_lift"])]
        if pts and label != "base":
            xs, ys = zip(*pts, strict=True)
            right.scatter(xs, ys, color=f"C{i}", alpha=0.35, s=14)
            right.scatter([sum(xs) / len(xs)], [sum(ys) / len(ys)], color=f"C{i}", marker="X", s=110, label=label)
            lim = [min(lim[0], *xs, *ys), max(lim[1], *xs, *ys)]
    left.axhline(0, color="grey", lw=0.8, ls="--")
    left.set_xticks(range(len(labels)), labels, rotation=30)
    left.set_ylabel("D: same-question discrimination (nats/token)")
    left.set_title(f"D per target ({len(table)} targets), bar = mean")
    right.plot(lim, lim, color="grey", lw=0.8, ls="--")
    right.axhline(0, color="grey", lw=0.5)
    right.axvline(0, color="grey", lw=0.5)
    right.set_xlabel("peer lift (matched questions, nats/token vs base)")
    right.set_ylabel("target lift (held-out, nats/token vs base)")
    right.set_title("Above the diagonal: like the person, not like everyone")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(row: dict, m: str) -> str:
    v, ci = row.get(m), row.get(f"{m}_ci")
    if v is None:
        return "n/a"
    return f"{v:+.4f}" + (f" ± {(ci[1] - ci[0]) / 2:.4f}" if ci else "")


def _paired(p: dict | None) -> str:
    if not p or p["mean"] is None:
        return ""
    return f"{p['mean']:+.4f}" + (f" [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]" if p["ci"] else "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", choices=("tune", "report"), required=True)
    p.add_argument(
        "--peers", action="append", required=True, help="Posts.xml(.gz) or JSONL/CSV; repeat for more"
    )
    p.add_argument(
        "--base", required=True, help="base model: folder, hub id, .gguf file, offline, offline-smollm2"
    )
    p.add_argument(
        "--out", required=True, help="folder for cells/, personalization.json/.md (the tune phase: personalization-tune.json/.md and tuning.json)"
    )
    p.add_argument(
        "--settings", help="report phase: the tuning.json whose chosen settings are used unchanged"
    )
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--tuning-targets", type=int, default=4)
    p.add_argument("--report-targets", type=int, default=16)
    p.add_argument(
        "--min-texts", type=int, default=12, help="writers with at least this many answers (default 12)"
    )
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    p.add_argument(
        "--epochs", type=int, default=4, help="the budget in passes over the target's texts (default 4)"
    )
    p.add_argument(
        "--grid", default="3e-4,1e-3,3e-3", help="tune phase: learning rates tried for every objective"
    )
    p.add_argument("--beta", type=float, default=DEFAULT_BETA,
                   help=f"reward scale of every preference objective (default: the product's, {DEFAULT_BETA})")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=48)
    p.add_argument(
        "--distractors", type=int, default=20, help="other writers the attribution classifier knows"
    )
    p.add_argument("--budget-hours", type=float, default=None,
                   help="stop starting cells after this long (0: start none, report the finished cells)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
