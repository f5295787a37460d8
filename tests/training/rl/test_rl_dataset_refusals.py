"""What an offline dataset must be before anything trains on it, on every path that reads one:
``OfflineDataset`` itself (every loader and builder passes through it), the ``.npz`` loader, the
Minari reader and ``rl train-offline``. Inconsistent data is refused with one
:class:`DatasetRefused` line (exit status 2 on the command line), never a traceback and never a
silently trained model; the property tests mutate valid datasets at random and check that
whatever is accepted obeys every rule of the format (an oracle written row by row)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from auditstream.cli import main
from training.rl.offline_data import (ARRAY_KEYS, EPISODE_KEYS, FORMAT_VERSION, PROB_TOLERANCE, ROUTES, SOURCES,
                                      DatasetRefused, OfflineDataset, StepRecord, build_dataset, load_dataset,
                                      save_dataset)

KEYS = ARRAY_KEYS + EPISODE_KEYS


def good() -> OfflineDataset:
    """Three whole episodes (3, 1 and 4 steps) with human answers, an override, a human step,
    a fallback, a truncation and three actions; the final observation of 'a' and 'c' logged."""
    p, rows = [0.2, 0.5, 0.3], []
    for key, n, truncated in (("a", 3, False), ("b", 1, True), ("c", 4, False)):
        for t in range(n):
            action = (t + len(key)) % 3
            human = {("a", 1): 0, ("c", 0): 0, ("c", 2): action}.get((key, t))
            source = "human" if (key, t) == ("c", 2) else "fallback" if (key, t) == ("a", 2) else "model"
            probs = np.eye(3)[action] if source != "model" else p
            rows.append(StepRecord(key, t, [float(t), len(key) + 0.5 * t], action, probs, 1.0 - 0.1 * t,
                                   t == n - 1 and not truncated, t == n - 1 and truncated, human_action=human,
                                   source=source, route="HUMAN" if source == "human" else "AUTO",
                                   next_observation=[9.0, float(n)] if key != "b" else None))
    return build_dataset(rows)


def arrays_of(d: OfflineDataset) -> dict[str, np.ndarray]:
    return {k: np.array(getattr(d, k)) for k in KEYS}


def problems(d: OfflineDataset) -> list[str]:
    """The oracle: every rule of the format checked row by row in plain Python, independently of
    ``OfflineDataset``'s vectorised checks. Empty when ``d`` is consistent."""
    out = []
    n, keys = len(d.actions), list(d.episode_keys)
    a_count = d.propensities.shape[1]
    for k in KEYS:
        if k not in EPISODE_KEYS and len(getattr(d, k)) != n:
            out.append(f"{k} rows")
    if len(d.final_observation_logged) != len(keys) or d.final_observation_logged.dtype != bool:
        out.append("final_observation_logged")
    if out or n == 0:
        return out
    if d.observations.ndim != 2 or d.next_observations.shape != d.observations.shape:
        out.append("observation shapes")
    for i in range(n):
        new = i == 0 or d.episode_ids[i] != d.episode_ids[i - 1]
        last = i == n - 1 or d.episode_ids[i + 1] != d.episode_ids[i]
        expected_id = 0 if i == 0 else d.episode_ids[i - 1] + (1 if new else 0)
        if d.episode_ids[i] != expected_id:
            out.append(f"row {i} episode id")
        if d.steps[i] != (0 if new else d.steps[i - 1] + 1):
            out.append(f"row {i} step")
        if d.terminals[i] not in (0, 1) or d.timeouts[i] not in (0, 1):
            out.append(f"row {i} end flags")
        if bool(d.terminals[i] or d.timeouts[i]) != last:
            out.append(f"row {i} ends {'late' if last else 'early'}")
        if not (all(np.isfinite(d.observations[i])) and all(np.isfinite(d.next_observations[i]))
                and np.isfinite(d.rewards[i])):
            out.append(f"row {i} not finite")
        if not last and list(d.next_observations[i]) != list(d.observations[i + 1]):
            out.append(f"row {i} next observation")
        if (last and not d.final_observation_logged[min(int(d.episode_ids[i]), len(keys) - 1)]
                and list(d.next_observations[i]) != list(d.observations[i])):
            out.append(f"row {i} final observation not the copy")
        p, a = [float(x) for x in d.propensities[i]], int(d.actions[i])
        if not (all(np.isfinite(p)) and all(0 <= x <= 1 + PROB_TOLERANCE for x in p)
                and abs(sum(p) - 1) <= PROB_TOLERANCE and 0 <= a < a_count and p[a] > 0
                and abs(float(d.behaviour_action_prob[i]) - p[a]) <= 1e-6):
            out.append(f"row {i} propensities")
        h = int(d.human_actions[i])
        if not -1 <= h < a_count:
            out.append(f"row {i} human action")
        if bool(d.overridden[i]) != (h >= 0 and h != a):
            out.append(f"row {i} overridden")
        if str(d.sources[i]) not in SOURCES:
            out.append(f"row {i} source")
        if str(d.routes[i]) not in ROUTES:
            out.append(f"row {i} route")
        if not (np.isnan(d.inclusion_prob[i]) or 0 <= d.inclusion_prob[i] <= 1):
            out.append(f"row {i} inclusion_prob")
    if int(d.episode_ids[-1]) + 1 != len(keys):
        out.append("episode keys")
    return out


