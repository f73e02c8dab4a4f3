"""The personalization benchmark: C-BPO against its baselines on real writers, without leaks.

    python launch.py bench pretrain --corpus POSTS.xml.gz ... --out DIR
    python launch.py bench personalization --peers POSTS_XML_OR_JSONL --targets N --base DIR_OR_GGUF --out DIR

``pretrain`` trains a small llama-architecture LM with its own BPE tokenizer on the given texts within a time
budget (a labelled smoke-test base). ``personalization`` takes N target writers out of the pool (they are never
peers), splits each one's texts into train and held-out (report) texts, trains one adapter per target and
objective through the same trainer the app uses, with the same steps, batch and length for every objective
(base: the untrained model, measured like the others; sft; bco; kto; cbpo; cbpo_sft: C-BPO plus an SFT term),
and reports per objective, as means with 95% confidence intervals over targets:

- target_lift / peer_lift: held-out log-likelihood per token, adapter minus base, on the target's held-out texts
  and on other writers' held-out texts; specificity = target_lift - peer_lift;
- pair_accuracy: for held-out questions the target answered alongside other writers, how often the adapter's
  implicit reward (log-ratio against the base) ranks the target's answer above another writer's (POPI's
  accuracy; undefined for the base); pair_accuracy_ll: how often the model's own per-token likelihood does
  (defined for the base too, so the base is measured, not assumed);
- rouge1, rougeL, meteor (exact + Porter-stem matching: WordNet synonyms are a download), bleu: greedy
  generations for the held-out questions against the target's answers -- through llama.cpp with the exported
  GGUF LoRA on the original file when the base is a GGUF (what a user runs), else through transformers;
- authorship: share of generations a stylometric classifier (character n-gram TF-IDF + logistic regression,
  target's training texts vs peers' training texts) attributes to the target;
- popi: the POPI summary, chosen on the target's training texts (core.persona.summary.build_summary), scored on the
  held-out texts it was not chosen on, against the generic summary and against another target's summary.

No leaks: a held-out text (the target's, a peer's, a pair's "other" answer) is never a text any objective
trained on in any role -- all peer answers to a question that a target answers in its held-out texts are
held out of the peer pool, and any held-out text equal to a training text is dropped (:func:`split_targets`,
:func:`leak_free_pairs`). Hyperparameters: ``--set OBJECTIVE:key=value,...`` overrides them per objective, so
settings tuned on one dump are passed unchanged to the report on another.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from idiolect.core.base.identity import same_text_key, text_fraction
from idiolect.core.models.loading import pad_id
from idiolect.core.models.prompt import DEFAULT_PROMPT
from idiolect.core.training.runs import adapter_dir as run_adapter_dir

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("base", "sft", "bco", "kto", "cbpo", "cbpo_sft", "cbpo_pi0")
VARIANTS = {"cbpo_sft": "cbpo"}  # benchmark rows that train another objective with other settings


def _h(text: str) -> float:
    return text_fraction(text)


def read_rows(path: str) -> list[dict]:
    """``{writer, context, text}`` rows from a Stack Exchange dump or a JSONL/CSV peer table."""
    from idiolect.core.ingest.peers import detect_peer_format, read_peer_table
    from idiolect.core.ingest.stackexchange import read_stackexchange

    p = Path(path)
    rows, _, _ = read_stackexchange(p) if detect_peer_format(p) == "stackexchange" else read_peer_table(p)
    return [{"writer": r["original_writer"], "context": r["context"], "text": r["text"]} for r in rows]


# --------------------------------------------------------------------------------------------------------
# pretrain


def pretrain_cmd(args) -> Path:
    from idiolect.bench.pretrain import pretrain

    texts = []
    for path in args.corpus:
        texts += [((r["context"] or "")[:400] + "\n\n" + r["text"]).strip() for r in read_rows(path)]
    if not texts:
        raise SystemExit("no texts in the corpus")
    key = hashlib.sha256(
        json.dumps(
            [
                sorted(Path(c).name for c in args.corpus),
                len(texts),
                sum(map(len, texts)),
                args.size,
                args.steps,
                args.seconds,
                args.seed,
            ]
        ).encode()  # fmt: skip
    ).hexdigest()[:12]
    out = Path(args.out)
    stamp = out / "pretrain.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("cache_key") == key:
        print(f"cached: {out} (same corpus and settings)", file=sys.stderr)
        return out
    t0 = time.monotonic()

    def progress(step, total, loss):
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.3f} ({time.monotonic() - t0:.0f}s)", file=sys.stderr)

    pretrain(
        texts,
        out,
        arch="llama",
        size=args.size,
        steps=args.steps,
        seconds=args.seconds,
        seed=args.seed,
        progress=progress,
    )
    info = json.loads(stamp.read_text())
    info.update(cache_key=key, corpus=[str(c) for c in args.corpus], texts=len(texts))
    stamp.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return out


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", nargs="+", required=True, help="Posts.xml(.gz) or JSONL/CSV files")
    p.add_argument(
        "--out", default=str(ROOT / "cache" / "base"), help="model folder (default: cache/base, gitignored)"
    )
    p.add_argument("--size", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=900, help="time budget (default: 900)")
    p.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------------------------------------
# personalization


def _ctx(row: dict) -> str:
    return (row.get("context") or "").strip()


def split_targets(rows: list[dict], n_targets: int, seed: int, min_texts: int = 8):
    """``{writer: {train, heldout}}`` for N target writers, and the peers' training and held-out texts.

    Leak-free by construction: every peer answer to a question one of the targets answers in its held-out
    texts goes to the peers' held-out set (so a pair's "other" answer was never trained on as unlabeled),
    plus a fixed 10% of the rest (for peer_lift); held-out texts equal to any training text are dropped."""
    by_writer = defaultdict(list)
    for r in rows:
        by_writer[r["writer"]].append(r)
    eligible = sorted(
        (w for w, rs in by_writer.items() if len(rs) >= min_texts), key=lambda w: (-len(by_writer[w]), w)
    )
    if len(eligible) < n_targets:
        raise SystemExit(f"only {len(eligible)} writers have {min_texts}+ texts; ask for fewer --targets")
    rng = random.Random(seed)
    targets = sorted(rng.sample(eligible[: max(n_targets, 3 * n_targets)], n_targets))
    splits = {}
    for w in targets:
        texts = sorted(by_writer[w], key=lambda r: _h(r["text"]))
        k = max(3, len(texts) // 4)
        splits[w] = {"train": texts[k:], "heldout": texts[:k]}
    held_contexts = {_ctx(r) for s in splits.values() for r in s["heldout"] if _ctx(r)}
    peers = [r for w, rs in by_writer.items() if w not in targets for r in rs]
    peer_held = [r for r in peers if _ctx(r) in held_contexts or _h(r["text"] + "peer") < 0.1]
    held_ids = {id(r) for r in peer_held}
    peer_train = [r for r in peers if id(r) not in held_ids]
    trained = trained_texts(splits, peer_train)
    for s in splits.values():
        s["heldout"] = [r for r in s["heldout"] if same_text_key(r["text"]) not in trained]
    peer_held = [r for r in peer_held if same_text_key(r["text"]) not in trained]
    return splits, peer_train, peer_held


def trained_texts(splits: dict, peer_train: list[dict]) -> set[str]:
    """Every text some objective trains on (targets' training texts, peers' training texts), normalized."""
    return {same_text_key(r["text"]) for r in peer_train} | {
        same_text_key(r["text"]) for s in splits.values() for r in s["train"]
    }


def leak_free_pairs(heldout: list[dict], others: list[dict], trained: set[str]) -> list[tuple[dict, dict]]:
    """(target's held-out answer, another writer's answer to the same question) pairs in which neither text
    was trained on (``trained``: normalized training texts of every role)."""
    by_context = defaultdict(list)
    for o in others:
        if _ctx(o):
            by_context[_ctx(o)].append(o)
    return [
        (r, o)
        for r in heldout
        if same_text_key(r["text"]) not in trained
        for o in by_context.get(_ctx(r), [])
        if o["writer"] != r["writer"] and same_text_key(o["text"]) not in trained
    ]


def _examples(rows, tokenizer, max_length):
    from idiolect.core.training.data import Example, tokenize

    ex = [Example("tar", None, r["context"], r["text"]) for r in rows]
    tokenize(ex, tokenizer, max_length)
    return ex


class Generations:
    """Greedy generations for held-out questions: llama.cpp with the GGUF LoRA on the original GGUF (what a
    user runs, and several times faster on a CPU) when the base is a GGUF file, else transformers."""

    def __init__(self, base: str, tokenizer, gen_tokens: int, max_length: int, device) -> None:
        self.base, self.tokenizer, self.gen_tokens, self.device = base, tokenizer, gen_tokens, device
        self.prompt_tokens = max_length // 2  # the prompt's tail kept for transformers, as before
        self.llama = base.endswith(".gguf")

    def __call__(self, model, adapter_dir: str | None, contexts: list[str | None]) -> list[str]:
        if self.llama:
            from idiolect.core.models.llama import LlamaCppGenerator, gguf_lora_for
            from idiolect.core.models.sampling import SamplingParams

            lora = gguf_lora_for(Path(adapter_dir), self.base) if adapter_dir else None
            gen = LlamaCppGenerator(self.base, lora_path=lora, n_ctx=2048)
            params = SamplingParams(
                max_new_tokens=self.gen_tokens, temperature=0.0, repetition_penalty=1.1, seed=0
            )
            try:
                return [gen.generate(gen.format(DEFAULT_PROMPT, context=c), params) for c in contexts]
            finally:
                gen.llm.close()
        import torch

        from idiolect.core.models.prompt import render_prompt

        out = []
        for c in contexts:
            text = render_prompt(self.tokenizer, DEFAULT_PROMPT, context=c)
            ids = self.tokenizer(
                text, add_special_tokens=not self.tokenizer.chat_template, return_tensors="pt"
            )
            ids = ids["input_ids"][:, -self.prompt_tokens :].to(self.device)
            ctx = (
                model.disable_adapter()
                if (not adapter_dir and hasattr(model, "disable_adapter"))
                else contextlib.nullcontext()
            )
            with torch.no_grad(), ctx:
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.gen_tokens,
                                     do_sample=False, pad_token_id=pad_id(self.tokenizer),
                                     repetition_penalty=1.1)  # fmt: skip
            out.append(self.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
        return out


def evaluate(model, tokenizer, adapter_dir, target, peer_held, pairs, authorship, max_length, generate, device,
             autocast=None):  # fmt: skip
    """All metrics of one (target, objective) on held-out data. ``adapter_dir=None`` = the base model."""
    from idiolect.bench.metrics import bleu, meteor, rouge1, rouge_l
    from idiolect.core.training.logprobs import logps_of

    adapter = adapter_dir is not None
    held = target["heldout"]
    pad = pad_id(tokenizer)

    def logps(rows):
        return logps_of(model, _examples(rows, tokenizer, max_length), device, pad, adapter=adapter,
                        autocast=autocast)  # fmt: skip

    st, ct = logps(held)
    sp, cp = logps(peer_held)
    out = {"target_ll": float(st.sum() / ct.sum()), "peer_ll": float(sp.sum() / cp.sum())}
    gens = generate(model, adapter_dir, [r["context"] for r in held])
    scores = defaultdict(list)
    for g, r in zip(gens, held, strict=True):
        for name, fn in (("rouge1", rouge1), ("rougeL", rouge_l), ("meteor", meteor), ("bleu", bleu)):
            scores[name].append(fn(g, r["text"]))
    out.update({k: sum(v) / len(v) for k, v in scores.items()})
    out["authorship"] = float((authorship.predict_proba(gens)[:, 1] > 0.5).mean()) if gens else None
    out["generations"] = gens[:2]
    out["_pairs"] = None
    if pairs:
        (sa, ca), (sb, cb) = logps([a for a, _ in pairs]), logps([b for _, b in pairs])
        out["_pairs"] = (sa, sb)
        out["pair_accuracy_ll"] = float((sa / ca.clamp(min=1) > sb / cb.clamp(min=1)).float().mean())
        out["pairs"] = len(pairs)
    return out


def authorship_classifier(target_texts, peer_texts, seed=0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=50_000),
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
    )
    clf.fit(list(target_texts) + list(peer_texts), [1] * len(target_texts) + [0] * len(peer_texts))
    return clf


def training_diagnostics(steps: list[dict], run: dict) -> dict:
    """What a run's own log says about why an objective moved the likelihoods as it did: pi and where it came
    from, how often the PU term was clamped, delta and the reward means (first and last steps), the loss."""

    def avg(key, rows):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    head, tail = steps[: max(1, len(steps) // 4)], steps[-max(1, len(steps) // 4) :]
    pi = ((run.get("result") or {}).get("pi") or {}).get("pi")
    return {
        "pi": pi,
        "pu_clamped_share": avg("pu_clamped", steps),
        "delta_first": avg("delta", head),
        "delta_last": avg("delta", tail),
        "reward_tar_last": avg("reward_tar", tail),
        "reward_aux_last": avg("reward_aux", tail),
        "reward_margin_last": avg("reward_margin", tail),
        "loss_first": avg("loss", head),
        "loss_last": avg("loss", tail),
    }


TUNABLE = {
    "lr": float,
    "beta": float,
    "lambda_sft": float,
    "delta_decay": float,
    "pi": float,
    "reward_norm": str,
}


def parse_objectives(spec: str) -> dict[str, str]:
    """``base,sft,kto_b02=kto`` -> {label: family}: a bare name is its own family; ``label=family`` runs the
    family's objective once more under another label (with its own ``--set label:...``), so one run can hold
    several settings of one objective measured against the same base and the same splits."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        label, _, family = item.partition("=")
        family = family or label
        if family not in OBJECTIVES:
            raise SystemExit(f"unknown objective {family!r}; choose from {', '.join(OBJECTIVES)}")
        if (
            not re.fullmatch(r"[a-z][a-z0-9_.]*", label)
            or label in out
            or (label != family and label in OBJECTIVES)
        ):
            raise SystemExit(
                f"--objectives: {label!r} must be a new lower-case label, not a repeat or an objective"
            )
        out[label] = family
    return out


