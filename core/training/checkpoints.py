"""A run's checkpoints: the adapter and the optimizer, schedule, reward-shift and RNG state, written atomically
(to a temporary folder, then renamed) so a run started again resumes at the same step and ends at the same total."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import torch

from idiolect.core.training.runs import latest_checkpoint


def readable(directory: Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that can be read whole. One that cannot (a kill or a full disk while it was
    written) is set aside as ``broken-checkpoint-N`` and the one before it is tried: a damaged file costs the
    steps since the last good checkpoint, never the run."""
    from safetensors.torch import load_file

    while (ckpt := latest_checkpoint(directory)) is not None:
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
            print(f"checkpoint {ckpt.name} cannot be read ({type(exc).__name__}); set aside", file=sys.stderr)
    return None, None


def restore(ckpt: Path, state: dict, model, optimizer, scheduler, shift) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    shift.load_state_dict(state["shift"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["py_rng"])


def save(
    directory: Path, step: int, model, optimizer, scheduler, shift, pi_info: dict, *, extra=None
) -> Path:
    """A checkpoint at ``step``; ``extra``: more state to restore with it (the early-stopping record)."""
    final = directory / f"checkpoint-{step}"
    tmp = directory / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "shift": shift.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "pi_info": pi_info,
        **(extra or {}),
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in directory.glob("checkpoint-*"):
        if old != final and int(old.name.split("-")[1]) < step:
            shutil.rmtree(old, ignore_errors=True)
    return final
