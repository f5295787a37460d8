"""``auditstream bench faults`` at test size: the kill -9 scenario through the CLI (three real
consumers, one killed and replaced every few seconds) loses nothing and duplicates nothing
differently. The bench's other scenarios are documented in stack/faults_bench.py with what they
found on the embedded broker (docs/serving.md, "Fault suite")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_kill9_scenario_loses_nothing(tmp_path) -> None:
    env = dict(os.environ, AUDITSTREAM_LOG_LEVEL="WARNING", AUDITSTREAM_STATE_DIR=str(tmp_path))
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "bench", "faults", "--json", "--scenario", "kill9",
                           "--requests", "400", "--rate-per-s", "100", "--kill-every-s", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])["kill9"]
    assert done.returncode == 0, (result, done.stderr[-3000:])
    assert set(result) == {"sent", "answered", "lost", "duplicates", "non_identical_duplicates", "crashes", "recovery_s"}
    assert result["sent"] >= 400 and result["lost"] == 0 and result["answered"] == result["sent"]
    assert result["non_identical_duplicates"] == 0 and result["crashes"] == 0 and result["recovery_s"] > 0
