"""The connection policy of the local SQLite store: one connection per thread, WAL, BEGIN IMMEDIATE writes,
the migration on open (with a backup first) and the integrity check; errors in words.

Connection policy (safe for the UI and a training worker writing at once):
- one connection per thread (and per process): sqlite3 connections are never shared across threads;
- WAL journal, so readers never block the writer and the writer never blocks readers;
- ``busy_timeout`` of 30 s, and every write goes through :meth:`Database.write`, which opens the transaction
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
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from idiolect.core.base.errors import IdiolectError, ReadOnlyDatabase
from idiolect.core.store.migrations import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 30_000


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def loads_or(value: str | None, default):
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


class Database:
    """The SQLite file of one installation. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: str | os.PathLike, *, target_version: int = SCHEMA_VERSION, read_only: bool = False):
        """``read_only``: open an existing database without writing anything, where SQLite cannot create its
        WAL and lock files (a read-only folder or mount): read-only commands work there; writes are refused."""
        self.path = Path(path).expanduser().resolve()
        self.read_only = read_only
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.backup_path: Path | None = None
        self._wal: tuple[int, int] | None = None  # (device, inode) of the -wal file this store writes through
        if read_only:
            if not self.path.is_file():
                raise IdiolectError(f"no database at {self.path}")
            self._check_read_only(target_version)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IdiolectError(f"cannot create the folder for the database {self.path}: {exc}") from exc
        self._migrate(target_version)

    # -- connections ------------------------------------------------------------------------------------

    def _connect_read_only(self) -> sqlite3.Connection:
        """mode=ro where SQLite can still use the WAL index beside the file, else immutable (nothing beside the
        file can change in a read-only place, so nobody writes it while we read)."""
        for query in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(f"{self.path.as_uri()}?{query}", uri=True, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)  # fmt: skip
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError as exc:
                last = exc
        raise IdiolectError(f"cannot read the database {self.path}: {last}")

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            conn = self._connect_read_only()
            with self._conns_lock:
                self._conns.append(conn)
            return conn
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # pragma: no cover - only on filesystems without shared memory
                raise IdiolectError(f"the database {self.path} cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")
            if self._wal is None:
                self._wal = self._wal_id()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_environmental(exc):
                raise _friendly(exc, self.path) from exc
            if "unable to open" in str(exc) and not _can_create_in(self.path.parent):
                raise ReadOnlyDatabase(f"cannot open the database {self.path} to write: {read_only_place(self.path)}") from exc
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
        self._wal = None  # SQLite removes the -wal with the last connection: a reopened store starts afresh

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction, taken with BEGIN IMMEDIATE (see the module docstring). Nested calls join
        the outer transaction. Rolls back on any exception."""
        if self.read_only:
            raise ReadOnlyDatabase(f"the database {self.path} is open read-only here; {read_only_place(self.path)}")
        conn = self.conn
        if conn.in_transaction:
            with self.db.atomic():  # a savepoint inside the outer transaction
                yield self.db
            return
        self._check_wal(conn)
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

    def _wal_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.path}-wal")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _check_wal(self, conn: sqlite3.Connection) -> None:
        """Before each write: the -wal file must still be the one this store opened. SQLite cannot notice that
        it was deleted or replaced under it (a cleaner, a sync tool), and every write after that would be lost
        with no error; so what the open log still holds is written into the database (a checkpoint through the
        open file) and no more is written until Idiolect is started again."""
        now = self._wal_id()
        if self._wal is None or now == self._wal:
            self._wal = self._wal or now
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(FULL)")
            saved = "what was written before that has been saved into the database"
        except sqlite3.Error as exc:
            saved = f"what was written before that could not be saved ({exc}); the newest backup may help"
        raise IdiolectError(
            f"the database's write-ahead log {self.path.name}-wal was deleted or replaced while Idiolect had it "
            f"open; {saved}. Nothing more is written: close Idiolect (and anything else using {self.path.name}) "
            "and start it again"
        )

    # -- schema -----------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _inspect(self) -> tuple[int, list[str]]:
        """The file's schema version and tables, read through a read-only connection that sets nothing (no WAL
        switch, no journal), so a file that is not ours is refused byte for byte unchanged. (0, []) for a new
        or empty file."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, []
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_environmental(exc):
                raise _friendly(exc, self.path) from exc
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                return 0, []  # not readable this way (e.g. a WAL file without its -shm): the normal open says why
            raise IdiolectError(f"{self.path} is not an Idiolect database (or is damaged): {exc}") from exc
        return version, tables

    def _check_read_only(self, target: int) -> None:
        current = self.schema_version
        if current == 0 and list(self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' LIMIT 1")):
            raise IdiolectError(f"{self.path} is not an Idiolect database")
        if current != target:
            raise IdiolectError(
                f"the database {self.path} has schema version {current}; this Idiolect reads version {target}, "
                "and upgrading it means writing: open it once where it can be written"
            )

    def _refuse_if_not_ours(self, current: int, tables: list[str]) -> None:
        """Another application's tables (no Idiolect schema version), or a schema newer than this Idiolect."""
        if current == 0 and tables:
            raise IdiolectError(
                f"{self.path} is not an Idiolect database (it holds another application's tables: "
                f"{', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}); choose another file with --db"
            )
        if current > SCHEMA_VERSION:
            raise IdiolectError(
                f"the database {self.path} has schema version {current}, newer than this Idiolect "
                f"({SCHEMA_VERSION}); update Idiolect instead of opening it with an older one"
            )

    def _migrate(self, target: int) -> None:
        if not 0 <= target <= SCHEMA_VERSION:
            raise ValueError(f"target_version must be within 0..{SCHEMA_VERSION}")
        current, tables = self._inspect()  # before anything is written: refuse what is not ours untouched
        self._refuse_if_not_ours(current, tables)
        conn = self.conn
        try:
            current = self.schema_version
        except sqlite3.DatabaseError as exc:
            raise IdiolectError(f"{self.path} is not an Idiolect database (or is damaged): {exc}") from exc
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        self._refuse_if_not_ours(current, tables)  # again: the read-only look may not have been possible
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


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed: root passes os.access on an immutable
    folder or a read-only mount)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".idiolect-probe-"):
            return True
    except OSError:
        return False


def read_only_place(path: Path) -> str:
    return (
        f"its folder {path.parent} is read-only (an immutable folder or a read-only mount), and SQLite needs to "
        f"create its WAL and lock files ({path.name}-wal, {path.name}-shm) beside the database to write it. Move "
        "the database to a writable folder to change it; commands that only read (stats) work where it is"
    )


def _is_environmental(exc: sqlite3.Error) -> bool:
    msg = str(exc)
    return "readonly" in msg or "read-only" in msg or "full" in msg or "disk I/O" in msg


def _friendly(exc: sqlite3.Error, path: Path) -> IdiolectError:
    msg = str(exc)
    if "readonly" in msg or "read-only" in msg:
        return ReadOnlyDatabase(f"the database {path} is read-only: check the file's permissions")
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
