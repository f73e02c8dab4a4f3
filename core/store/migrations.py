"""The schema's migrations, one function per version; ``PRAGMA user_version`` holds the version applied."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from idiolect.core.base.identity import content_hash, same_name

SCHEMA_VERSION = 8


# Migrations. Each takes a connection inside an open write transaction. Never edit a released migration:
# add the next one.


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL statements one by one inside the caller's transaction (``executescript`` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migration_1(conn: sqlite3.Connection) -> None:
    """Initial schema."""
    _run_script(
        conn,
        """
        CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            settings TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            prompt TEXT,
            context TEXT,
            text TEXT NOT NULL,
            source TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_samples_profile ON samples(profile_id);
        CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER REFERENCES profiles(id) ON DELETE CASCADE,
            set_name TEXT NOT NULL DEFAULT 'user',
            key TEXT,
            kind TEXT,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_prompts_profile ON prompts(profile_id);
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            prompt_id INTEGER REFERENCES prompts(id) ON DELETE SET NULL,
            prompt TEXT NOT NULL,
            text TEXT NOT NULL,
            model TEXT,
            adapter TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_generations_profile ON generations(profile_id);
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            generation_id INTEGER NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
            rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
            edited_text TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_feedback_generation ON feedback(generation_id);
        CREATE TABLE peer_pools (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT,
            source TEXT,
            license TEXT,
            salt TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE peer_texts (
            id INTEGER PRIMARY KEY,
            pool_id INTEGER NOT NULL REFERENCES peer_pools(id) ON DELETE CASCADE,
            writer TEXT NOT NULL,
            context TEXT,
            text TEXT NOT NULL,
            source TEXT,
            attribution TEXT,
            license TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_peer_texts_pool_writer ON peer_texts(pool_id, writer);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            objective TEXT NOT NULL,
            model TEXT,
            config TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
            checkpoint_path TEXT,
            adapter_path TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX idx_runs_profile ON runs(profile_id);
        CREATE TABLE run_metrics (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            metrics TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (run_id, step)
        );
        CREATE TABLE summaries (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            score REAL,
            details TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            UNIQUE (profile_id, version)
        );
        CREATE TABLE exports (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            summary_id INTEGER REFERENCES summaries(id) ON DELETE SET NULL,
            path TEXT NOT NULL,
            formats TEXT NOT NULL DEFAULT '[]',
            manifest TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        """,
    )


def _hash_rows(conn: sqlite3.Connection) -> None:
    """Every stored sample's and peer text's content hash, computed (again) by the one identity rule."""
    for table, cols in (
        ("samples", ("prompt", "context", "text")),
        ("peer_texts", ("writer", "context", "text")),
    ):
        rows = conn.execute(f"SELECT id, {', '.join(cols)} FROM {table}").fetchall()
        conn.executemany(
            f"UPDATE {table} SET content_hash = ? WHERE id = ?",
            [(content_hash(*row[1:]), row[0]) for row in rows],
        )


def _migration_2(conn: sqlite3.Connection) -> None:
    """Content hashes, so that re-importing a file adds nothing twice, and a heartbeat on runs, so a crashed
    training worker can be told from a running one. Existing rows are hashed in place; none is dropped, even
    where two old rows turn out to be identical (the index is not UNIQUE for that reason: imports check for
    an existing hash inside their write transaction instead)."""
    conn.execute("ALTER TABLE samples ADD COLUMN content_hash TEXT")
    conn.execute("ALTER TABLE peer_texts ADD COLUMN content_hash TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN heartbeat_at TEXT")
    _hash_rows(conn)
    conn.execute("CREATE INDEX idx_samples_hash ON samples(profile_id, content_hash)")
    conn.execute("CREATE INDEX idx_peer_texts_hash ON peer_texts(pool_id, content_hash)")


def _migration_3(conn: sqlite3.Connection) -> None:
    """What a training worker needs to report and be steered: its process id, progress, a cancel request from
    the UI or CLI, and the final result (held-out metrics, pi, counts)."""
    conn.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")
    conn.execute("ALTER TABLE runs ADD COLUMN step INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE runs ADD COLUMN total_steps INTEGER")
    conn.execute("ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE runs ADD COLUMN result TEXT NOT NULL DEFAULT '{}'")


def _migration_4(conn: sqlite3.Connection) -> None:
    """One current rating per generation. A rating that is changed or undone is kept as history with the time
    it stopped counting (``superseded_at``); a partial UNIQUE index makes a second current rating impossible.
    Databases written before this kept every press as a rating (a generation could be both a positive and a
    negative): the latest press per generation stays current, the earlier ones become history. Runs get the
    stage they are in (loading the model, computing reference log-probs, training, ...)."""
    conn.execute("ALTER TABLE feedback ADD COLUMN superseded_at TEXT")
    conn.execute(
        """UPDATE feedback SET superseded_at = created_at
           WHERE id NOT IN (SELECT max(id) FROM feedback GROUP BY generation_id)"""
    )
    conn.execute(
        "CREATE UNIQUE INDEX idx_feedback_current ON feedback(generation_id) WHERE superseded_at IS NULL"
    )
    conn.execute("ALTER TABLE runs ADD COLUMN stage TEXT")


def _migration_5(conn: sqlite3.Connection) -> None:
    """Import history: every batch of samples added at once (a paste, a file) is one ``imports`` row, and each
    sample remembers its batch, so one import can be undone as a whole. Samples from before have none."""
    _run_script(
        conn,
        """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            added INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            undone_at TEXT
        );
        CREATE INDEX idx_imports_profile ON imports(profile_id);
        ALTER TABLE samples ADD COLUMN import_id INTEGER REFERENCES imports(id) ON DELETE SET NULL;
        CREATE INDEX idx_samples_import ON samples(import_id);
        """,
    )


def _migration_6(conn: sqlite3.Connection) -> None:
    """ "Sounds like me?": each test shows the user one of their own held-out texts and an adapter's answer to
    the same prompt, in random order; the user's pick is kept, and the score is how often the adapter fooled
    its own author."""
    _run_script(
        conn,
        """
        CREATE TABLE likeness_tests (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            prompt TEXT NOT NULL,
            own_text TEXT NOT NULL,
            own_hash TEXT NOT NULL,
            model_text TEXT NOT NULL,
            own_side INTEGER NOT NULL CHECK (own_side IN (0, 1)),
            picked_side INTEGER CHECK (picked_side IN (0, 1)),
            created_at TEXT NOT NULL,
            answered_at TEXT
        );
        CREATE INDEX idx_likeness_profile ON likeness_tests(profile_id);
        """,
    )


def _migration_7(conn: sqlite3.Connection) -> None:
    """Ratings imported from other tools (Open WebUI thumbs, TRL and LLaMA-Factory datasets) are generations
    with a rating that belong to an import, so "undo this import" takes them back too; the import counts them."""
    _run_script(
        conn,
        """
        ALTER TABLE generations ADD COLUMN import_id INTEGER REFERENCES imports(id) ON DELETE SET NULL;
        CREATE INDEX idx_generations_import ON generations(import_id);
        ALTER TABLE imports ADD COLUMN ratings INTEGER NOT NULL DEFAULT 0;
        """,
    )


def _migration_8(conn: sqlite3.Connection) -> None:
    """One Unicode form for identity: content hashes are now of NFC text (a sample typed with a composed "é"
    and the same sample with "e" + an accent are one sample), so every stored hash is computed again; profile
    and pool names become NFC where that takes no other's name. No text itself is changed."""
    _hash_rows(conn)
    for table in ("profiles", "peer_pools"):
        names = dict(conn.execute(f"SELECT id, name FROM {table}").fetchall())
        taken = set(names.values())
        for row_id, name in names.items():
            nfc = same_name(name)
            if nfc != name and nfc not in taken:
                conn.execute(f"UPDATE {table} SET name = ? WHERE id = ?", [nfc, row_id])
                taken.add(nfc)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migration_1,
    2: _migration_2,
    3: _migration_3,
    4: _migration_4,
    5: _migration_5,
    6: _migration_6,
    7: _migration_7,
    8: _migration_8,
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