def test_the_good_dataset_is_consistent(tmp_path) -> None:
    d = good()
    assert problems(d) == [] and d.n_episodes == 3 and d.n_actions == 3
    assert d.final_observation_logged.tolist() == [True, False, True]
    assert d.next_observations[[2, 3, 7]].tolist() == [[9.0, 3.0], [0.0, 1.0], [9.0, 4.0]]  # 'b': its own
    assert d.human_actions.tolist() == [-1, 0, -1, -1, 0, -1, 0, -1] and d.overridden.tolist() == [
        False, True, False, False, True, False, False, False]
    back = load_dataset(save_dataset(d, tmp_path / "d.npz"))
    assert problems(back) == []


def mutated(**changes) -> dict[str, np.ndarray]:
    arrays = arrays_of(good())
    for key, change in changes.items():
        arrays[key] = change(arrays[key]) if callable(change) else np.asarray(change)
    return arrays


def set_at(row: int, value):
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[row] = value
        return a
    return change


# Each breaks one rule; the match is the start of what the one-line refusal says.
BROKEN = {
    "human action past the last action": (mutated(human_actions=set_at(0, 7)),
                                          r"1 human_actions are outside -1..2 .*episode 'a' step 0 has human action 7"),
    "human action below -1": (mutated(human_actions=set_at(3, -2)), r"outside -1..2"),
    "interleaved episode ids": (mutated(episode_ids=lambda a: np.array([0, 1, 0, 1, 2, 2, 2, 2])),
                                r"episode_ids are not contiguous and in order: row 2 has episode 0 after episode 1"),
    "episode ids from 1": (mutated(episode_ids=lambda a: a + 1), r"episode_ids start at 1, not 0"),
    "an episode id skipped": (mutated(episode_ids=lambda a: np.where(a == 2, 3, a)), r"not contiguous"),
    "fewer keys than episodes": (mutated(episode_keys=lambda a: a[:2]), r"number 3 episodes but there are 2 "),
    "steps not from 0": (mutated(steps=lambda a: a + 1), r"episode 'a' step 1 is step 0 of its episode's rows"),
    "terminated at step 0, last step not ended": (
        mutated(terminals=lambda a: np.where(np.arange(8) == 0, 1.0, np.where(np.arange(8) == 2, 0.0, a))),
        r"episode 'a' step 0 is terminated or truncated but its episode goes on to step 2"),
    "last step not ended": (mutated(timeouts=set_at(3, 0.0)),
                            r"episode 'b' step 0 is its episode's last step but neither terminated nor truncated"),
    "terminal flag 0.5": (mutated(terminals=set_at(2, 0.5)), r"terminals must be 0 or 1; episode 'a' step 2 has 0.5"),
    "NaN observation": (mutated(observations=set_at(1, np.nan)),
                        r"1 steps have observations that are not finite .*'a' step 1"),
    "infinite next observation": (mutated(next_observations=set_at(7, np.inf)), r"next_observations that are not fin"),
    "NaN reward": (mutated(rewards=set_at(0, np.nan)), r"1 steps have rewards that are not finite"),
    "next observation not the next step's": (mutated(next_observations=set_at(0, 9.0)),
                                             r"episode 'a' step 0: next_observations is not the next step's"),
    "propensity 0 for the executed action": (mutated(propensities=set_at(0, [0.5, 0.0, 0.5])),
                                             r"unusable propensities; first: episode 'a' step 0"),
    "behaviour_action_prob not the propensity": (mutated(behaviour_action_prob=set_at(0, 0.9)),
                                                 r"behaviour_action_prob 0.89.* is not the executed action's"),
    "action past the propensities": (mutated(actions=set_at(0, 5)), r"action 5 is outside the 3 propensities"),
    "overridden not derived": (mutated(overridden=set_at(0, True)), r"episode 'a' step 0: overridden must be true"),
    "unknown source": (mutated(sources=set_at(0, "robot")), r"source not one of .*'robot'"),
    "final observation not logged, yet not the copy": (
        mutated(final_observation_logged=set_at(0, False)),
        r"episode 'a' step 2: final_observation_logged is false but next_observations is not the step's own"),
    "a final observation flag missing": (mutated(final_observation_logged=lambda a: a[:2]),
                                         r"final_observation_logged has 2 rows, episode_keys has 3"),
    "inclusion probability above 1": (mutated(inclusion_prob=set_at(4, 1.5)),
                                      r"1 inclusion_prob are outside \[0, 1\] \(NaN: not logged\); first: episode 'c' step 0"),
    "negative inclusion probability": (mutated(inclusion_prob=set_at(0, -0.1)), r"inclusion_prob are outside"),
    "unknown route": (mutated(routes=set_at(0, "ROBOT")), r"route not one of .*'TIMEOUT'.*episode 'a' step 0 has 'ROBOT'"),
    "a missing row": (mutated(rewards=lambda a: a[:-1]), r"array rewards has 7 rows, actions has 8"),
    "float actions": (mutated(actions=lambda a: a.astype(np.float64)),
                      r"array actions has dtype float64, expected int"),
    "string rewards": (mutated(rewards=lambda a: a.astype(str)), r"array rewards has dtype <U.*, expected numbers"),
    "1-D observations": (mutated(observations=lambda a: a[:, 0], next_observations=lambda a: a[:, 0]),
                         r"array observations has shape \(8,\), expected \[N, D\]"),
    "bytes sources": (mutated(sources=lambda a: a.astype(bytes)), r"array sources has dtype \|S.*, expected strings"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_each_broken_rule_is_refused_by_the_dataset_itself(name) -> None:
    arrays, match = BROKEN[name]
    with pytest.raises(DatasetRefused, match=match) as refused:
        OfflineDataset(**arrays)
    assert "\n" not in str(refused.value) and "rebuild the dataset" in str(refused.value)


def save_raw(arrays: dict, path: Path) -> Path:
    """What a foreign or damaged writer might have saved (no checks on the way)."""
    with open(path, "wb") as f:
        np.savez(f, format_version=np.int64(FORMAT_VERSION), **arrays)
    return path


@pytest.mark.parametrize("name", ["human action past the last action", "interleaved episode ids",
                                  "terminated at step 0, last step not ended", "NaN observation"])
def test_a_saved_npz_breaking_a_rule_is_refused_on_load_naming_the_file(tmp_path, name) -> None:
    arrays, match = BROKEN[name]
    path = save_raw(arrays, tmp_path / "bad.npz")
    with pytest.raises(DatasetRefused, match=f"^{path}: {match}"):
        load_dataset(path)


def npz_bytes_variants(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths that are not a readable dataset, and what the refusal says."""
    good_path = save_dataset(good(), tmp_path / "good.npz")
    data = good_path.read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "foreign.npz", "w") as z:
        z.writestr("rewards.npy", b"not an npy member")
        z.writestr("format_version.npy", b"nor this")
    arrays = arrays_of(good())
    arrays["rewards"] = np.array([object()] * 8, dtype=object)
    save_raw(arrays, tmp_path / "pickled.npz")
    old = arrays_of(good())
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, format_version=np.int64(1), **old)
    empty = {k: v[:0] for k, v in arrays_of(good()).items()}
    save_raw(empty, tmp_path / "empty.npz")
    return {
        "missing": (tmp_path / "missing.npz", "no such file"),
        "folder": (tmp_path / "folder", "is a directory but not a Minari dataset"),
        "not a zip": (tmp_path / "text.npz", r"is not an .npz dataset \(not a zip archive\)"),
        ".npy": (tmp_path / "one.npy", r"is a single numpy array \(.npy\)"),
        "truncated": (tmp_path / "truncated.npz", "cannot read .* as an .npz dataset"),
        "foreign members": (tmp_path / "foreign.npz", "member format_version is not a numpy array"),
        "object array": (tmp_path / "pickled.npz", r"cannot read rewards as an .npz dataset \(ValueError: Object "
                                                    "arrays cannot be loaded when allow_pickle=False"),
        "old format": (tmp_path / "old.npz", f"format_version 1, this build reads {FORMAT_VERSION}"),
        "no steps": (tmp_path / "empty.npz", "the dataset has no steps"),
    }


def test_unreadable_paths_are_refused_naming_the_file(tmp_path) -> None:
    for name, (path, match) in npz_bytes_variants(tmp_path).items():
        with pytest.raises(DatasetRefused, match=match) as refused:
            load_dataset(path)
        assert str(path) in str(refused.value) and "\n" not in str(refused.value), name


def test_train_offline_refuses_each_bad_dataset_in_one_line_with_status_2(tmp_path, capsys) -> None:
    cases = {name: (path, match) for name, (path, match) in npz_bytes_variants(tmp_path).items()}
    for name in ("human action past the last action", "interleaved episode ids",
                 "terminated at step 0, last step not ended"):
        cases[name] = (save_raw(BROKEN[name][0], tmp_path / f"{name}.npz"), BROKEN[name][1])
    models = tmp_path / "models"
    for name, (path, match) in cases.items():
        for algorithm in ("bc", "cql"):
            rc = main(["rl", "train-offline", "--dataset", str(path), "--algorithm", algorithm, "--steps", "2",
                       "--batch-size", "4", "--no-progress", "--models-dir", str(models)])
            err = capsys.readouterr().err.strip()
            assert rc == 2, (name, algorithm, err)
            assert len(err.splitlines()) == 1 and err.startswith("auditstream: error: "), (name, err)
            assert str(path) in err, (name, err)
    assert not models.exists() or not any(models.iterdir())  # nothing trained, nothing published


def test_train_offline_refusal_is_one_line_from_the_real_command(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "auditstream", "rl", "train-offline", "--dataset", str(tmp_path),
                           "--steps", "1", "--no-publish", "--models-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "is a directory" in done.stderr


# --- Minari ---------------------------------------------------------------------------------

def write_tampered(root: Path, tamper, data: OfflineDataset | None = None) -> Path:
    """A Minari dataset written by Minari's own writer from episode buffers that ``tamper`` changed
    (what another tool, or a damaged copy, could hold)."""
    import training.rl.minari_format as mf

    original = mf._episode_buffer
    mf._episode_buffer = lambda d, s, i: tamper(original(d, s, i), i)
    try:
        return mf.write_minari(data or good(), root, "test/tampered-v0")
    finally:
        mf._episode_buffer = original


def on_episode(index: int | None, **fields):
    def tamper(buffer, i):
        if index is not None and i != index:
            return buffer
        changes = {}
        for key, change in fields.items():
            if key.startswith("info_"):
                buffer.infos[key[5:]] = change(buffer.infos[key[5:]])
            else:
                changes[key] = change(getattr(buffer, key))
        return replace(buffer, **changes)
    return tamper


def at(row: int, value):
    def change(values):
        values = list(values) if not isinstance(values, np.ndarray) else values.copy()
        values[row] = value
        return values
    return change


MINARI_BROKEN = {
    "action 5 of Discrete(3)": (on_episode(0, actions=at(0, 5)),
                                r"episode 0, step 0: action 5 is outside the action space Discrete\(3\)"),
    "negative action": (on_episode(2, actions=at(1, -1)), r"episode 2, step 1: action -1 is outside"),
    "human action 7": (on_episode(0, info_human_action=at(0, 7)),
                       r"human_actions are outside -1..2 .*episode 'a' step 0 has human action 7"),
    "terminated at step 0, last step not": (on_episode(0, terminations=lambda t: [True, False, False]),
                                            r"episode 'a' step 0 is terminated or truncated but its episode goes on"),
    "NaN observation": (on_episode(2, observations=at(1, [np.nan, 0.0])), r"observations that are not finite"),
    "propensities of 2 actions": (on_episode(None, info_propensities=lambda p: p[:, :2]),
                                  r"infos propensities have shape \(4, 2\), expected \[4, 3\]"),
    "steps from 5": (on_episode(1, info_step=lambda s: [5, 6]), r"episode 'b' step 5 is step 0"),
    "unknown source": (on_episode(2, info_source=at(0, "robot")), r"source not one of"),
    "unknown route": (on_episode(2, info_route=at(1, "ROBOT")), r"route not one of"),
    "inclusion probability 2": (on_episode(1, info_inclusion_prob=at(0, 2.0)), r"inclusion_prob are outside \[0, 1\]"),
    "final observation flag not the episode's": (
        on_episode(0, info_final_observation_logged=at(0, False)),
        r"episode 0: infos final_observation_logged is not the same on every row"),
    "final observation flag false, observations[T] not the copy": (
        on_episode(0, info_final_observation_logged=lambda f: [False] * len(f)),
        r"episode 'a' step 2: final_observation_logged is false but next_observations"),
}


@pytest.mark.parametrize("name", list(MINARI_BROKEN))
def test_a_minari_dataset_breaking_a_rule_is_refused(tmp_path, name) -> None:
    from training.rl.minari_format import read_minari
    from training.rl.offline_train import load_logs

    tamper, match = MINARI_BROKEN[name]
    path = write_tampered(tmp_path, tamper)
    for reader in (read_minari, load_logs):
        with pytest.raises(DatasetRefused, match=match) as refused:
            reader(path)
        assert str(refused.value).startswith(f"Minari dataset {path}") and "\n" not in str(refused.value)


def test_a_minari_dataset_without_episodes_is_refused(tmp_path) -> None:
    import gymnasium as gym
    import minari
    from minari.dataset.minari_storage import MinariStorage

    from training.rl.offline_train import load_logs

    (tmp_path / "empty-v0" / "data").mkdir(parents=True)
    MinariStorage.new(tmp_path / "empty-v0" / "data", observation_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                      action_space=gym.spaces.Discrete(2), data_format="arrow").update_metadata(
        {"dataset_id": "empty-v0", "minari_version": minari.__version__})
    with pytest.raises(DatasetRefused, match="has no episodes"):
        load_logs(tmp_path / "empty-v0")


@pytest.mark.parametrize("key", ["dataset_id", "minari_version", "data_format", "observation_space", "action_space",
                                 "total_episodes", "total_steps"])
def test_minari_metadata_lacking_a_key_is_refused_naming_it(tmp_path, key) -> None:
    from training.rl.minari_format import read_minari, write_minari

    path = write_minari(good(), tmp_path, "meta-v0")
    meta_path = path / "data" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    del metadata[key]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(DatasetRefused, match=f"metadata.json lacks '{key}'"):
        read_minari(path)
    metadata[key] = ["not", "a", "scalar"]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(DatasetRefused, match=f"metadata.json's '{key}' is"):
        read_minari(path)


def test_minari_files_that_cannot_be_decoded_are_refused(tmp_path) -> None:
    from training.rl.minari_format import read_minari, write_minari

    path = write_minari(good(), tmp_path, "meta-v0")
    (path / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(DatasetRefused, match="cannot read metadata.json"):
        read_minari(path)
    path = write_minari(good(), tmp_path, "episode-v0")
    episode_meta = path / "data" / "1" / "metadata.json"
    episode_meta.write_text(json.dumps({k: v for k, v in json.loads(episode_meta.read_text()).items()
                                        if k != "episode_key"}))
    with pytest.raises(DatasetRefused, match="episode 1: its metadata lacks 'episode_key'"):
        read_minari(path)
    path = write_minari(good(), tmp_path, "arrow-v0")
    for part in (path / "data" / "0").glob("*.arrow"):
        part.write_bytes(b"garbage")
    with pytest.raises(DatasetRefused, match="cannot read its episodes"):
        read_minari(path)


# --- Property tests -------------------------------------------------------------------------

HOSTILE = [-2, -1, 0, 1, 2, 3, 7, 0.5, 1.5, np.nan, np.inf, -np.inf]


@st.composite
def mutations(draw):
    """One to three changes to the arrays of a valid dataset: a value at a row, two rows swapped,
    a row dropped, or the array's type changed."""
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["value", "swap", "drop", "dtype"]))
        row = draw(st.integers(0, 7))
        other = draw(st.integers(0, 7))
        value = draw(st.sampled_from(HOSTILE))
        dtype = draw(st.sampled_from([np.float64, np.int64, np.float32, str, bool]))
        changes.append((key, kind, row, other, value, dtype))
    return changes


def apply(arrays: dict[str, np.ndarray], changes) -> dict[str, np.ndarray]:
    arrays = {k: v.copy() for k, v in arrays.items()}
    for key, kind, row, other, value, dtype in changes:
        a = arrays[key]
        row, other = row % max(1, len(a)), other % max(1, len(a))
        if kind == "value" and len(a):
            try:
                if a.dtype.kind == "U":
                    a[row] = str(value)
                elif a.dtype.kind in "iub" and not np.isfinite(value):
                    a[row] = -(2 ** 31)
                else:
                    a[row] = value
            except (ValueError, OverflowError):
                pass
        elif kind == "swap" and len(a):
            a[[row, other]] = a[[other, row]]
        elif kind == "drop" and len(a):
            a = np.delete(a, row, axis=0)
        elif kind == "dtype":
            try:
                a = a.astype(dtype)
            except (ValueError, OverflowError):
                pass
        arrays[key] = a
    return arrays


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_any_mutation_is_refused_in_one_line_or_obeys_every_rule(changes) -> None:
    """Old code accepted datasets the oracle finds broken (a human action 7, interleaved episode
    ids, an episode terminated at its first step) or failed with raw numpy errors."""
    arrays = apply(arrays_of(good()), changes)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_raw(arrays, Path(tmp) / "m.npz")
        try:
            d = load_dataset(path)
        except DatasetRefused as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            event("refused")
            return
    event("accepted")
    assert problems(d) == [], changes


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["actions", "rewards", "terminations", "truncations",
                                                              "info_human_action", "info_step", "info_source"]),
                          st.integers(0, 3), st.sampled_from(HOSTILE)), min_size=1, max_size=2))
def test_any_tampered_minari_dataset_is_refused_in_one_line_or_obeys_every_rule(edits) -> None:
    from training.rl.minari_format import read_minari

    def tamper(buffer, i):
        for episode, field, row, value in edits:
            if episode != i:
                continue
            values = buffer.infos[field[5:]] if field.startswith("info_") else getattr(buffer, field)
            values = list(values) if not isinstance(values, np.ndarray) else values.copy()
            row = row % len(values)
            if field in ("terminations", "truncations"):
                values[row] = bool(value == 1)
            elif field == "info_source":
                values[row] = str(value)
            elif field != "rewards":
                values[row] = int(value) if np.isfinite(value) else -5
            else:
                values[row] = float(value)
            if field.startswith("info_"):
                buffer.infos[field[5:]] = values
            else:
                buffer = replace(buffer, **{field: np.asarray(values) if field == "actions" else values})
        return buffer

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = write_tampered(Path(tmp), tamper)
        except Exception:  # noqa: BLE001 - Minari's own writer refused the buffer: nothing to read
            event("the writer refused")
            return
        try:
            d = read_minari(path)
        except DatasetRefused as e:
            assert "\n" not in str(e)
            event("refused")
            return
    event("accepted")
    assert problems(d) == [], edits
