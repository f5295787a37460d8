"""auditstream.tasks.detection's one-to-one box matching (answer equality, false boxes of an audit)
without recursion: the recursive augmenting-path search went one Python frame deeper per box, so an
answer of ~1,000 boxes raised RecursionError in the monitor's verdict tracking, in the store reads
at its start-up (a crash loop) and in the dashboard."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from auditstream.tasks import lookup
from auditstream.tasks.detection import _matching_size, iou_matrix
from qc.detection_certify import match_boxes

TASK = lookup("detection")


def recursive_matching_size(allowed: np.ndarray) -> int:
    """The matching as it was before (recursive augmenting paths): the reference on small graphs."""
    n, k = allowed.shape
    owner = [-1] * k

    def augment(i: int, seen: list[bool]) -> bool:
        for j in np.flatnonzero(allowed[i]):
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * k) for i in range(n))


def brute_force_matching_size(allowed: np.ndarray) -> int:
    """The largest number of rows pairable with distinct columns, by trying every assignment."""
    n, k = allowed.shape
    best = 0
    for cols in itertools.permutations(range(max(n, k)), n):
        best = max(best, sum(1 for i, j in enumerate(cols) if j < k and allowed[i, j]))
    return best


def brute_false_parts(ours: list[dict], theirs: list[dict], iou: float) -> int:
    allowed = np.array([[p["label"] == q["label"] for q in theirs] for p in ours], dtype=bool).reshape(
        len(ours), len(theirs))
    if ours and theirs:
        allowed &= iou_matrix(np.array([d["box"] for d in ours]), np.array([d["box"] for d in theirs])) >= iou
    return len(ours) - brute_force_matching_size(allowed)


GRAPHS = st.integers(0, 6).flatmap(lambda n: st.integers(0, 6).flatmap(
    lambda k: st.lists(st.booleans(), min_size=n * k, max_size=n * k).map(
        lambda cells: np.array(cells, dtype=bool).reshape(n, k))))


@settings(max_examples=400, deadline=None)
@given(allowed=GRAPHS)
def test_property_the_iterative_matching_equals_the_recursive_one_and_brute_force(allowed: np.ndarray) -> None:
    size = _matching_size(allowed)
    assert size == recursive_matching_size(allowed) == brute_force_matching_size(allowed)


# Boxes on a coarse grid so that IoU >= 0.5 between distinct boxes happens often.
BOX = st.builds(lambda x, y, w, h, label: {"box": [x, y, x + w, y + h], "label": label, "score": 0.9},
                st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2))


def reference_greedy(ours: list[dict], theirs: list[dict], iou: float) -> np.ndarray:
    """The certificate's matching as qc.detection_certify.match_boxes wrote it (COCO: greedy in
    descending score, each box takes the free object of its label with the highest IoU)."""
    overlaps = np.full((len(ours), len(theirs)), -1.0)
    if ours and theirs:
        ious = iou_matrix(np.array([d["box"] for d in ours], float), np.array([d["box"] for d in theirs], float))
        same = np.array([[p["label"] == q["label"] for q in theirs] for p in ours])
        overlaps = np.where(same, ious, -1.0)
    taken, true = np.zeros(len(theirs), bool), np.zeros(len(ours), bool)
    for i in np.argsort(-np.array([d["score"] for d in ours], float), kind="stable"):
        candidates = np.where(taken, -1.0, overlaps[i])
        if candidates.size and candidates.max() >= iou:
            j = int(candidates.argmax())
            taken[j], true[i] = True, True
    return true


# Scores of one decimal: ties, which the greedy order breaks by the answer's order.
SCORED_BOX = st.builds(lambda x, y, w, h, label, score: {"box": [x, y, x + w, y + h], "label": label, "score": score},
                       st.integers(0, 4), st.integers(0, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2),
                       st.sampled_from([0.5, 0.7, 0.9, 0.95]))


# Boxes of one row sliding along x: one model box often overlaps two auditor boxes, where a
# largest matching and the greedy pass disagree (random boxes on a grid almost never do).
ROW_BOX = st.builds(lambda x, score: {"box": [x, 0, x + 10, 10], "label": 0, "score": score},
                    st.integers(-4, 12), st.sampled_from([0.5, 0.7, 0.9]))
ROW_TRUTH = st.builds(lambda x: {"box": [x, 0, x + 10, 10], "label": 0}, st.integers(0, 8))


@settings(max_examples=300, deadline=None)
@given(ours=st.one_of(st.lists(SCORED_BOX, max_size=6), st.lists(ROW_BOX, min_size=1, max_size=4)),
       theirs=st.one_of(st.lists(BOX, max_size=6), st.lists(ROW_TRUTH, min_size=1, max_size=4)),
       iou=st.sampled_from([0.3, 0.5, 0.7]))
def test_property_false_parts_count_the_certificates_false_boxes_and_same_answer_a_largest_matching(
        ours: list, theirs: list, iou: float) -> None:
    """false_parts is the certificate's greedy count (the live FDR counts what the certificate
    bounds); same_answer stays a perfect one-to-one matching (equality is symmetric)."""
    greedy = reference_greedy(ours, theirs, iou)
    assert TASK.false_parts(ours, theirs, iou) == int((~greedy).sum())
    if ours:
        assert (match_boxes(np.array([d["box"] for d in ours], float), np.array([d["label"] for d in ours]),
                            np.array([d["score"] for d in ours]), np.array([d["box"] for d in theirs], float),
                            np.array([d["label"] for d in theirs]), iou) == greedy).all()
    false = brute_false_parts(ours, theirs, iou)
    assert TASK.false_parts(ours, theirs, iou) >= false  # greedy never confirms more than a largest matching
    assert TASK.same_answer(ours, theirs, iou) == (len(ours) == len(theirs) and false == 0)


def test_false_parts_agree_with_the_certificate_where_a_largest_matching_would_not() -> None:
    """A review's case: box 1 (0.9) takes truth 1 (IoU .85 over .79); box 2
    (0.8) overlaps truth 1 only, taken: false for the certificate. A largest matching pairs box 1
    with truth 2 and box 2 with truth 1 and counted no false box."""
    model = [{"box": [0.8, 0, 10.8, 10], "label": 1, "score": 0.9}, {"box": [-3, 0, 7, 10], "label": 1, "score": 0.8}]
    truth = [{"box": [0, 0, 10, 10], "label": 1}, {"box": [2, 0, 12, 10], "label": 1}]
    assert TASK.false_parts(model, truth, 0.5) == 1
    assert TASK.false_parts(model[::-1], truth, 0.5) == 1  # the score orders, not the list
    assert TASK.same_answer(model, truth, 0.5)  # equality: a perfect one-to-one matching exists


def test_answers_of_5000_boxes_match_without_recursion() -> None:
    same = [{"box": [0, 0, 10, 10], "label": 1, "score": 0.99}] * 5000  # every box matches every other
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 1000, size=(5000, 2)).round(1)
    spread = [{"box": [x, y, x + 8, y + 8], "label": int(i % 3), "score": 0.9} for i, (x, y) in enumerate(corner)]
    assert TASK.same_answer(same, list(same))
    assert TASK.false_parts(same, same[:-1]) == 1  # an auditor deleted one box
    assert TASK.false_parts(same, []) == 5000
    assert TASK.same_answer(spread, spread[::-1])
    assert TASK.false_parts(spread, spread[1:]) == 1
    assert not TASK.same_answer(spread, [{**d, "label": 3} if i == 17 else d for i, d in enumerate(spread)])
    # (about a second on a 2-core machine; the old recursion raised RecursionError at ~1,000 boxes)


def test_an_augmenting_path_through_every_box_is_found_without_recursion() -> None:
    """Left i (< n) may take right i or i + 1 and greedily takes i; the last left may take right 0
    only, so its augmenting path shifts all n others along: n levels deep for a recursive search."""
    n = 3000
    allowed = np.zeros((n + 1, n + 1), dtype=bool)
    idx = np.arange(n)
    allowed[idx, idx] = allowed[idx, idx + 1] = True
    allowed[n, 0] = True
    assert _matching_size(allowed) == n + 1
    allowed[:, n] = False  # now n + 1 lefts share n rights
    assert _matching_size(allowed) == n
    assert _matching_size(np.ones((n, 1), dtype=bool)) == _matching_size(np.ones((1, n), dtype=bool)) == 1
    assert _matching_size(np.zeros((0, n), dtype=bool)) == _matching_size(np.zeros((n, 0), dtype=bool)) == 0
