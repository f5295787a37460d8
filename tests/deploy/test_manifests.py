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


def test_the_image_copies_every_package_the_project_installs() -> None:
    """The Dockerfile copied five of the eight packages: pip installed the image without qc, store
    and stack, and ``auditstream serve`` died importing qc.triage at start."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    installed = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY ([a-z_]+) \./\1$", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert installed <= copied, f"the image lacks {sorted(installed - copied)}"
    on_disk = {p.parent.name for p in DEPLOY.parent.glob("*/__init__.py")} - {"tests"}
    assert on_disk <= installed, f"pyproject.toml does not install {sorted(on_disk - installed)}"


def test_the_sasl_manifest_keeps_secrets_out_of_the_configmap() -> None:
    text = (DEPLOY / "kafka" / "k8s" / "kafka-security.yaml").read_text()
    data = text.split("\ndata:\n", 1)[1]
    assert "PASSWORD" not in data and "USERNAME" not in data
    assert "secretKeyRef" in text


def test_the_compose_topics_are_created_as_ensure_topics_creates_them() -> None:
    # Every topic auditstream uses, each with the configs auditstream would give it: a request
    # topic the broker's limit, the others auditstream's largest record (a dead letter).
    from auditstream.kafka.factory import _topic_configs
    from auditstream.topics import COMPACTED_TOPICS, SHARED_TOPICS, model_topics

    text = (DEPLOY / "kafka" / "docker-compose.yml").read_text()
    settings = Settings()
    made: dict[str, dict[str, str]] = {}
    for names, options in re.findall(r"for t in ([^;]+); do\n\s+\$\$k [^\n]*?--create((?:[^\n\\]|\\\n)*)", text):
        configs = dict(c.split("=", 1) for c in re.findall(r"--config (\S+)", options))
        made.update({f"auditstream.{t}": configs for t in names.split()})
    # a policy model's own state topic besides its requests (the others are not policies)
    expected = [settings.topic(t) for t in SHARED_TOPICS + COMPACTED_TOPICS] + \
        [settings.request_topic(m) for m in ("digits", "zip-reader")] + model_topics(settings, "policy-cartpole-v1")
    compacted = {settings.topic(t) for t in COMPACTED_TOPICS} | {settings.episode_state_topic("policy-cartpole-v1")}
    assert sorted(made) == sorted(expected)
    for topic in expected:
        assert made[topic] == _topic_configs(settings, topic, topic in compacted), topic


def _containers() -> dict[str, tuple[dict, dict]]:
    """Each Deployment's first container and its pod spec, by the command it runs (serve / monitor)."""
    import yaml

    found = {}
    for path in sorted((DEPLOY / "kafka" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                container = spec["containers"][0]
                found[container["command"][1]] = (container, spec)
    return found


def test_consumers_and_the_monitor_share_a_secret_qc_salt() -> None:
    """With the public default salt a producer can choose request ids that are never QC-sampled;
    the manifests ran with it (no AUDITSTREAM_QC_SALT anywhere)."""
    deployments = _containers()
    assert {"serve", "monitor"} <= set(deployments)
    refs = set()
    for name in ("serve", "monitor"):
        env = {e["name"]: e for e in deployments[name][0].get("env", [])}
        assert "AUDITSTREAM_QC_SALT" in env, f"{name} runs with the public QC salt"
        ref = env["AUDITSTREAM_QC_SALT"]["valueFrom"]["secretKeyRef"]
        refs.add((ref["name"], ref["key"]))
    assert len(refs) == 1, f"consumers and monitor read different salts: {refs}"


def test_a_consumer_gets_the_time_its_drain_may_take() -> None:
    """SIGTERM: the consumer waits up to DELIVERY_TIMEOUT_S for its outputs before it commits; a
    grace period shorter than that SIGKILLs a slow drain (safe, but every such batch is answered
    again). ONNX Runtime's threads match the cores the pod asks for."""
    container, spec = _containers()["serve"]
    assert spec["terminationGracePeriodSeconds"] > Settings().delivery_timeout_s
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("AUDITSTREAM_INTRA_OP_THREADS") == str(container["resources"]["requests"]["cpu"])


def _pod_specs(doc: dict) -> list[dict]:
    """The pod specs of one Kubernetes object: a Pod's own, a workload's template's (a CronJob's
    through its job template)."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec and isinstance(spec["template"], dict) and "spec" in spec["template"]:
        return [spec["template"]["spec"]]
    return []


K8S_OBJECTS = [(path, doc) for path in MANIFESTS if path.suffix in (".yaml", ".yml") and "k8s" in path.parts
               for doc in __import__("yaml").safe_load_all(path.read_text()) if isinstance(doc, dict) and "kind" in doc]


def test_every_pod_spec_turns_service_links_off() -> None:
    """With service links on, every Service of the namespace that has a cluster IP gives each pod
    <SVC>_SERVICE_HOST, <SVC>_PORT_<n>_TCP_ADDR and so on: AUDITSTREAM_* ones for a Service named
    auditstream-*, each a "not an auditstream setting" warning before, and a Service named after a
    setting (auditstream-metrics) would set it. auditstream finds nothing through them."""
    pods = [(path.name, doc["metadata"]["name"], spec) for path, doc in K8S_OBJECTS for spec in _pod_specs(doc)]
    assert {name for _, name, _ in pods} >= {"auditstream-monitor", "auditstream-serve-zip-reader"}
    for path, name, spec in pods:
        assert spec.get("enableServiceLinks") is False, f"{path}: {name}'s pod spec leaves service links on"
