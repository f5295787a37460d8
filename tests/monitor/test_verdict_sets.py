"""The provenance a retrained card records (monitor/verdict_sets.py): it names every version whose
verdicts it learnt from, in version order, whatever text a record gave as the version."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.verdict_sets import provenance
from tests.auditstream.test_wire_fuzz import FUZZ


def _row(i: int, version: str) -> dict:
    return {"verdict_id": f"v{i}", "decided_at_s": float(i), "verdict_kind": "accept", "route": "HUMAN",
            "model_version": version}


def test_versions_that_are_not_integers_sort_after_the_registrys_by_text():
    """Review r7: one verdict on version "v1" (another client's record; the wire takes any string)
    made ``auditstream retrain`` die in ``sorted(..., key=int)``. The registry's versions are
    integers as text, so they come first, by number; any other text after them, by text."""
    versions = ["10", "2", "v1", "1", "beta", "0010", "2" * 5000]
    learnt = provenance([_row(i, v) for i, v in enumerate(versions)])
    assert learnt["versions_audited"] == ["1", "2", "0010", "10", "2" * 5000, "beta", "v1"]
    assert learnt["n_verdicts"] == len(versions)


@FUZZ
@given(versions=st.lists(st.text(max_size=8) | st.integers(0, 10**30).map(str), max_size=12))
def test_any_versions_sort_the_same_whatever_their_order(versions):
    ordered = provenance([_row(i, v) for i, v in enumerate(versions)])["versions_audited"]
    assert ordered == provenance([_row(i, v) for i, v in enumerate(reversed(versions))])["versions_audited"]
    numeric = [v.isascii() and v.isdigit() for v in ordered]
    assert numeric == sorted(numeric, reverse=True)  # the registry's integers first, then any other text
    numbers = [int(v) for v, n in zip(ordered, numeric) if n]
    assert numbers == sorted(numbers)
    others = [v for v, n in zip(ordered, numeric) if not n]
    assert others == sorted(others)
    assert sorted(ordered) == sorted(set(versions))  # each version once


@pytest.mark.parametrize("hygiene", [{"split_key_id": "secret:0123456789abcdef"}, {"certify_share": 1.5},
                                     {"certify_share": True}, {"certify_share": 0.5, "split_key_id": 7}, "junk"])
def test_a_damaged_hygiene_record_is_refused_alike_by_certify_promote_and_retrain(hygiene):
    """Review 2026-12-05: the three readers of a card's data_hygiene disagreed on a damaged one
    (a KeyError traceback, a ValueError, or 'learnt nothing': no share cap). One reading now,
    learnt_split, refuses it in one line for all three."""
    import dataclasses

    from auditstream.errors import ModelRefused
    from monitor import promotion
    from monitor.verdict_sets import learnt_split
    from qc.audit_split import SplitKey
    from stack import recertify
    from training import retrain
    from tests.conftest import tiny_card

    card = dataclasses.replace(tiny_card("zip"), version="3", extra={"data_hygiene": hygiene})
    key = SplitKey.new(bytes(32))
    for read in (lambda: learnt_split(card), lambda: promotion.may_judge(card, [], key),
                 lambda: recertify.learnt_share(card, key), lambda: retrain.inherited_split(card, 0.5)):
        with pytest.raises(ModelRefused, match="extra.data_hygiene"):
            read()
    assert learnt_split(dataclasses.replace(card, extra={})) is None
    assert learnt_split(dataclasses.replace(card, extra={"data_hygiene": {"certify_share": 0.2}})) == (0.2, "")
