"""The local SQLite store (through sqlite-utils): :class:`Store`, one class over every table of the data model,
assembled from one module per table group (profiles, samples, ratings, pools, runs) over the connection policy
and migrations of :mod:`idiolect.core.store.db`."""

from __future__ import annotations

from idiolect.core.store.db import Database, utcnow
from idiolect.core.store.migrations import SCHEMA_VERSION
from idiolect.core.store.pools import PoolTables
from idiolect.core.store.profiles import ProfileTables, check_name
from idiolect.core.store.ratings import RatingTables
from idiolect.core.store.runs import RUN_STATUSES, RunTables
from idiolect.core.store.samples import GENERATION_KEY, SAMPLE_KEY, InsertResult, SampleTables, row_key

__all__ = [
    "GENERATION_KEY",
    "RUN_STATUSES",
    "SAMPLE_KEY",
    "SCHEMA_VERSION",
    "InsertResult",
    "Store",
    "check_name",
    "row_key",
    "utcnow",
]


class Store(Database, ProfileTables, SampleTables, RatingTables, PoolTables, RunTables):
    """The SQLite file of one installation. Thread-safe: each thread gets its own connection."""

    # -- overview ---------------------------------------------------------------------------------------

    TABLES = (
        "profiles",
        "samples",
        "prompts",
        "generations",
        "feedback",
        "peer_pools",
        "peer_texts",
        "runs",
        "run_metrics",
        "summaries",
        "exports",
        "imports",
        "likeness_tests",
    )

    def stats(self) -> dict:
        """Counts per table, per peer pool and per profile: what ``launch.py stats`` prints."""
        conn = self.conn
        tables = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in self.TABLES}
        pools = {p["name"]: self.pool_stats(p["id"]) for p in self.list_pools()}
        profiles = {}
        for p in self.list_profiles():
            profiles[p["name"]] = {
                "samples": conn.execute(
                    "SELECT count(*) FROM samples WHERE profile_id = ?", [p["id"]]
                ).fetchone()[0],
                "generations": conn.execute(
                    "SELECT count(*) FROM generations WHERE profile_id = ?", [p["id"]]
                ).fetchone()[0],
                "ratings_up": conn.execute(
                    "SELECT count(*) FROM feedback f JOIN generations g ON g.id = f.generation_id "
                    "WHERE g.profile_id = ? AND f.rating = 1 AND f.superseded_at IS NULL",
                    [p["id"]],
                ).fetchone()[0],
                "ratings_down": conn.execute(
                    "SELECT count(*) FROM feedback f JOIN generations g ON g.id = f.generation_id "
                    "WHERE g.profile_id = ? AND f.rating = -1 AND f.superseded_at IS NULL",
                    [p["id"]],
                ).fetchone()[0],
                "runs": conn.execute("SELECT count(*) FROM runs WHERE profile_id = ?", [p["id"]]).fetchone()[
                    0
                ],
            }
        return {
            "db": str(self.path),
            "schema_version": self.schema_version,
            "tables": tables,
            "pools": pools,
            "profiles": profiles,
        }
