"""Kubernetes' service links are not typos of settings.

Unless a pod sets ``enableServiceLinks: false``, the kubelet gives it variables for every Service of
its namespace that has a cluster IP (``<SVC>_SERVICE_HOST``, ``<SVC>_PORT_<n>_TCP_ADDR``, ...). A
Service named ``auditstream-*`` makes ``AUDITSTREAM_*`` ones, and every pod logged a "not an
auditstream setting" warning for each (16 for the two metrics Services of
deploy/kafka/k8s/metrics-services.yaml, had they a cluster IP), burying the real typos that warning
is for."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
import yaml

import auditstream.settings as settings_module
from auditstream.errors import ConfigError
from auditstream.settings import ENV_PREFIX, Settings, is_service_link, setting_variables, unknown_variables

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "k8s"


def service_links(service: str, cluster_ip: str, ports: list[dict]) -> dict[str, str]:
    """The variables the kubelet gives a pod for one Service (pkg/kubelet/envvars FromServices)."""
    name = service.upper().replace("-", "_")
    host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    env = {f"{name}_SERVICE_HOST": cluster_ip, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
    for i, port in enumerate(ports):
        proto = port.get("protocol", "TCP")
        url = f"{proto.lower()}://{host}:{port['port']}"
        if i == 0:
            env[f"{name}_PORT"] = url
        prefix = f"{name}_PORT_{port['port']}_{proto.upper()}"
        env.update({prefix: url, f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(port["port"]),
                    f"{prefix}_ADDR": cluster_ip})
    return env


def manifest_services() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "Service"]


def manifest_links() -> dict[str, str]:
    """What the manifests' Services would give every pod of the namespace with service links on
    (they are headless, which gives none; a Service given a cluster IP gives these)."""
    env: dict[str, str] = {}
    for i, service in enumerate(manifest_services()):
        env.update(service_links(service["metadata"]["name"], f"10.0.0.{5 + i}", service["spec"]["ports"]))
    return env


def test_the_links_of_the_manifests_services_are_not_warned_about(monkeypatch, caplog) -> None:
    links = manifest_links()
    assert len(links) == 16 and all(name.startswith(ENV_PREFIX) for name in links)  # the reviewer's 16
    monkeypatch.setattr(settings_module, "_warned_unknown", set())
    with caplog.at_level("WARNING", logger="auditstream.settings"):
        settings = Settings.from_env({"AUDITSTREAM_MODELS_DIR": "/models", **links})
    assert [r.getMessage() for r in caplog.records] == []
    assert settings.metrics_port == 0 and str(settings.models_dir) == "/models"


@pytest.mark.parametrize("service, ip, ports", [
    ("auditstream-dashboard", "10.96.0.12", [{"name": "http", "port": 8501}]),
    ("auditstream-postgres", "fd00::1:2", [{"port": 5432}]),  # IPv6, unnamed port
    ("auditstream-multi", "10.96.3.4", [{"name": "dns-udp", "port": 53, "protocol": "UDP"},
                                        {"name": "sctp-x", "port": 9999, "protocol": "SCTP"},
                                        {"name": "metrics", "port": 9400}]),
])  # fmt: skip
def test_the_links_of_any_service_are_not_taken_for_typos(service: str, ip: str, ports: list[dict]) -> None:
    links = service_links(service, ip, ports)
    assert all(is_service_link(name, value) for name, value in links.items()), links
    assert unknown_variables(links) == []


def test_a_typo_with_a_links_name_but_not_its_value_is_still_warned_about() -> None:
    env = {"AUDITSTREAM_METRIC_PORT": "9400",  # a typo of METRICS_PORT: a service link's value is tcp://ip:port
           "AUDITSTREAM_STORE_SERVICE_HOST": "db.example.com",  # a link's host is an IP address
           "AUDITSTREAM_X_PORT_9400_TCP_PORT": "9401",  # a link's port repeats the name's
           "AUDITSTREAM_X_PORT_9400_TCP_PROTO": "udp",
           "AUDITSTREAM_X_PORT_9400_TCP": "udp://10.0.0.1:9400",
           "AUDITSTREAM_X_SERVICE_PORT": "http"}
    assert [name for name, _ in unknown_variables(env)] == sorted(env)


def test_no_setting_is_taken_for_a_service_link() -> None:
    """The links are left out only among the variables that are no setting; and no setting's
    value, default or given as the docs show, reads as a link. One setting has a link's *name*:
    AUDITSTREAM_METRICS_PORT is what a Service named auditstream-metrics would set (to
    tcp://IP:PORT); the manifests name no such Service, their pods take no links, and a link's
    value there is refused naming the fix."""
    name_only = {v for v in setting_variables() if settings_module._SERVICE_LINK.fullmatch(v)}
    assert name_only == {"AUDITSTREAM_METRICS_PORT"}
    for f in dataclasses.fields(Settings):
        for value in {str(f.default), "9400", "10.0.0.5", "tcp", "1", "0"}:
            assert not is_service_link(ENV_PREFIX + f.name.upper(), value), (f.name, value)
    assert not is_service_link("AUDITSTREAM_METRICS_PORT", "9400")
    linked = {name for service in manifest_services()
              for name in service_links(service["metadata"]["name"], "10.0.0.1", service["spec"]["ports"])}
    assert not linked & set(setting_variables())
    with pytest.raises(ConfigError, match="AUDITSTREAM_METRICS_PORT.*Kubernetes service link.*enableServiceLinks: false"):
        Settings.from_env({"AUDITSTREAM_METRICS_PORT": "tcp://10.0.0.5:9400"})


def test_a_links_host_is_an_ip_address() -> None:
    for ip in ("10.0.0.5", "fd00::1"):
        ipaddress.ip_address(ip)
        assert is_service_link("AUDITSTREAM_X_SERVICE_HOST", ip)
        assert is_service_link("AUDITSTREAM_X_PORT_80_TCP_ADDR", ip)
    assert not is_service_link("AUDITSTREAM_X_SERVICE_HOST", "")
    assert not is_service_link("AUDITSTREAM_X_PORT", "tcp://10.0.0.5:70000")
