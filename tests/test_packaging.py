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
DATA_DIRS = {"stack": ["demo_models"], "auditstream": ["schemas"]}  # data the packages read at run time


def _package_data() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]


def test_every_shipped_data_file_is_package_data() -> None:
    patterns = _package_data()
    for package, dirs in DATA_DIRS.items():
        covered = {p for pattern in patterns.get(package, []) for p in (ROOT / package).glob(pattern)}
        for d in dirs:
            files = {p for p in (ROOT / package / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
            assert files, f"{package}/{d} holds no files"
            missing = sorted(str(p.relative_to(ROOT)) for p in files - covered)
            assert not missing, f"not installed by pip (add a pattern to [tool.setuptools.package-data]): {missing}"


def test_the_demo_models_that_can_be_retrained_ship_their_weights() -> None:
    from stack.demo import DEMO_MODELS, SHIPPED_MODELS
    from stack.demo_loop import retrainable

    models, _skipped = retrainable(DEMO_MODELS)
    assert models, "no demo model can be retrained"
    for name in models:
        assert (SHIPPED_MODELS / name / "weights.pt").is_file(), f"{name}: --retrain-every would find no weights"
