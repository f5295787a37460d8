"""The layers declared in pyproject.toml ([tool.importlinter]) hold, checked by import-linter on
the static import graph (lazy imports inside functions included), and the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auditstream", "qc", "store", "serving", "monitor", "dashboards", "training", "stack")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(command + ["--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_declared_layers_and_boundaries_hold() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The pure statistics importing the serving consumer, in a copy of the tree: refused."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    triage = tmp_path / "qc" / "triage.py"
    triage.write_text(triage.read_text() + "\n\ndef _upward() -> None:\n    import serving.consumer  # noqa: F401\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout
    assert "qc.triage -> serving.consumer" in done.stdout
