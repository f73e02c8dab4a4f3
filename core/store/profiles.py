"""The profiles table: a person's record, its settings, rename and delete."""

from __future__ import annotations

import json
import re

from idiolect.core.base.errors import IdiolectError
from idiolect.core.base.identity import same_name
from idiolect.core.store.db import loads_or, utcnow

PROFILE_NAME_RE = re.compile(r"^[^\W_][\w .'-]{0,63}$")


def check_name(name: str, what: str = "profile") -> str:
    name = same_name(name)
    if not PROFILE_NAME_RE.match(name):
        raise IdiolectError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, spaces, '.', '-', \"'\" or '_', "
            "starting with a letter or digit"
        )
    return name


class ProfileTables:
    # -- profiles ---------------------------------------------------------------------------------------

    def create_profile(self, name: str, settings: dict | None = None) -> int:
        name = check_name(name)
        with self.write() as db:
            self._refuse_taken(name)
            return (
                db["profiles"]
                .insert({"name": name, "settings": json.dumps(settings or {}), "created_at": utcnow()})
                .last_pk
            )

    def find_profile(self, name: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM profiles WHERE name = ?", [same_name(name)]))
        return rows[0] if rows else None

    def _refuse_taken(self, name: str, but: int | None = None) -> None:
        """Two profiles never differ only in case ("dan" / "Dan") or in Unicode form: they would look alike."""
        for p in self.list_profiles():
            if p["id"] != but and p["name"].casefold() == name.casefold():
                raise IdiolectError(f"a profile named {p['name']!r} already exists")

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
        return loads_or(self.get_profile(name)["settings"], {})

    def update_profile_settings(self, name: str, **changes) -> dict:
        """Merge ``changes`` into the profile's settings (e.g. its chosen model); returns the new settings."""
        with self.write() as db:
            profile = self.get_profile(name)
            settings = {**loads_or(profile["settings"], {}), **changes}
            db.execute("UPDATE profiles SET settings = ? WHERE id = ?", [json.dumps(settings), profile["id"]])
        return settings

    def list_profiles(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM profiles ORDER BY name"))

    def delete_profile(self, name: str) -> None:
        """Delete the profile and every row that is its own (cascades). Files of its runs are the caller's:
        ``idiolect.core.training.worker.delete_profile`` removes both."""
        profile = self.get_profile(name)
        with self.write() as db:
            db.execute("DELETE FROM profiles WHERE id = ?", [profile["id"]])

    def rename_profile(self, name: str, new_name: str) -> dict:
        new_name = check_name(new_name)
        with self.write() as db:
            profile = self.get_profile(name)
            if new_name == profile["name"]:
                return profile
            self._refuse_taken(new_name, but=profile["id"])
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
