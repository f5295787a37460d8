"""Fixtures of the audit-store tests: ``store`` runs each test on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from tests.store.store_factories import BACKENDS, fast_hashes, make_store  # noqa: F401 - fast_hashes is a fixture

from store import AuditStore


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, tmp_path: Path, fast_hashes: None) -> Iterator[AuditStore]:
    with make_store(backend, tmp_path) as s:
        yield s