def parse_overrides(items: list[str] | None, labels=OBJECTIVES) -> dict[str, dict]:
    """``--set cbpo:beta=0.05,lr=2e-4`` -> {"cbpo": {"beta": 0.05, "lr": 0.0002}}."""
    out: dict[str, dict] = {}
    for item in items or []:
        name, _, assignments = item.partition(":")
        if name not in labels or not assignments:
            raise SystemExit(
                f"--set {item!r}: expected LABEL:key=value[,key=value] with LABEL in {', '.join(labels)}"
            )
        for pair in assignments.split(","):
            key, _, value = pair.partition("=")
            if key not in TUNABLE:
                raise SystemExit(f"--set {item!r}: {key!r} is not a tunable setting ({', '.join(TUNABLE)})")
            try:
                out.setdefault(name, {})[key] = TUNABLE[key](value)
            except ValueError:
                raise SystemExit(f"--set {item!r}: {value!r} is not a valid {key}") from None
    return out


def objective_settings(label: str, args, overrides: dict[str, dict], family: str | None = None) -> dict:
    """The trainer settings of one objective (or labelled variant): the shared defaults, then its own
    overrides."""
    settings = {
        "lr": args.lr,
        "beta": args.beta,
        "lambda_sft": args.lambda_sft if (family or label) == "cbpo_sft" else 0.0,
    }
    settings.update(overrides.get(label, {}))
    return settings


