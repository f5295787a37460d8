"""The offline dataset builder: grouping, ordering, overrides, propensities, save/load; only
whole episodes are kept (the rest dropped and counted, never cut); unusable propensities are
refused naming the episode and step."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.rl.offline_data import (D3RLPY_KEYS, DROP_REASONS, DatasetRefused, StepRecord, build_dataset,
                                      load_dataset, save_dataset)


def records() -> list[StepRecord]:
    p = [0.7, 0.3]
    out = [
        # episode "b" arrives out of order, with a redelivered duplicate of step 1
        StepRecord("b", 1, [1.0, 1.0], 1, p, 0.5, True, False, human_action=0),
        StepRecord("b", 0, [1.0, 0.0], 0, p, 1.0, False, False, human_action=0),
        StepRecord("b", 1, [9.0, 9.0], 0, p, 9.0, True, False),
        StepRecord("a", 0, [0.0, 0.0], 0, [0.5, 0.5], 0.0, False, False),
        StepRecord("a", 1, [0.0, 1.0], 1, [0.2, 0.8], 2.0, False, True, human_action=1),
        StepRecord("c", 0, [5.0, 5.0], 0, p, 1.0, False, False),  # still running: dropped
    ]
    return out


def test_build_groups_orders_and_flags() -> None:
    d = build_dataset(records())
    assert d.episode_keys.tolist() == ["a", "b"]
    assert d.episode_ids.tolist() == [0, 0, 1, 1] and d.steps.tolist() == [0, 1, 0, 1]
    assert d.actions.tolist() == [0, 1, 0, 1]
    assert d.rewards.tolist() == [0.0, 2.0, 1.0, 0.5]  # first delivery of b/1 kept
    assert d.terminals.tolist() == [0, 0, 0, 1] and d.timeouts.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(d.propensities, [[0.5, 0.5], [0.2, 0.8], [0.7, 0.3], [0.7, 0.3]])
    np.testing.assert_allclose(d.behaviour_action_prob, [0.5, 0.8, 0.7, 0.3])
    assert d.human_actions.tolist() == [-1, 1, 0, 0]
    assert d.overridden.tolist() == [False, False, False, True]  # b/1: executed 1, human said 0
    np.testing.assert_array_equal(d.next_observations[0], d.observations[1])
    np.testing.assert_array_equal(d.next_observations[2], d.observations[3])
    assert set(d.d3rlpy_arrays()) == set(D3RLPY_KEYS)


def test_round_trip_through_npz(tmp_path) -> None:
    d = build_dataset(records())
    back = load_dataset(save_dataset(d, tmp_path / "logs.npz"))
    for key in d.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(back, key), getattr(d, key), err_msg=key)


def test_select_episodes_resamples_and_renumbers() -> None:
    d = build_dataset(records())
    r = d.select_episodes(np.array([1, 1, 0]))
    assert r.episode_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert r.episode_keys.tolist() == ["b", "b", "a"]
    assert r.n_episodes == 3 and len(r.episode_slices()) == 3


@pytest.mark.parametrize("bad, match", [
    ([StepRecord("a", 0, [0.0], 3, [0.5, 0.5], 0.0, True, False)], "episode 'a' step 0: action 3 is outside"),
    ([StepRecord("a", 0, [0.0], 0, [0.5, 0.6], 0.0, True, False)], "episode 'a' step 0: .*sum to 1.1"),
    ([StepRecord("a", 0, [0.0], 0, [1.0], 0.0, False, False)], "no complete episode .*'not_ended': 1"),
])
def test_bad_records_are_refused(bad, match) -> None:
    with pytest.raises(DatasetRefused, match=match):
        build_dataset(bad)


def whole(key: str, n: int, p=(0.5, 0.5)) -> list[StepRecord]:
    return [StepRecord(key, t, [float(t)], t % 2, list(p), 1.0, False, t == n - 1) for t in range(n)]


@pytest.mark.parametrize("broken, reason", [
    (whole("x", 4)[1:], "missing_start"),  # its start was lost: not a 3-step episode
    (whole("x", 4)[:1] + whole("x", 4)[2:], "missing_steps"),
    (whole("x", 4)[:3], "not_ended"),
    ([StepRecord("x", 0, [0.0], 0, [0.5, 0.5], 0.0, True, False)] + whole("x", 3)[1:], "steps_after_end"),
])
def test_an_episode_that_is_not_whole_is_dropped_and_counted_never_cut_nor_failing(broken, reason) -> None:
    dropped: Counter = Counter()
    d = build_dataset(whole("a", 3) + broken + whole("b", 2), dropped=dropped)
    assert d.episode_keys.tolist() == ["a", "b"] and d.steps.tolist() == [0, 1, 2, 0, 1]
    assert dropped == Counter({reason: 1}) and reason in DROP_REASONS


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.sets(st.integers(0, 5), max_size=3), st.booleans()),
                min_size=1, max_size=6))
def test_only_whole_episodes_are_kept_whatever_steps_were_lost(episodes) -> None:
    """Episodes of n steps lose some steps (and maybe their end): the dataset holds exactly the
    ones that lost nothing, each from step 0 to its end; every other one is counted once."""
    records, expected = [], []
    for e, (n, lost, ended) in enumerate(episodes):
        steps = [r for r in whole(f"e{e}", n) if r.step not in lost]
        if not ended:
            steps = [StepRecord(r.episode_key, r.step, r.observation, r.action, r.action_probs, r.reward, False, False)
                     for r in steps]
        records += steps
        if ended and not (lost & set(range(n))):
            expected.append(f"e{e}")
    dropped: Counter = Counter()
    if not expected:
        with pytest.raises(DatasetRefused, match="no complete episode"):
            build_dataset(records, dropped=dropped)
    else:
        d = build_dataset(records, dropped=dropped)
        assert d.episode_keys.tolist() == sorted(expected)
        for key, s in zip(d.episode_keys, d.episode_slices()):
            assert d.steps[s].tolist() == list(range(episodes[int(key[1:])][0]))
    with_steps = sum(1 for n, lost, _ in episodes if set(range(n)) - lost)
    assert sum(dropped.values()) == with_steps - len(expected)


@pytest.mark.parametrize("probs, action, match", [
    ([float("nan"), 1.0], 1, "not all finite"),
    ([float("inf"), 0.0], 1, "not all finite"),
    ([-0.5, 1.5], 1, r"not all in \[0, 1\]"),
    ([1.0, 0.0], 1, "executed action 1 has propensity 0"),
    ([0.5, 0.3], 0, "sum to 0.8"),
])
def test_unusable_propensities_are_refused_naming_episode_and_step(probs, action, match) -> None:
    bad = [StepRecord("bad", 0, [0.0], 0, [0.5, 0.5], 0.0, False, False),
           StepRecord("bad", 1, [0.0], action, probs, 0.0, True, False)]
    with pytest.raises(DatasetRefused, match=f"episode 'bad' step 1: .*{match}"):
        build_dataset(whole("a", 2) + bad)


def test_a_saved_dataset_with_unusable_propensities_is_refused_on_load(tmp_path) -> None:
    d = build_dataset(records())
    path = save_dataset(d, tmp_path / "logs.npz")
    with np.load(path) as f:
        arrays = dict(f)
    arrays["propensities"][2] = [np.nan, 1.0]  # episode b, step 0
    np.savez(path, **arrays)
    with pytest.raises(DatasetRefused, match="episode 'b' step 0: .*not all finite"):
        load_dataset(path)


def test_incomplete_episode_refused_when_asked() -> None:
    with pytest.raises(DatasetRefused, match="has not ended"):
        build_dataset(records(), drop_incomplete=False)


def test_wrong_format_version_refused(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, format_version=np.int64(99))
    with pytest.raises(ValueError, match="format_version 99"):
        load_dataset(path)
