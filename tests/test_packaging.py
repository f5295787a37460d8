"""What ``pip install .`` puts in site-packages: every file the code reads from the package.

``scripts/demo`` runs the *installed* package (a regular install, not editable), so a data file
left out of ``[tool.setuptools.package-data]`` is missing there while every test that imports the
checkout still finds it: the shipped demo models' ``weights.pt`` was, and the demo's
``--retrain-every`` failed with WeightsMissing on every retrain.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_data_file_in_a_package_is_package_data() -> None:
    """Any file that is not Python, anywhere in an installed package, must match a pattern."""
    config = _setuptools()
    packages = [name.rstrip("*") for name in config["packages"]["find"]["include"]]
    patterns = config["package-data"]
    missing = []
    for package in packages:
        covered = {p for pattern in patterns.get(package, []) for p in (ROOT / package).glob(pattern)}
        data = {p for p in (ROOT / package).rglob("*")
                if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
        missing += sorted(str(p.relative_to(ROOT)) for p in data - covered)
    assert not missing, f"not installed by pip (add a pattern to [tool.setuptools.package-data]): {missing}"


def test_the_demo_models_that_can_be_retrained_ship_their_weights() -> None:
    from stack.demo import DEMO_MODELS, SHIPPED_MODELS
    from stack.demo_loop import retrainable

    models, _skipped = retrainable(DEMO_MODELS)
    assert models, "no demo model can be retrained"
    for name in models:
        assert (SHIPPED_MODELS / name / "weights.pt").is_file(), f"{name}: --retrain-every would find no weights"
