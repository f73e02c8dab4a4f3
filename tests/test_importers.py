from __future__ import annotations

import gzip
import json
import re

import pytest

from idiolect.core.base.errors import ImportFailed
from idiolect.core.base.limits import MAX_TEXT_CHARS
from idiolect.core.ingest.peers import import_peers
from idiolect.core.ingest.samples import import_sample_texts, import_samples, read_samples
from idiolect.core.ingest.stackexchange import read_stackexchange

# --- own writing -----------------------------------------------------------------------------------------


def texts(store, profile="ana"):
    return [s["text"] for s in store.list_samples(store.get_profile(profile)["id"])]


def test_txt_blocks_and_whole_file(tmp_path, store):
    f = tmp_path / "posts.txt"
    f.write_text("First post,\nstill first.\n\n\n  \nSecond post.\r\n\r\nThird post.\n")
    [report] = import_samples(store, "ana", [f])
    assert (report.added, report.skipped, report.error) == (3, [], None)
    assert texts(store) == ["First post,\nstill first.", "Second post.", "Third post."]
    [report] = import_samples(store, "bo", [f], split="file")
    assert report.added == 1
    assert texts(store, "bo") == ["First post,\nstill first.\n\nSecond post.\n\nThird post."]


def test_reimport_adds_nothing_twice(tmp_path, store):
    f = tmp_path / "a.md"
    f.write_text("# Title\n\nA paragraph.\n")
    assert import_samples(store, "ana", [f])[0].added == 2
    again = import_samples(store, "ana", [f])[0]
    assert (again.added, again.duplicates) == (0, 2)


def test_jsonl_bad_rows_are_reported_and_good_rows_kept(tmp_path, store):
    f = tmp_path / "mine.jsonl"
    lines = [
        json.dumps({"text": "good one", "prompt": "say hi"}),
        "{not json",
        json.dumps({"prompt": "no text here"}),
        json.dumps({"text": ""}),
        json.dumps({"text": 42}),
        json.dumps({"text": "x" * (MAX_TEXT_CHARS + 1)}),
        json.dumps([1, 2]),
        "",
        json.dumps("a plain string sample"),
        json.dumps({"text": "good two", "context": "a thread"}),
    ]
    f.write_text("\n".join(lines) + "\n")
    [report] = import_samples(store, "ana", [f])
    assert report.added == 3
    reasons = {s.where: s.reason for s in report.skipped}
    assert set(reasons) == {"line 2", "line 3", "line 4", "line 5", "line 6", "line 7"}
    assert "not valid JSON" in reasons["line 2"]
    assert "missing 'text'" in reasons["line 3"]
    assert "empty" in reasons["line 4"]
    assert "int, not text" in reasons["line 5"]
    assert "limit" in reasons["line 6"]
    rows = store.list_samples(store.get_profile("ana")["id"])
    assert [r["text"] for r in rows] == ["good one", "a plain string sample", "good two"]
    assert rows[0]["prompt"] == "say hi" and rows[2]["context"] == "a thread"


def test_bad_utf8_costs_only_its_own_row(tmp_path, store):
    f = tmp_path / "mixed.txt"
    f.write_bytes("Caf\u00e9 is fine.\n\n".encode() + b"Bad \xff\xfe bytes here.\n\nLast one.\n")
    [report] = import_samples(store, "ana", [f])
    assert report.added == 2
    [skip] = report.skipped
    assert skip.where.startswith("block 2") and "0xff" in skip.reason
    assert texts(store) == ["Caf\u00e9 is fine.", "Last one."]
    # The same file read with its real encoding keeps every block.
    f2 = tmp_path / "latin.txt"
    f2.write_bytes("Na\u00efve caf\u00e9.\n\nSecond.\n".encode("cp1252"))
    assert import_samples(store, "bo", [f2])[0].skipped[0].where.startswith("block 1")
    assert import_samples(store, "cy", [f2], encoding="cp1252")[0].added == 2
    assert texts(store, "cy")[0] == "Na\u00efve caf\u00e9."


def test_csv_rows(tmp_path, store):
    f = tmp_path / "mine.csv"
    f.write_bytes(
        b'Prompt,Text\n"Greet","Hello, there\nfriend"\nno,text,extra\n"Ask",\n"Bad","\xff"\n"Fine","Last one"\n'
    )
    [report] = import_samples(store, "ana", [f])
    assert report.added == 2
    assert texts(store) == ["Hello, there\nfriend", "Last one"]
    assert len(report.skipped) == 3
    assert any("3 fields where the header has 2" in s.reason for s in report.skipped)


