"""deploy/kafka/docker-compose.yml starts a cluster that can form: docker does not run on the dev
machine, so what the brokers and the create-topics service would refuse at start is checked here."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "docker-compose.yml"


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def kraft_cluster_id_bytes(cluster_id: str) -> bytes:
    """The 16 bytes Kafka's ``Uuid.fromString`` reads from a KRaft cluster id, or ValueError: at most
    24 characters of URL-safe base64 (padding optional) decoding to exactly 16 bytes, not all zero."""
    if len(cluster_id) > 24 or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", cluster_id):
        raise ValueError(f"{cluster_id!r} is not URL-safe base64 of at most 24 characters")
    raw = base64.urlsafe_b64decode(cluster_id.rstrip("=") + "=" * (-len(cluster_id.rstrip("=")) % 4))
    if len(raw) != 16 or raw == bytes(16):
        raise ValueError(f"{cluster_id!r} decodes to {len(raw)} bytes, not a 16-byte non-zero Uuid")
    return raw


def test_the_uuid_check_refuses_what_kafka_refuses() -> None:
    assert len(kraft_cluster_id_bytes("MkU3OEVBNTcwNTJENDM2Qk")) == 16  # Kafka's own docs' example
    for bad in ("auditstream-kraft-cluster-01", "MkU3OEVBNTcwNTJENDM2", "AAAAAAAAAAAAAAAAAAAAAA", "MkU3OEVBNTcw+TJENDM2Qk"):
        try:
            kraft_cluster_id_bytes(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_every_cluster_id_is_a_kraft_uuid_and_the_brokers_share_one() -> None:
    """``auditstream-kraft-cluster-01`` made every broker exit at start (storage format failed), in a loop."""
    ids = {name: service["environment"]["CLUSTER_ID"] for name, service in _services().items()
           if "CLUSTER_ID" in service.get("environment", {})}
    assert len(ids) == 3, ids
    for name, cluster_id in ids.items():
        try:
            kraft_cluster_id_bytes(str(cluster_id))
        except ValueError as e:
            raise AssertionError(f"{name}: {e}") from None
    assert len(set(ids.values())) == 1, ids


def test_topics_are_created_only_once_every_replica_has_a_broker() -> None:
    """The service waited for kafka-1 alone, then created replication-factor-3 topics under set -e:
    before kafka-3 registered the create failed, and the service never runs again."""
    services = _services()
    brokers = sum(1 for s in services.values() if "KAFKA_NODE_ID" in s.get("environment", {}))
    script = "\n".join(services["create-topics"]["command"])
    replicas = {int(r) for r in re.findall(r"--replication-factor (\d+)", script)}
    assert replicas and max(replicas) <= brokers
    wait = re.search(r'until \[ "\$\$\(brokers\)" -ge (\d+) \]', script)
    assert wait and int(wait.group(1)) >= max(replicas), "create-topics does not wait for enough brokers"
    assert "kafka-broker-api-versions.sh" in script[:script.index(wait.group(0))]
    assert script.index(wait.group(0)) < script.index("--create")
