"""JSON as the standard defines it: no NaN, no Infinity.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which no strict parser (jq,
JavaScript's ``JSON.parse``, Go, Postgres jsonb) reads. Every summary and card this project
writes for people or programs goes through :func:`dumps`: a value that is undefined is written
as ``null`` by its producer, with the reason beside it (an estimate's ``details.undefined``),
and a non-finite number that reaches the writer anyway is refused there, naming where it is,
rather than printed as something that is not JSON.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Iterator
from typing import IO, Any

from auditstream.errors import AuditstreamError

__all__ = ["NonFiniteJSON", "dumps", "finite_or_none", "non_finite_path", "nulled", "print_summary"]


class NonFiniteJSON(AuditstreamError, ValueError):
    """A value to be written as JSON holds a NaN or an infinity; the message says where."""


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (null in JSON). The caller says
    why it is undefined."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def nulled(value: Any) -> Any:
    """``value`` with every NaN or infinite number replaced by None (null): how a reader takes
    JSON that an older writer (or a hand) gave ``NaN``/``Infinity``, in fields whose numbers are
    free-form facts (a card's metrics), where this project's spelling of "undefined" is null. The
    same object when there is none (nothing is copied on the usual path, which every registry
    load takes: it is checked at C speed first)."""
    if _surely_finite(value):
        return value
    return _nulled(value)


def _nulled(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulled(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        return None
    return value


def _surely_finite(value: Any) -> bool:
    """True when ``value`` is plain JSON data without a NaN or infinity (``json``'s C encoder
    says so); False when it has one or holds something else (a numpy scalar): then walk it."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def non_finite_path(value: Any) -> str | None:
    """Where the first NaN or infinite number in a JSON value is (``metrics.ope.wis.lower``,
    ``items[3]``), or None if there is none."""
    found = _first_non_finite(value)
    return None if found is None else found[0]


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, allow_nan=False, **kwargs)``; a NaN or infinity is a
    :class:`NonFiniteJSON` naming its path (``json`` itself says only "Out of range float values
    are not JSON compliant")."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError as e:
        found = _first_non_finite(value)
        if found is None:  # another ValueError (a circular reference, a ``default`` that made a NaN)
            raise
        raise NonFiniteJSON(f"{found[0]} is {found[1]!r}, which is not JSON: whoever produced it must write null "
                            "there and say why the value is undefined") from e


def print_summary(value: Any, *, file: IO[str] | None = None, **kwargs: Any) -> None:
    """Print a command's ``--json`` summary (one JSON document) on ``file`` (stdout).

    A summary is printed after the work is done, so a NaN or infinity in it (a rate over zero
    items, a ratio of an empty bench step) must not lose the result: it is written as ``null`` and
    each such path is named on stderr, so the output stays JSON that jq and strict parsers read.
    (Cards are written with :func:`dumps`, which refuses instead: a card is read by the system.)"""
    paths = list(_non_finite(value))
    for where, x in paths:
        print(f"note: {where} is {x!r}, written as null (undefined)", file=sys.stderr)
    print(dumps(nulled(value) if paths else value, **kwargs), file=file if file is not None else sys.stdout,
          flush=True)


def _first_non_finite(value: Any) -> tuple[str, float] | None:
    return next(_non_finite(value), None)


def _non_finite(value: Any) -> Iterator[tuple[str, float]]:
    """(path, number) of each NaN or infinity in ``value``, in document order. A path is spelt
    only for what is found: a card of a million numbers is walked without a string per number."""
    stack: list[tuple[Any, Any]] = [((), value)]  # a stack, not recursion: a card may nest deeply
    while stack:
        where, item = stack.pop()  # where: (parent's where, key) links, spelt by _spell on a find
        if isinstance(item, numbers.Real) and not isinstance(item, numbers.Integral) \
                and not math.isfinite(float(item)):
            yield _spell(where), float(item)
        elif isinstance(item, dict):
            stack.extend(((where, str(k)), v) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend(((where, i), item[i]) for i in range(len(item) - 1, -1, -1))


def _spell(where: tuple) -> str:
    keys: list[Any] = []
    while where:
        where, key = where
        keys.append(key)
    text = ""
    for key in reversed(keys):
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text or "(the value itself)"
