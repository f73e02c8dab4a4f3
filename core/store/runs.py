"""Training runs and their metrics, POPI summaries, "Sounds like me?" tests and exports."""

from __future__ import annotations

import json
from collections.abc import Sequence

from idiolect.core.base.errors import IdiolectError
from idiolect.core.store.db import loads_or, utcnow

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


class RunTables:
    # -- training runs ----------------------------------------------------------------------------------

    def create_run(self, profile_id: int, objective: str, model: str | None, config: dict) -> int:
        with self.write() as db:
            return (
                db["runs"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "objective": objective,
                        "model": model,
                        "config": json.dumps(config),
                        "status": "queued",
                        "created_at": utcnow(),
                    }
                )
                .last_pk
            )

    def update_run(self, run_id: int, **fields) -> None:
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        for key in ("config", "result"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        with self.write() as db:
            db["runs"].update(run_id, fields)

    def get_run(self, run_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            raise IdiolectError(f"no training run with id {run_id}")
        run = rows[0]
        run["config"] = loads_or(run["config"], {})
        run["result"] = loads_or(run["result"], {})
        return run

    def list_runs(self, profile_id: int) -> list[dict]:
        runs = list(self.db.query("SELECT * FROM runs WHERE profile_id = ? ORDER BY id DESC", [profile_id]))
        for run in runs:
            run["config"] = loads_or(run["config"], {})
            run["result"] = loads_or(run["result"], {})
        return runs

    def cancel_requested(self, run_id: int) -> bool:
        row = self.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", [run_id]).fetchone()
        return bool(row and row[0])

    def log_metrics(self, run_id: int, step: int, metrics: dict) -> None:
        now = utcnow()
        with self.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO run_metrics (run_id, step, metrics, created_at) VALUES (?, ?, ?, ?)",
                [run_id, step, json.dumps(metrics), now],
            )

    def run_metrics(self, run_id: int) -> list[dict]:
        return [
            {"step": step, **loads_or(m, {})}
            for step, m in self.conn.execute(
                "SELECT step, metrics FROM run_metrics WHERE run_id = ? ORDER BY step", [run_id]
            )
        ]

    # -- summaries ---------------------------------------------------------------------------------------

    def add_summary(
        self, profile_id: int, text: str, source: str, score: float | None = None, details: dict | None = None
    ) -> dict:
        if not text or not text.strip():
            raise IdiolectError("a summary cannot be empty")
        with self.write() as db:
            version = db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM summaries WHERE profile_id = ?", [profile_id]
            ).fetchone()[0]
            pk = (
                db["summaries"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "version": version,
                        "text": text.strip(),
                        "source": source,
                        "score": score,
                        "details": json.dumps(details or {}),
                        "created_at": utcnow(),
                    }
                )
                .last_pk
            )
        return {"id": pk, "version": version}

    def list_summaries(self, profile_id: int) -> list[dict]:
        rows = list(
            self.db.query("SELECT * FROM summaries WHERE profile_id = ? ORDER BY version DESC", [profile_id])
        )
        for row in rows:
            row["details"] = loads_or(row["details"], {})
        return rows

    # -- exports ----------------------------------------------------------------------------------------

    # -- "Sounds like me?" --------------------------------------------------------------------------------

    def add_likeness_test(
        self, profile_id: int, run_id: int | None, prompt: str, own_text: str, own_hash: str, model_text: str,
        own_side: int,
    ) -> int:  # fmt: skip
        with self.write() as db:
            return db.execute(
                """INSERT INTO likeness_tests (profile_id, run_id, prompt, own_text, own_hash, model_text, own_side,
                   created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                [profile_id, run_id, prompt, own_text, own_hash, model_text, int(own_side), utcnow()],
            ).lastrowid

    def answer_likeness_test(self, profile_id: int, test_id: int, picked_side: int) -> dict:
        """Keep the user's pick (the side they think they wrote); a test is answered once."""
        if picked_side not in (0, 1):
            raise IdiolectError("pick side 0 or 1")
        with self.write() as db:
            _, answered = self._own(db, "likeness_tests", "id, answered_at", profile_id, test_id)
            if answered:
                raise IdiolectError("this test was answered already: start a new one")
            db.execute(
                "UPDATE likeness_tests SET picked_side = ?, answered_at = ? WHERE id = ?",
                [picked_side, utcnow(), test_id],
            )
        return next(iter(self.db.query("SELECT * FROM likeness_tests WHERE id = ?", [test_id])))

    def likeness_tests(self, profile_id: int, run_id: int | None = None) -> list[dict]:
        where, args = "profile_id = ?", [profile_id]
        if run_id is not None:
            where, args = where + " AND run_id = ?", [*args, run_id]
        return list(self.db.query(f"SELECT * FROM likeness_tests WHERE {where} ORDER BY id", args))

    def add_export(
        self,
        profile_id: int,
        path: str,
        formats: Sequence[str],
        manifest: dict,
        *,
        run_id: int | None = None,
        summary_id: int | None = None,
    ) -> int:
        with self.write() as db:
            return (
                db["exports"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "run_id": run_id,
                        "summary_id": summary_id,
                        "path": str(path),
                        "formats": json.dumps(list(formats)),
                        "manifest": json.dumps(manifest),
                        "created_at": utcnow(),
                    }
                )
                .last_pk
            )
