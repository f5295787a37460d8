"""The deploy manifests name only settings that exist: a misspelt AUDITSTREAM_ variable would be
silently ignored by every pod (Settings reads the fields it knows)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from auditstream.settings import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") or p.name == "Dockerfile")
KNOWN = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_auditstream_variable_in_a_manifest_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"\bAUDITSTREAM_[A-Z0-9_]+\b", path.read_text()))
    assert named <= KNOWN, f"{path.name} names unknown settings {sorted(named - KNOWN)}"


def test_the_sasl_manifest_keeps_secrets_out_of_the_configmap() -> None:
    text = (DEPLOY / "kafka" / "k8s" / "kafka-security.yaml").read_text()
    data = text.split("\ndata:\n", 1)[1]
    assert "PASSWORD" not in data and "USERNAME" not in data
    assert "secretKeyRef" in text
