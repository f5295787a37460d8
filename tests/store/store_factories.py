"""Shared helpers of the audit-store tests: stores on both backends, items, users.

Every store test runs on a temporary SQLite file *and* on the local PostgreSQL
(``AUDITSTREAM_TEST_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/test) with a
table prefix unique to the test, dropped afterwards. The PostgreSQL case is marked ``postgres``
and skips (saying why) only when no server answers.

Imported as ``tests.store.store_factories``.
"""

from __future__ import annotations

import functools
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from auditstream.wire import AuditItem, ImageInput, Prediction, Route
from store import accounts
from store.accounts import Role, User
from store import AuditStore, StoreConfig, open_store

POSTGRES_URL = os.environ.get("AUDITSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@functools.cache
def postgres_unavailable() -> str | None:
    """None if the test PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as cx:
            cx.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL at {POSTGRES_URL} unavailable: {e}"


@contextmanager
def make_store(backend: str, tmp_path: Path, config: StoreConfig | None = None) -> Iterator[AuditStore]:
    """A fresh store on ``backend``; its tables are dropped afterwards."""
    if backend == "sqlite":
        url, prefix = f"sqlite:///{tmp_path / f'audit-{uuid.uuid4().hex[:6]}.db'}", ""
    else:
        why = postgres_unavailable()
        if why:
            pytest.skip(why)
        url, prefix = POSTGRES_URL, f"t{uuid.uuid4().hex[:12]}_"
    store = open_store(url, config, table_prefix=prefix, create=True)
    try:
        yield store
    finally:
        store.drop_tables()
        store.close()


@pytest.fixture
def fast_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap scrypt for tests that only need accounts to exist (the stored string records the
    parameters, so verification still works); tests of hashing itself do not use this."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)


def add_users(store: AuditStore, *names: str, role: Role | str = Role.AUDITOR) -> list[User]:
    return [store.accounts.add_user(name, f"pw-{name}-secret", role) for name in names]


def audit_item(
    request_id: str,
    route: Route = Route.HUMAN,
    model: str = "zip",
    version: str = "v1",
    output: Any = "12345",
    confidence: float = 0.42,
    inclusion_prob: float | None = None,
    created_at_s: float = 1000.0,
    image: bool = False,
) -> AuditItem:
    prob = inclusion_prob if inclusion_prob is not None else (1.0 if route is Route.HUMAN else 0.05)
    prediction = Prediction(
        request_id=request_id, model=model, model_version=version, task="sequence", output=output,
        confidence=confidence, route=route, reason="test", qc_inclusion_prob=prob, created_at_s=created_at_s,
        details={"char_conf": [0.9, 0.8, 0.7, 0.6, 0.5]},
    )  # fmt: skip
    data = ImageInput(b"\x89PNG\r\n\x1a\n-not-really", "png") if image else np.arange(6, dtype=np.float32).reshape(2, 3)
    return AuditItem(prediction, data)
