"""deploy/prometheus: Debian's promtool checks the config and rules and runs the rule unit tests;
a real Prometheus server scrapes real monitor and serving metrics endpoints and sees the series.

Skipped only when the prometheus/promtool binaries are absent (scripts/test installs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics
from serving.metrics import ServeMetrics
from stack.broker import free_port

pytestmark = pytest.mark.prometheus
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "rules" / "auditstream.rules.yml"
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def _promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@needs_promtool
def test_config_is_valid():
    assert "SUCCESS" in _promtool("check", "config", str(DEPLOY / "prometheus.yml"))


@needs_promtool
def test_the_kubernetes_config_is_valid_and_scrapes_the_jobs_the_rules_match(tmp_path):
    """deploy/kafka/k8s said Prometheus finds the pods through kubernetes_sd_configs, but no such
    config was shipped. Debian's promtool is built without Kubernetes discovery, so where it
    refuses that one field the rest is checked with the discovery swapped for a static target."""
    import yaml

    k8s = DEPLOY / "prometheus-k8s.yml"
    config = yaml.safe_load(k8s.read_text())
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert sorted(jobs) == sorted(j["job_name"] for j in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"])
    assert all(re.fullmatch("auditstream-.*", job) for job in jobs)  # AuditstreamTargetDown's up{job=~...}
    services = {doc["metadata"]["name"] for doc in yaml.safe_load_all(
        (DEPLOY.parent / "kafka" / "k8s" / "metrics-services.yaml").read_text()) if doc}
    for job in config["scrape_configs"]:
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        assert keep and keep[0]["regex"].split(";")[0] in services, job["job_name"]
    result = subprocess.run([PROMTOOL, "check", "config", str(k8s)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": ["pod:9400"]}]
            del job["kubernetes_sd_configs"]
        (tmp_path / "rules").symlink_to(DEPLOY / "rules")
        (tmp_path / "prometheus-k8s.yml").write_text(yaml.safe_dump(config))
        assert "SUCCESS" in _promtool("check", "config", str(tmp_path / "prometheus-k8s.yml"))
    else:
        assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, result.stdout + result.stderr


@needs_promtool
def test_rules_are_valid():
    out = _promtool("check", "rules", str(RULES))
    assert re.search(r"SUCCESS: (\d+) rules found", out) and int(re.search(r"(\d+) rules", out).group(1)) >= 9


@needs_promtool
def test_rule_unit_tests_pass():
    assert "SUCCESS" in _promtool("test", "rules", str(RULES.with_name("auditstream.rules.test.yml")))


def test_rules_only_use_metrics_that_exist():
    """Every auditstream_* name in the rules is exported by monitor/metrics.py or serving/metrics.py."""
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    ServeMetrics("m", registry, version="1")
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name for family in registry.collect()}
    text = "\n".join(line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\bauditstream_[a-z0-9_]*[a-z0-9]\b", text))
    assert used and used <= exported, f"unknown metrics in rules: {sorted(used - exported)}"


def _free_port() -> int:
    return free_port()  # below the ephemeral range: no outgoing connection takes it meanwhile


EXPORTER = textwrap.dedent("""
    import sys, time
    from prometheus_client import CollectorRegistry
    from auditstream.registry import ModelCard, TensorSpec, TriageSpec
    from auditstream.wire import Prediction, Route
    from monitor.metrics import MonitorMetrics, StoreStats
    from monitor.tracker import QCConfig, QCTracker
    from serving.metrics import ServeMetrics

    card = ModelCard(name="zip", version="1", task="classification", inputs=[TensorSpec("x", "float32", [None, 4])],
                     outputs=[TensorSpec("p", "float32", [None, 10])], triage=TriageSpec(0.9, certified_risk=0.01),
                     reference={"confidence_sample": [0.5 + i / 2000 for i in range(1000)]})
    tracker = QCTracker(lambda m, v: card, QCConfig())
    for i in range(300):
        c = 0.5 + (i % 100) / 200
        tracker.observe_prediction(Prediction(f"r{i}", "zip", "1", "classification", 1, c,
                                              Route.AUTO if c >= 0.9 else Route.HUMAN, "", 0.02, 0.0))
    monitor = MonitorMetrics(CollectorRegistry(), max_human_queue_depth=100)
    monitor.update(tracker.snapshot(), StoreStats(queue=[], verdicts={}))
    monitor.serve(int(sys.argv[1]), addr="127.0.0.1")
    serve = ServeMetrics("zip", CollectorRegistry(), version="1")
    serve.records_in.labels("zip", "1").inc(300)
    serve.serve_http(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")
def test_real_prometheus_scrapes_monitor_and_consumer(tmp_path):
    monitor_port, serve_port, prom_port = _free_port(), _free_port(), _free_port()
    exporter = subprocess.Popen([sys.executable, "-c", EXPORTER, str(monitor_port), str(serve_port)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    prometheus = None
    try:
        assert exporter.stdout.readline().strip() == "ready"
        config = tmp_path / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            rule_files: ["{RULES}"]
            scrape_configs:
              - job_name: auditstream-monitor
                static_configs: [{{targets: ["127.0.0.1:{monitor_port}"]}}]
              - job_name: auditstream-serve
                static_configs: [{{targets: ["127.0.0.1:{serve_port}"]}}]
        """))
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        deadline, seen = time.monotonic() + 90, {}
        wanted = ("auditstream_coverage_ratio", "auditstream_audit_queue_depth", "auditstream_serve_records_in_total",
                  'up{job=~"auditstream-.*"} == 1')
        while time.monotonic() < deadline and len(seen) < len(wanted):
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            for promql in wanted:
                try:
                    result = _query(prom_port, promql)
                except OSError:  # not listening yet
                    break
                if result:
                    seen[promql] = result
            time.sleep(0.5)
        assert len(seen) == len(wanted), f"saw only {sorted(seen)}; log:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
        (coverage,) = seen["auditstream_coverage_ratio"]
        assert coverage["metric"]["model"] == "zip" and float(coverage["value"][1]) == pytest.approx(0.2)
        assert len(seen['up{job=~"auditstream-.*"} == 1']) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) >= 9  # the real rules file loaded into the server
    finally:
        for process in (prometheus, exporter):
            stop_process(process)


def stop_process(process: subprocess.Popen | None, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
