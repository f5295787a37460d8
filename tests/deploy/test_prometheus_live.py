"""A real Prometheus server scrapes a running ``auditstream serve`` consumer and a running
``auditstream monitor`` (separate processes on the embedded broker, as deployed) and sees their
series move once requests flow: the serving side counts records in, the monitor's coverage
follows the predictions it consumed.

Skipped only when the prometheus binary is absent (scripts/test installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from auditstream.kafka import make_producer
from auditstream.wire import InferenceRequest
from tests.conftest import TINY_MODEL
from tests.deploy.test_prometheus import PROMETHEUS, RULES, _free_port, _query, stop_process

pytestmark = [pytest.mark.prometheus, pytest.mark.kafka, pytest.mark.slow]


def _env(settings, **extra) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "AUDITSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "AUDITSTREAM_TOPIC_PREFIX": settings.topic_prefix,
           "AUDITSTREAM_MODELS_DIR": str(settings.models_dir),
           "AUDITSTREAM_STATE_DIR": str(settings.state_dir)}
    env.update({f"AUDITSTREAM_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")
def test_prometheus_scrapes_running_consumer_and_monitor(stream_settings, tmp_path: Path):
    serve_port, monitor_port, prom_port = _free_port(), _free_port(), _free_port()
    cli = [sys.executable, "-m", "auditstream.cli"]
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("serve", "monitor", "prometheus")}
    processes: list[subprocess.Popen] = []
    try:
        processes.append(subprocess.Popen(cli + ["serve", "--model", TINY_MODEL], stdout=logs["serve"],
                                          stderr=subprocess.STDOUT, env=_env(stream_settings, metrics_port=serve_port)))
        processes.append(subprocess.Popen(
            cli + ["monitor", "--group-id", f"monitor-{uuid.uuid4().hex[:8]}", "--stats-interval-s", "1"],
            stdout=logs["monitor"], stderr=subprocess.STDOUT,
            env=_env(stream_settings, metrics_port=monitor_port, store_url=f"sqlite:///{tmp_path / 'audit.db'}")))
        producer = make_producer(stream_settings)
        rng = np.random.default_rng(0)
        for i in range(60):
            request = InferenceRequest(f"live-{i}", TINY_MODEL, rng.random((8, 8), dtype=np.float32), time.time())
            producer.send(stream_settings.request_topic(TINY_MODEL), request.key, request.to_bytes())
        producer.flush(30)
        producer.close()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f'rule_files: ["{RULES}"]\n'
            "scrape_configs:\n"
            f"  - {{job_name: auditstream-serve, static_configs: [{{targets: ['127.0.0.1:{serve_port}']}}]}}\n"
            f"  - {{job_name: auditstream-monitor, static_configs: [{{targets: ['127.0.0.1:{monitor_port}']}}]}}\n")
        processes.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=logs["prometheus"], stderr=subprocess.STDOUT))
        wanted = {
            "records in": f'auditstream_serve_records_in_total{{model="{TINY_MODEL}"}} >= 60',
            "coverage": f'auditstream_coverage_ratio{{model="{TINY_MODEL}"}}',
            "both up": 'count(up{job=~"auditstream-.*"} == 1) == 2',
        }
        seen: dict[str, list] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < len(wanted):
            for p in processes:
                assert p.poll() is None, f"{p.args[:4]} exited: see {tmp_path}"
            for name, promql in wanted.items():
                try:
                    if result := _query(prom_port, promql):
                        seen[name] = result
                except OSError:
                    break  # Prometheus not listening yet
            time.sleep(1)
        for log in logs.values():
            log.flush()
        assert len(seen) == len(wanted), (
            f"saw only {sorted(seen)}\n" + "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-2000:]}" for n in logs))
        coverage = float(seen["coverage"][0]["value"][1])
        assert 0.0 <= coverage <= 1.0
    finally:
        for p in reversed(processes):
            stop_process(p)
        for log in logs.values():
            log.close()
