"""The personalization benchmark: C-BPO against its baselines on real writers.

    python launch.py bench pretrain --corpus POSTS.xml.gz ... --out DIR
    python launch.py bench personalization --peers POSTS_XML_OR_JSONL --targets N --base DIR --out DIR [--seed S]

``pretrain`` trains a small llama-architecture LM with its own BPE tokenizer on the given texts within a time
budget (cached: the same corpus and settings reuse the folder). ``personalization`` takes N target writers out of
the pool (they are never peers), splits each one's texts into train and held-out, trains one adapter per target
and objective (SFT, BCO with peers as plain negatives, C-BPO; "base" is the untrained model) through the same
trainer the app uses, and reports per objective, as means with 95% confidence intervals over targets:

- target_lift / peer_lift: held-out log-likelihood per token, adapter minus base, on the target's texts and on
  other writers' held-out texts (general-capability preservation);
- rouge1, rougeL, meteor (exact + Porter-stem matching: WordNet synonyms are a download), bleu: greedy
  generations for the held-out questions against the target's answers;
- authorship: share of generations a stylometric classifier (character n-gram TF-IDF + logistic regression,
  target's training texts vs peers') attributes to the target;
- pair_accuracy: for held-out questions the target answered alongside other writers, how often the adapter's
  reward (log-ratio against the base) ranks the target's answer above another writer's (POPI's accuracy);
and the POPI summary's lift for each target (objective-independent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("base", "sft", "bco", "cbpo")


def _h(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 0xFFFFFFFF


def read_rows(path: str) -> list[dict]:
    """``{writer, context, text}`` rows from a Stack Exchange dump or a JSONL/CSV peer table."""
    from core.importers import detect_peer_format, read_peer_table, read_stackexchange

    p = Path(path)
    rows, _, _ = read_stackexchange(p) if detect_peer_format(p) == "stackexchange" else read_peer_table(p)
    return [{"writer": r["original_writer"], "context": r["context"], "text": r["text"]} for r in rows]


# --------------------------------------------------------------------------------------------------------
# pretrain


def pretrain_cmd(args) -> Path:
    from core.pretrain import pretrain

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


def split_targets(rows: list[dict], n_targets: int, seed: int, min_texts: int = 8):
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
    peers = [r for w, rs in by_writer.items() if w not in targets for r in rs]
    peer_train = [r for r in peers if _h(r["text"] + "peer") >= 0.1]
    peer_held = [r for r in peers if _h(r["text"] + "peer") < 0.1]
    splits = {}
    for w in targets:
        texts = sorted(by_writer[w], key=lambda r: _h(r["text"]))
        k = max(3, len(texts) // 4)
        splits[w] = {"train": texts[k:], "heldout": texts[:k]}
    return splits, peer_train, peer_held


def _examples(rows, tokenizer, max_length):
    from core.training_data import Example, tokenize

    ex = [Example("tar", None, r["context"], r["text"]) for r in rows]
    tokenize(ex, tokenizer, max_length)
    return ex


def evaluate(
    model, tokenizer, adapter: bool, target, peer_held, pairs, authorship, max_length, gen_tokens, device
):
    """All metrics of one (target, objective) on held-out data. ``adapter=False`` = the base model."""
    import torch

    from core.metrics import bleu, meteor, rouge1, rouge_l
    from core.models import render_prompt
    from core.train import logps_of

    held = target["heldout"]
    pad = tokenizer.pad_token_id or 0
    ex_t = _examples(held, tokenizer, max_length)
    ex_p = _examples(peer_held, tokenizer, max_length)
    st, ct = logps_of(model, ex_t, device, pad, adapter=adapter)
    sp, cp = logps_of(model, ex_p, device, pad, adapter=adapter)
    out = {"target_ll": float(st.sum() / ct.sum()), "peer_ll": float(sp.sum() / cp.sum())}

    scores = defaultdict(list)
    gens = []
    for r in held:
        text = render_prompt(tokenizer, "Write a short passage.", context=r["context"])
        ids = tokenizer(text, add_special_tokens=not tokenizer.chat_template, return_tensors="pt")[
            "input_ids"
        ].to(device)
        ids = ids[:, -max_length // 2 :]
        ctx = model.disable_adapter() if (not adapter and hasattr(model, "disable_adapter")) else _null()
        with torch.no_grad(), ctx:
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen_tokens, do_sample=False,
                                 pad_token_id=pad, repetition_penalty=1.1)  # fmt: skip
        g = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        gens.append(g)
        for name, fn in (("rouge1", rouge1), ("rougeL", rouge_l), ("meteor", meteor), ("bleu", bleu)):
            scores[name].append(fn(g, r["text"]))
    out.update({k: sum(v) / len(v) for k, v in scores.items()})
    out["authorship"] = float((authorship.predict_proba(gens)[:, 1] > 0.5).mean()) if gens else None
    out["generations"] = gens[:2]
    out["_pair_logps"] = None
    if pairs:
        ex_a = _examples([a for a, _ in pairs], tokenizer, max_length)
        ex_b = _examples([b for _, b in pairs], tokenizer, max_length)
        out["_pair_logps"] = (
            logps_of(model, ex_a, device, pad, adapter=adapter)[0],
            logps_of(model, ex_b, device, pad, adapter=adapter)[0],
        )
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


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


def personalization_cmd(args) -> dict:
    import torch
    from peft import PeftModel

    from bench.report import write
    from core.metrics import mean_ci
    from core.models import load_hf_model
    from core.profile import build_summary
    from core.store import Store
    from core.train import TrainConfig, Trainer, create_run

    torch.manual_seed(args.seed)
    rows = read_rows(args.peers)
    splits, peer_train, peer_held = split_targets(rows, args.targets, args.seed)
    peer_held = sorted(peer_held, key=lambda r: _h(r["text"]))[: args.peer_heldout]
    base_dir = Path(args.base)
    per_target: dict[str, dict[str, dict]] = {}
    popi = []
    objectives = [o for o in args.objectives.split(",") if o]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        pool = store.ensure_pool("peers")
        store.add_peer_texts(
            pool["id"],
            [{"writer": r["writer"], "context": r["context"], "text": r["text"]} for r in peer_train],
        )
        base_model, tokenizer, desc = load_hf_model(base_dir, device=args.device, quantize="none")
        device = desc["device"]
        by_context = defaultdict(list)
        for r in rows:
            by_context[(r["context"] or "").strip()].append(r)
        for t_i, (writer, split) in enumerate(splits.items()):
            name = f"target{t_i}"
            pid = store.create_profile(name)
            store.add_samples(pid, [{"context": r["context"], "text": r["text"]} for r in split["train"]])
            pairs = []
            for r in split["heldout"]:
                for other in by_context[(r["context"] or "").strip()]:
                    if other["writer"] != writer:
                        pairs.append((r, other))
            clf = authorship_classifier(
                [r["text"] for r in split["train"]], [r["text"] for r in peer_train[:2000]], args.seed
            )
            per_target[name] = {}

            def evaluate_on(model, adapter, split=split, pairs=pairs, clf=clf):
                return evaluate(
                    model,
                    tokenizer,
                    adapter,
                    split,
                    peer_held,
                    pairs,
                    clf,
                    args.max_length,
                    args.gen_tokens,
                    device,
                )

            for objective in objectives:
                print(
                    f"[{time.monotonic() - started:5.0f}s] {name} ({len(split['train'])} texts): {objective}",
                    file=sys.stderr,
                )
                if objective == "base":
                    model, adapter = base_model, False
                else:
                    cfg = TrainConfig(
                        model=str(base_dir), objective=objective, pool="peers", steps=args.steps, batch_size=args.batch,
                        lr=args.lr, max_length=args.max_length, heldout_fraction=0.0, save_every=10**6, seed=args.seed,
                        device=args.device, quantize="none", beta=args.beta,
                        lambda_sft=args.lambda_sft if objective != "sft" else 0.0,
                    )  # fmt: skip
                    run = create_run(store, name, cfg)
                    Trainer(store, run).run()
                    model = PeftModel.from_pretrained(base_model, store.get_run(run)["adapter_path"]).eval()
                    adapter = True
                m = evaluate_on(model, adapter)
                if adapter:
                    base_model = model.unload()  # detach the adapter, keep the base for the next objective
                per_target[name][objective] = m
            base_m = per_target[name].get("base") or evaluate_on(base_model, False)
            base_pairs = base_m.get("_pair_logps")
            for objective, m in per_target[name].items():
                m["target_lift"] = m["target_ll"] - base_m["target_ll"]
                m["peer_lift"] = m["peer_ll"] - base_m["peer_ll"]
                if m["_pair_logps"] is not None and base_pairs is not None:
                    ra = m["_pair_logps"][0] - base_pairs[0]
                    rb = m["_pair_logps"][1] - base_pairs[1]
                    m["pair_accuracy"] = float((ra > rb).float().mean()) if objective != "base" else 0.5
                    m["pairs"] = len(ra)
                else:
                    m["pair_accuracy"] = None
                m.pop("_pair_logps")
            if args.popi:
                summary = build_summary(store, name, model=str(base_dir), pool="peers", device=args.device)
                popi.append(summary["summary"]["lift"])
        store.close()

    keys = ("target_lift", "peer_lift", "rouge1", "rougeL", "meteor", "bleu", "authorship", "pair_accuracy")
    summary = {
        o: {
            k: mean_ci([per_target[t][o][k] for t in per_target if per_target[t][o].get(k) is not None])
            for k in keys
        }
        for o in objectives
    }
    flat = {o: {k: v["mean"] for k, v in summary[o].items()} for o in objectives}
    result = {
        "objectives": flat,
        "ci95": summary,
        "targets": len(per_target),
        "popi_lift": mean_ci(popi),
        "peers_file": str(args.peers),
        "base": str(base_dir),
        "settings": {
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
            )
        },
        "per_target": per_target,
        "meteor_note": "METEOR with exact + Porter-stem matching only (WordNet synonyms need a download)",
        "seconds": round(time.monotonic() - started),
    }

    def cell(o, k):
        v = summary[o][k]
        if v["mean"] is None:
            return "n/a"
        return f"{v['mean']:.3f}" + (f" ± {(v['ci95'][1] - v['ci95'][0]) / 2:.3f}" if v["ci95"] else "")

    table = [{"objective": o, **{k: cell(o, k) for k in keys}} for o in objectives]
    command = (
        f"python launch.py bench personalization --peers {args.peers} --targets {args.targets} --base {args.base} "
        f"--out {args.out} --seed {args.seed} --steps {args.steps} --beta {args.beta} --lambda-sft {args.lambda_sft} "
        f"--objectives {args.objectives}" + ("" if args.popi else " --no-popi")
    )
    _, md = write(
        args.out,
        "personalization",
        result,
        table,
        f"Personalization on {Path(args.peers).name} ({len(per_target)} targets; mean ± 95% CI half-width)",
        command,
    )
    popi_text = f"{result['popi_lift']['mean']:+.4f}" if popi else "not measured"
    extra = f"\nMETEOR: exact + stem matching only. POPI summary lift (nats/token on 64-token openings): {popi_text}\n"
    md.write_text(md.read_text() + extra)
    print(md.read_text())
    return result


def add_personalization_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", required=True, help="Posts.xml(.gz) or JSONL/CSV {writer, prompt, text}")
    p.add_argument("--targets", type=int, default=5, help="target writers taken out of the pool (default: 5)")
    p.add_argument("--base", required=True, help="base model folder (e.g. from `bench pretrain`)")
    p.add_argument(
        "--out", default=str(ROOT / "bench" / "results"), help="folder for personalization.json/.md"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objectives", default=",".join(OBJECTIVES), help="comma-separated (default: base,sft,bco,cbpo)"
    )
    p.add_argument("--steps", type=int, default=60, help="training steps per adapter (default: 60)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3, for a small base)")
    p.add_argument("--beta", type=float, default=0.1, help="reward scale for bco/cbpo (default: 0.1)")
    p.add_argument(
        "--lambda-sft", type=float, default=0.0, help="target NLL weight added to bco/cbpo (default: 0)"
    )
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument(
        "--gen-tokens", type=int, default=48, help="tokens generated per held-out question (default: 48)"
    )
    p.add_argument(
        "--peer-heldout", type=int, default=48, help="held-out peer texts for peer_lift (default: 48)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--no-popi", dest="popi", action="store_false", help="skip the POPI summary per target")
