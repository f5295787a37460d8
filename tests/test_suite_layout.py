"""The list of tests that scripts/test runs alone names files that exist (a renamed file would
silently join the parallel part)."""

from pathlib import Path

from tests.conftest import SERIAL_MODULES

ROOT = Path(__file__).resolve().parent.parent


def test_every_serial_module_exists() -> None:
    assert SERIAL_MODULES and all((ROOT / path).is_file() for path in SERIAL_MODULES), \
        sorted(p for p in SERIAL_MODULES if not (ROOT / p).is_file())
