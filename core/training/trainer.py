"""Training a profile's LoRA adapter (QLoRA on CUDA) with C-BPO or a baseline, for one run of the runs table.

The loop: load the base (4-bit NF4 on CUDA, fp32 on CPU) and wrap it with LoRA; assemble and tokenize the three
sets (training.data); estimate pi (training.pu_prior) unless given; compute every training sample's reference
log-probability once with the adapter disabled (the base is frozen, so it never changes); then take optimizer
steps on batches that each hold target and peer samples (and thumbs-down ones when there are any), logging the
loss, the risk terms, reward means and margin, tokens/s and memory to ``run_metrics`` at every step.

Speed levers: reference log-probs are precomputed; batches are length-grouped; the LM head and log-softmax run
only on response tokens, in chunks that are recomputed in the backward pass instead of keeping a
(batch x length x vocab) logits tensor; gradient checkpointing on GPU.

Checkpoints (adapter + optimizer/scheduler/RNG/delta state) are written every ``save_every`` steps and on a
cancel, atomically (written to a temporary folder, then renamed); a run started again resumes from the last one
and ends at the same total number of steps.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.utils.checkpoint

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.process import peak_memory_mb, release_freed_memory
from idiolect.core.store import Store, utcnow
from idiolect.core.training import checkpoints
from idiolect.core.training.config import TrainConfig
from idiolect.core.training.data import TrainingSets, load_sets, plan_batches, tokenize, total_steps
from idiolect.core.training.labels import AUX, NEG, TAR
from idiolect.core.training.logprobs import (
    autocast_dtype,
    batched,
    decoder_and_head,
    logps_of,
    mean_token_ll,
    response_logps,
)
from idiolect.core.training.lora import build_peft_model
from idiolect.core.training.objectives import (
    RewardShift,
    implicit_rewards,
    objective_loss,
)
from idiolect.core.training.runs import (
    DATA_RECORD,
    atomic_write_bytes,
    data_record,
    read_data_record,
    run_dir,
    sets_from_record,
)

# --------------------------------------------------------------------------------------------------------
# Log-probabilities of responses


# --------------------------------------------------------------------------------------------------------
# The run


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# The signal whose Python handler interrupts a model load (never sent by the OS: ``_thread.interrupt_main``
# calls the handler itself, which works whatever the process inherited for SIGINT).
STOP_SIGNAL = getattr(signal, "SIGUSR2", None)


def _raise_stop(signum, frame) -> None:
    raise StopRequested


class StopRequested(Exception):
    """Raised inside a forward pass (or between stages) once a stop was asked for."""


@dataclass
class _Live:
    """What a run holds while it trains."""

    model: object
    tokenizer: object
    model_dir: Path
    device: str
    pad_id: int
    hooks: list
    pi_info: dict = field(default_factory=dict)
    params: list = field(default_factory=list)
    optimizer: object = None
    scheduler: object = None
    shift: RewardShift | None = None
    ocfg: object = None  # the run's ObjectiveConfig, built once


class Trainer:
    """One training run, driven by :meth:`run`. ``progress(step, total, metrics)`` is called after each step.

    Stopping (the CLI's Ctrl-C, the worker's SIGTERM, the UI's cancel flag in the runs table): call
    :meth:`request_stop` from any thread or a signal handler, or set ``cancel_requested`` on the run. A
    watcher thread notices the flag within half a second; the stop then takes effect at the next layer of the
    forward pass in every stage (reference log-probs, training, evaluation): a step cut short is discarded
    and the run checkpoints at the last whole step. While the model itself loads there is nothing to save:
    when the trainer runs on the main thread, that stage is interrupted at once (see :meth:`request_stop`)."""

    def __init__(
        self,
        store: Store,
        run_id: int,
        *,
        progress: Callable[[int, int, dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        run = store.get_run(run_id)
        self.cfg = TrainConfig.from_dict(run["config"])
        self.profile = store.profile_by_id(run["profile_id"])["name"]
        self.dir = run_dir(store, run_id)
        self.stage = "starting"
        self._stop = threading.Event()
        self._on_main = threading.current_thread() is threading.main_thread()
        self._interruptible = False

    # -- stopping ---------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the run to stop (checkpointing first). Safe from any thread and from a signal handler. While
        the model loads (one long call with no place to look at the flag) the main thread is interrupted through
        a signal handler of the run's own (:data:`STOP_SIGNAL`), so a worker whose SIGINT is ignored (started
        under nohup, systemd or a launcher) is cancelled as fast as one at a terminal."""
        first = not self._stop.is_set()
        self._stop.set()
        if first and self.stage == "loading the model" and self._interruptible:
            import _thread

            _thread.interrupt_main(STOP_SIGNAL)

    def _interrupt_handler(self) -> Callable[[], None]:
        """Install the handler :meth:`request_stop` interrupts the main thread through; returns its undo."""
        if not self._on_main or STOP_SIGNAL is None:
            return lambda: None
        previous = signal.signal(STOP_SIGNAL, _raise_stop)
        self._interruptible = True

        def undo() -> None:
            self._interruptible = False
            signal.signal(STOP_SIGNAL, previous)

        return undo

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise StopRequested

    def _watch(self, done: threading.Event) -> None:
        """Thread: turn the runs table's cancel flag (and ``should_stop``) into :meth:`request_stop`."""
        store = Store(self.store.path)
        try:
            while not done.wait(0.5):
                try:
                    if self.should_stop() or store.cancel_requested(self.run_id):
                        self.request_stop()
                        return
                except Exception:  # noqa: BLE001 - a busy database: look again next time
                    continue
        finally:
            store.close()

    def _set_stage(self, stage: str) -> None:
        self.stage = stage
        self.store.update_run(self.run_id, stage=stage)

    def _install_stop_hooks(self, model) -> list:
        """A check at every decoder layer, so a stop cuts a long forward pass short."""
        decoder, _ = decoder_and_head(model)
        layers = getattr(decoder, "layers", None) or []
        return [layer.register_forward_pre_hook(lambda *a: self._check_stop()) for layer in layers]

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.store.update_run(
            self.run_id, status="running", pid=os.getpid(), started_at=utcnow(), error=None, stage="starting"
        )
        done = threading.Event()
        undo_handler = self._interrupt_handler()
        watcher = threading.Thread(target=self._watch, args=(done,), name="stop-watcher", daemon=True)
        watcher.start()
        try:
            result = self._run()
        except torch.cuda.OutOfMemoryError as exc:
            msg = (
                f"out of GPU memory at batch size {self.cfg.batch_size} and max length {self.cfg.max_length}: "
                "lower --batch-size (and raise --grad-accum to keep the effective batch) or --max-length"
            )
            self.store.update_run(self.run_id, status="failed", error=msg, finished_at=utcnow())
            raise IdiolectError(msg) from exc
        except (KeyboardInterrupt, StopRequested):
            # Stopped before training began (nothing to save) or a second, impatient Ctrl-C.
            self.store.update_run(self.run_id, status="cancelled", stage=None, finished_at=utcnow())
            if self.stop_requested:
                return {"status": "cancelled", "step": self.store.get_run(self.run_id)["step"]}
            raise
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, IdiolectError) else f"{type(exc).__name__}: {exc}"
            self.store.update_run(self.run_id, status="failed", error=msg, stage=None, finished_at=utcnow())
            raise
        finally:
            done.set()
            undo_handler()
        return result

    def _run(self) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.dir.mkdir(parents=True, exist_ok=True)
        live = self._load()
        self._set_stage("reading your data")
        self._check_stop()
        record, sets, total = self._data(live.tokenizer)
        self.store.update_run(self.run_id, total_steps=total, model=str(live.model_dir))
        ckpt, state = checkpoints.readable(self.dir)
        if state is None:
            self._set_stage("estimating pi")
        live.pi_info = state["pi_info"] if state else self._estimate_pi(sets)
        ref = self._reference(live.model, sets, live.device, live.pad_id, record, str(live.model_dir))
        start = self._optimizer(live, total, ckpt, state)
        plan = plan_batches(sets, cfg.batch_size, cfg.aux_per_batch or cfg.batch_size, cfg.neg_per_batch,
                            total * cfg.grad_accum, cfg.seed)  # fmt: skip
        live.model.train()
        self._set_stage("training")
        for step in range(start, total):
            if not self._train_step(live, sets, plan, step, total, ref):
                return self._cancelled(live, step)
        self._set_stage("evaluating on held-out texts")
        try:
            evaluation = self._evaluate(live.model, sets, live.device, live.pad_id)
        except StopRequested:  # all steps are done: keep them, and evaluate when the run is resumed
            return self._cancelled(live, total)
        for hook in live.hooks:
            hook.remove()
        return self._complete(live, sets, total, evaluation)

    def _load(self) -> _Live:
        """The base model with its LoRA adapter, the tokenizer, and where they compute."""
        from idiolect.core.models.loading import load_hf_model, pad_id
        from idiolect.core.models.resolve import local_model_dir

        self._set_stage("loading the model")
        model_dir = local_model_dir(self.cfg.model)
        base, tokenizer, desc = load_hf_model(model_dir, device=self.cfg.device, quantize=self.cfg.quantize)
        device = desc["device"]
        self._autocast = autocast_dtype(self.cfg.precision, device, desc["params"])
        model = self._model = build_peft_model(self.cfg, base, device)
        return _Live(model, tokenizer, model_dir, device, pad_id(tokenizer), self._install_stop_hooks(model))

    def _data(self, tokenizer) -> tuple[dict, TrainingSets, int]:
        """The run's data record, its sets (tokenized) and its step count: read from the database once for a
        new run and recorded; a resumed run gets the same rows and plan, whatever changed in the database."""
        cfg = self.cfg
        record = read_data_record(self.dir)
        if record is None:
            sets = load_sets(self.store, self.profile, pool=cfg.pool, peer_cap=cfg.peer_cap,
                             heldout_fraction=cfg.heldout_fraction, seed=cfg.seed)  # fmt: skip
            record = data_record(sets, total_steps(cfg, len(sets.train[TAR])))
            atomic_write_bytes(self.dir / DATA_RECORD, json.dumps(record, ensure_ascii=False).encode())
        sets = sets_from_record(record)
        for group in (sets.train, sets.heldout):
            for examples in group.values():
                tokenize(examples, tokenizer, cfg.max_length)
        return record, sets, record["total_steps"]

    def _optimizer(self, live: _Live, total: int, ckpt, state: dict | None) -> int:
        """The optimizer, schedule and reward shift, restored from the checkpoint if there is one; returns the
        step to start at."""
        cfg = self.cfg
        live.params = [p for p in live.model.parameters() if p.requires_grad]
        live.optimizer = torch.optim.AdamW(live.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup * total)
        live.scheduler = torch.optim.lr_scheduler.LambdaLR(
            live.optimizer, lambda s: _lr_factor(s, total, warmup)
        )
        live.shift = RewardShift("pooled" if cfg.objective == "bco" else "separate", cfg.delta_decay)
        live.ocfg = cfg.objective_config()
        if not state:
            return 0
        checkpoints.restore(ckpt, state, live.model, live.optimizer, live.scheduler, live.shift)
        return state["step"]

    def _train_step(self, live: _Live, sets, plan, step: int, total: int, ref) -> bool:
        """One step, logged (and checkpointed every ``save_every``); False when a stop cut it short (what it
        changed is restored, so the checkpoint holds the last whole step)."""
        cfg = self.cfg
        before = (copy.deepcopy(live.shift.state_dict()), torch.get_rng_state(), random.getstate())
        try:
            self._check_stop()
            metrics = self._step(live.model, live.optimizer, live.params, sets, plan, step, ref,
                                 live.ocfg, live.pi_info["pi"], live.shift, live.device,
                                 live.pad_id)  # fmt: skip
        except StopRequested:
            live.optimizer.zero_grad(set_to_none=True)
            live.shift.load_state_dict(before[0])
            torch.set_rng_state(before[1])
            random.setstate(before[2])
            return False
        live.scheduler.step()
        metrics["lr"] = live.scheduler.get_last_lr()[0]
        self.store.log_metrics(self.run_id, step + 1, metrics)
        self.store.update_run(self.run_id, step=step + 1)
        if self.progress:
            self.progress(step + 1, total, metrics)
        if (step + 1) % cfg.save_every == 0 and step + 1 < total:
            self._save(live, step + 1)
        return True

    def _save(self, live: _Live, step: int) -> None:
        checkpoints.save(self.dir, step, live.model, live.optimizer, live.scheduler, live.shift, live.pi_info)

    def _cancelled(self, live: _Live, step: int) -> dict:
        self._set_stage("saving a checkpoint")
        self._save(live, step)
        self.store.update_run(self.run_id, status="cancelled", step=step, stage=None, finished_at=utcnow())
        return {"status": "cancelled", "step": step}

    def _complete(self, live: _Live, sets: TrainingSets, total: int, evaluation: dict) -> dict:
        """Save the adapter (atomically, with its record of who and what it was trained on) and the result."""
        self._set_stage("saving the adapter")
        adapter_dir = self.dir / "adapter"
        tmp_dir = self.dir / ".tmp-adapter"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        live.model.save_pretrained(tmp_dir)
        (tmp_dir / "idiolect.json").write_text(json.dumps({"run_id": self.run_id, "profile": self.profile,
                                                           "objective": self.cfg.objective,
                                                           "base": str(live.model_dir)}))  # fmt: skip
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp_dir.rename(adapter_dir)
        precision = "bf16" if live.device != "cpu" else "fp32"
        result = {
            "pi": live.pi_info,
            "counts": sets.counts(),
            "steps": total,
            "precision": "bf16 autocast" if self._autocast is torch.bfloat16 else precision,
            "data": {
                "record": str(self.dir / DATA_RECORD),
                "sha256": hashlib.sha256((self.dir / DATA_RECORD).read_bytes()).hexdigest(),
            },
            **evaluation,
        }
        self.store.update_run(self.run_id, status="completed", adapter_path=str(adapter_dir), result=result,
                              stage=None, finished_at=utcnow())  # fmt: skip
        for old in self.dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
        return {"status": "completed", **result}

    def _step(self, model, optimizer, params, sets, plan, step, ref, ocfg, pi, shift, device, pad_id) -> dict:
        """One optimizer step (with gradient accumulation); returns its metrics."""
        cfg = self.cfg
        tar, aux, neg = sets.train[TAR], sets.train[AUX], sets.train[NEG]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        n_tokens = 0
        for micro in range(cfg.grad_accum):
            t_idx, a_idx, n_idx = plan[step * cfg.grad_accum + micro]
            batch = [tar[i] for i in t_idx] + [aux[i] for i in a_idx] + [neg[i] for i in n_idx]
            sums, counts = response_logps(
                model, batch, device, pad_id, autocast=self._autocast, recompute_head=cfg.recompute_head
            )
            ref_b = torch.cat([ref[TAR][t_idx], ref[AUX][a_idx], ref[NEG][n_idx]]).to(sums.device)
            rewards = implicit_rewards(ocfg, sums, ref_b, counts)
            nt, na = len(t_idx), len(a_idx)
            r_tar, r_aux, r_neg = rewards[:nt], rewards[nt : nt + na], rewards[nt + na :]
            nll_tar = -(sums[:nt].sum() / counts[:nt].sum())
            loss, terms = objective_loss(ocfg, pi, shift.value, r_tar, r_aux, r_neg, nll_tar)
            (loss / cfg.grad_accum).backward()
            shift.update(r_tar, r_aux, r_neg)
            terms.update(
                reward_tar=float(r_tar.detach().mean()),
                reward_aux=float(r_aux.detach().mean()) if na else 0.0,
                reward_margin=float(r_tar.detach().mean() - (r_aux.detach().mean() if na else 0.0)),
            )
            if len(r_neg):
                terms["reward_neg"] = float(r_neg.detach().mean())
            for k, v in terms.items():
                agg[k] = agg.get(k, 0.0) + v / cfg.grad_accum
            n_tokens += sum(e.length for e in batch)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        self._check_stop()  # the last moment a step can still be dropped without a trace
        optimizer.step()
        if device == "cpu":
            release_freed_memory()  # keeps the RSS from creeping up step after step (~1 ms)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return {
            **agg,
            "grad_norm": grad_norm,
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / dt,
            "seconds": dt,
            "peak_memory_mb": peak_memory_mb(device),
        }

    def _estimate_pi(self, sets: TrainingSets) -> dict:
        if self.cfg.pi is not None:
            return {"pi": self.cfg.pi, "source": "given"}
        if self.cfg.objective != "cbpo":
            return {"pi": 0.0, "source": f"not used by {self.cfg.objective}"}
        from idiolect.core.training.pu_prior import estimate_class_prior

        info = estimate_class_prior(
            [e.text for e in sets.train[TAR]], [e.text for e in sets.train[AUX]], seed=self.cfg.seed
        )
        return {**info, "source": "estimated"}

    def _reference(
        self, model, sets: TrainingSets, device, pad_id: int, record: dict, model_dir: str
    ) -> dict[str, torch.Tensor]:
        """Reference log-probs of every training sample under the frozen base, computed once and cached in the
        run folder. The cache is keyed by what it holds (the data record, the base, the max length): a cache
        for other rows, or one that cannot be read (a kill while it was written), is recomputed."""
        if self.cfg.objective == "sft":  # SFT has no implicit reward: the base's log-probs are never used
            return {k: torch.zeros(len(sets.train[k])) for k in (TAR, AUX, NEG)}
        path = self.dir / "reference_logps.pt"
        key = hashlib.sha256(
            json.dumps(
                [record["sets"]["train"], model_dir, self.cfg.max_length, str(self._autocast)], sort_keys=True
            ).encode()
        ).hexdigest()
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("key") == key:
                return {k: cached[k] for k in (TAR, AUX, NEG)}
        except Exception:  # noqa: BLE001 - none yet, or unreadable (truncated, corrupt, old format): recompute
            pass
        # No-grad batches no bigger than a training batch, so this pass never sets the memory peak.
        budget = (self.cfg.batch_size + (self.cfg.aux_per_batch or self.cfg.batch_size)) * self.cfg.max_length
        n = sum(len(sets.train[k]) for k in (TAR, AUX, NEG))
        done = 0
        ref = {}
        for k in (TAR, AUX, NEG):
            parts = torch.zeros(len(sets.train[k]))
            for idx in batched(sets.train[k], budget):
                self._set_stage(f"computing reference log-probs {done}/{n}")
                self._check_stop()
                parts[idx] = logps_of(model, [sets.train[k][i] for i in idx], device, pad_id, adapter=False,
                                      max_tokens=budget, autocast=self._autocast)[0]  # fmt: skip
                done += len(idx)
            ref[k] = parts
        buffer = io.BytesIO()
        torch.save({"key": key, **ref}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        release_freed_memory()
        return ref

    def _evaluate(self, model, sets: TrainingSets, device, pad_id: int) -> dict:
        """Held-out mean per-token log-likelihood, base vs adapter, on the user's and on other writers' texts."""
        out = {}
        for key, name in ((TAR, "target"), (AUX, "peer")):
            base = mean_token_ll(
                model, sets.heldout[key], device, pad_id, adapter=False, autocast=self._autocast
            )
            tuned = mean_token_ll(
                model, sets.heldout[key], device, pad_id, adapter=True, autocast=self._autocast
            )
            out[f"heldout_{name}_ll_base"] = base
            out[f"heldout_{name}_ll"] = tuned
            out[f"heldout_{name}_lift"] = None if base is None else tuned - base
        return {"eval": out}
