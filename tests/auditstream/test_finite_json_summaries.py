"""Every command's ``--json`` summary is strict JSON, whatever numbers reach it.

A NaN or infinity in a summary (a rate over zero items, an empty bench step) is written as null
and named on stderr: the result of a long run is never lost to a refusal, and jq or a strict
parser can always read what was printed.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from auditstream import finite_json

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("auditstream", "dashboards", "monitor", "qc", "serving", "stack", "store", "training")


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_non_finite_number_is_written_as_null_and_named_on_stderr(capsys) -> None:
    out = io.StringIO()
    finite_json.print_summary({"rate": float("nan"), "runs": [1.5, float("inf")], "n": 3}, file=out, sort_keys=True)
    assert _strict(out.getvalue()) == {"n": 3, "rate": None, "runs": [1.5, None]}
    err = capsys.readouterr().err
    assert "note: rate is nan, written as null" in err
    assert "note: runs[1] is inf, written as null" in err


def test_a_finite_summary_is_printed_as_json_dumps_would() -> None:
    out = io.StringIO()
    summary = {"b": [1, 2.5], "a": {"x": None, "y": "z"}}
    finite_json.print_summary(summary, file=out, sort_keys=True)
    assert out.getvalue() == json.dumps(summary, sort_keys=True) + "\n"


floats = st.floats(allow_nan=True, allow_infinity=True)
values = st.recursive(st.none() | st.booleans() | st.integers() | floats | st.text(max_size=5),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_property_whatever_reaches_a_summary_it_prints_strict_json(value) -> None:
    out = io.StringIO()
    finite_json.print_summary(value, file=out)
    printed = _strict(out.getvalue())

    def same(a, b) -> bool:  # b is a with every non-finite number nulled
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
        return a == b
    assert same(value, printed)


def test_every_command_prints_its_json_summary_through_print_summary() -> None:
    """The class of bug, not the case: ``print(json.dumps(...))`` writes ``NaN``, which is not JSON."""
    pattern = re.compile(r"print\(\s*(?:finite_)?json\.dumps\(")
    offenders = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
                 for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
                 for text in [path.read_text(encoding="utf-8")] for m in pattern.finditer(text)]
    assert offenders == [], "print a --json summary with finite_json.print_summary: " + ", ".join(offenders)
