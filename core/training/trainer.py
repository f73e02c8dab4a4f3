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
import json
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
from idiolect.core.training.data import TrainingSets, plan_batches, sets_for, tokenize, total_steps
from idiolect.core.training.early_stopping import EarlyStopping, validation_scorer
from idiolect.core.training.labels import AUX, NEG, TAR
from idiolect.core.training.logprobs import (
    autocast_dtype,
    decoder_and_head,
    mean_token_ll,
    response_logps,
)
from idiolect.core.training.lora import build_peft_model
from idiolect.core.training.objectives import (
    RewardShift,
    implicit_rewards,
    objective_loss,
)
from idiolect.core.training.reference import cache_file, reference_logps
from idiolect.core.training.runs import (
    DATA_RECORD,
    atomic_write_bytes,
    data_record,
    read_data_record,
    run_dir,
    sets_from_record,
)
from idiolect.core.training.schedule import lr_factor, warmup_steps

# --------------------------------------------------------------------------------------------------------
# Log-probabilities of responses


# --------------------------------------------------------------------------------------------------------
# The run


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
    stopper: EarlyStopping | None = None
    done_steps: int = 0  # whole optimizer steps taken (what a checkpoint at a stop holds)


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
        live.done_steps = start = self._optimizer(live, total, ckpt, state)
        plan = plan_batches(sets, cfg.batch_size, cfg.aux_per_batch or cfg.batch_size, cfg.neg_per_batch,
                            total * cfg.grad_accum, cfg.seed)  # fmt: skip
        if not self._start_early_stopping(live, sets, total, state):
            return self._cancelled(live, start)
        live.model.train()
        self._set_stage("training")
        for step in range(start, total if live.stopper.stopped_at is None else start):
            outcome = self._train_step(live, sets, plan, step, total, ref)
            if outcome == "cancel":
                return self._cancelled(live, live.done_steps)
            if outcome == "early":
                break
        last = live.done_steps
        live.stopper.restore_best(live.model, last)
        self._set_stage("evaluating on held-out texts")
        try:
            evaluation = self._evaluate(live.model, sets, live.device, live.pad_id)
        except StopRequested:  # all steps are done: keep them, and evaluate when the run is resumed
            return self._cancelled(live, last)
        for hook in live.hooks:
            hook.remove()
        evaluation["early_stopping"] = live.stopper.report(last)
        return self._complete(live, sets, last, evaluation)

    def _start_early_stopping(self, live: _Live, sets: TrainingSets, total: int, state: dict | None) -> bool:
        """The validation slice's scorer, restored from the checkpoint or started by scoring the base; False
        when a stop came while the base was scored."""
        cfg = self.cfg
        live.stopper = EarlyStopping(sets.validation[TAR], total, every=cfg.eval_every, patience=cfg.patience)
        live.stopper.load_state_dict((state or {}).get("early_stopping"))
        self._score = validation_scorer(live.stopper.examples, live.device, live.pad_id, self._autocast)
        if live.stopper.active and not live.stopper.history:
            self._set_stage(f"scoring {len(live.stopper.examples)} validation texts on the base")
            try:
                live.stopper.start(live.model, self._score)
            except StopRequested:
                return False
        return True

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
            sets = sets_for(self.store, self.profile, cfg)
            record = data_record(sets, total_steps(cfg, len(sets.train[TAR])))
            atomic_write_bytes(self.dir / DATA_RECORD, json.dumps(record, ensure_ascii=False).encode())
        sets = sets_from_record(record)
        for _, group in sets.splits():
            for examples in group.values():
                tokenize(examples, tokenizer, cfg.max_length)
        return record, sets, record["total_steps"]

    def _optimizer(self, live: _Live, total: int, ckpt, state: dict | None) -> int:
        """The optimizer, schedule and reward shift, restored from the checkpoint if there is one; returns the
        step to start at."""
        cfg = self.cfg
        live.params = [p for p in live.model.parameters() if p.requires_grad]
        live.optimizer = torch.optim.AdamW(live.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = warmup_steps(total, cfg.warmup)
        live.scheduler = torch.optim.lr_scheduler.LambdaLR(
            live.optimizer, lambda s: lr_factor(s, total, warmup)
        )
        live.shift = RewardShift("pooled" if cfg.objective == "bco" else "separate", cfg.delta_decay)
        live.ocfg = cfg.objective_config()
        if not state:
            return 0
        checkpoints.restore(ckpt, state, live.model, live.optimizer, live.scheduler, live.shift)
        return state["step"]

    def _train_step(self, live: _Live, sets, plan, step: int, total: int, ref) -> str:
        """One step, its validation score when due, logged (and checkpointed every ``save_every``). Returns
        "next"; "early" when early stopping ends the run here; "cancel" when a stop cut the step short (what it
        changed is restored, so the checkpoint holds the last whole step) or came while the slice was scored."""
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
            return "cancel"
        live.scheduler.step()
        live.done_steps = step + 1
        metrics["lr"] = live.scheduler.get_last_lr()[0]
        outcome = "next"
        try:
            val, early = live.stopper.after_step(live.model, step + 1, self._score)
        except StopRequested:
            val, outcome = None, "cancel"
        else:
            outcome = "early" if early else outcome
        if val is not None:
            metrics["val_ll"] = val
        self.store.log_metrics(self.run_id, step + 1, metrics)
        self.store.update_run(self.run_id, step=step + 1)
        if self.progress:
            self.progress(step + 1, total, metrics)
        if outcome == "next" and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            self._save(live, step + 1)
        return outcome

    def _save(self, live: _Live, step: int) -> None:
        extra = {"early_stopping": live.stopper.state_dict()} if live.stopper else {}
        checkpoints.save(self.dir, step, live.model, live.optimizer, live.scheduler, live.shift, live.pi_info,
                         extra=extra)  # fmt: skip

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
        from idiolect.core.training.pu_prior import run_prior

        return run_prior(self.cfg, [e.text for e in sets.train[TAR]], [e.text for e in sets.train[AUX]])

    def _reference(
        self, model, sets: TrainingSets, device, pad_id: int, record: dict, model_dir: str
    ) -> dict[str, torch.Tensor]:
        """Reference log-probs of every training sample under the frozen base (training.reference: computed
        once per sample and base, cached in the data folder beside the runs)."""
        if self.cfg.objective == "sft":  # SFT has no implicit reward: the base's log-probs are never used
            return {k: torch.zeros(len(sets.train[k])) for k in (TAR, AUX, NEG)}
        cfg = self.cfg

        def before_batch(done: int, n: int) -> None:
            self._set_stage(f"computing reference log-probs {done}/{n}")
            self._check_stop()

        return reference_logps(model, sets.train, device, pad_id, autocast=self._autocast,
                               path=cache_file(self.store.path.parent / "cache" / "reference", model_dir,
                                               self._autocast),
                               budget=(cfg.batch_size + (cfg.aux_per_batch or cfg.batch_size)) * cfg.max_length,
                               before_batch=before_batch)  # fmt: skip

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
