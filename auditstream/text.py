"""Text every record, card and setting must be: a Python string that encodes as UTF-8."""

from __future__ import annotations

from typing import Any, Iterator


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8. A Python string may hold a lone UTF-16 surrogate
    (``"\\ud800"``: from a JSON escape, a card file or an environment variable) that no encoder
    takes, so a Kafka key, a hash or a database write would fail on it far from where it came in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value (dicts, lists, scalars), object keys included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def unreadable_text(value: Any) -> str | None:
    """What in ``value``'s strings no wire reader takes (auditstream.wire.codec.strict_loads
    refuses both), or None: a writer checks with this what its readers will refuse."""
    for text in json_strings(value):
        if not is_utf8(text):
            return "a lone UTF-16 surrogate (\\ud800 to \\udfff without its pair)"
        if "\x00" in text:
            return "a NUL character"
    return None
