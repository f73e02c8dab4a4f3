from __future__ import annotations

import pytest

from idiolect.core.base.text import bad_bytes, decode, html_to_text, normalize
from idiolect.core.ingest.anonymize import pseudonym, scrub


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("write to jo.doe+beer@mail.example.co.uk today", "write to [email] today"),
        ("see https://example.com/a_(b)?x=1#frag.", "see [link]."),
        ("(see http://foo.org/bar)", "(see [link])"),
        ("www.brewery.de has it", "[link] has it"),
        ("on beeradvocate.com/beer/123, rated", "on [link], rated"),
        ("call 555-123-4567 now", "call [phone] now"),
        ("call +44 20 7946 0958 now", "call [phone] now"),
        ("call (030) 1234 5678", "call [phone]"),
        ("thanks @hop_head!", "thanks [user]!"),
        # Things that must survive.
        ("brewed on 2014-01-21 at 12.5 C, e.g. stouts", "brewed on 2014-01-21 at 12.5 C, e.g. stouts"),
        (
            "OG 1.050, FG 1.010, 5.2% ABV, 30 IBU, 1,000,000 bottles",
            "OG 1.050, FG 1.010, 5.2% ABV, 30 IBU, 1,000,000 bottles",
        ),
        ("the U.S. and node.js and a.m.", "the U.S. and node.js and a.m."),
        ("C# and F@ther", "C# and F@ther"),
    ],
)
def test_scrub(raw, clean):
    assert scrub(raw) == clean


def test_pseudonyms_are_stable_per_salt_and_unguessable_across_pools():
    assert pseudonym("salt-a", "7") == pseudonym("salt-a", "7")
    assert pseudonym("salt-a", "7") != pseudonym("salt-b", "7")
    assert pseudonym("salt-a", "7") != pseudonym("salt-a", "8")
    assert pseudonym("salt-a", "7").startswith("peer-")


def test_html_to_text_structure():
    html = (
        "<p>Intro with <a href='http://x.y/z'>a link</a> &amp; <em>emphasis</em>.</p>\n"
        "<ol><li>first</li><li>second</li></ol>"
        "<blockquote><p>quoted</p></blockquote>"
        "<pre><code>for x in y:\n    print(x)</code></pre>"
        "<p>Line one<br>line two <img src='a.png' alt='a diagram'></p>"
        "<script>alert(1)</script>"
    )
    assert html_to_text(html) == (
        "Intro with a link & emphasis.\n\n1. first\n2. second\n\n> quoted\n\n"
        "for x in y:\n    print(x)\n\nLine one\n\nline two a diagram"
    )


def test_normalize_and_decode():
    assert normalize("a\r\nb \x00\x07\n\n\n\nc\t") == "a\nb\n\nc"
    text = decode(b"\xef\xbb\xbfok \xff")
    assert text.startswith("ok") and bad_bytes(text).startswith("invalid bytes for the file's encoding (0xff")
    assert bad_bytes("fine") is None
