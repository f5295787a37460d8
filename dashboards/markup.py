"""Text from items and clients inside Streamlit markdown, shown as the text it is.

Streamlit draws ``st.markdown``, ``st.caption``, alert bodies (``st.error`` ...), metric values
and badge labels as GitHub-flavoured markdown, with LaTeX between ``$`` signs, colour and badge
directives (``:red[...]``), icons (``:material/x:``), emoji shortcodes, and, after parsing,
typographic replacements in the text (``->`` becomes an arrow, ``:streamlit:`` its logo). A
request id is whatever a client put on the requests topic: written into such a string as it is,
``![](http://host/p.png)`` makes every auditor's browser fetch an outside URL, and
``[Session expired](http://...)`` is a link in the trusted workbench. Every place where item- or
client-derived text enters markdown goes through one of the two functions here:

* :func:`md_text` backslash-escapes every ASCII punctuation character (CommonMark lets each be
  escaped, and an escaped one is never markup: no link, image, emphasis, code, HTML, math,
  directive or block marker), and puts an invisible word joiner (U+2060) where replacements
  that Streamlit's renderer makes in the *parsed* text (escapes no longer count there) would
  still match: bare URLs and email addresses (GitHub's autolinks), icons, emoji, its logo,
  ``->``-like arrows.
* :func:`md_code` writes an identifier as a code span: its text exactly, in a monospace box
  (nothing inside a code span is parsed or replaced).

Both collapse whitespace runs (line ends included: a blank line would end the paragraph) to one
space, and show control and bidirectional-override characters as U+FFFD (an override would
reorder what the auditor reads; a lone surrogate cannot even be sent), and so a word joiner of
the text itself (the joiners in the markdown are then exactly the ones put there, and an
identifier with an invisible joiner in it does not look like the one without). :func:`shown` is
that text: what the reader sees.
tests/dashboards/test_markup.py checks the promise against CommonMark (markdown-it) and against
Streamlit's own renderer in Chromium.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any

JOINER = "\u2060"  # WORD JOINER: invisible, no line break, splits what Streamlit's text replacements match
_PUNCTUATION = frozenset(string.punctuation)  # CommonMark's ASCII punctuation: each may be escaped
_ARROW_FIRST, _ARROW_SECOND = frozenset("<->~"), frozenset("->=")  # "->", "<-", "--", ">=", "<=", "~=", "<->"
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_SPACES = re.compile(r"\s+")


def shown(value: Any) -> str:
    """``str(value)`` as the reader sees it: whitespace runs as one space, trimmed; control,
    lone-surrogate, bidirectional-override and word-joiner characters as U+FFFD."""
    text = "".join("\ufffd" if _hidden(ch) else ch for ch in str(value))
    return _SPACES.sub(" ", text).strip()


def _hidden(ch: str) -> bool:
    category = unicodedata.category(ch)
    return ch in _BIDI or ch == JOINER or category == "Cs" or (category == "Cc" and not ch.isspace())


def md_text(value: Any) -> str:
    """Markdown that Streamlit shows as :func:`shown` ``(value)``: nothing in it is markup."""
    text = shown(value)
    out = []
    for i, ch in enumerate(text):
        out.append("\\" + ch if ch in _PUNCTUATION else ch)
        if _split_after(text, i):
            out.append(JOINER)
    return "".join(out)


def _split_after(text: str, i: int) -> bool:
    """Whether Streamlit's replacements in parsed text could match across ``text[i:i+2]``: a
    colon before anything (icons, emoji, its logo, ``https://`` of a bare URL that GitHub's
    markdown links), ``@`` (a bare email address), ``www`` before its dot, an arrow pair."""
    ch, after = text[i], text[i + 1:i + 2]
    if not after or after.isspace():
        return False
    return (ch in ":@" or (ch in _ARROW_FIRST and after in _ARROW_SECOND)
            or (after == "." and text[max(0, i - 2):i + 1].lower() == "www"))


def md_code(value: Any) -> str:
    """Markdown that Streamlit shows as :func:`shown` ``(value)`` in a code span (identifiers:
    the exact text, copied as it is). Empty for an empty text."""
    text = shown(value)
    if not text:
        return ""
    # Streamlit rewrites ":material/" in the whole source (code spans too) before parsing.
    text = text.replace(":material/", f":{JOINER}material/")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"  # CommonMark strips one space each side: a leading or trailing ` is safe
