"""Peer pools from a file: a Stack Exchange dump or a JSONL/JSON/CSV table of {writer, prompt, text}, anonymized on the way in."""

from __future__ import annotations

from pathlib import Path

from idiolect.core.base import limits
from idiolect.core.base.errors import IdiolectError, ImportFailed
from idiolect.core.base.progress import Progress
from idiolect.core.base.text import normalize
from idiolect.core.ingest.anonymize import pseudonym, scrub
from idiolect.core.ingest.report import ImportReport, Skipped, check_text, optional_text
from idiolect.core.ingest.rows import iter_table, table_format
from idiolect.core.ingest.stackexchange import read_stackexchange, se_site
from idiolect.core.store import Store, check_name

PEER_FORMATS = ("auto", "stackexchange", "jsonl", "csv")


def read_peer_table(
    path: str | Path, *, encoding: str = "utf-8"
) -> tuple[list[dict], list[Skipped], str | None]:
    """Rows from JSONL/JSON/CSV ``{writer, prompt (or context), text}`` with optional ``attribution`` and
    ``license``."""
    path = Path(path)
    fmt = table_format(path)
    if fmt is None:
        raise ImportFailed(f"{path.name}: peer tables must be .jsonl, .json, .csv or .tsv")
    rows: list[dict] = []
    skipped: list[Skipped] = []
    items = iter_table(path, fmt, ("writer", "text"), encoding=encoding, limit=limits.MAX_PEER_TABLE_BYTES)
    for where, item, problem in items:
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        if not isinstance(item, dict):
            skipped.append(
                Skipped(where, f"expected an object with writer and text, found {type(item).__name__}")
            )
            continue
        writer = item.get("writer")
        if isinstance(writer, int | float):
            writer = str(writer)
        problem = check_text(writer, field_name="writer") or check_text(item.get("text"))
        if problem:
            skipped.append(Skipped(where, problem))
            continue
        context, p1 = optional_text(item.get("prompt") or item.get("context"), "prompt")
        attribution, p2 = optional_text(item.get("attribution"), "attribution")
        license_, p3 = optional_text(item.get("license"), "license")
        if p1 or p2 or p3:
            skipped.append(Skipped(where, p1 or p2 or p3))
            continue
        rows.append(
            {
                "original_writer": writer.strip(),
                "context": scrub(context),
                "text": scrub(normalize(item["text"])),
                "source": path.name,
                "attribution": attribution,
                "license": license_,
            }
        )
    return rows, skipped, None


def detect_peer_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".xml", ".xml.gz")):
        return "stackexchange"
    fmt = table_format(path)
    if fmt in ("jsonl", "json"):
        return "jsonl"
    if fmt in ("csv", "tsv"):
        return "csv"
    raise ImportFailed(
        f"{path.name}: cannot tell the format from the name; pass --format stackexchange, jsonl or csv"
    )


def import_peers(
    store: Store,
    path: str | Path,
    pool: str,
    *,
    fmt: str = "auto",
    site: str | None = None,
    description: str | None = None,
    license: str | None = None,
    progress: Progress | None = None,
    me: str | None = None,
    me_profile: str | None = None,
) -> ImportReport:
    """Build (or extend) a peer pool from a file, anonymizing on the way in: writer ids become pseudonyms
    keyed by the pool's salt, and e-mails, URLs, phone numbers and @handles are scrubbed from the texts.
    Attribution (licence, post and author links) is kept in its own column, never as the writer's name.

    ``me``: the user's own id in the file (a Stack Exchange user id, or the ``writer`` value of a table). Those
    texts are never peers -- left out of the pool, and removed if an earlier import put them there -- and, with
    ``me_profile``, they become that profile's samples (the question as the prompt)."""
    path = Path(path).expanduser()
    pool = check_name(pool, "pool")
    if fmt not in PEER_FORMATS:
        raise IdiolectError(f"format must be one of {', '.join(PEER_FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        fmt = detect_peer_format(path)
    if fmt == "stackexchange":
        rows, skipped, error = read_stackexchange(path, site=site, progress=progress)
        site = site or se_site(path)
        source = f"Stack Exchange {site}".strip()
        license = license or "CC BY-SA 3.0 (posts before 2018-05-02) / 4.0 (after); attribution per text"
    else:
        rows, skipped, error = read_peer_table(path)
        source = path.name
    report = ImportReport(source=str(path), target=f"pool {pool}", skipped=skipped, error=error)
    own: list[dict] = []
    if me is not None:
        me = str(me).strip()
        mine = [r["original_writer"] in (me, f"{site}:{me}") for r in rows]
        own = [r for r, m in zip(rows, mine, strict=True) if m]
        rows = [r for r, m in zip(rows, mine, strict=True) if not m]
        if not own:
            report.error = (
                report.error or f"no texts by {me!r} in {path.name}: check the id (nothing was imported)"
            )
            return report
    if not rows and not own and store.find_pool(pool) is None:
        return report  # nothing to add: don't create an empty pool
    if progress:
        progress(f"writing {len(rows):,} texts to pool {pool}")
    with store.write():
        pool_row = store.ensure_pool(pool, description=description, source=source, license=license)
        for row in rows:
            row["writer"] = pseudonym(pool_row["salt"], row.pop("original_writer"))
        result = store.add_peer_texts(pool_row["id"], rows)
        if own:
            report.own_removed = store.remove_pool_writer(
                pool_row["id"], pseudonym(pool_row["salt"], own[0]["original_writer"])
            )
            if me_profile:
                profile_row, _ = store.ensure_profile(me_profile)
                samples = [
                    {"prompt": r.get("context"), "text": r["text"], "source": f"{source} (own)"} for r in own
                ]
                added = store.add_samples(
                    profile_row["id"], samples, import_source=f"{Path(path).name} (own answers)"
                )
                report.own_added = len(added.added)
    report.added, report.duplicates = len(result.added), len(result.duplicates)
    added_idx = set(range(len(rows))) - set(result.duplicates)
    report.writers = len({rows[i]["writer"] for i in added_idx})
    return report
