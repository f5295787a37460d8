"""Text every record, card and setting must be: a Python string that encodes as UTF-8."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8. A Python string may hold a lone UTF-16 surrogate
    (``"\\ud800"``: from a JSON escape, a card file or an environment variable) that no encoder
    takes, so a Kafka key, a hash or a database write would fail on it far from where it came in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
