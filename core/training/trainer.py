"""Training a profile's LoRA adapter (QLoRA on CUDA) with C-BPO or a baseline, for one run of the runs table.

The loop: load the base (4-bit NF4 on CUDA, fp32 on CPU) and wrap it with LoRA; assemble and tokenize the three
sets (core.training_data); estimate pi (core.pu_prior) unless given; compute every training sample's reference
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
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.checkpoint

from idiolect.core.base.errors import IdiolectError
from idiolect.core.store import Store, utcnow
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
from idiolect.core.training.objectives import (
    RewardShift,
    implicit_rewards,
    objective_loss,
)
from idiolect.core.training.runs import (
    DATA_RECORD,
    atomic_write_bytes,
    data_record,
    latest_checkpoint,
    read_data_record,
    run_dir,
    sets_from_record,
)

# --------------------------------------------------------------------------------------------------------
# Log-probabilities of responses


# --------------------------------------------------------------------------------------------------------
# The run


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and the process's RSS stays high)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_peft_model(cfg: TrainConfig, model, device: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device == "cuda"
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    preference = cfg.objective != "sft"
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0 if preference else cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if preference:
        disable_dropout(model)
    return model


def disable_dropout(model) -> None:
    """Preference objectives compare the policy's log-probs with the reference pass's (run without dropout),
    so dropout in the policy pass would only add noise to the implicit reward (TRL's ``disable_dropout``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# The signal whose Python handler interrupts a model load (never sent by the OS: ``_thread.interrupt_main``
# calls the handler itself, which works whatever the process inherited for SIGINT).
STOP_SIGNAL = getattr(signal, "SIGUSR2", None)


def _raise_stop(signum, frame) -> None:
    raise StopRequested


class StopRequested(Exception):
    """Raised inside a forward pass (or between stages) once a stop was asked for."""


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
        from idiolect.core.models.loading import load_hf_model
        from idiolect.core.models.resolve import local_model_dir

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._set_stage("loading the model")
        model_dir = local_model_dir(cfg.model)
        base, tokenizer, desc = load_hf_model(model_dir, device=cfg.device, quantize=cfg.quantize)
        self._set_stage("reading your data")
        self._check_stop()
        device = desc["device"]
        self._autocast = autocast_dtype(cfg.precision, device, desc["params"])
        model = self._model = build_peft_model(cfg, base, device)
        hooks = self._install_stop_hooks(model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        record = read_data_record(self.dir)
        if record is None:  # a new run: read the database once and record exactly what it trains on
            sets = load_sets(
                self.store,
                self.profile,
                pool=cfg.pool,
                peer_cap=cfg.peer_cap,
                heldout_fraction=cfg.heldout_fraction,
                seed=cfg.seed,
            )
            total = total_steps(cfg, len(sets.train[TAR]))
            record = data_record(sets, total)
            atomic_write_bytes(self.dir / DATA_RECORD, json.dumps(record, ensure_ascii=False).encode())
        else:  # a resumed run: the same rows and the same plan, whatever changed in the database since
            sets = sets_from_record(record)
            total = record["total_steps"]
        for group in (sets.train, sets.heldout):
            for examples in group.values():
                tokenize(examples, tokenizer, cfg.max_length)
        aux_per_batch = cfg.aux_per_batch or cfg.batch_size
        self.store.update_run(self.run_id, total_steps=total, model=str(model_dir))

        ckpt, state = self._readable_checkpoint()
        if state is None:
            self._set_stage("estimating pi")
        pi_info = state["pi_info"] if state else self._estimate_pi(sets)
        pi = pi_info["pi"]
        ocfg = cfg.objective_config()
        ref = self._reference(model, sets, device, pad_id, record, str(model_dir))

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, warmup))
        shift = RewardShift("pooled" if cfg.objective == "bco" else "separate", cfg.delta_decay)
        start = 0
        if state:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            shift.load_state_dict(state["shift"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["py_rng"])
            start = state["step"]

        plan = plan_batches(
            sets,
            cfg.batch_size,
            aux_per_batch,
            cfg.neg_per_batch,
            total * cfg.grad_accum,
            cfg.seed,
        )
        model.train()
        self._set_stage("training")
        for step in range(start, total):
            # What a step changes before the optimizer moves: restored if the step is cut short.
            before = (copy.deepcopy(shift.state_dict()), torch.get_rng_state(), random.getstate())
            try:
                self._check_stop()
                metrics = self._step(
                    model, optimizer, params, sets, plan, step, ref, ocfg, pi, shift, device, pad_id
                )
            except StopRequested:
                optimizer.zero_grad(set_to_none=True)
                shift.load_state_dict(before[0])
                torch.set_rng_state(before[1])
                random.setstate(before[2])
                self._set_stage("saving a checkpoint")
                self._checkpoint(model, optimizer, scheduler, shift, step, pi_info)
                self.store.update_run(
                    self.run_id, status="cancelled", step=step, stage=None, finished_at=utcnow()
                )
                return {"status": "cancelled", "step": step}
            scheduler.step()
            metrics["lr"] = scheduler.get_last_lr()[0]
            self.store.log_metrics(self.run_id, step + 1, metrics)
            self.store.update_run(self.run_id, step=step + 1)
            if self.progress:
                self.progress(step + 1, total, metrics)
            if (step + 1) % cfg.save_every == 0 and step + 1 < total:
                self._checkpoint(model, optimizer, scheduler, shift, step + 1, pi_info)

        self._set_stage("evaluating on held-out texts")
        try:
            evaluation = self._evaluate(model, sets, device, pad_id)
        except StopRequested:  # all steps are done: keep them, and evaluate when the run is resumed
            self._set_stage("saving a checkpoint")
            self._checkpoint(model, optimizer, scheduler, shift, total, pi_info)
            self.store.update_run(
                self.run_id, status="cancelled", step=total, stage=None, finished_at=utcnow()
            )
            return {"status": "cancelled", "step": total}
        for hook in hooks:
            hook.remove()
        self._set_stage("saving the adapter")
        adapter_dir = self.dir / "adapter"
        tmp_dir = self.dir / ".tmp-adapter"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        model.save_pretrained(tmp_dir)
        (tmp_dir / "idiolect.json").write_text(
            json.dumps(
                {
                    "run_id": self.run_id,
                    "profile": self.profile,
                    "objective": cfg.objective,
                    "base": str(model_dir),
                }
            )
        )
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp_dir.rename(adapter_dir)
        result = {
            "pi": pi_info,
            "counts": sets.counts(),
            "steps": total,
            "precision": "bf16 autocast"
            if self._autocast is torch.bfloat16
            else "fp32"
            if device == "cpu"
            else "bf16",
            "data": {
                "record": str(self.dir / DATA_RECORD),
                "sha256": hashlib.sha256((self.dir / DATA_RECORD).read_bytes()).hexdigest(),
            },
            **evaluation,
        }
        self.store.update_run(
            self.run_id,
            status="completed",
            adapter_path=str(adapter_dir),
            result=result,
            stage=None,
            finished_at=utcnow(),
        )
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
            _release_freed_memory()  # keeps the RSS from creeping up step after step (~1 ms)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return {
            **agg,
            "grad_norm": grad_norm,
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / dt,
            "seconds": dt,
            "peak_memory_mb": _peak_memory_mb(device),
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
        _release_freed_memory()
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

    def _readable_checkpoint(self) -> tuple[Path | None, dict | None]:
        """The newest checkpoint that can be read whole. One that cannot (a kill or a full disk while it was
        written) is set aside as ``broken-checkpoint-N`` and the one before it is tried: a damaged file costs the
        steps since the last good checkpoint, never the run."""
        from safetensors.torch import load_file

        while (ckpt := latest_checkpoint(self.dir)) is not None:
            try:
                state = torch.load(ckpt / "state.pt", weights_only=False)
                load_file(str(ckpt / "adapter_model.safetensors"))
                if not isinstance(state, dict) or "step" not in state:
                    raise ValueError("no step in state.pt")
                return ckpt, state
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is set aside, whatever the cause
                broken = ckpt.with_name(f"broken-{ckpt.name}")
                shutil.rmtree(broken, ignore_errors=True)
                ckpt.rename(broken)
                print(
                    f"checkpoint {ckpt.name} cannot be read ({type(exc).__name__}); set aside",
                    file=sys.stderr,
                )
        return None, None

    def _checkpoint(self, model, optimizer, scheduler, shift, step: int, pi_info: dict) -> Path:
        final = self.dir / f"checkpoint-{step}"
        tmp = self.dir / f".tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "shift": shift.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "py_rng": random.getstate(),
                "pi_info": pi_info,
            },
            tmp / "state.pt",
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.dir.glob("checkpoint-*"):
            if old != final and int(old.name.split("-")[1]) < step:
                shutil.rmtree(old, ignore_errors=True)
        return final
