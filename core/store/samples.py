"""A profile's own writing: samples (with their import history and undo) and the prompts it answers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import content_hash
from idiolect.core.store.db import utcnow

SAMPLE_KEY = ("prompt", "context", "text")  # what makes two samples the same sample


GENERATION_KEY = ("prompt", "text")  # what makes an imported rating one the profile already has


def row_key(row: dict, columns: Sequence[str]) -> str:
    """The content hash of a row over ``columns`` (the one identity rule of imports and their dry runs)."""
    return content_hash(*(row.get(c) for c in columns))


@dataclass
class InsertResult:
    added: list[int]  # row ids of the rows written
    duplicates: list[int]  # positions (in the input) of rows already present
    import_id: int | None = None  # the import-history row of a batch of samples
    rated_added: list[int] = field(default_factory=list)  # generation ids of imported ratings
    rated_duplicates: list[int] = field(default_factory=list)  # positions of ratings already there


class SampleTables:
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
        return {
            row_key(dict(zip(GENERATION_KEY, r, strict=True)), GENERATION_KEY)
            for r in db.execute(query, [profile_id])
        }

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
                [
                    text,
                    prompt,
                    row_key({"prompt": prompt, "context": context, "text": text}, SAMPLE_KEY),
                    sample_id,
                ],
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
