"""Peer pools: other writers' texts, the unlabeled set of training."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import same_name
from idiolect.core.store.db import utcnow
from idiolect.core.store.profiles import check_name
from idiolect.core.store.samples import InsertResult


class PoolTables:
    # -- peer pools -------------------------------------------------------------------------------------

    def find_pool(self, name: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM peer_pools WHERE name = ?", [same_name(name)]))
        return rows[0] if rows else None

    def get_pool(self, name: str) -> dict:
        pool = self.find_pool(name)
        if pool is None:
            known = ", ".join(p["name"] for p in self.list_pools()) or "none yet"
            raise IdiolectError(f"no peer pool named {name!r} (pools: {known})")
        return pool

    def ensure_pool(
        self,
        name: str,
        *,
        description: str | None = None,
        source: str | None = None,
        license: str | None = None,
    ) -> dict:
        name = check_name(name, "pool")
        with self.write() as db:
            pool = self.find_pool(name)
            if pool is None:
                db["peer_pools"].insert(
                    {
                        "name": name,
                        "description": description,
                        "source": source,
                        "license": license,
                        "salt": secrets.token_hex(16),
                        "created_at": utcnow(),
                    }
                )
                pool = self.find_pool(name)
        return pool

    def list_pools(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM peer_pools ORDER BY name"))

    PEER_FIELDS = ("writer", "context", "text", "source", "attribution", "license")

    def add_peer_texts(self, pool_id: int, rows: Sequence[dict]) -> InsertResult:
        clean = [{k: r.get(k) for k in self.PEER_FIELDS} for r in rows]
        return self._insert_unique("peer_texts", "pool_id", pool_id, clean, ("writer", "context", "text"))

    def peer_texts(self, pool_id: int, writers: Sequence[str] | None = None) -> list[dict]:
        sql, args = "SELECT * FROM peer_texts WHERE pool_id = ?", [pool_id]
        if writers is not None:
            sql += f" AND writer IN ({', '.join('?' * len(writers))})"
            args += list(writers)
        return list(self.db.query(sql + " ORDER BY id", args))

    def remove_pool_writer(self, pool_id: int, writer: str) -> int:
        """Delete every text of one (pseudonymous) writer from a pool; returns how many."""
        with self.write() as db:
            return db.execute(
                "DELETE FROM peer_texts WHERE pool_id = ? AND writer = ?", [pool_id, writer]
            ).rowcount

    def pool_stats(self, pool_id: int, min_texts: int = 3) -> dict:
        counts = [
            r[0]
            for r in self.conn.execute(
                "SELECT count(*) FROM peer_texts WHERE pool_id = ? GROUP BY writer", [pool_id]
            )
        ]
        return {
            "texts": sum(counts),
            "writers": len(counts),
            f"writers_with_{min_texts}_plus": sum(1 for c in counts if c >= min_texts),
        }
