"""Reliability and security, round two (issue 17): inputs built here by generators, one test per class of fault
the adversarial run found. `pytest -k hardening` selects them; SECURITY.md maps each promise to its test."""

from __future__ import annotations

import gzip
import json
import os
import time

import pytest

from idiolect.core.anonymize import scrub
from idiolect.core.importers import import_peers, import_samples

# 1. One bad row is one skipped row ---------------------------------------------------------------------------


def test_hardening_bad_json_rows_are_skipped_rows_and_other_files_still_land(tmp_path, store):
    bad = tmp_path / "bad.jsonl"
    rows = [
        '{"text": "\\ud800 a lone surrogate"}',
        '{"text": "big", "n": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"text": "This one row is fine and lands."}),
    ]
    bad.write_text("\n".join(rows) + "\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = tmp_path / "good.txt"
    good.write_text("A good paragraph of my own.\n")
    reports = import_samples(store, "me", [bad, deep, good])
    by_name = {os.path.basename(r.source): r for r in reports}
    assert by_name["bad.jsonl"].added == 1 and len(by_name["bad.jsonl"].skipped) == 3
    reasons = " | ".join(s.reason for s in by_name["bad.jsonl"].skipped)
    assert "lone surrogate" in reasons and "digits" in reasons and "nested too deeply" in reasons
    assert "nested too deeply" in by_name["deep.json"].error
    assert by_name["good.txt"].added == 1


# 2. Valid Stack Exchange rows are read ------------------------------------------------------------------------


def _posts(rows: list[str]) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n"


def test_hardening_stackexchange_rows_written_open_and_closed_and_with_slash_gt_in_values(tmp_path, store):
    q = '  <row Id="1" PostTypeId="1" Title="Which glass?" Body="&lt;p&gt;Stout?&lt;/p&gt;"></row>'
    answers = [
        f'  <row Id="{i}" PostTypeId="2" ParentId="1" OwnerUserId="{i % 2 + 5}" '
        f'Body="&lt;p&gt;Answer {i}: a tulip glass /&gt; keeps the head, 2 > 1 />.&lt;/p&gt;" '
        f'CreationDate="2020-01-0{i}T00:00:00.000"></row>'
        for i in range(2, 8)
    ]
    answers.append('  <row Id="9" PostTypeId="2" ParentId="1" OwnerUserId="5" Body="a /> inside" />')
    path = tmp_path / "beer.stackexchange.com_Posts.xml"
    path.write_text(_posts([q, *answers]))
    report = import_peers(store, path, "beer")
    assert report.ok and (report.added, len(report.skipped)) == (7, 0), report.lines()


# 3. Time linear in the input -----------------------------------------------------------------------------------


def test_hardening_url_scrubber_is_linear(tmp_path):
    """16 KB of "a.a.a." took 53 s (a quadratic backtrack); 200 KB must take well under a second or two."""
    t0 = time.perf_counter()
    scrub("a." * 100_000)
    scrub("a@" + "a." * 100_000)
    assert time.perf_counter() - t0 < 10
    assert scrub("see www.foo.com, bob@example.co.uk and sub.domain.example.com/p.") == (
        "see [link], [email] and [link]."
    )


def test_hardening_one_unclosed_multiline_row_costs_linear_time(tmp_path, store):
    """A row that never closes, 0.8 MB over many lines, took 141 s (the whole buffer searched again per line)."""
    lines = ['  <row Id="1" PostTypeId="2" ParentId="1" OwnerUserId="5" Body="'] + ["x"] * 400_000
    path = tmp_path / "cut.stackexchange.com_Posts.xml.gz"
    path.write_bytes(gzip.compress(_posts(lines).encode()))
    t0 = time.perf_counter()
    report = import_peers(store, path, "cut")
    assert time.perf_counter() - t0 < 20
    assert report.added == 0 and report.skipped


# 4. Only regular files are read ------------------------------------------------------------------------------


def test_hardening_fifos_and_devices_are_refused_not_read(tmp_path, store):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "good.txt"
    good.write_text("Still imported.\n")
    reports = import_samples(
        store, "me", [fifo, zero, good]
    )  # would hang (FIFO) or exhaust memory (/dev/zero)
    assert [("not a regular file" in (r.error or "")) for r in reports] == [True, True, False]
    assert reports[2].added == 1
    xml = tmp_path / "x.stackexchange.com_Posts.xml"
    os.mkfifo(xml)
    with pytest.raises(Exception, match="not a regular file"):
        import_peers(store, xml, "p")
