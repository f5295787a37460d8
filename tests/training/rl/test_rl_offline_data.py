"""The offline dataset builder: grouping, ordering, overrides, propensities, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from training.rl.offline_data import D3RLPY_KEYS, StepRecord, build_dataset, load_dataset, save_dataset


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
    ([StepRecord("a", 0, [0.0], 0, [1.0], 0.0, False, False), StepRecord("a", 2, [0.0], 0, [1.0], 0.0, True, False)],
     "missing steps \\[1\\]"),
    ([StepRecord("a", 0, [0.0], 3, [0.5, 0.5], 0.0, True, False)], "outside"),
    ([StepRecord("a", 0, [0.0], 0, [0.5, 0.6], 0.0, True, False)], "sum to 1"),
    ([StepRecord("a", 0, [0.0], 0, [1.0], 0.0, True, False), StepRecord("a", 1, [0.0], 0, [1.0], 0.0, True, False)],
     "ends at step 0"),
    ([StepRecord("a", 0, [0.0], 0, [1.0], 0.0, False, False)], "no complete episode"),
])
def test_bad_records_are_refused(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_dataset(bad)


def test_incomplete_episode_refused_when_asked() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        build_dataset(records(), drop_incomplete=False)


def test_wrong_format_version_refused(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, format_version=np.int64(99))
    with pytest.raises(ValueError, match="format_version 99"):
        load_dataset(path)