def plot(per_target: dict, objectives: list[str], path: Path) -> Path | None:
    """Target lift against peer lift, one point per (objective, target) and a cross at each mean: above the
    diagonal is specific to the person, along it is the site's register."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[dev]')", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    lim = [0.0, 0.0]
    for i, o in enumerate(objectives):
        pts = [(m[o]["peer_lift"], m[o]["target_lift"]) for m in per_target.values() if o in m]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        color = f"C{i}"
        ax.scatter(xs, ys, color=color, alpha=0.5, s=18)
        ax.scatter([sum(xs) / len(xs)], [sum(ys) / len(ys)], color=color, marker="X", s=110, label=o)
        lim = [min(lim[0], *xs, *ys), max(lim[1], *xs, *ys)]
    ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("peer lift (held-out nats/token vs base)")
    ax.set_ylabel("target lift (held-out nats/token vs base)")
    ax.set_title("Above the diagonal: more like the person than like everyone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


KEYS = ("target_lift", "peer_lift", "specificity", "pair_accuracy", "pair_accuracy_ll", "rouge1", "rougeL", "meteor",
        "bleu", "authorship")  # fmt: skip


def summarize(per_target: dict, objectives: list[str]) -> tuple[dict, dict, list[dict]]:
    """Per objective and metric: the mean with its 95% CI over targets, the means alone, and the table rows."""
    from idiolect.bench.metrics import mean_ci

    summary = {
        o: {
            k: mean_ci([m[o][k] for m in per_target.values() if o in m and m[o].get(k) is not None])
            for k in KEYS
        }
        for o in objectives
    }
    flat = {o: {k: v["mean"] for k, v in summary[o].items()} for o in objectives}

    def cell(o, k):
        v = summary[o][k]
        if v["mean"] is None:
            return "n/a"
        return f"{v['mean']:.3f}" + (f" ± {(v['ci95'][1] - v['ci95'][0]) / 2:.3f}" if v["ci95"] else "")

    return summary, flat, [{"objective": o, **{k: cell(o, k) for k in KEYS}} for o in objectives]


def merge_cmd(args) -> dict:
    """One table from personalization runs on the same dump, splits and base, each contributing the objectives
    named for it (``--take RUN:obj1,obj2``): used when tuning changed the settings of some objectives only, so
    the others keep their reported runs. Refuses runs whose targets or base measurements differ."""
    from idiolect.bench.report import write

    taken: list[tuple[dict, str, list[str]]] = []
    for item in args.take:
        path, _, names = item.rpartition(":")
        result = json.loads(Path(path).read_text())
        taken.append((result, path, [n for n in names.split(",") if n]))
    first = taken[0][0]
    for result, path, names in taken:
        if result["peers_file"] != first["peers_file"] or set(result["per_target"]) != set(
            first["per_target"]
        ):
            raise SystemExit(f"{path}: another dump or other targets than {taken[0][1]}")
        for t, m in result["per_target"].items():
            a, b = m["base"], first["per_target"][t]["base"]
            if abs(a["target_ll"] - b["target_ll"]) > 1e-3 or abs(a["peer_ll"] - b["peer_ll"]) > 1e-3:
                raise SystemExit(f"{path}: the base measures differently on {t}: not the same splits or base")
        missing = [n for n in names if n not in result["settings"]["per_objective"]]
        if missing:
            raise SystemExit(f"{path} has no objective {missing}")
    objectives = ["base"] + [n for _, _, names in taken for n in names]
    per_target = {
        t: {
            "base": first["per_target"][t]["base"],
            **{n: r["per_target"][t][n] for r, _, names in taken for n in names},
        }
        for t in first["per_target"]
    }
    summary, flat, table = summarize(per_target, objectives)
    result = {
        "objectives": flat, "ci95": summary, "targets": len(per_target), "model": first["model"],
        "default_objective": first["default_objective"], "peers_file": first["peers_file"], "base": first["base"],
        "generation_backend": first["generation_backend"],
        "settings": {**first["settings"], "per_objective": {n: r["settings"]["per_objective"][n]
                                                            for r, _, names in taken for n in names}},
        "merged_from": {path: names for _, path, names in taken}, "per_target": per_target,
        "seconds": sum(r["seconds"] for r, _, _ in taken),
    }  # fmt: skip
    command = (
        "python launch.py bench merge " + " ".join(f"--take {t}" for t in args.take) + f" --out {args.out}"
    )
    _, md = write(args.out, "personalization", result, table,
                  f"Personalization on {Path(first['peers_file']).name}, merged ({len(per_target)} targets; mean ± "
                  "95% CI half-width; every metric on texts no objective trained on)", command)  # fmt: skip
    md.write_text(
        md.read_text()
        + "\nFrom: "
        + "; ".join(f"{', '.join(n)} from `{p}`" for p, n in result["merged_from"].items())
        + "\n"
    )
    png = plot(per_target, objectives[1:], Path(args.out) / "personalization.png")
    if png:
        md.write_text(md.read_text() + f"\n![target lift vs peer lift]({png.name})\n")
    print(md.read_text())
    return result


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--take", action="append", required=True, metavar="RUN.json:OBJ[,OBJ]",
                   help="a personalization.json and the objectives to take from it")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for the merged personalization.json/.md/.png")


def personalization_cmd(args) -> dict:
    import torch
    from peft import PeftModel

    from idiolect.bench.metrics import mean_ci
    from idiolect.bench.report import write
    from idiolect.core.models.loading import load_hf_model
    from idiolect.core.models.resolve import local_model_dir
    from idiolect.core.persona.summary import build_summary, summary_baseline, summary_lift
    from idiolect.core.store import Store
    from idiolect.core.training.config import TrainConfig
    from idiolect.core.training.logprobs import autocast_dtype
    from idiolect.core.training.runs import create_run
    from idiolect.core.training.trainer import Trainer

    torch.manual_seed(args.seed)
    families = parse_objectives(args.objectives)
    objectives = list(families)
    overrides = parse_overrides(args.set, objectives)
    rows = read_rows(args.peers)
    splits, peer_train, peer_held_all = split_targets(rows, args.targets, args.seed)
    trained = trained_texts(splits, peer_train)
    for s in splits.values():
        s["heldout"] = s["heldout"][: args.target_heldout]
    lift_peers = sorted(peer_held_all, key=lambda r: _h(r["text"]))[: args.peer_heldout]
    base_dir = local_model_dir(args.base)
    per_target: dict[str, dict[str, dict]] = {}
    popi: dict[str, dict] = {}
    started = time.monotonic()
    default_objective = TrainConfig(model="").objective
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        pool = store.ensure_pool("peers")
        store.add_peer_texts(
            pool["id"],
            [{"writer": r["writer"], "context": r["context"], "text": r["text"]} for r in peer_train],
        )
        base_model, tokenizer, desc = load_hf_model(base_dir, device=args.device, quantize="none")
        device = desc["device"]
        autocast = autocast_dtype(args.precision, device, desc["params"])
        generate = Generations(str(args.base), tokenizer, args.gen_tokens, args.max_length, device)
        summaries: dict[str, str] = {}
        by_name: dict[str, dict] = {}
        for t_i, split in enumerate(splits.values()):
            name = f"target{t_i}"
            by_name[name] = split
            pid = store.create_profile(name)
            store.add_samples(pid, [{"context": r["context"], "text": r["text"]} for r in split["train"]])
            pairs = leak_free_pairs(split["heldout"], peer_held_all, trained)[: args.max_pairs]
            clf = authorship_classifier(
                [r["text"] for r in split["train"]], [r["text"] for r in peer_train[:2000]], args.seed
            )
            per_target[name] = {}

            def evaluate_on(model, adapter_dir, split=split, pairs=pairs, clf=clf):
                return evaluate(model, tokenizer, adapter_dir, split, lift_peers, pairs, clf, args.max_length,
                                generate, device, autocast)  # fmt: skip

            for objective in ["base"] + [o for o in objectives if o != "base"]:
                print(f"[{time.monotonic() - started:5.0f}s] {name} ({len(split['train'])} train, "
                      f"{len(split['heldout'])} held out, {len(pairs)} pairs): {objective}", file=sys.stderr)  # fmt: skip
                if objective == "base":
                    per_target[name]["base"] = evaluate_on(base_model, None)
                    continue
                family = families[objective]
                settings = objective_settings(objective, args, overrides, family)
                cfg = TrainConfig(
                    model=str(args.base), objective=VARIANTS.get(family, family), pool="peers", steps=args.steps,
                    batch_size=args.batch, max_length=args.max_length, heldout_fraction=0.0, save_every=10**6,
                    seed=args.seed, device=args.device, quantize="none", precision=args.precision, **settings,
                )  # fmt: skip
                run = create_run(store, name, cfg)
                t0 = time.monotonic()
                Trainer(store, run).run()
                adapter_dir = str(run_adapter_dir(store, store.get_run(run)))
                model = PeftModel.from_pretrained(base_model, adapter_dir).eval()
                m = evaluate_on(model, adapter_dir)
                base_model = model.unload()  # detach the adapter, keep the base for the next objective
                m["train_seconds"] = round(time.monotonic() - t0)
                m["diagnostics"] = training_diagnostics(store.run_metrics(run), store.get_run(run))
                m["settings"] = settings
                m["family"] = family
                per_target[name][objective] = m
            base_m = per_target[name]["base"]
            for objective, m in per_target[name].items():
                m["target_lift"] = m["target_ll"] - base_m["target_ll"]
                m["peer_lift"] = m["peer_ll"] - base_m["peer_ll"]
                m["specificity"] = m["target_lift"] - m["peer_lift"]
                m["pair_accuracy"] = None
                if objective != "base" and m["_pairs"] is not None:
                    ra = m["_pairs"][0] - base_m["_pairs"][0]
                    rb = m["_pairs"][1] - base_m["_pairs"][1]
                    m["pair_accuracy"] = float((ra > rb).float().mean())
            for m in per_target[name].values():
                m.pop("_pairs")
            if args.popi:
                chosen = build_summary(store, name, model=str(args.base), pool="peers", device=args.device)
                summaries[name] = chosen["summary"]["text"]
                popi[name] = {
                    "chosen": chosen["summary"]["name"],
                    "chosen_on_selection": chosen["summary"]["lift"],
                }
        if args.popi and summaries:
            # Scored on held-out texts the choice never saw, against the generic summary and another target's.
            from idiolect.core.persona.summary import GENERIC_SUMMARY

            held_peer_pairs = [(r["context"], r["text"]) for r in lift_peers[:32]]
            names = list(summaries)
            for i, name in enumerate(names):
                held_user = [(r["context"], r["text"]) for r in by_name[name]["heldout"]]
                baseline = summary_baseline(base_model, tokenizer, held_user, held_peer_pairs, device=device)
                score = {}
                for label, text in (("own", summaries[name]), ("generic", GENERIC_SUMMARY),
                                    ("other_writer", summaries[names[(i + 1) % len(names)]] if len(names) > 1 else None)):  # fmt: skip
                    if text is not None:
                        score[label] = summary_lift(base_model, tokenizer, text, held_user, held_peer_pairs,
                                                    device=device, baseline=baseline)["lift"]  # fmt: skip
                popi[name].update(score)
        store.close()

    summary, flat, table = summarize(per_target, objectives)
    popi_summary = {
        k: mean_ci([p[k] for p in popi.values() if k in p]) for k in ("own", "generic", "other_writer")
    }
    result = {
        "objectives": flat,
        "ci95": summary,
        "targets": len(per_target),
        "model": str(args.base),
        "default_objective": default_objective,
        "popi": {"per_target": popi, "heldout_lift": popi_summary},
        "popi_lift": popi_summary["own"],
        "peers_file": str(args.peers),
        "base": str(args.base),
        "generation_backend": "llama.cpp (GGUF LoRA on the original GGUF)"
        if generate.llama
        else "transformers",
        "settings": {
            **{
                k: getattr(args, k)
                for k in (
                    "steps",
                    "batch",
                    "lr",
                    "beta",
                    "lambda_sft",
                    "max_length",
                    "gen_tokens",
                    "seed",
                    "peer_heldout",
                    "target_heldout",
                    "max_pairs",
                    "precision",
                )
            },  # fmt: skip
            "per_objective": {
                o: objective_settings(o, args, overrides, families[o]) for o in objectives if o != "base"
            },
            "families": families,
        },
        "per_target": per_target,
        "meteor_note": "METEOR with exact + Porter-stem matching only (WordNet synonyms need a download)",
        "seconds": round(time.monotonic() - started),
    }

    command = (
        f"python launch.py bench personalization --peers {args.peers} --targets {args.targets} --base {args.base} "
        f"--out {args.out} --seed {args.seed} --steps {args.steps} --batch {args.batch} --lr {args.lr} "
        f"--beta {args.beta} --lambda-sft {args.lambda_sft} --max-length {args.max_length} "
        f"--target-heldout {args.target_heldout} --peer-heldout {args.peer_heldout} --max-pairs {args.max_pairs} "
        f"--gen-tokens {args.gen_tokens} --precision {args.precision} --objectives {args.objectives}"
        + "".join(f" --set {s}" for s in args.set or [])
        + ("" if args.popi else " --no-popi")
    )
    _, md = write(
        args.out,
        "personalization",
        result,
        table,
        f"Personalization on {Path(args.peers).name}, base {Path(str(args.base)).name} ({len(per_target)} targets; "
        "mean ± 95% CI half-width; every metric on texts no objective trained on)",
        command,
    )
    png = plot(per_target, objectives, Path(args.out) / "personalization.png")

    def fmt(v):
        return "not measured" if v["mean"] is None else f"{v['mean']:+.4f} (n={v['n']})"

    extra = (
        f"\nDefault objective of the product: {default_objective}. Generations: {result['generation_backend']}. "
        f"Wall time {result['seconds']} s.\nMETEOR: exact + stem matching only. POPI summary lift on held-out "
        f"texts it was not chosen on (nats/token on 64-token openings): own {fmt(popi_summary['own'])}, generic "
        f"{fmt(popi_summary['generic'])}, another writer's {fmt(popi_summary['other_writer'])}.\n"
        + (f"\n![target lift vs peer lift]({png.name})\n" if png else "")
    )
    md.write_text(md.read_text() + extra)
    print(md.read_text())
    return result


def add_personalization_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", required=True, help="Posts.xml(.gz) or JSONL/CSV {writer, prompt, text}")
    p.add_argument("--targets", type=int, default=5, help="target writers taken out of the pool (default: 5)")
    p.add_argument(
        "--base", required=True, help="base model: folder, hub id or .gguf file (dequantized once)"
    )
    p.add_argument(
        "--out", default=str(ROOT / "bench" / "results"), help="folder for personalization.json/.md/.png"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objectives",
        default=",".join(OBJECTIVES[:-1]),
        help=f"comma-separated, LABEL=OBJECTIVE for another setting of one (default: {','.join(OBJECTIVES[:-1])})",
    )
    p.add_argument(
        "--steps", type=int, default=60, help="training steps per adapter, every objective (default: 60)"
    )
    p.add_argument("--batch", type=int, default=4, help="target texts per step (default: 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3, for a small base)")
    p.add_argument("--beta", type=float, default=0.1, help="reward scale for bco/kto/cbpo (default: 0.1)")
    p.add_argument("--lambda-sft", type=float, default=0.5, help="SFT term weight of cbpo_sft (default: 0.5)")
    p.add_argument("--set", action="append", metavar="OBJECTIVE:key=value,...",
                   help="settings per objective or label (lr, beta, lambda_sft, delta_decay, pi, reward_norm)")  # fmt: skip
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument(
        "--gen-tokens", type=int, default=48, help="tokens generated per held-out question (default: 48)"
    )
    p.add_argument(
        "--target-heldout", type=int, default=24, help="held-out texts per target, at most (default: 24)"
    )
    p.add_argument(
        "--peer-heldout", type=int, default=48, help="held-out peer texts for peer_lift (default: 48)"
    )
    p.add_argument("--max-pairs", type=int, default=64, help="pairs per target, at most (default: 64)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-popi", dest="popi", action="store_false", help="skip the POPI summary per target")


# --------------------------------------------------------------------------------------------------------
# tune: choose each objective's settings from personalization runs on the tuning dump


def choose_settings(
    results: list[dict], criterion: str = "specificity", exclude: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Per objective, the settings of the run with the best mean ``criterion`` over targets, from
    ``personalization.json`` results of one dump, among the runs that did not make the model worse on the
    person's own held-out writing (target lift > 0): a run that wrecks every writer's likelihood, peers' more
    than the person's, has a high specificity and is useless. Where no run keeps a positive target lift, the
    one with the highest target lift. Labelled variants (``kto_b02=kto``) are candidates of their objective; the
    labels in ``exclude`` (diagnostic ablations) are not. Every objective is chosen the same way, from as many
    settings as it was run with: the caller gives each objective the same number."""
    seen: dict[str, list[tuple[float, float, dict]]] = defaultdict(list)
    for result in results:
        families = result["settings"].get("families", {})
        for label, settings in result["settings"]["per_objective"].items():
            row = result["objectives"].get(label) or {}
            if row.get(criterion) is None or label in exclude:
                continue
            seen[families.get(label, label)].append((row[criterion], row.get("target_lift") or 0.0, settings))
    chosen = {}
    for objective, candidates in seen.items():
        keep = [c for c in candidates if c[1] > 0]
        score, lift, settings = (
            max(keep, key=lambda c: (c[0], c[1])) if keep else max(candidates, key=lambda c: c[1])
        )
        chosen[objective] = {
            "settings": settings,
            criterion: score,
            "target_lift": lift,
            "rule": f"best {criterion} with target lift > 0"
            if keep
            else "no run kept target lift > 0: best lift",
            "candidates": [{"settings": s, criterion: c, "target_lift": t} for c, t, s in candidates],
        }
    return chosen


