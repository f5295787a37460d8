"""δ spending over the versions certified on one slice (qc/delta_spending.py): the schedule sums
to at most δ, the index comes from the cards on the same slice only, and -- simulated -- certifying
the same slice again and again at the full δ breaks the family-wise promise while the schedule
keeps it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from qc.binomial import lower_bound, upper_bound
from qc.delta_spending import (EXTRA_KEY, BadDelta, CertificateSlice, delta_at, left_from, plan, spent_by,
                               spent_through)

SEED, FRACTIONS = 20240917, {"train": 0.5, "calibration": 0.3, "test": 0.2}
SLICE = CertificateSlice("calibration/certificate", SEED, FRACTIONS, "a" * 64)
OTHER = CertificateSlice("calibration/certificate", SEED + 1, FRACTIONS, "b" * 64)

deltas = st.floats(min_value=1e-6, max_value=0.999, allow_nan=False)


@given(deltas, st.integers(min_value=1, max_value=5000))
def test_the_schedule_never_spends_more_than_delta(delta, k):
    assert spent_through(delta, k) <= delta
    assert delta_at(delta, k) == pytest.approx(delta * 6 / (math.pi ** 2 * k ** 2))
    assert delta_at(delta, k + 1) < delta_at(delta, k)
    # what 1..k-1 spent plus what k, k+1, ... may spend is delta exactly: nothing is lost or made up
    before = spent_through(delta, k - 1) if k > 1 else 0.0
    assert before + left_from(delta, k) == pytest.approx(delta, rel=1e-12)
    assert left_from(delta, k) >= delta_at(delta, k)


def test_the_schedule_tends_to_delta_and_gives_the_first_certificate_six_over_pi_squared():
    assert delta_at(0.05, 1) == pytest.approx(0.05 * 0.6079, rel=1e-4)
    assert spent_through(0.05, 100_000) == pytest.approx(0.05, rel=1e-4)  # the tail after K is ~6/(pi^2 K)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan"), float("inf"), True, "0.05", None])
def test_a_family_delta_outside_zero_one_is_refused_with_what_to_pass(bad):
    with pytest.raises(BadDelta, match=r"in \(0, 1\)"):
        delta_at(bad, 1)
    with pytest.raises(BadDelta, match=r"in \(0, 1\)"):
        plan(bad, SLICE, [])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_an_index_below_one_is_refused(bad):
    with pytest.raises(ValueError, match="index"):
        delta_at(0.05, bad)


def card(version: str, delta: float | None = 0.05, spending: dict | None = None, training: dict | None = None) -> ModelCard:
    """A card as a training script publishes it: the split in ``training``, the spending (new
    cards) in ``extra``."""
    return ModelCard(name="digits", version=version, task="classification",
                     inputs=[TensorSpec("pixels", "float32", [None, 8, 8])],
                     outputs=[TensorSpec("probs", "float32", [None, 10])],
                     triage=TriageSpec(threshold=0.9, target_risk=0.02, delta=delta, certified_risk=0.01, coverage=0.9),
                     training={"split_seed": SEED, "split_fractions": FRACTIONS} if training is None else training,
                     extra={} if spending is None else {EXTRA_KEY: spending})


def new_card(version: str, index: int, slice_: CertificateSlice = SLICE, family: float = 0.05) -> ModelCard:
    d = delta_at(family, index)
    return card(version, d, {"family_delta": family, "index": index, "delta": d, "slice": slice_.to_dict()})


def test_the_first_certificate_on_a_slice_is_index_one():
    s = plan(0.05, SLICE, [])
    assert (s.index, s.delta, s.spent_before, s.family_delta_bound) == (1, delta_at(0.05, 1), 0.0, 0.05)
    assert s.slice == SLICE.to_dict() and s.earlier == []


def test_the_index_counts_the_versions_on_the_same_slice_only():
    cards = [
        new_card("1", 1),
        new_card("2", 2),
        new_card("3", 1, OTHER),  # certified on another slice (its own family): does not count
        card("4", training={"split_seed": SEED + 7, "split_fractions": FRACTIONS}),  # an old card, another split
        card("5", training={"split_seed": SEED, "split_fractions": {"train": 0.6, "calibration": 0.2, "test": 0.2}}),
    ]
    s = plan(0.05, SLICE, cards)
    assert s.index == 3 and s.delta == pytest.approx(delta_at(0.05, 3))
    assert [e["version"] for e in s.earlier] == ["1", "2"]
    assert s.spent_before == pytest.approx(spent_through(0.05, 2))
    assert s.family_delta_bound == pytest.approx(0.05)  # every card on the slice followed the schedule


def test_old_cards_count_at_their_full_delta_and_the_family_bound_says_so():
    # v1: trained before the schedule (no extra.delta_spending), at the full 0.05
    s = plan(0.05, SLICE, [card("1")])
    assert s.index == 2 and s.delta == pytest.approx(0.05 * 6 / (math.pi ** 2 * 4))
    assert s.spent_before == 0.05
    # all certificates on the slice: 0.05 (v1) + what the schedule allows from k = 2 on
    assert s.family_delta_bound == pytest.approx(0.05 + 0.05 * (1 - 6 / math.pi ** 2))
    assert "full delta" in s.describe()
    # and a new card after it records what it spent
    s3 = plan(0.05, SLICE, [card("1"), new_card("2", 2)])
    assert s3.index == 3 and s3.spent_before == pytest.approx(0.05 + delta_at(0.05, 2))


def test_a_card_that_does_not_say_its_slice_counts_and_one_without_delta_spent_nothing():
    s = plan(0.05, SLICE, [card("1", training={}), card("2", delta=None)])
    assert s.index == 3 and s.spent_before == 0.05


def test_a_removed_version_gives_no_delta_back():
    s = plan(0.05, SLICE, [new_card("1", 1), new_card("3", 3)])  # v2 (index 2) was deleted
    assert s.index == 4


def test_a_damaged_record_is_read_as_an_old_card():
    damaged = card("1", spending={"index": "two", "delta": 0.01, "slice": SLICE.to_dict()})
    assert spent_by(damaged) == 0.05  # its triage delta, in full
    assert plan(0.05, SLICE, [damaged]).index == 2


def test_a_record_is_never_spent_below_what_its_card_claims():
    c = new_card("1", 1)
    louder = dataclasses.replace(c, triage=dataclasses.replace(c.triage, delta=0.05))
    assert spent_by(louder) == 0.05


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30), deltas)
def test_the_index_is_one_more_than_the_cards_on_the_slice(kinds, delta):
    """Whatever mix of old and new cards, on this slice or another: k = 1 + those on this slice,
    and the next certificate never spends more than the schedule leaves."""
    cards, on = [], 0
    for i, (same, old) in enumerate(kinds, 1):
        if old:
            cards.append(card(str(i), training={"split_seed": SEED if same else SEED + 1, "split_fractions": FRACTIONS}))
        else:
            cards.append(new_card(str(i), on + 1 if same else 1, SLICE if same else OTHER))
        on += same
    s = plan(delta, SLICE, cards)
    assert s.index == on + 1
    assert s.delta <= left_from(delta, s.index)


# -- the reviewer's finding, in miniature -----------------------------------------------------------

def family_wise_errors(rounds: int, worlds: int, n: int, rho: float, delta: float, spend: bool,
                       seed: int = 1) -> int:
    """Worlds (calibration slices) in which at least one of ``rounds`` certificates on the same
    slice is wrong. Each world draws one slice of ``n`` items; each round's model errs on item
    i when rho-shared difficulty of i plus its own noise falls below the cut -- so every version
    errs on each item with probability p (its error count is Binomial(n, p), the certificate
    is exact for it alone) but versions err on the same hard items, as retrained models do.
    p sits just above the Clopper-Pearson bound of 5 errors at the full delta, where one
    certificate fails with probability ~delta (the worst case for a single one)."""
    p = upper_bound(5, n, delta) * (1 + 1e-6)
    cut = norm.ppf(p)
    rng = np.random.default_rng(seed)
    hard = rng.standard_normal((worlds, n))
    wrong = np.zeros(worlds, dtype=bool)
    for k in range(1, rounds + 1):
        errors = ((math.sqrt(rho) * hard + math.sqrt(1 - rho) * rng.standard_normal((worlds, n))) < cut).sum(1)
        level = delta_at(delta, k) if spend else delta
        bound = np.array([upper_bound(e, n, level) for e in range(n + 1)])  # by error count
        wrong |= bound[errors] < p  # this version's certificate promises less than its true risk
    return int(wrong.sum())


def test_certifying_one_slice_again_at_the_full_delta_breaks_the_promise_and_spending_keeps_it():
    rounds, worlds, n, rho, delta = 20, 20_000, 100, 0.5, 0.05
    # Clopper-Pearson on the simulated rate, at 1e-6 each side: 20,000 worlds decide, noise cannot
    full = family_wise_errors(rounds, worlds, n, rho, delta, spend=False)
    assert lower_bound(full, worlds, 1e-6) > delta  # ~0.49 of the worlds hold a wrong certificate
    spent = family_wise_errors(rounds, worlds, n, rho, delta, spend=True)
    assert upper_bound(spent, worlds, 1e-6) <= delta  # ~0.03
    # one round alone: a valid certificate, and a tight one (fails in ~delta of the worlds), so the
    # excess above is the repetition's, not a slack set-up's
    one = family_wise_errors(1, worlds, n, rho, delta, spend=False)
    assert lower_bound(one, worlds, 1e-6) <= delta <= upper_bound(one, worlds, 1e-6)
