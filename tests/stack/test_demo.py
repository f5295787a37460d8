"""The README's first command, end to end: ``auditstream demo`` starts its own embedded broker,
the consumers and the monitor, streams envelopes and digits, has the simulated QC auditor record
verdicts in the store, prints its progress report and stops cleanly.

Training the real models takes minutes, so the registry is seeded with tiny stand-ins that have
the real models' names and input/output contracts (built with onnx.helper, no torch); the demo
then finds them and skips training, exactly as on its second run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from auditstream.registry import ModelCard, ModelRegistry, TensorSpec, TriageSpec
from stack.broker import free_port
from store import open_store
from tests.conftest import tiny_card, tiny_classifier_onnx
from tests.serving.test_caption_e2e import captioner_card, fixed_caption_onnx
from tests.serving.test_detection_e2e import detector_card, detector_onnx

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
DIGITS = [str(i) for i in range(10)]


def tiny_zip_reader_onnx(height: int = 32, width: int = 96, seed: int = 0) -> bytes:
    """uint8 [B, H, W] → Cast → Reshape → MatMul → Reshape [B, 5, 10] → Softmax → ``char_probs``."""
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.random.default_rng(seed).standard_normal((height * width, 50)) * 0.01).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, height, width])
    y = helper.make_tensor_value_info("char_probs", TensorProto.FLOAT, [None, 5, 10])
    inits = [numpy_helper.from_array(weights, "W"),
             numpy_helper.from_array(np.array([-1, height * width], np.int64), "flat_shape"),
             numpy_helper.from_array(np.array([-1, 5, 10], np.int64), "seq_shape")]
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["logits"]),
             helper.make_node("Reshape", ["logits", "seq_shape"], ["seq"]),
             helper.make_node("Softmax", ["seq"], ["char_probs"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny-zip", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="auditstream-tests")
    model.ir_version = 8
    return model.SerializeToString()


def seed_registry(root: Path) -> None:
    registry = ModelRegistry(root)
    digits = tiny_card("digits", side=8, threshold=0.3)
    registry.publish(ModelCard(**{**digits.__dict__, "inputs": [TensorSpec("pixels", "float32", [None, 8, 8])]}),
                     tiny_classifier_onnx(input_name="pixels"))
    registry.publish(ModelCard(name="zip-reader", version="0", task="sequence",
                               inputs=[TensorSpec("image", "uint8", [None, 32, 96])],
                               outputs=[TensorSpec("char_probs", "float32", [None, 5, 10])],
                               triage=TriageSpec(threshold=0.15, confidence_kind="min_char_prob"), labels=DIGITS),
                     tiny_zip_reader_onnx())
    registry.publish(detector_card("detector"), detector_onnx())  # the detector's serving contract
    registry.publish(captioner_card("captioner", side=64), tiny_captioner_onnx())  # the captioner's contract


def tiny_captioner_onnx() -> bytes:
    """Every 64x64 scene captioned "two objects: red circle" (joint probability 0.9**4 ~ 0.66)."""
    return fixed_caption_onnx(64, ["two", "objects", ":", "red", "circle"][:4], 0.9)


def free_port_block(size: int = 11) -> int:
    """A base port whose base..base+size-1 are free right now (consumers and monitor metrics),
    below the ephemeral range that outgoing connections take ports from (stack.broker.free_port)."""
    return free_port(size)


def test_demo_streams_answers_audits_and_stops_cleanly(tmp_path: Path):
    models, state = tmp_path / "models", tmp_path / "state"
    seed_registry(models)
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(models), "AUDITSTREAM_STATE_DIR": str(state),
           "AUDITSTREAM_QC_RATE": "0.3", "PYTHONUNBUFFERED": "1"}
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)  # the demo starts its own embedded broker
    result = subprocess.run(
        # 60 s: on a loaded machine a consumer's first answer came 30 s after the start
        [sys.executable, "-m", "auditstream.cli", "demo", "--duration-s", "60", "--rate-per-s", "6",
         "--digits-rate-per-s", "3", "--labels-rate-per-s", "2", "--scenes-rate-per-s", "2", "--dashboard-port", "0", "--qc-auditor-rate-per-s", "4",
         "--metrics-port-base", str(free_port_block()), "--report-every-s", "2"],
        env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{out[-3000:]}\n{result.stderr[-3000:]}"
    assert "model digits: version 1" in out and "model zip-reader: version 1" in out  # found, not retrained
    assert "model detector: version 1" in out and "model captioner: version 1" in out
    for model in ("zip-reader", "digits", "detector", "captioner"):
        answered = [int(n) for n in re.findall(model + r"\s+sent\s+\d+\s+answered\s+(\d+)", out)]
        assert answered and answered[-1] > 0, (model, out[-2000:])
    assert out.rstrip().endswith("demo stopped")
    assert not (state / "broker.json").exists(), "the demo left its embedded broker running"
    with open_store(f"sqlite:///{state / 'audit.db'}", create=True) as store:
        assert sum(store.verdict_counts().values()) > 0, "the simulated QC auditor recorded no verdict"
        assert {user.name for user, _disabled in store.accounts.list_users()} >= {"demo", "qc-bot"}
    audits = [int(n) for n in re.findall(r"QC audits by qc-bot: (\d+)", out)]
    assert audits and audits[-1] > 0, out[-2000:]


def test_a_second_sigterm_during_the_clean_up_does_not_leave_the_broker_running(tmp_path: Path) -> None:
    """`timeout` signals the demo twice and a shell's Ctrl-C reaches the whole process group: a
    stop signal while the demo stops its children must not abort the clean-up half way (the
    embedded broker was left running, found in a fresh clone's demo run)."""
    models, state = tmp_path / "models", tmp_path / "state"
    seed_registry(models)
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(models), "AUDITSTREAM_STATE_DIR": str(state),
           "PYTHONUNBUFFERED": "1"}
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream.cli", "demo", "--rate-per-s", "2", "--dashboard-port", "0",
         "--metrics-port-base", str(free_port_block()), "--report-every-s", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.append(line)
            if "digits     sent" in line:  # serving started: children and broker are up
                break
        broker_pid = json.loads((state / "broker.json").read_text())["pid"]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # stopping four consumers, the monitor and the broker takes seconds
        assert proc.poll() is None, "the demo stopped too fast for the test to mean anything"
        proc.send_signal(signal.SIGTERM)  # the second one, while it stops what it started
        rest, _ = proc.communicate(timeout=120)
        text = "".join(out) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and text.rstrip().endswith("demo stopped"), text[-3000:]
    assert not (state / "broker.json").exists(), "the demo left its embedded broker running"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(broker_pid):
        time.sleep(0.2)
    assert not _alive(broker_pid), "the broker process still runs"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # the demo has exited, so init reaps its orphans: no zombie lingers
    except ProcessLookupError:
        return False
    return True


