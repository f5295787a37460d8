"""scripts/ship-demo-models keeps the δ-spending ledger across ships (training/ship_ledger.py).

It trained each shipped model into a fresh ``mktemp -d`` registry and deleted it, reservations
and all, so every re-ship certified as certificate 1 at δ_1 although the shipped versions it
replaced were certified on the same slice. Now the registry is seeded with the shipped card and
the committed ledger before training, and the drawn indices go back into the ledger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training import ship_ledger
from training.detector.args import DetectorArgs
from training.detector.train import certificate_labels
from training.selective import RESERVATIONS_DIR, certificate_spending

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "stack" / "demo_models"


def _shipped_copy(tmp_path: Path, name: str = "detector") -> Path:
    """A copy of stack/demo_models/<name> (card.json, model.onnx, the ledger if any)."""
    shipped = tmp_path / "demo_models"
    shutil.copytree(SHIPPED / name, shipped / name, ignore=shutil.ignore_patterns("weights.pt"))
    return shipped


def test_the_script_seeds_the_registry_and_saves_the_ledger() -> None:
    script = (ROOT / "scripts" / "ship-demo-models").read_text()
    assert "training.ship_ledger seed" in script and "training.ship_ledger save" in script
    assert script.index("trap save_ledgers EXIT") < script.index("auditstream train")


def test_a_seeded_registry_counts_the_shipped_detector_and_keeps_the_reservations(tmp_path: Path) -> None:
    shipped = _shipped_copy(tmp_path)
    slice_ = certificate_labels(DetectorArgs())
    fresh = certificate_spending(tmp_path / "fresh", "detector", 0.05, slice_)
    assert fresh.index == 1  # what every ship certified at before

    registry = tmp_path / "registry"
    seeded = ship_ledger.seed(registry, "detector", shipped)
    card = json.loads((shipped / "detector" / "card.json").read_text())
    assert seeded == card["version"]
    nxt = certificate_spending(registry, "detector", 0.05, slice_, reserve=True)  # what the training draws
    assert nxt.index == 2 and [e["index"] for e in nxt.earlier] == [1]
    assert abs(nxt.spent_before - card["extra"]["delta_spending"]["delta"]) < 1e-15

    from auditstream.registry import ModelRegistry
    added = ship_ledger.save(registry, "detector", shipped, ModelRegistry(registry).card("detector", seeded))
    ledger = shipped / "detector" / ship_ledger.LEDGER_DIR
    assert sorted(added) == sorted(p.name for p in ledger.glob("*.json"))
    assert sorted(int(p.name.split("-")[0]) for p in ledger.glob("*.json")) == [1, 2]
    # the shipped card's own record is named as its training's reservation was
    assert (ledger / ship_ledger.reservation_name(card["extra"]["delta_spending"])).is_file()
    assert (registry / "detector" / RESERVATIONS_DIR / ship_ledger.reservation_name(nxt.to_dict())).is_file()

    # the next ship: the ledger alone (even without the card it replaced) counts both
    before = {p.name: p.read_bytes() for p in ledger.glob("*.json")}
    (shipped / "detector" / "card.json").unlink()
    again = tmp_path / "again"
    assert ship_ledger.seed(again, "detector", shipped) is None
    third = certificate_spending(again, "detector", 0.05, slice_)
    assert third.index == 3 and abs(third.spent_before - (card["extra"]["delta_spending"]["delta"] + nxt.delta)) < 1e-15
    assert ship_ledger.save(again, "detector", shipped) == []  # nothing new; nothing removed or rewritten
    assert {p.name: p.read_bytes() for p in ledger.glob("*.json")} == before


def test_a_card_from_before_delta_spending_counts_while_shipped(tmp_path: Path) -> None:
    """The shipped captioner's card records no spending: seeded, it counts as certificate 1 at its
    full triage.delta, and no ledger record is made up for it."""
    from training.captioner.args import CaptionerArgs
    from training.captioner.train import certificate_scenes

    shipped = _shipped_copy(tmp_path, "captioner")
    registry = tmp_path / "registry"
    version = ship_ledger.seed(registry, "captioner", shipped)
    spending = certificate_spending(registry, "captioner", 0.05, certificate_scenes(CaptionerArgs()))
    assert version is not None and spending.index == 2 and spending.spent_before == 0.05

    from auditstream.registry import ModelRegistry
    assert ship_ledger.save(registry, "captioner", shipped, ModelRegistry(registry).card("captioner", version)) == []


def test_the_cli_seeds_and_saves(tmp_path: Path, capsys) -> None:
    shipped = _shipped_copy(tmp_path)
    registry = tmp_path / "registry"
    assert ship_ledger.main(["seed", str(registry), "detector", "--shipped", str(shipped)]) == 0
    assert capsys.readouterr().out.strip() == "1"
    certificate_spending(registry, "detector", 0.05, certificate_labels(DetectorArgs()), reserve=True)
    assert ship_ledger.main(["save", str(registry), "detector", "--shipped", str(shipped)]) == 0
    assert len(list((shipped / "detector" / ship_ledger.LEDGER_DIR).glob("*.json"))) == 2


def test_the_demo_carries_the_ledger_with_the_shipped_copy(tmp_path: Path, monkeypatch) -> None:
    """auditstream demo publishes the shipped copy into an empty registry and the ledger beside
    it, so a retrain there is counted after every shipped certificate (here: the shipped card's
    index 1 and a drawn index 2 of the ledger -> 3)."""
    from types import SimpleNamespace

    from auditstream.settings import Settings
    from stack import demo

    shipped = _shipped_copy(tmp_path)
    slice_ = certificate_labels(DetectorArgs())
    scratch = tmp_path / "scratch"
    ship_ledger.seed(scratch, "detector", shipped)
    certificate_spending(scratch, "detector", 0.05, slice_, reserve=True)
    ship_ledger.save(scratch, "detector", shipped)
    monkeypatch.setattr(demo, "SHIPPED_MODELS", shipped)
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0))  # the others
    demo.ensure_models(Settings(models_dir=tmp_path / "models", state_dir=tmp_path / "state"), retrain=False)
    assert certificate_spending(tmp_path / "models", "detector", 0.05, slice_).index == 3
