"""The δ-spending ledger of the shipped demo models (``scripts/ship-demo-models``).

The k-th certificate on a model's certificate slice is made at δ_k = δ·6/(π²k²), k counted from
the registry trained into (training/selective.py, :func:`certificate_spending`): its published
cards and the drawn indices under ``<registry>/<name>/.certificates/``. ``ship-demo-models``
trains each model into a temporary registry; empty and deleted afterwards, every ship would be
certificate 1 again at δ_1 although the shipped versions it replaces were certified on the same
slice and replaced after their results were seen. So, for each model, before training:

- :func:`seed` publishes what is shipped (``stack/demo_models/<name>/card.json`` and
  ``model.onnx``) into the temporary registry as the version its card names, so the count
  includes it, and copies the committed ledger (``stack/demo_models/<name>/certificates/*.json``,
  the reservation files of every earlier ship) into ``<registry>/<name>/.certificates/``;

and after training, also when it failed:

- :func:`save` copies ``<registry>/<name>/.certificates/*.json`` (the index this training drew,
  published or not) back into the ledger, and the shipped card's own ``extra.delta_spending``
  record as a ledger file when the ledger lacks it (it is the reservation that card's training
  drew and the old script deleted), so the next ship still counts it after the card is replaced.
  Files are added, never removed or overwritten: removing one would give its δ back.

Cards from before δ spending (no ``extra.delta_spending``) count, while shipped, as one
certificate at their full ``triage.delta``; no record can be written for them in the
reservation format, and none is made up for shipped versions whose certificates are gone
(docs/training.md, "The shipped models' ledger").

``auditstream demo`` publishes the shipped copy into an empty registry; it carries the ledger
along (:func:`carry`), so a retrain in the demo is counted after every shipped certificate too.

    python -m training.ship_ledger seed REGISTRY NAME     # prints the seeded version ("" if none)
    python -m training.ship_ledger save REGISTRY NAME
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

from auditstream.registry import CARD_FILE, ONNX_FILE, ModelCard, ModelRegistry
from qc.delta_spending import EXTRA_KEY
from training.selective import RESERVATIONS_DIR

SHIPPED = Path(__file__).resolve().parent.parent / "stack" / "demo_models"
LEDGER_DIR = "certificates"  # stack/demo_models/<name>/certificates/: the reservations of every ship


def _ledger(shipped: Path, name: str) -> Path:
    return Path(shipped) / name / LEDGER_DIR


def _copy_new(source: Path, target: Path) -> list[str]:
    """Copy ``source/*.json`` that ``target`` lacks (by name); never overwrite. Names copied."""
    copied = []
    if not source.is_dir():
        return copied
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.json")):
        if not (target / path.name).exists():
            partial = target / (path.name + ".partial")
            shutil.copyfile(path, partial)
            os.replace(partial, target / path.name)
            copied.append(path.name)
    return copied


def reservation_name(record: dict) -> str:
    """The file name ``certificate_spending(reserve=True)`` gives a spending record."""
    slice_key = hashlib.sha256(json.dumps(record["slice"], sort_keys=True).encode()).hexdigest()[:16]
    return f"{record['index']}-{slice_key}.json"


def carry(registry: Path, name: str, shipped: Path = SHIPPED) -> list[str]:
    """Copy the ledger of the shipped ``name`` into ``<registry>/<name>/.certificates/`` (files it
    lacks); what ``auditstream demo`` does when it publishes the shipped copy, so a retrain there
    counts every shipped certificate on the slice. Names copied."""
    return _copy_new(_ledger(shipped, name), Path(registry) / name / RESERVATIONS_DIR)


def seed(registry: Path, name: str, shipped: Path = SHIPPED) -> str | None:
    """Put the shipped ``name`` and its ledger into ``registry`` before training; the version
    seeded (its card's), or None when nothing is shipped. A shipped card the registry would not
    load is refused (``ModelRefused``): it could not be counted."""
    registry, source = Path(registry), Path(shipped) / name
    carry(registry, name, shipped)
    if not (source / CARD_FILE).is_file() or not (source / ONNX_FILE).is_file():
        return None
    card = ModelCard.from_dict(json.loads((source / CARD_FILE).read_text()))
    target = registry / name / card.version
    if target.exists():
        raise FileExistsError(f"{target} exists: seed an empty registry")
    target.mkdir(parents=True)
    for file in (CARD_FILE, ONNX_FILE):
        shutil.copyfile(source / file, target / file)
    ModelRegistry(registry).card(name, card.version)  # loads as the count will read it, or refused
    return card.version


def save(registry: Path, name: str, shipped: Path = SHIPPED, seeded_card: ModelCard | None = None) -> list[str]:
    """Add to the ledger the reservations drawn in ``registry`` and, when it records one, the
    spending record of ``seeded_card`` (the shipped card this ship may replace). Names added."""
    ledger = _ledger(shipped, name)
    added = _copy_new(Path(registry) / name / RESERVATIONS_DIR, ledger)
    record = seeded_card.extra.get(EXTRA_KEY) if seeded_card is not None and isinstance(seeded_card.extra, dict) else None
    if isinstance(record, dict) and {"index", "slice", "delta"} <= set(record):
        path = ledger / reservation_name(record)
        if not path.exists():
            ledger.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({EXTRA_KEY: record}, sort_keys=True))
            added.append(path.name)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ship_ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["seed", "save"])
    parser.add_argument("registry", type=Path)
    parser.add_argument("name")
    parser.add_argument("--shipped", type=Path, default=SHIPPED, help="the shipped models' folder (stack/demo_models)")
    args = parser.parse_args(argv)
    if args.action == "seed":
        print(seed(args.registry, args.name, args.shipped) or "")
        return 0
    seeded = ModelRegistry(args.registry)
    versions = seeded.versions(args.name)
    # the seeded card is the lowest version (the registry starts empty); read it from the registry
    card = seeded.card(args.name, versions[0]) if versions else None
    for added in save(args.registry, args.name, args.shipped, card):
        print(f"{args.name}: ledger + {added}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
