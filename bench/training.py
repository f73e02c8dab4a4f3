"""Training speed and memory: Idiolect's C-BPO step against TRL's KTOTrainer on the same work.

    python launch.py bench training [--model DIR] [--steps 30] [--batch 8] [--max-length 256] [--out bench/results]

Same base model, same LoRA (r 8, alpha 16, all linear layers), same data (one bundled writer's texts as the
desirable/target set, the other writers' as undesirable/peers), same batch (8 samples: 4 + 4), same maximum
length, fp32. TRL's BCOTrainer is gone from TRL 1.x, so KTO -- TRL's other unpaired binary-feedback trainer -- is
the reference, run twice: with its defaults (reference log-probs recomputed every step) and with
``precompute_ref_log_probs=True`` (Idiolect always precomputes them). Each engine runs in its own process (so peak
memory is its own); step times skip the first 3 steps. Throughput = samples/s x the mean tokens per sample of the
shared data (both draw uniformly from it), so padding and KTO's extra KL pass count as cost, not as work.
Memory: the process's peak RSS on CPU (imports, model, data and training together), peak allocated on CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 3


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _result(engine: str, step_times: list[float], batch: int, mean_tokens: float, rss_before: float) -> dict:
    """Throughput from the median step time after the warm-up steps, and the process's peak memory."""
    median = statistics.median(step_times[WARMUP_STEPS:])
    return {
        "engine": engine,
        "samples_per_s": batch / median,
        "tokens_per_s": batch / median * mean_tokens,
        "median_step_s": median,
        "peak_mb": _peak_mb(),
        "rss_before_train_mb": rss_before,
        "mean_tokens_per_sample": mean_tokens,
    }


def _data(target: str):
    from idiolect.core.ingest.pool import default_pool_rows

    rows = default_pool_rows()
    tar = rows.pop(target)
    aux = [r for rs in rows.values() for r in rs]
    return tar, aux


def _mean_tokens(tokenizer, rows, max_length: int) -> float:
    from idiolect.core.models.prompt import render_prompt

    lengths = []
    for r in rows:
        p = tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=not tokenizer.chat_template)[
            "input_ids"
        ]
        c = tokenizer(r["text"], add_special_tokens=False)["input_ids"]
        lengths.append(min(max_length, len(p) + len(c) + 1))
    return statistics.mean(lengths)


def engine_idiolect(args) -> dict:
    from idiolect.core.store import Store
    from idiolect.core.training.config import DEFAULT_OBJECTIVE, TrainConfig
    from idiolect.core.training.runs import create_run
    from idiolect.core.training.trainer import Trainer

    tar, aux = _data(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        pool = store.ensure_pool("peers")
        store.add_peer_texts(
            pool["id"], [{"writer": r["writer"], "context": r["prompt"], "text": r["text"]} for r in aux]
        )
        pid = store.create_profile("bench")
        store.add_samples(pid, [{"prompt": r["prompt"], "text": r["text"]} for r in tar])
        half = args.batch // 2
        cfg = TrainConfig(
            model=args.model, objective=DEFAULT_OBJECTIVE, pool="peers", steps=args.steps, batch_size=half, aux_per_batch=half,
            lr=1e-4, max_length=args.max_length, heldout_fraction=0.0, validation_fraction=0.0,  # every step runs
            save_every=10**6, pi=0.1, seed=0,
            peer_cap=len(aux), precision=args.precision,
        )  # fmt: skip
        run = create_run(store, "bench", cfg)
        times: list[float] = []

        def progress(step, total, m):
            times.append(m["seconds"])

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        mean_tokens = _mean_tokens(tok, tar + aux, args.max_length)
        rss_before = _rss_mb()
        Trainer(store, run, progress=progress).run()
        store.close()
    name = "C-BPO" if cfg.objective == "cbpo" else cfg.objective.upper()
    return _result(f"idiolect {name}", times, args.batch, mean_tokens, rss_before)


def engine_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import KTOConfig, KTOTrainer

    from idiolect.core.models.prompt import render_prompt

    tar, aux = _data(args.target)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [
        {"prompt": render_prompt(tok, r["prompt"]), "completion": r["text"] + tok.eos_token, "label": lbl}
        for rs, lbl in ((tar, True), (aux, False))
        for r in rs
    ]
    mean_tokens = _mean_tokens(tok, tar + aux, args.max_length)
    cuda = torch.cuda.is_available()
    if cuda:  # the same NF4 QLoRA Idiolect trains with there (quantize=auto), bf16 compute
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quant, device_map={"": 0})
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    rss_before = _rss_mb()
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = KTOConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=1e-4,
            beta=0.1, max_length=args.max_length, precompute_ref_log_probs=args.engine == "trl-precompute",
            use_cpu=not cuda, bf16=cuda, report_to=[], logging_steps=10**6,
            save_strategy="no", gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
            desirable_weight=len(aux) / len(tar),
        )  # fmt: skip
        lora = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = KTOTrainer(
            model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora,
            callbacks=[Timer()],
        )  # fmt: skip
        trainer.train()
    label = "(reference log-probs precomputed)" if args.engine == "trl-precompute" else "(defaults)"
    return _result(f"TRL KTOTrainer {label}", times, args.batch, mean_tokens, rss_before)


