"""The ``serve-gpu`` extra's ONNX Runtime (onnxruntime-gpu) on a machine without a GPU: installed
into a throwaway venv, ``auditstream serve`` starts on the CPU without a single error line and
answers a request; ``AUDITSTREAM_DEVICE=cuda:0`` stops at once with one line saying what to do.

The venv holds only onnxruntime-gpu (``--no-deps``); a ``.pth`` file appends the project venv's
site-packages *after* the venv's own, so ``import onnxruntime`` is the GPU build and everything
else (numpy, Kafka clients, onnx) is what the project already has. pip downloads the wheel
(~260 MB) once into its cache; later runs install from there.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.serving.kafka_readers import read_topic

from auditstream import topics as T
from auditstream.kafka import make_producer
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from serving.loadgen import inputs_for, produce_requests

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ORT_GPU = "onnxruntime-gpu==1.31.1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("ort-gpu") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  text=True).strip()
    Path(own, "project-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", ORT_GPU],
                   check=True, timeout=600)
    return python


def test_the_gpu_build_is_the_one_imported(gpu_python: Path) -> None:
    out = subprocess.check_output([str(gpu_python), "-c", "import onnxruntime as o, importlib.metadata as m; "
                                   "print(o.__file__); print(m.version('onnxruntime-gpu')); "
                                   "print(o.get_available_providers())"], text=True, cwd="/")
    where, version, providers = out.splitlines()
    assert str(gpu_python.parent.parent) in where and version == "1.31.1"
    assert "CUDAExecutionProvider" in providers  # listed although this machine cannot load it


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO), "AUDITSTREAM_LOG_LEVEL": "INFO", **extra}


def test_serve_starts_on_cpu_without_an_error_line_and_answers(gpu_python: Path, stream_settings: Settings,
                                                               tmp_path: Path) -> None:
    settings, log = stream_settings, tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(gpu_python), "-m", "auditstream.cli", "serve", "--model", "tiny"],
                                env=_env(settings), stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while "assigned" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        producer = make_producer(settings)
        try:
            card = ModelRegistry(settings.models_dir).card("tiny")
            sent = produce_requests(producer, settings.request_topic("tiny"), "tiny", inputs_for(card, "random"), 1, 0.0,
                                    progress=False)
        finally:
            producer.close()
        answers = read_topic(settings, settings.topic(T.PREDICTIONS), until_count=1, timeout_s=60)
        assert [a.key.decode() for a in answers] == sent.request_ids
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text
    assert "on CPUExecutionProvider" in text, text
    bad = [line for line in text.splitlines() if "error" in line.lower() or "[E:" in line or "Traceback" in line]
    assert bad == [], text


def test_asking_for_a_gpu_that_is_not_there_is_one_clear_line(gpu_python: Path, stream_settings: Settings,
                                                             tmp_path: Path) -> None:
    done = subprocess.run([str(gpu_python), "-m", "auditstream.cli", "serve", "--model", "tiny"],
                          env=_env(stream_settings, AUDITSTREAM_DEVICE="cuda:0"), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "AUDITSTREAM_DEVICE='cuda:0'" in errors[0] and "serve-gpu" in errors[0], done.stderr
