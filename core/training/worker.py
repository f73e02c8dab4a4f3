"""Training runs in their own process: start, watch, cancel, resume.

The UI never trains in its own threads: :func:`start` spawns ``python -m idiolect.core.training.worker RUN_ID --db PATH`` in a new
session (so closing the browser tab or a Ctrl-C in the app's terminal does not kill it); the worker reports
through the runs and run_metrics tables; :func:`cancel` asks it to stop (it checkpoints first), and
:func:`status` notices a worker that died (killed, crashed, machine rebooted) and marks the run failed but
resumable. :func:`resume` starts a worker again on the same run: it continues from the last checkpoint and ends
at the same total number of steps.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.paths import PACKAGE_ROOT
from idiolect.core.base.process import process_alive
from idiolect.core.store import Store, utcnow
from idiolect.core.training.config import TrainConfig
from idiolect.core.training.runs import check_trainable, create_run, latest_checkpoint, run_dir, seconds_left
from idiolect.core.training.trainer import Trainer

ACTIVE = ("queued", "running")


def spawn(store: Store, run_id: int) -> int:
    directory = run_dir(store, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    log = open(directory / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "idiolect.core.training.worker", str(run_id), "--db", str(store.path)],
        cwd=str(PACKAGE_ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    store.update_run(run_id, pid=proc.pid)
    return proc.pid


def new_run(store: Store, profile: str, cfg: TrainConfig) -> int:
    """The one way a run begins, in the background or in the foreground: refused while another run of the
    profile trains (one active run per profile) or when it would fail at once; else its row, queued."""
    for run in store.list_runs(store.get_profile(profile)["id"]):
        if status(store, run["id"])["status"] in ACTIVE:
            raise IdiolectError(
                f"run {run['id']} is still training for {profile!r}: cancel it or wait for it"
            )
    check_trainable(store, profile, cfg)
    return create_run(store, profile, cfg)


def reopen_run(store: Store, run_id: int) -> dict:
    """The one way a run resumes, in the background or in the foreground: refused while it trains (its worker
    alive) or once it has finished; else queued again with its cancel flag and error cleared."""
    run = status(store, run_id)
    if run["status"] in ACTIVE:
        where = f" in process {run['pid']}" if run.get("pid") else ""
        raise IdiolectError(f"run {run_id} is already training{where}")
    if run["status"] == "completed":
        raise IdiolectError(
            f"run {run_id} has finished already (its adapter is {run['adapter_path']}); start a new run to "
            "train further"
        )
    store.update_run(run_id, status="queued", cancel_requested=0, error=None, finished_at=None)
    return store.get_run(run_id)


def start(store: Store, profile: str, cfg: TrainConfig) -> int:
    """Create a run and start its worker; returns the run id at once."""
    run_id = new_run(store, profile, cfg)
    spawn(store, run_id)
    return run_id


def cancel(store: Store, run_id: int) -> None:
    run = status(store, run_id)
    if run["status"] not in ACTIVE:
        raise IdiolectError(f"run {run_id} is not training (status: {run['status']})")
    store.update_run(run_id, cancel_requested=1)


def resume(store: Store, run_id: int) -> int:
    reopen_run(store, run_id)
    return spawn(store, run_id)


def status(store: Store, run_id: int) -> dict:
    """The run, with progress and an ETA; a run whose worker is gone is marked failed here. ``activity`` says
    in words what an active run is doing now (its stage, or that it is cancelling)."""
    run = store.get_run(run_id)
    if run["status"] in ACTIVE and run["pid"] and not process_alive(run["pid"]):
        ckpt = latest_checkpoint(run_dir(store, run_id))
        where = f"step {ckpt.name.split('-')[1]}" if ckpt else "the start"
        msg = f"the training worker stopped unexpectedly (killed or crashed); resume continues from {where}"
        store.update_run(run_id, status="failed", error=msg, finished_at=utcnow())
        run = store.get_run(run_id)
    run["eta_seconds"] = _eta(store, run)
    run["activity"] = activity(run)
    return run


def activity(run: dict) -> str:
    """What a run is doing, for people: 'queued', 'loading the model', 'training', 'cancelling (...)', or its
    final status."""
    if run["status"] not in ACTIVE:
        return run["status"]
    stage = run.get("stage") or (
        "waiting for the worker to start" if run["status"] == "queued" else "starting"
    )
    if run.get("cancel_requested"):
        return f"cancelling (was {stage})"
    return stage


def _eta(store: Store, run: dict) -> float | None:
    total, step = run.get("total_steps"), run.get("step") or 0
    if run["status"] != "running" or not total or step < 1:
        return None
    return seconds_left([m.get("seconds") for m in store.run_metrics(run["id"])[-20:]], total - step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Idiolect training worker (started by the app or the CLI)")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--db", required=True)
    args = parser.parse_args(argv)
    store = Store(args.db)
    trainer = Trainer(store, args.run_id)
    # A polite stop: checkpoint at the last whole step, then exit (the same path as the UI's cancel).
    signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop())
    try:
        trainer.run()
    except IdiolectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    from idiolect.core.base.process import exit_process

    exit_process(main())


def delete_profile(store: Store, name: str) -> dict:
    """Delete a profile with everything that is its own: its rows (samples, ratings, runs, summaries) and its
    runs' folders (adapters, checkpoints). Refused while one of its runs is training. Returns what was deleted
    (``Store.profile_footprint``, taken just before)."""
    from idiolect.core.training import worker

    profile = store.get_profile(name)
    runs = store.list_runs(profile["id"])
    active = [r["id"] for r in runs if worker.status(store, r["id"])["status"] in worker.ACTIVE]
    if active:
        raise IdiolectError(
            f"run {active[0]} of {name!r} is training: cancel it first, then delete the profile"
        )
    gone = store.profile_footprint(name)
    store.delete_profile(name)
    for r in runs:
        shutil.rmtree(run_dir(store, r["id"]), ignore_errors=True)
    return gone