def run(args: argparse.Namespace) -> dict:
    from idiolect.bench.generation import small_model
    from idiolect.bench.report import write
    from idiolect.core.models.resolve import local_model_dir

    # A GGUF file (or `offline`) is dequantized once; both engines then load the same Hugging Face folder.
    model = str(local_model_dir(args.model)) if args.model else str(small_model(Path(args.cache)))
    results = []
    for engine in ("idiolect", "trl", "trl-precompute"):
        cmd = [sys.executable, "-m", "idiolect.bench.training", "--engine", engine, "--model", model, "--steps", str(args.steps),
               "--batch", str(args.batch), "--max-length", str(args.max_length), "--target", args.target,
               "--precision", args.precision]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{engine} engine failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{engine}: {results[-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    ours, trl, trl_pre = results
    rows = [
        {
            "engine": r["engine"],
            "tokens/s": round(r["tokens_per_s"]),
            "samples/s": round(r["samples_per_s"], 2),
            "median step s": round(r["median_step_s"], 3),
            "peak MB": round(r["peak_mb"]),
        }
        for r in results
    ]
    summary = {
        "model": model,
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "speedup_vs_trl": ours["tokens_per_s"] / trl["tokens_per_s"],
        "peak_memory_ratio_vs_trl": ours["peak_mb"] / trl["peak_mb"],
        "speedup_vs_trl_precomputed": ours["tokens_per_s"] / trl_pre["tokens_per_s"],
        "peak_memory_ratio_vs_trl_precomputed": ours["peak_mb"] / trl_pre["peak_mb"],
        "engines": results,
    }
    command = f"python launch.py bench training --steps {args.steps} --batch {args.batch} --max-length {args.max_length}"
    if args.model:
        command += f" --model {args.model} --name {args.name}"
    if args.precision != "fp32":
        command += f" --precision {args.precision}"
    _, md = write(
        args.out,
        args.name,
        summary,
        rows,
        "Training step: Idiolect C-BPO vs TRL KTO (same model, data, batch)",
        command,
    )
    text = md.read_text() + (
        f"\nAgainst TRL's defaults: {summary['speedup_vs_trl']:.2f}x tokens/s at {summary['peak_memory_ratio_vs_trl']:.2f}x "
        f"the peak memory. Against TRL with precomputed reference log-probs: {summary['speedup_vs_trl_precomputed']:.2f}x "
        f"at {summary['peak_memory_ratio_vs_trl_precomputed']:.2f}x.\n"
    )
    md.write_text(text)
    print(text)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="an HF model folder, a .gguf file or `offline` (default: the small bench model)"
    )
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per engine (default: 30)")
    p.add_argument(
        "--batch", type=int, default=8, help="samples per step, half target, half peers (default: 8)"
    )
    p.add_argument("--max-length", type=int, default=256, help="tokens per sample (default: 256)")
    p.add_argument("--target", default="ada", help="bundled writer used as the target (default: ada)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for NAME.json/.md")
    p.add_argument("--name", default="training", help="file name of the results (default: training)")
    p.add_argument(
        "--precision",
        choices=("fp32", "auto", "bf16"),
        default="fp32",
        help="Idiolect's compute precision (default fp32, as TRL runs here; auto/bf16 to see what bf16 adds)",
    )
    p.add_argument("--cache", default=str(ROOT / "cache"), help="folder for built models (gitignored)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("idiolect", "trl", "trl-precompute"), required=True)
    add_arguments(parser)
    a = parser.parse_args()
    result = engine_idiolect(a) if a.engine == "idiolect" else engine_trl(a)  # trl, trl-precompute
    print(json.dumps(result))