def _setting(v) -> str:
    return f"{v:g}" if isinstance(v, float | int) else str(v)


def tune_cmd(args) -> dict:
    results = [json.loads(Path(p).read_text()) for p in args.runs]
    dumps = {Path(r["peers_file"]).name for r in results}
    if len(dumps) != 1:
        raise SystemExit(f"tune on one dump at a time (got {sorted(dumps)})")
    chosen = choose_settings(
        results, args.criterion, tuple(x for x in (getattr(args, "exclude", None) or "").split(",") if x)
    )
    sets = [
        f"{o}:"
        + ",".join(
            f"{k}={_setting(v)}" for k, v in c["settings"].items() if not (k == "lambda_sft" and not v)
        )
        for o, c in sorted(chosen.items())
    ]
    out = {"tuned_on": dumps.pop(), "criterion": args.criterion, "runs": list(args.runs), "chosen": chosen,
           "excluded": getattr(args, "exclude", None),
           "set_arguments": sets}  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tuning.json").write_text(json.dumps(out, indent=2))
    lines = [f"### Settings tuned on {out['tuned_on']} (criterion: mean {args.criterion} over targets, among runs "
             "with a positive target lift)", "",
             f"`python launch.py bench tune --runs {' '.join(args.runs)}"
             + (f" --exclude {args.exclude}" if getattr(args, "exclude", None) else "") + f" --out {args.out}`", "",
             "| objective | candidates (settings: " + args.criterion + ", target lift) | chosen |", "|---|---|---|"]  # fmt: skip
    for o, c in sorted(chosen.items()):
        cands = "; ".join(
            ", ".join(f"{k}={_setting(v)}" for k, v in x["settings"].items())
            + f": {x[args.criterion]:+.3f}, {x['target_lift']:+.3f}"
            for x in c["candidates"]
        )
        lines.append(
            f"| {o} | {cands} | {', '.join(f'{k}={_setting(v)}' for k, v in c['settings'].items())} |"
        )
    lines += ["", "Pass on unchanged: " + " ".join(f"--set {s}" for s in sets)]
    (Path(args.out) / "tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, help="personalization.json files of runs on one dump")
    p.add_argument(
        "--criterion", default="specificity", choices=("specificity", "target_lift", "pair_accuracy_ll")
    )
    p.add_argument("--exclude", help="comma-separated labels of diagnostic variants that are not candidates")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for tuning.json/.md")