def test_csv_without_text_column_and_unclosed_quote(tmp_path, store):
    f = tmp_path / "wrong.csv"
    f.write_text("title,body\na,b\n")
    with pytest.raises(ImportFailed, match="no 'text' column .found: title, body"):
        read_samples(f)
    g = tmp_path / "quote.csv"
    g.write_text('text\n"good row"\n"unclosed quote, the rest of the file is swallowed\nmore\n')
    content = read_samples(g)
    rows, skipped = content.rows, content.skipped
    assert [r["text"] for r in rows] == ["good row"]
    assert "malformed CSV" in skipped[0].reason and skipped[0].where == "lines 3-4"
    assert "unclosed quote" in skipped[0].reason


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.docx", b"PK\x03\x04", "unsupported file type"),
        ("blob.txt", b"\x00\x01\x02binary\x00" * 100, "binary"),
        ("list.json", b"{broken", "not valid JSON"),
    ],
)
def test_unreadable_files_change_nothing(tmp_path, store, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    good = tmp_path / "good.txt"
    good.write_text("One good sample.")
    reports = import_samples(store, "ana", [bad, good])
    assert message in reports[0].error and reports[0].added == 0
    assert reports[1].added == 1  # the other file still lands


def test_missing_file_does_not_create_the_profile(tmp_path, store):
    [report] = import_samples(store, "ghost", [tmp_path / "nope.txt"])
    assert "no such file" in report.error
    assert store.find_profile("ghost") is None


def test_folder_import_and_pasted_text(tmp_path, store):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("one\n\ntwo")
    (tmp_path / "d" / "sub" / "b.jsonl").write_text('{"text": "three"}\n')
    (tmp_path / "d" / "ignore.png").write_bytes(b"\x89PNG")
    reports = import_samples(store, "ana", [tmp_path / "d"])
    assert sum(r.added for r in reports) == 3
    report = import_sample_texts(store, "ana", "four\n\n\n\nfive\n\none\n\n\x07")
    assert (report.added, report.duplicates) == (2, 1)
    assert [(s.where, s.reason) for s in report.skipped] == [
        ("block 4 (line 9)", "empty 'text' (only control characters)")
    ]


# --- Stack Exchange --------------------------------------------------------------------------------------

POSTS = """\ufeff<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" CreationDate="2015-01-01T00:00:00.000" Title="Which glass for stout?" Body="&lt;p&gt;Asking for a &lt;b&gt;friend&lt;/b&gt;. Mail me at q@example.org&lt;/p&gt;" OwnerUserId="5" />
  <row Id="2" PostTypeId="2" ParentId="1" CreationDate="2015-01-02T00:00:00.000" Body="&lt;p&gt;A tulip glass.&lt;/p&gt;&#xA;&lt;ul&gt;&lt;li&gt;keeps the head&lt;/li&gt;&lt;li&gt;see &lt;a href=&quot;http://beer.example.com/x&quot;&gt;this guide&lt;/a&gt;&lt;/li&gt;&lt;/ul&gt;" OwnerUserId="7" />
  <row Id="3" PostTypeId="2" ParentId="1" CreationDate="2019-01-02T00:00:00.000" Body="&lt;p&gt;Call +1 (555) 123-4567 or write to jo.doe@mail.example.com, ask @brewmaster, or see https://example.net/page?a=1.&lt;/p&gt;" OwnerUserId="8" />
  <row Id="4" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Orphaned author.&lt;/p&gt;" />
  <row Id="5" PostTypeId="2" ParentId="99" Body="&lt;p&gt;Unknown question.&lt;/p&gt;" OwnerUserId="7" />
  <row Id="6" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Another by seven, on 2014-01-21 at 12.5 degrees.&lt;/p&gt;" OwnerUserId="7" />
</posts>
"""


def write_posts(tmp_path, data: bytes, name="beer.stackexchange.com_Posts.xml"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_stackexchange_answers_grouped_scrubbed_attributed(tmp_path, store):
    path = write_posts(tmp_path, POSTS.encode())
    report = import_peers(store, path, "beer")
    assert report.ok and report.added == 3 and report.writers == 2
    reasons = sorted(s.reason for s in report.skipped)
    assert reasons == ["its question 99 is not in the file", "no author (deleted account or community post)"]
    pool = store.get_pool("beer")
    rows = {r["source"].split()[-1]: r for r in store.peer_texts(pool["id"])}
    assert rows["2"]["text"] == "A tulip glass.\n\n- keeps the head\n- see this guide"
    assert rows["2"]["context"] == "Which glass for stout?\n\nAsking for a friend. Mail me at [email]"
    assert rows["3"]["text"] == "Call [phone] or write to [email], ask [user], or see [link]."
    assert rows["6"]["text"] == "Another by seven, on 2014-01-21 at 12.5 degrees."
    assert rows["2"]["writer"] == rows["6"]["writer"] != rows["3"]["writer"]
    # A salted pseudonym, not the user id (a check on its first character failed 1 run in 16: a hex digit can be 7).
    assert re.fullmatch(r"peer-[0-9a-f]{10}", rows["2"]["writer"]) and rows["2"]["writer"] != "peer-7"
    attribution = json.loads(rows["2"]["attribution"])
    assert attribution == {
        "post": "https://beer.stackexchange.com/a/2",
        "author": "https://beer.stackexchange.com/users/7",
    }
    assert rows["2"]["license"] == "CC BY-SA 3.0" and rows["3"]["license"] == "CC BY-SA 4.0"
    # Re-import: same pseudonyms, nothing added twice.
    again = import_peers(store, path, "beer")
    assert (again.added, again.duplicates) == (0, 3)


def test_truncated_xml_keeps_rows_before_the_cut(tmp_path, store):
    data = POSTS.encode()
    cut = data.index(b'<row Id="6"') + 40
    path = write_posts(tmp_path, data[:cut])
    report = import_peers(store, path, "beer")
    assert report.added == 2  # answers 2 and 3
    assert "cut short" in report.error
    assert any("cut off at the end" in s.reason for s in report.skipped)


def test_truncated_gzip_keeps_rows_before_the_cut(tmp_path, store):
    body = POSTS.replace("</posts>", "") + "".join(
        f'  <row Id="{i}" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Filler answer number {i} with some words.&lt;/p&gt;" OwnerUserId="{i}" />\n'
        for i in range(100, 3000)
    )
    gz = gzip.compress(body.encode())
    path = write_posts(tmp_path, gz[: len(gz) * 2 // 3], name="beer.stackexchange.com_Posts.xml.gz")
    report = import_peers(store, path, "beer")
    assert "damaged or cut short" in report.error
    assert 100 < report.added < 2900


def test_bad_utf8_and_malformed_rows_cost_only_themselves(tmp_path, store):
    lines = POSTS.encode().split(b"\n")
    lines[3] = lines[3].replace(b"tulip", b"tul\xffip")  # answer 2: invalid UTF-8
    lines[7] = lines[7].replace(b'OwnerUserId="7"', b'OwnerUserId="7" Body="dup"')  # answer 6: broken XML
    path = write_posts(tmp_path, b"\n".join(lines))
    report = import_peers(store, path, "beer")
    assert report.added == 1  # answer 3 survives
    reasons = " | ".join(f"{s.where}: {s.reason}" for s in report.skipped)
    assert "line 4: invalid UTF-8" in reasons and "line 8: malformed XML" in reasons


def test_huge_and_empty_answers_are_skipped(tmp_path, store):
    huge = "word " * (MAX_TEXT_CHARS // 4)
    posts = POSTS.replace(
        "</posts>",
        f'<row Id="10" PostTypeId="2" ParentId="1" Body="&lt;p&gt;{huge}&lt;/p&gt;" OwnerUserId="9" />\n'
        '<row Id="11" PostTypeId="2" ParentId="1" Body="&lt;p&gt; &lt;/p&gt;" OwnerUserId="9" />\n</posts>',
    )
    report = import_peers(store, write_posts(tmp_path, posts.encode()), "beer")
    assert report.added == 3
    reasons = " | ".join(s.reason for s in report.skipped)
    assert "over the 50,000 limit" in reasons and "empty" in reasons


def test_not_a_posts_file(tmp_path, store):
    with pytest.raises(ImportFailed, match="not XML"):
        import_peers(store, write_posts(tmp_path, b'{"json": true}'), "x")
    with pytest.raises(ImportFailed, match="no <row> elements"):
        import_peers(store, write_posts(tmp_path, b"<html><body>hi</body></html>"), "x")
    with pytest.raises(ImportFailed, match="no such file"):
        read_stackexchange(tmp_path / "missing_Posts.xml")
    assert store.find_pool("x") is None


def test_peer_jsonl_and_csv(tmp_path, store):
    f = tmp_path / "peers.jsonl"
    f.write_text(
        "\n".join(
            [
                json.dumps(
                    {"writer": "Alice Smith", "prompt": "Hi?", "text": "Hello! Mail alice@example.com"}
                ),
                json.dumps(
                    {"writer": "Alice Smith", "prompt": "Bye?", "text": "Bye, see www.alice.example.org"}
                ),
                json.dumps({"writer": 17, "text": "numeric writer id"}),
                json.dumps({"text": "no writer"}),
            ]
        )
    )
    report = import_peers(store, f, "mixed")
    assert (report.added, report.writers, len(report.skipped)) == (3, 2, 1)
    rows = store.peer_texts(store.get_pool("mixed")["id"])
    assert all("Alice" not in r["writer"] for r in rows)
    assert rows[0]["text"] == "Hello! Mail [email]" and rows[1]["text"] == "Bye, see [link]"
    c = tmp_path / "peers.csv"
    c.write_text("writer,prompt,text\nAlice Smith,Hi?,A new text\nBob,,Short\n,x,no writer\n")
    report = import_peers(store, c, "mixed")
    assert (report.added, len(report.skipped)) == (2, 1)
    writers = {r["writer"] for r in store.peer_texts(store.get_pool("mixed")["id"])}
    assert len(writers) == 3  # Alice's pseudonym is the same across both files
