"""``auditstream control show|clear`` without a broker (the control view is a stand-in): a model
nobody knows is refused, not reported as a clean state; ``show`` with no state says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditstream.cli import main
from auditstream.control import ControlState


class FakeView:
    def __init__(self, states: dict[str, ControlState]) -> None:
        self._states = states
        self.stopped = False

    def get(self, model: str) -> ControlState | None:
        return self._states.get(model)

    def states(self) -> dict[str, ControlState]:
        return dict(self._states)

    def rollouts(self) -> dict:
        return {}

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    (models / "digits" / "1").mkdir(parents=True)
    (models / "digits" / "1" / "card.json").write_text("{}")  # a published version, as far as names() goes
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(models))
    return models


def _with_view(monkeypatch: pytest.MonkeyPatch, states: dict[str, ControlState]) -> FakeView:
    from monitor import cli

    view = FakeView(states)
    monkeypatch.setattr(cli, "_control_view", lambda settings: view)
    return view


def test_clear_refuses_a_model_neither_in_the_registry_nor_on_the_control_topic(
        registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    view = _with_view(monkeypatch, {"zip-reader": ControlState("zip-reader", threshold_override={"2": 0.9})})
    assert main(["control", "clear", "--model", "digitz"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines() == [
        f"auditstream: error: invalid --model='digitz': expected a model in the registry ({registry}) or on the "
        "control topic: digits, zip-reader"]
    assert view.stopped
    assert main(["control", "clear", "--model", "digits"]) == 0  # known, nothing to clear: the truth
    assert capsys.readouterr().out == "model digits: no threshold override to clear\n"


def test_clear_refuses_a_version_without_an_override(registry: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    _with_view(monkeypatch, {"zip-reader": ControlState("zip-reader", threshold_override={"2": 0.9, "3": 0.95})})
    assert main(["control", "clear", "--model", "zip-reader", "--version", "9"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "auditstream: error: invalid --version='9': expected a version of zip-reader with an override: 2, 3 (or "
        "leave --version out to clear them all)"]


def test_show_with_no_state_says_so_on_stderr(registry: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    _with_view(monkeypatch, {})
    assert main(["control", "show"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no control state on auditstream.control yet" in out.err
    _with_view(monkeypatch, {"digits": ControlState("digits", human_queue_depth=3)})
    assert main(["control", "show"]) == 0
    out = capsys.readouterr()
    assert '"human_queue_depth": 3' in out.out and out.err == ""
