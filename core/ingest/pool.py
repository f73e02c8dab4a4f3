"""Peer pools: the default pool that ships in ``assets/peers/default/`` and the bundled prompt sets.

The default pool is written for this project: invented pseudonymous writers with clearly different
voices answering the same everyday prompts (``assets/prompts/everyday.jsonl``). It is loaded through the
same JSONL importer as any user pool (so it gets pseudonyms and scrubbing too) the first time a database
is opened (:func:`open_store`), so the app works on a fresh machine with no download.
"""

from __future__ import annotations

import json
import sys

from idiolect.core.base.errors import IdiolectError, ReadOnlyDatabase
from idiolect.core.base.paths import ASSETS, default_db_path
from idiolect.core.ingest.peers import import_peers
from idiolect.core.ingest.report import ImportReport
from idiolect.core.store import Store

DEFAULT_POOL = "default"
DEFAULT_POOL_DIR = ASSETS / "peers" / "default"
PROMPTS_DIR = ASSETS / "prompts"


def bundled_prompt_sets() -> dict[str, list[dict]]:
    """``{set name: [{key, kind, text}]}`` from ``assets/prompts/*.jsonl``."""
    sets = {}
    for path in sorted(PROMPTS_DIR.glob("*.jsonl")):
        items = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                items.append({"key": obj["id"], "kind": obj.get("kind"), "text": obj["text"]})
        sets[path.stem] = items
    return sets


def default_pool_rows() -> dict[str, list[dict]]:
    """The bundled pool as ``{file stem: [{writer, prompt_id, prompt, text}, ...]}`` (the benchmarks and tests
    read it directly, without a database)."""
    return {
        f.stem: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        for f in sorted(DEFAULT_POOL_DIR.glob("*.jsonl"))
    }


def ensure_defaults(store: Store) -> list[ImportReport]:
    """Load the bundled prompt sets and the default peer pool into a database that lacks them.
    Idempotent and cheap when they are already there."""
    reports: list[ImportReport] = []
    bundled = {
        r[0] for r in store.conn.execute("SELECT DISTINCT set_name FROM prompts WHERE profile_id IS NULL")
    }
    for name, items in bundled_prompt_sets().items():
        if name not in bundled:
            store.add_prompts(items, set_name=name)
    if store.find_pool(DEFAULT_POOL) is None:
        files = sorted(DEFAULT_POOL_DIR.glob("*.jsonl"))
        if not files:
            raise IdiolectError(
                f"the default peer pool is missing from {DEFAULT_POOL_DIR}; reinstall Idiolect"
            )
        with store.write():  # all files or none, so a crash never leaves half a default pool
            for path in files:
                reports.append(
                    import_peers(
                        store,
                        path,
                        DEFAULT_POOL,
                        fmt="jsonl",
                        description="Bundled pool: invented writers with distinct voices answering everyday prompts",
                        license="written for Idiolect; Apache-2.0 with the project",
                    )
                )
    return reports


def open_store(db: str | None, *, read_only_ok: bool = False) -> Store:
    """Open (and migrate) the database, and load the bundled defaults on first start. ``read_only_ok`` (commands
    that only read): where the database cannot be written (a read-only folder or mount), open it read-only and
    say so, instead of failing."""
    try:
        store = Store(db or default_db_path())
    except ReadOnlyDatabase as exc:
        if not read_only_ok:
            raise
        store = Store(db or default_db_path(), read_only=True)
        print(f"note: reading the database as it is, without writing ({exc})", file=sys.stderr)
        return store
    if store.backup_path:
        print(
            f"note: upgraded the database; the previous version is saved as {store.backup_path}",
            file=sys.stderr,
        )
    ensure_defaults(store)
    return store