def test_a_shipped_model_is_published_into_an_empty_registry(tmp_path: Path, monkeypatch) -> None:
    """The first demo on a fresh clone trains nothing: each model the registry lacks is published
    from the copy shipped in stack/demo_models (made by the project's own training command)."""
    import json

    from auditstream.settings import Settings
    from stack import demo

    shipped = tmp_path / "shipped"
    for name, card, onnx in (("digits", tiny_card("digits"), tiny_classifier_onnx()),
                             ("zip-reader", None, None), ("detector", detector_card("detector"), detector_onnx()),
                             ("captioner", captioner_card("captioner", side=64), tiny_captioner_onnx())):
        if card is None:
            continue
        (shipped / name).mkdir(parents=True)
        (shipped / name / "model.onnx").write_bytes(onnx)
        (shipped / name / "card.json").write_text(card.to_json())
    seeded = ModelRegistry(tmp_path / "models")
    seeded.publish(ModelCard.from_dict(json.loads(tiny_card("zip-reader").to_json())), tiny_classifier_onnx())
    monkeypatch.setattr(demo, "SHIPPED_MODELS", shipped)
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail(f"trained {a}"))
    demo.ensure_models(Settings(models_dir=tmp_path / "models", state_dir=tmp_path / "state"), retrain=False)
    registry = ModelRegistry(tmp_path / "models")
    assert {name: registry.latest(name) for name in demo.DEMO_MODELS} == {"digits": "1", "zip-reader": "1",
                                                                          "detector": "1", "captioner": "1"}
    assert registry.load("detector").card.task.value == "detection"



@pytest.mark.parametrize("name", ["digits", "zip-reader", "detector", "captioner"])
def test_the_shipped_demo_models_are_servable(name: str, tmp_path: Path) -> None:
    """The copies a first demo publishes: present, verified against their cards on publishing,
    accepted by their task kind, and answering on ONNX Runtime (warm-up runs the graph)."""
    from auditstream import tasks
    from serving.runtime import load_session
    from stack.demo import SHIPPED_MODELS
    import json

    shipped = SHIPPED_MODELS / name
    card = ModelCard.from_dict(json.loads((shipped / "card.json").read_text()))
    assert card.name == name
    model = ModelRegistry(tmp_path / "models").publish(card, (shipped / "model.onnx").read_bytes())
    tasks.lookup(model.card.task).check_card(model.card)
    load_session(model)  # raises unless the graph runs on a batch of its own inputs
