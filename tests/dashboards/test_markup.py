"""Item- and client-derived text in markdown is shown as text (dashboards/markup.py).

Three levels: any string (hypothesis) escaped by ``md_text`` leaves no unescaped ASCII
punctuation (every markdown, math, directive and icon construct Streamlit knows starts with
one) and parses, in CommonMark with GitHub's tables and strikethrough (markdown-it), to one
paragraph of plain text equal to what the reader should see; ``md_code`` to one code span of
that text; and a hostile request id reaches the workbench header (AppTest) as a code span, not
as an image and a link. test_browser_markup.py checks the same in Streamlit's own renderer.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given, settings, strategies as st
from tests.dashboards.conftest import items_by_task, log_in, prediction, start_app, texts

from auditstream.wire import AuditItem
from dashboards.markup import JOINER, md_code, md_text, shown

markdown_it = pytest.importorskip("markdown_it")

HOSTILE = [
    "r1 ![](http://127.0.0.1:9/pixel.png?who=auditor) [**Session expired: sign in again**](http://evil.example/login)",
    "<img src=x onerror=alert(1)>", "<https://evil.example>", "https://evil.example/autolink", "[a]: http://ref.example",
    "[a][] [a]", "# Heading", "1. list", "- item", "> quote", "---", "| a | b |", "~~gone~~", "$x^2$", "$$E$$",
    ":red[alarm]", ":red-badge[fake]", ":material/warning:", ":material_warning:", ":streamlit:", ":smile: :+1:",
    "a -> b <- c <-> d -- e >= f <= g ~= h", "**bold** _it_ `code` ``x``", "\\", "\\\\![x](y)", "a\n\nb",
    "    indented code", "\x00nul \x1b[31m", "\u202eevil\u202c", "&amp; &#x3C;b&#x3E;", "*", "`", "```", "\t",
]


def parse(markdown: str):
    return markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)


def inline_children(markdown: str) -> list:
    """The inline tokens of ``markdown``, which must be exactly one paragraph (or nothing)."""
    tokens = parse(markdown)
    if not tokens:
        return []
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], markdown
    return tokens[1].children


PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@settings(max_examples=500)
@given(st.text())
@example("".join(sorted(PUNCTUATION)))
@example(f"a{JOINER}:b")
def test_escaped_text_is_only_text(text: str) -> None:
    escaped = md_text(text)
    # Structure: every ASCII punctuation character is escaped (Streamlit's math, directives,
    # icons and emoji all start with one), and nothing else was added but invisible joiners.
    rest = escaped
    while "\\" in rest:
        before, _, after = rest.partition("\\")
        assert not set(before) & PUNCTUATION, escaped
        assert after[:1] in PUNCTUATION, escaped
        rest = after[1:]
    assert not set(rest) & PUNCTUATION, escaped
    # Parsed as CommonMark (+ tables, strikethrough): one paragraph of text and nothing else.
    children = inline_children(escaped)
    assert {c.type for c in children} <= {"text"}, [c.type for c in children]
    assert "".join(c.content for c in children).replace(JOINER, "") == shown(text)


@settings(max_examples=500)
@given(st.text())
def test_escaped_text_stays_text_inside_a_sentence(text: str) -> None:
    children = inline_children(f"request **{md_text(text)}** · lease until 12:00 UTC")
    assert [c.type for c in children if c.type != "text"] == ["strong_open", "strong_close"] or not shown(text)


@settings(max_examples=500)
@given(st.text())
@example("`a``b```c` ")
@example("x :material/face: y")
@example(JOINER)  # found by CI 2026-12-05: the text's own joiner was taken for one put there
def test_a_code_span_holds_exactly_the_text(text: str) -> None:
    code = md_code(text)
    children = inline_children(f"Request {code} · lease until 12:00 UTC")
    if not shown(text):
        assert code == ""
        return
    spans = [c for c in children if c.type == "code_inline"]
    assert [c.type for c in children] == ["text", "code_inline", "text"] and len(spans) == 1
    assert spans[0].content.replace(JOINER, "") == shown(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_parse_to_their_text(text: str) -> None:
    children = inline_children(md_text(text))
    assert {c.type for c in children} <= {"text"}
    assert "".join(c.content for c in children).replace(JOINER, "") == shown(text)


def test_what_the_reader_sees() -> None:
    assert shown("  a\n\n\tb  ") == "a b"
    assert shown(f"r1{JOINER}") == "r1\ufffd" != shown("r1")  # an invisible joiner is not hidden
    assert shown("a\x00b\u202ec") == "a\ufffdb\ufffdc"
    assert md_text("see [x](y)!") == "see \\[x\\]\\(y\\)\\!"
    assert md_text(":smile: a->b") == f"\\:{JOINER}smile\\: a\\-{JOINER}\\>b"
    assert md_code("a`b") == "`` a`b ``"


def test_a_hostile_request_id_shows_as_plain_text_in_the_workbench(store, store_url, tmp_path):
    rid = HOSTILE[0]
    seq = items_by_task()["sequence"]
    store.ingest(AuditItem(prediction(rid, "zip", "sequence", "02139", 0.6, seq.prediction.details), seq.input),
                 time.time())  # fmt: skip
    at = log_in(start_app(store_url, tmp_path), "alice")
    at.button(key="next").click()
    at = at.run()
    [header] = [c.value for c in at.caption if c.value.startswith("Request")]
    children = inline_children(header)
    assert [c.type for c in children] == ["text", "code_inline", "text"]  # no image, no link, no bold
    assert children[1].content == rid
    for body in [m.value for m in (*at.markdown, *at.caption)]:  # nowhere on the page
        inline = [c.type for t in parse(body) for c in t.children or []]
        assert not {"image", "link_open", "html_inline"} & set(inline), body
    assert rid in texts(at)


@pytest.mark.parametrize("text", HOSTILE)
def test_every_sink_of_item_text_escapes_it(text: str) -> None:
    """The caption's marked words, the per-character badges and the out-of-range note."""
    from dashboards.render import confidence_badges
    from dashboards.tasks.base import out_of_range_note
    from dashboards.tasks.caption import marked_caption

    marked = prediction("c-1", "captioner", "caption", text, 0.5,
                        {"tokens": [text, "ok"], "token_confidences": [0.1, 0.9], "threshold": 0.5})  # fmt: skip
    plain = prediction("c-2", "captioner", "caption", text, 0.5, {})
    for markdown in (marked_caption(marked), marked_caption(plain), confidence_badges([(text, 0.5)]),
                     out_of_range_note(text, ["a"], "classes")):  # fmt: skip
        inline = {c.type for t in parse(markdown) for c in t.children or []}
        assert inline <= {"text", "strong_open", "strong_close"}, markdown
