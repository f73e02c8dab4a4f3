"""Generations and their ratings (thumbs up/down, edits; the latest rating counts, undo supersedes it)."""

from __future__ import annotations

import json

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import same_text_key
from idiolect.core.store.db import utcnow


class RatingTables:
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
            if edited_text is not None and same_text_key(edited_text) in ("", same_text_key(gen[1])):
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
