"""What an import did, in words (added, duplicates, skipped rows with their reasons), and the checks every imported text passes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from idiolect.core.base import limits
from idiolect.core.base.text import bad_bytes, normalize


@dataclass
class Skipped:
    where: str
    reason: str


@dataclass
class ImportReport:
    source: str
    target: str
    added: int = 0
    duplicates: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    error: str | None = None
    writers: int = 0
    own_added: int = 0  # the user's own texts found in a peer file, added to their profile
    own_removed: int = 0  # ... and removed from the pool where an earlier import had put them
    import_id: int | None = None  # the profile's import-history entry (undo it as a whole)
    format: str | None = (
        None  # a chat export or feedback dataset: which (idiolect.core.ingest.chat_exports.detect)
    )
    ratings: int = 0  # rated generations imported (Open WebUI thumbs, TRL / LLaMA-Factory rows)
    rating_duplicates: int = 0
    left_out: dict[str, int] = field(
        default_factory=dict
    )  # lines of code, logs, quotes left out of chat turns
    dry_run: bool = False  # nothing was written: the counts say what an import would do

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, max_issues: int = 20) -> list[str]:
        verb = "would be added" if self.dry_run else "added"
        kind = f" [{self.format}]" if self.format else ""
        head = f"{self.source}{kind} -> {self.target}: {self.added} {verb}"
        if self.writers:
            head += f" ({self.writers} writers)"
        head += f", {self.duplicates} already there, {len(self.skipped)} skipped"
        if self.ratings or self.rating_duplicates:
            head += f"; ratings: {self.ratings} {verb}, {self.rating_duplicates} already there"
        out = [head]
        if self.left_out:
            out.append(
                "  left out of your chat turns (not your prose): "
                + ", ".join(f"{n} {k} line{'s' if n > 1 else ''}" for k, n in self.left_out.items())
            )
        if self.own_added or self.own_removed:
            out.append(
                f"  your own texts: {self.own_added} added to your profile, kept out of the pool"
                + (f" ({self.own_removed} removed from it)" if self.own_removed else "")
            )
        for issue in self.skipped[:max_issues]:
            out.append(f"  skipped {issue.where}: {issue.reason}")
        if len(self.skipped) > max_issues:
            out.append(f"  ... and {len(self.skipped) - max_issues} more skipped rows")
        if self.error:
            out.append(f"  error: {self.error}")
        return out


def check_text(text, *, field_name: str = "text") -> str | None:
    """None if ``text`` is fit to store, else why not."""
    if text is None:
        return f"missing '{field_name}'"
    if not isinstance(text, str):
        return f"'{field_name}' is a {type(text).__name__}, not text"
    problem = bad_bytes(text)
    if problem:
        return problem + "; re-save the file as UTF-8 or pass its encoding"
    if not text.strip():
        return f"empty '{field_name}'"
    if len(text) > limits.MAX_TEXT_CHARS:
        return (
            f"'{field_name}' is {len(text):,} characters, over the {limits.MAX_TEXT_CHARS:,} limit; split it"
        )
    return None


def optional_text(value, field_name: str) -> tuple[str | None, str | None]:
    """An optional text field: (clean value, problem)."""
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, f"'{field_name}' is a {type(value).__name__}, not text"
    problem = bad_bytes(value)
    if problem:
        return None, f"'{field_name}': {problem}"
    if len(value) > limits.MAX_TEXT_CHARS:
        return None, f"'{field_name}' is {len(value):,} characters, over the {limits.MAX_TEXT_CHARS:,} limit"
    return normalize(value) or None, None
