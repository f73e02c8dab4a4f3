"""The local SQLite store (through sqlite-utils): every table of the data model, its migrations, and the
connection policy.

Connection policy (safe for the UI and a training worker writing at once):
- one connection per thread (and per process): sqlite3 connections are never shared across threads;
- WAL journal, so readers never block the writer and the writer never blocks readers;
- ``busy_timeout`` of 30 s, and every write goes through :meth:`Store.write`, which opens the transaction
  with ``BEGIN IMMEDIATE``: the write lock is taken up front, so two writers queue on the busy timeout
  instead of failing with "database is locked" when a read transaction tries to upgrade;
- ``foreign_keys=ON`` on every connection, ``synchronous=NORMAL`` (durable in WAL mode at each checkpoint,
  never corrupt).

Schema versions live in ``PRAGMA user_version``. Opening a store migrates it to :data:`SCHEMA_VERSION`;
before any migration of a database that already holds tables, a full copy is written next to it
(``NAME.backup-v{old}-{UTC time}.db``) with SQLite's online backup API. Migrations run in one write
transaction, so a crash mid-way leaves the old version intact.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from idiolect.core.errors import IdiolectError

SCHEMA_VERSION = 7
BUSY_TIMEOUT_MS = 30_000
RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
PROFILE_NAME_RE = re.compile(r"^[^\W_][\w .'-]{0,63}$")
POOL_NAME_RE = PROFILE_NAME_RE


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def content_hash(*parts: str | None) -> str:
    """Hash that decides whether two texts are the same sample (whitespace-normalised)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(" ".join((part or "").split()).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


SAMPLE_KEY = ("prompt", "context", "text")  # what makes two samples the same sample
GENERATION_KEY = ("prompt", "text")  # what makes an imported rating one the profile already has


def row_key(row: dict, columns: Sequence[str]) -> str:
    """The content hash of a row over ``columns`` (the one identity rule of imports and their dry runs)."""
    return content_hash(*(row.get(c) for c in columns))


def check_name(name: str, what: str = "profile") -> str:
    name = (name or "").strip()
    if not PROFILE_NAME_RE.match(name):
        raise IdiolectError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, spaces, '.', '-', \"'\" or '_', "
            "starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------------------------------------
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


def _migration_2(conn: sqlite3.Connection) -> None:
    """Content hashes, so that re-importing a file adds nothing twice, and a heartbeat on runs, so a crashed
    training worker can be told from a running one. Existing rows are hashed in place; none is dropped, even
    where two old rows turn out to be identical (the index is not UNIQUE for that reason: imports check for
    an existing hash inside their write transaction instead)."""
    conn.execute("ALTER TABLE samples ADD COLUMN content_hash TEXT")
    conn.execute("ALTER TABLE peer_texts ADD COLUMN content_hash TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN heartbeat_at TEXT")
    for table, cols in (
        ("samples", ("prompt", "context", "text")),
        ("peer_texts", ("writer", "context", "text")),
    ):
        rows = conn.execute(f"SELECT id, {', '.join(cols)} FROM {table}").fetchall()
        conn.executemany(
            f"UPDATE {table} SET content_hash = ? WHERE id = ?",
            [(content_hash(*row[1:]), row[0]) for row in rows],
        )
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


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migration_1,
    2: _migration_2,
    3: _migration_3,
    4: _migration_4,
    5: _migration_5,
    6: _migration_6,
    7: _migration_7,
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


# --------------------------------------------------------------------------------------------------------


@dataclass
class InsertResult:
    added: list[int]  # row ids of the rows written
    duplicates: list[int]  # positions (in the input) of rows already present
    import_id: int | None = None  # the import-history row of a batch of samples
    rated_added: list[int] = field(default_factory=list)  # generation ids of imported ratings
    rated_duplicates: list[int] = field(default_factory=list)  # positions of ratings already there


def _loads(value: str | None, default):
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


class Store:
    """The SQLite file of one installation. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | os.PathLike, *, target_version: int = SCHEMA_VERSION):
        self.path = Path(path).expanduser().resolve()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.backup_path: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IdiolectError(f"cannot create the folder for the database {self.path}: {exc}") from exc
        self._migrate(target_version)

    # -- connections ------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # pragma: no cover - only on filesystems without shared memory
                raise IdiolectError(f"the database {self.path} cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_environmental(exc):
                raise _friendly(exc, self.path) from exc
            raise IdiolectError(f"cannot open the database {self.path}: {exc}") from exc
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None or db.conn is not self.conn:
            db = self._local.db = sqlite_utils.Database(self.conn)
        return db

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction, taken with BEGIN IMMEDIATE (see the module docstring). Nested calls join
        the outer transaction. Rolls back on any exception."""
        conn = self.conn
        if conn.in_transaction:
            with self.db.atomic():  # a savepoint inside the outer transaction
                yield self.db
            return
        deadline = time.monotonic() + 2 * BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise _friendly(exc, self.path) from exc
                if time.monotonic() > deadline:
                    raise IdiolectError(
                        f"the database {self.path} stayed locked by another process for over "
                        f"{2 * BUSY_TIMEOUT_MS // 1000} s; close other Idiolect windows or workers and retry"
                    ) from exc
                time.sleep(0.05)
        try:
            yield self.db
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _is_environmental(exc):
                raise _friendly(exc, self.path) from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _friendly(exc, self.path) from exc

    # -- schema -----------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self, target: int) -> None:
        if not 0 <= target <= SCHEMA_VERSION:
            raise ValueError(f"target_version must be within 0..{SCHEMA_VERSION}")
        conn = self.conn
        try:
            current = self.schema_version
        except sqlite3.DatabaseError as exc:
            raise IdiolectError(f"{self.path} is not an Idiolect database (or is damaged): {exc}") from exc
        if current > SCHEMA_VERSION:
            raise IdiolectError(
                f"the database {self.path} has schema version {current}, newer than this Idiolect "
                f"({SCHEMA_VERSION}); update Idiolect instead of opening it with an older one"
            )
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        if current == 0 and tables:
            raise IdiolectError(
                f"{self.path} is not an Idiolect database (it holds another application's tables: "
                f"{', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}); choose another file with --db"
            )
        if current > 0:
            self._check_integrity()
        if current >= target:
            return
        has_tables = bool(tables)
        if has_tables:
            self.backup_path = self.backup(suffix=f"backup-v{current}")
        with self.write():
            current = self.schema_version  # another process may have migrated while we waited for the lock
            for version in range(current + 1, target + 1):
                MIGRATIONS[version](conn)
                conn.execute(f"PRAGMA user_version = {version}")

    def backup(self, dest: str | os.PathLike | None = None, *, suffix: str = "backup") -> Path:
        """A consistent copy of the whole database (online backup API; safe while others write)."""
        if dest is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            dest = self.path.with_name(f"{self.path.stem}.{suffix}-{stamp}{self.path.suffix or '.db'}")
        dest = Path(dest)
        target = sqlite3.connect(str(dest))
        try:
            self.conn.backup(target)
        except sqlite3.Error as exc:
            raise IdiolectError(f"could not write the backup {dest}: {exc}") from exc
        finally:
            target.close()
        return dest

    def _check_integrity(self) -> None:
        """Refuse a damaged file before anything reads wrong counts from it or writes into it."""
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        if rows == ["ok"]:
            return
        backups = backups_of(self.path)
        hint = (
            f"copy the newest backup, {backups[0]}, over it (or open it with --db)"
            if backups
            else "restore it from your own backup, or move it away to start afresh"
        )
        raise IdiolectError(f"the database {self.path} is damaged (SQLite's check: {rows[0]}); {hint}")

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # -- profiles ---------------------------------------------------------------------------------------

    def create_profile(self, name: str, settings: dict | None = None) -> int:
        name = check_name(name)
        with self.write() as db:
            if self.find_profile(name) is not None:
                raise IdiolectError(f"a profile named {name!r} already exists")
            return (
                db["profiles"]
                .insert({"name": name, "settings": json.dumps(settings or {}), "created_at": utcnow()})
                .last_pk
            )

    def find_profile(self, name: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM profiles WHERE name = ?", [name.strip()]))
        return rows[0] if rows else None

    def get_profile(self, name: str) -> dict:
        profile = self.find_profile(name)
        if profile is None:
            known = ", ".join(p["name"] for p in self.list_profiles()) or "none yet"
            raise IdiolectError(f"no profile named {name!r} (profiles: {known})")
        return profile

    def ensure_profile(self, name: str) -> tuple[dict, bool]:
        """The profile called ``name``, creating it if needed; the flag says whether it was created."""
        name = check_name(name)
        with self.write():
            profile = self.find_profile(name)
            if profile is not None:
                return profile, False
            self.create_profile(name)
            return self.get_profile(name), True

    def profile_by_id(self, profile_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM profiles WHERE id = ?", [profile_id]))
        if not rows:
            raise IdiolectError(f"no profile with id {profile_id}")
        return rows[0]

    def profile_settings(self, name: str) -> dict:
        return _loads(self.get_profile(name)["settings"], {})

    def update_profile_settings(self, name: str, **changes) -> dict:
        """Merge ``changes`` into the profile's settings (e.g. its chosen model); returns the new settings."""
        with self.write() as db:
            profile = self.get_profile(name)
            settings = {**_loads(profile["settings"], {}), **changes}
            db.execute("UPDATE profiles SET settings = ? WHERE id = ?", [json.dumps(settings), profile["id"]])
        return settings

    def list_profiles(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM profiles ORDER BY name"))

    def delete_profile(self, name: str) -> None:
        """Delete the profile and every row that is its own (cascades). Files of its runs are the caller's:
        ``core.train.delete_profile`` removes both."""
        profile = self.get_profile(name)
        with self.write() as db:
            db.execute("DELETE FROM profiles WHERE id = ?", [profile["id"]])

    def rename_profile(self, name: str, new_name: str) -> dict:
        new_name = check_name(new_name)
        with self.write() as db:
            profile = self.get_profile(name)
            if new_name == profile["name"]:
                return profile
            if self.find_profile(new_name) is not None:
                raise IdiolectError(f"a profile named {new_name!r} already exists")
            db.execute("UPDATE profiles SET name = ? WHERE id = ?", [new_name, profile["id"]])
        return self.get_profile(new_name)

    def profile_footprint(self, name: str) -> dict:
        """What deleting the profile would delete, counted: for a confirmation that names it."""
        pid = self.get_profile(name)["id"]
        one = lambda sql: self.conn.execute(sql, [pid]).fetchone()[0]  # noqa: E731
        return {
            "samples": one("SELECT count(*) FROM samples WHERE profile_id = ?"),
            "generations": one("SELECT count(*) FROM generations WHERE profile_id = ?"),
            "ratings": one(
                "SELECT count(*) FROM feedback f JOIN generations g ON g.id = f.generation_id "
                "WHERE g.profile_id = ? AND f.superseded_at IS NULL"
            ),
            "runs": one("SELECT count(*) FROM runs WHERE profile_id = ?"),
            "summaries": one("SELECT count(*) FROM summaries WHERE profile_id = ?"),
        }

    # -- generic de-duplicating insert --------------------------------------------------------------------

    def _insert_unique(
        self, table: str, owner_col: str, owner_id: int, rows: Sequence[dict], hash_cols: Sequence[str]
    ) -> InsertResult:
        """Insert rows that are not already there (same owner and content hash), all in one transaction."""
        added: list[int] = []
        duplicates: list[int] = []
        now = utcnow()
        with self.write() as db:
            seen = {
                r[0]
                for r in db.execute(f"SELECT content_hash FROM {table} WHERE {owner_col} = ?", [owner_id])
            }
            for i, row in enumerate(rows):
                h = row_key(row, hash_cols)
                if h in seen:
                    duplicates.append(i)
                    continue
                seen.add(h)
                record = {**row, owner_col: owner_id, "content_hash": h, "created_at": now}
                cur = db.execute(
                    f"INSERT INTO {table} ({', '.join(record)}) VALUES ({', '.join('?' * len(record))})",
                    list(record.values()),
                )
                added.append(cur.lastrowid)
        return InsertResult(added, duplicates)

    # -- samples ----------------------------------------------------------------------------------------

    SAMPLE_FIELDS = ("prompt", "context", "text", "source")

    def add_samples(
        self,
        profile_id: int,
        rows: Sequence[dict],
        *,
        import_source: str | None = None,
        rated: Sequence[dict] = (),
    ) -> InsertResult:
        """Add the rows that are new (same prompt, context and text = the same sample). With
        ``import_source`` the batch is one entry of the import history, and can be undone as a whole; ``rated``
        (``{prompt, text, rating, model}``, from another tool's thumbs or a feedback dataset) become rated
        generations of that import, unless the profile has a generation with the same prompt and text."""
        clean = [{k: r.get(k) for k in self.SAMPLE_FIELDS} for r in rows]
        if rated and import_source is None:
            raise ValueError("imported ratings belong to an import: pass import_source")
        if import_source is None:
            return self._insert_unique("samples", "profile_id", profile_id, clean, SAMPLE_KEY)
        with self.write() as db:
            import_id = db.execute(
                "INSERT INTO imports (profile_id, source, created_at) VALUES (?, ?, ?)",
                [profile_id, import_source, utcnow()],
            ).lastrowid
            result = self._insert_unique(
                "samples", "profile_id", profile_id, [{**r, "import_id": import_id} for r in clean], SAMPLE_KEY
            )  # fmt: skip
            self._add_rated(db, profile_id, import_id, import_source, rated, result)
            db.execute(
                "UPDATE imports SET added = ?, duplicates = ?, ratings = ? WHERE id = ?",
                [len(result.added), len(result.duplicates), len(result.rated_added), import_id],
            )
        result.import_id = import_id
        return result

    def _generation_keys(self, db, profile_id: int) -> set[str]:
        columns = ", ".join(GENERATION_KEY)
        query = f"SELECT {columns} FROM generations WHERE profile_id = ?"
        return {content_hash(*r) for r in db.execute(query, [profile_id])}

    def _add_rated(
        self, db, profile_id: int, import_id: int, source: str, rated, result: InsertResult
    ) -> None:
        seen = self._generation_keys(db, profile_id) if rated else set()
        now = utcnow()
        for i, row in enumerate(rated):
            if row["rating"] not in (-1, 1):
                raise IdiolectError(f"a rating is +1 or -1, not {row['rating']!r}")
            key = row_key(row, GENERATION_KEY)
            if key in seen:
                result.rated_duplicates.append(i)
                continue
            seen.add(key)
            gen_id = db.execute(
                """INSERT INTO generations (profile_id, prompt, text, model, params, created_at, import_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [profile_id, row.get("prompt") or "", row["text"], row.get("model"),
                 json.dumps({"imported_from": source}), now, import_id],
            ).lastrowid  # fmt: skip
            db.execute(
                "INSERT INTO feedback (generation_id, rating, created_at) VALUES (?, ?, ?)",
                [gen_id, row["rating"], now],
            )
            result.rated_added.append(gen_id)

    def preview_import(
        self, profile_id: int | None, rows: Sequence[dict], rated: Sequence[dict] = ()
    ) -> dict:
        """What :meth:`add_samples` would do with these rows, without writing: counts of new and already-there
        samples and ratings (a dry run)."""
        db = self.conn
        have = (
            {r[0] for r in db.execute("SELECT content_hash FROM samples WHERE profile_id = ?", [profile_id])}
            if profile_id is not None
            else set()
        )
        gens = self._generation_keys(db, profile_id) if profile_id is not None else set()
        counts = {"added": 0, "duplicates": 0, "ratings": 0, "rating_duplicates": 0}
        for row in rows:
            h = row_key(row, SAMPLE_KEY)
            counts["duplicates" if h in have else "added"] += 1
            have.add(h)
        for row in rated:
            h = row_key(row, GENERATION_KEY)
            counts["rating_duplicates" if h in gens else "ratings"] += 1
            gens.add(h)
        return counts

    def list_samples(self, profile_id: int) -> list[dict]:
        return list(self.db.query("SELECT * FROM samples WHERE profile_id = ? ORDER BY id", [profile_id]))

    def search_samples(
        self, profile_id: int, query: str = "", *, offset: int = 0, limit: int = 50
    ) -> tuple[list[dict], int]:
        """One page of the profile's samples whose text or prompt contains ``query`` (case-insensitive for
        ASCII; % and _ are plain characters), newest first, and how many match in all."""
        where, args = "profile_id = ?", [profile_id]
        query = (query or "").strip()
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where += " AND (text LIKE ? ESCAPE '\\' OR coalesce(prompt, '') LIKE ? ESCAPE '\\')"
            args += [pattern, pattern]
        total = self.conn.execute(f"SELECT count(*) FROM samples WHERE {where}", args).fetchone()[0]
        rows = list(
            self.db.query(
                f"SELECT * FROM samples WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*args, int(limit), max(0, int(offset))],
            )
        )
        return rows, total

    def delete_samples(self, profile_id: int, sample_ids: Sequence[int]) -> list[dict]:
        """Delete several of the profile's own samples in one transaction (all or none: an id that is missing
        or another profile's refuses the whole batch); returns the deleted rows for ``restore_samples``."""
        ids = list(dict.fromkeys(int(i) for i in sample_ids))
        with self.write() as db:
            for i in ids:
                self._own(db, "samples", "id", profile_id, i)
            rows = [dict(r) for r in self.db.query(
                f"SELECT * FROM samples WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id", ids
            )] if ids else []  # fmt: skip
            db.execute(f"DELETE FROM samples WHERE id IN ({', '.join('?' * len(ids))})", ids)
        return rows

    def restore_samples(self, profile_id: int, rows: Sequence[dict]) -> int:
        """Undo ``delete_samples``: the rows come back with their ids, texts, sources and import batch. A row
        whose text was added again in the meantime is not doubled. Returns how many came back."""
        restored = 0
        with self.write() as db:
            present = {r[0] for r in db.execute("SELECT content_hash FROM samples WHERE profile_id = ?",
                                                [profile_id])}  # fmt: skip
            batches = {r[0] for r in db.execute("SELECT id FROM imports WHERE profile_id = ?", [profile_id])}
            for row in rows:
                if row.get("profile_id") != profile_id or row.get("content_hash") in present:
                    continue
                record = {k: row.get(k) for k in ("id", "prompt", "context", "text", "source", "created_at",
                                                  "content_hash", "import_id")}  # fmt: skip
                record["profile_id"] = profile_id
                if record["import_id"] not in batches:
                    record["import_id"] = None
                if db.execute("SELECT 1 FROM samples WHERE id = ?", [record["id"]]).fetchone():
                    record.pop("id")
                db.execute(
                    f"INSERT INTO samples ({', '.join(record)}) VALUES ({', '.join('?' * len(record))})",
                    list(record.values()),
                )
                present.add(record["content_hash"])
                restored += 1
        return restored

    def list_imports(self, profile_id: int) -> list[dict]:
        """The profile's import history, newest first, with how many of each batch's samples are still there."""
        return list(
            self.db.query(
                """SELECT i.*, (SELECT count(*) FROM samples s WHERE s.import_id = i.id) AS remaining
                   FROM imports i WHERE i.profile_id = ? ORDER BY i.id DESC""",
                [profile_id],
            )
        )

    def undo_import(self, profile_id: int, import_id: int) -> list[dict]:
        """Delete the samples that one import added and are still there (edited ones included), and the ratings
        it imported; the import stays in the history marked as undone. Returns the deleted samples
        (``restore_samples`` brings them back; imported ratings come back by importing the file again)."""
        with self.write() as db:
            _, undone = self._own(db, "imports", "id, undone_at", profile_id, import_id)
            if undone:
                raise IdiolectError(f"import {import_id} was undone already ({undone[:19]} UTC)")
            ids = [r[0] for r in db.execute("SELECT id FROM samples WHERE import_id = ?", [import_id])]
            rows = self.delete_samples(profile_id, ids)
            db.execute("DELETE FROM generations WHERE import_id = ?", [import_id])  # imported ratings
            db.execute("UPDATE imports SET undone_at = ? WHERE id = ?", [utcnow(), import_id])
        return rows

    def _own(self, db, table: str, columns: str, profile_id: int, row_id: int) -> tuple:
        """The row's ``columns``, refusing an id that is missing or belongs to another profile: the one check
        every method that touches a user's rows goes through."""
        row = db.execute(
            f"SELECT {columns} FROM {table} WHERE id = ? AND profile_id = ?", [row_id, profile_id]
        ).fetchone()
        if row is None:
            raise IdiolectError(f"this profile has no {table.rstrip('s')} with id {row_id}")
        return row

    def get_sample(self, profile_id: int, sample_id: int) -> dict:
        rows = list(
            self.db.query("SELECT * FROM samples WHERE id = ? AND profile_id = ?", [sample_id, profile_id])
        )
        if not rows:
            raise IdiolectError(f"this profile has no sample with id {sample_id}")
        return rows[0]

    _KEEP = object()

    def update_sample(self, profile_id: int, sample_id: int, text: str, prompt=_KEEP) -> None:
        """Change a sample's text (and its prompt only when ``prompt`` is given: None clears it). Only the
        profile's own samples can be changed."""
        if not text or not text.strip():
            raise IdiolectError("a sample cannot be empty; delete it instead")
        with self.write() as db:
            old_prompt, context = self._own(db, "samples", "prompt, context", profile_id, sample_id)
            if prompt is self._KEEP:
                prompt = old_prompt
            db.execute(
                "UPDATE samples SET text = ?, prompt = ?, content_hash = ? WHERE id = ?",
                [text, prompt, content_hash(prompt, context, text), sample_id],
            )

    def delete_sample(self, profile_id: int, sample_id: int) -> None:
        """Delete one of the profile's own samples; a missing id or another profile's is an error."""
        with self.write() as db:
            self._own(db, "samples", "prompt, context", profile_id, sample_id)
            db.execute("DELETE FROM samples WHERE id = ?", [sample_id])

    # -- prompts ----------------------------------------------------------------------------------------

    def add_prompts(
        self, rows: Iterable[dict], *, profile_id: int | None = None, set_name: str = "user"
    ) -> int:
        now = utcnow()
        with self.write() as db:
            existing = {
                r[0]
                for r in db.execute(
                    "SELECT text FROM prompts WHERE profile_id IS ? AND set_name = ?", [profile_id, set_name]
                )
            }
            records = []
            for r in rows:
                if r["text"] in existing:
                    continue
                existing.add(r["text"])
                records.append(
                    {
                        "profile_id": profile_id,
                        "set_name": set_name,
                        "key": r.get("key"),
                        "kind": r.get("kind"),
                        "text": r["text"],
                        "created_at": now,
                    }
                )
            db["prompts"].insert_all(records)
            return len(records)

    def list_prompts(self, profile_id: int | None = None) -> list[dict]:
        """Bundled prompts and, with a profile, that profile's own."""
        return list(
            self.db.query(
                "SELECT * FROM prompts WHERE profile_id IS NULL OR profile_id = ? ORDER BY profile_id IS NULL, id",
                [profile_id],
            )
        )

    # -- generations and feedback ------------------------------------------------------------------------

    def add_generation(
        self,
        profile_id: int,
        prompt: str,
        text: str,
        *,
        model: str | None = None,
        adapter: str | None = None,
        params: dict | None = None,
        prompt_id: int | None = None,
    ) -> int:
        with self.write() as db:
            return (
                db["generations"]
                .insert(
                    {
                        "profile_id": profile_id,
                        "prompt_id": prompt_id,
                        "prompt": prompt,
                        "text": text,
                        "model": model,
                        "adapter": adapter,
                        "params": json.dumps(params or {}),
                        "created_at": utcnow(),
                    }
                )
                .last_pk
            )

    def rate(self, profile_id: int, generation_id: int, rating: int, edited_text: str | None = None) -> dict:
        """Set the current rating of one of the profile's generations. A generation has one current rating:
        a new one replaces the old (kept as history, ``superseded_at`` set); pressing the same rating again
        (with the same edit) changes nothing. ``edited_text`` equal to the generated text (ignoring
        whitespace) is no edit. Returns ``{"id", "changed", "rating", "edited_text"}``."""
        if rating not in (-1, 1):
            raise IdiolectError(f"a rating is +1 or -1, not {rating!r}")
        with self.write() as db:
            gen = self._own(db, "generations", "id, text", profile_id, generation_id)
            if edited_text is not None and " ".join(edited_text.split()) in ("", " ".join(gen[1].split())):
                edited_text = None
            current = db.execute(
                "SELECT id, rating, edited_text FROM feedback WHERE generation_id = ? AND superseded_at IS NULL",
                [generation_id],
            ).fetchone()
            if current is not None and current[1] == rating and (current[2] or None) == edited_text:
                return {"id": current[0], "changed": False, "rating": rating, "edited_text": edited_text}
            now = utcnow()
            db.execute(
                "UPDATE feedback SET superseded_at = ? WHERE generation_id = ? AND superseded_at IS NULL",
                [now, generation_id],
            )
            cur = db.execute(
                "INSERT INTO feedback (generation_id, rating, edited_text, created_at) VALUES (?, ?, ?, ?)",
                [generation_id, rating, edited_text, now],
            )
            return {"id": cur.lastrowid, "changed": True, "rating": rating, "edited_text": edited_text}

    def undo_rating(self, profile_id: int, generation_id: int) -> bool:
        """Take back the current rating of a generation (kept as history); the generation is then unrated.
        Returns whether there was one."""
        with self.write() as db:
            self._own(db, "generations", "id, text", profile_id, generation_id)
            cur = db.execute(
                "UPDATE feedback SET superseded_at = ? WHERE generation_id = ? AND superseded_at IS NULL",
                [utcnow(), generation_id],
            )
            return cur.rowcount > 0

    def get_generation(self, generation_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM generations WHERE id = ?", [generation_id]))
        if not rows:
            raise IdiolectError(f"no generation with id {generation_id}")
        return rows[0]

    def list_feedback(self, profile_id: int, *, history: bool = False) -> list[dict]:
        """The profile's current ratings (one per rated generation), oldest first; ``history=True`` adds
        the replaced and undone ones (``superseded_at`` set)."""
        where = "" if history else " AND f.superseded_at IS NULL"
        return list(
            self.db.query(
                f"""SELECT f.*, g.prompt, g.text, g.model, g.adapter FROM feedback f
                   JOIN generations g ON g.id = f.generation_id
                   WHERE g.profile_id = ?{where} ORDER BY f.id""",
                [profile_id],
            )
        )

    # -- peer pools -------------------------------------------------------------------------------------

    def find_pool(self, name: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM peer_pools WHERE name = ?", [name.strip()]))
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
        fields["heartbeat_at"] = utcnow()
        with self.write() as db:
            db["runs"].update(run_id, fields)

    def get_run(self, run_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            raise IdiolectError(f"no training run with id {run_id}")
        run = rows[0]
        run["config"] = _loads(run["config"], {})
        run["result"] = _loads(run["result"], {})
        return run

    def list_runs(self, profile_id: int) -> list[dict]:
        runs = list(self.db.query("SELECT * FROM runs WHERE profile_id = ? ORDER BY id DESC", [profile_id]))
        for run in runs:
            run["config"] = _loads(run["config"], {})
            run["result"] = _loads(run["result"], {})
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
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", [now, run_id])

    def run_metrics(self, run_id: int) -> list[dict]:
        return [
            {"step": step, **_loads(m, {})}
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
            row["details"] = _loads(row["details"], {})
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


def _is_environmental(exc: sqlite3.Error) -> bool:
    msg = str(exc)
    return "readonly" in msg or "read-only" in msg or "full" in msg or "disk I/O" in msg


def _friendly(exc: sqlite3.Error, path: Path) -> IdiolectError:
    msg = str(exc)
    if "readonly" in msg or "read-only" in msg:
        return IdiolectError(f"the database {path} is read-only: check the file's permissions")
    if "disk is full" in msg or "database or disk is full" in msg or ("disk I/O" in msg and _disk_full(path)):
        return IdiolectError(f"the disk holding {path} is full: free some space and retry")
    return IdiolectError(f"database error in {path}: {msg}")


def _disk_full(path: Path) -> bool:
    """SQLite says "disk I/O error" when it cannot grow its WAL files on a full disk: tell that case apart."""
    import shutil

    try:
        return shutil.disk_usage(path.parent).free < 1024 * 1024
    except OSError:
        return False


def backups_of(path: Path) -> list[Path]:
    """The automatic backups beside a database (written before each migration), newest first."""
    return sorted(path.parent.glob(f"{path.stem}.backup*{path.suffix or '.db'}"), reverse=True)
