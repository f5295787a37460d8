"""``auditstream demo --retrain-every N`` (stack/demo_loop.py): the learning loop, live.

The end-to-end test runs the demo on its own embedded broker with the shipped digits model (its
real weights, so ``retrain`` fine-tunes) and tiny stand-ins for the other three models (no
traffic goes to them): the simulated auditor answers every QC sample, the loop retrains digits
after 30 new verdicts, shadows the candidate, the real gate promotes it, and the consumer the
demo started answers with it -- the demo is stopped (Ctrl-C) as soon as it says so. A refused
promotion is checked on the loop's gate step with a real registry and SQLite store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from auditstream.registry import ModelCard, ModelRegistry
from auditstream.wire import Route, VerdictKind
from qc.paired import PairedGateConfig
from stack.demo import SHIPPED_MODELS, DemoArgs
from stack.demo_loop import LoopConfig, ModelLoop, retrainable
from store import open_store
from store.shadow import ShadowAnswers
from tests.conftest import tiny_card, tiny_classifier_onnx
from tests.stack.test_demo import free_port_block, seed_registry
from tests.store.store_factories import add_users, audit_item

WAIT_CAP_S = 420  # a cap, not a timing claim: the demo is stopped as soon as the consumer answers with v2


def publish_shipped(registry: ModelRegistry, name: str) -> None:
    from training.feedback import WEIGHTS_FILE

    shipped = SHIPPED_MODELS / name
    card = ModelCard.from_dict(json.loads((shipped / "card.json").read_text()))
    published = registry.publish(card, (shipped / "model.onnx").read_bytes())
    (published.directory / WEIGHTS_FILE).write_bytes((shipped / WEIGHTS_FILE).read_bytes())


@pytest.mark.kafka
@pytest.mark.slow
def test_the_demo_retrains_promotes_and_the_running_consumer_answers_with_the_new_version(tmp_path: Path) -> None:
    models, state = tmp_path / "models", tmp_path / "state"
    stand_ins = tmp_path / "stand-ins"
    seed_registry(stand_ins)  # tiny zip-reader, detector and captioner: no traffic, no verdicts, never retrained
    registry = ModelRegistry(models)
    publish_shipped(registry, "digits")
    for name in ("zip-reader", "detector", "captioner"):
        source = ModelRegistry(stand_ins).load(name)
        registry.publish(source.card, source.onnx_path.read_bytes())
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(models), "AUDITSTREAM_STATE_DIR": str(state),
           "AUDITSTREAM_QC_RATE": "1.0", "PYTHONUNBUFFERED": "1"}  # every auto answer audited: pairs come fast
    env.pop("AUDITSTREAM_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditstream.cli", "demo", "--rate-per-s", "0", "--labels-rate-per-s", "0",
         "--scenes-rate-per-s", "0", "--digits-rate-per-s", "8", "--qc-auditor-rate-per-s", "20",
         "--dashboard-port", "0", "--metrics-port-base", str(free_port_block()), "--report-every-s", "2",
         "--retrain-every", "30", "--retrain-digits-epochs", "2", "--promote-margin", "0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cap = threading.Timer(WAIT_CAP_S, proc.send_signal, args=(signal.SIGINT,))
    cap.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"loop: digits: the running consumer .*answers with v2", line):
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops what it started
        proc.wait(timeout=120)
    finally:
        cap.cancel()
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    assert "learning loop: digits, zip-reader retrained every 30 new verdicts" in out
    for skipped in ("detector", "captioner"):  # said once, not per report
        assert out.count(f"learning loop: {skipped} skipped: retraining from verdicts is built for") == 1
    assert re.search(r"loop: digits: v2 published in \d+ s, fine-tuned from v1 on \d+ verdicts", out), out[-4000:]
    assert "loop: digits: v2 PROMOTED over v1" in out, out[-4000:]
    switched = re.search(r"loop: digits: the running consumer \(pid (\d+), started with the demo\) answers with v2", out)
    assert switched, out[-4000:]
    assert registry.live_version("digits") == "2"
    assert registry.card("digits", "2").training["fine_tuned_from"] == "1"
    # the consumer switched between batches: started once (on v1), never restarted
    serve_log = (state / "logs" / "serve-digits.log").read_text()
    assert serve_log.count("serving digits v1") == 1 and "switched from v1 to v2" in serve_log
    # every answer the demo saw names its version: one report's answers by version add up to its answered
    answered, loop_line = 0, ""
    for line in lines:
        if m := re.search(r"\] digits\s+sent\s+\d+\s+answered\s+(\d+)", line):
            answered = int(m.group(1))
        elif line.lstrip().startswith("loop digits"):
            loop_line = line
    counts = loop_line.split("answers by version: ")[1].split(")")[0]
    by_version = {v: int(n) for v, n in re.findall(r"v(\d+) (\d+)", counts)}
    assert set(by_version) <= {"1", "2"} and by_version["1"] > 0
    assert sum(by_version.values()) == answered
    assert out.rstrip().endswith("demo stopped")


def test_a_refused_promotion_is_reported_with_the_gates_reason(tmp_path: Path, capsys) -> None:
    """A candidate that is wrong where live was right: the gate refuses ("worse"), the loop says
    so on its own line and in its status, LIVE stays, and the loop waits for the next retrain."""
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card("digits"), tiny_classifier_onnx())
    registry.publish(tiny_card("digits"), tiny_classifier_onnx(seed=1))
    registry.set_live("digits", "1")
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    from auditstream.settings import Settings

    settings = Settings(models_dir=registry.root, state_dir=tmp_path / "state", store_url=url)
    config = LoopConfig(retrain_every=10, digits_epochs=1, zip_steps=1, nice=10, gate=PairedGateConfig(margin=0.1))
    said: list[str] = []
    loop = ModelLoop("digits", settings, {}, config, tmp_path, said.append)
    with open_store(url, create=True) as store:
        items = [audit_item(f"r{i}", Route.AUTO_QC, model="digits", version="1", output="3") for i in range(60)]
        store.ingest_many(items, time.time())
        wrong = [dataclasses.replace(i.prediction, model_version="2", output="5", shadow=True) for i in items]
        ShadowAnswers(store).ingest(wrong, time.time())
        (alice,) = add_users(store, "alice")
        for _ in items:
            claim = store.claim(alice, 60, time.time())
            store.record_verdict(store.new_verdict_id(), claim.item_id, alice, VerdictKind.ACCEPT, None, time.time())
        loop.step(store, time.time())  # counts the 60 verdicts as the baseline: nothing to do yet
        from stack.demo_loop import Candidate

        loop.candidate = Candidate("shadow", time.time(), version="2")  # as if retrain had published v2
        loop.step(store, time.time())
    assert loop.candidate.state == "refused" and loop.candidate.detail.startswith("worse: ")
    assert any(s.startswith("digits: v2 REFUSED: worse: ") for s in said), said
    assert loop.status().startswith("candidate v2: refused (worse: ")
    assert registry.live_version("digits") == "1"
    decisions = json.loads((registry.root / "digits" / "2" / "promotion.json").read_text())["decisions"]
    assert [d["decision"]["code"] for d in decisions] == ["worse"]


def test_the_loop_retrains_only_what_retrain_can_and_says_why_not_for_the_rest() -> None:
    models, refused = retrainable(("digits", "zip-reader", "detector", "captioner"))
    assert models == ["digits", "zip-reader"]
    assert set(refused) == {"detector", "captioner"}
    assert all("auditstream train NAME" in why for why in refused.values())


@pytest.mark.parametrize("options, says", [
    (dict(retrain_every=-1), "invalid --retrain-every=-1: expected a whole number >= 0, e.g. 0"),
    (dict(retrain_every=10, retrain_digits_epochs=0), "invalid --retrain-digits-epochs=0: expected a whole number >= 1"),
    (dict(retrain_every=10, promote_margin=0.0), "invalid --promote-margin=0.0: expected a number strictly between 0 "
                                                 "and 1, e.g. 0.05"),
    (dict(retrain_every=10, retrain_nice=40), "invalid --retrain-nice=40: expected a whole number from 0 to 19"),
    (dict(retrain_every=10, qc_auditor_rate_per_s=0, bot_answers_deferred=True), "give --qc-auditor-rate-per-s > 0"),
])
def test_bad_loop_options_say_what_to_give(options: dict, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        DemoArgs(**options)


def test_the_simulated_auditor_takes_deferred_items_with_the_loop_unless_told_not_to() -> None:
    assert not DemoArgs().bot_takes_deferred
    assert DemoArgs(retrain_every=50).bot_takes_deferred
    assert not DemoArgs(retrain_every=50, bot_answers_deferred=False).bot_takes_deferred


@pytest.mark.parametrize("name", ["digits", "zip-reader"])
def test_the_shipped_weights_are_the_shipped_graphs(name: str) -> None:
    """What the first retrain fine-tunes: the shipped ``weights.pt`` loads into the family's net
    and answers as the shipped ONNX graph does (the same class at every position)."""
    import onnxruntime as ort
    import torch

    from training.feedback import load_weights

    shipped = SHIPPED_MODELS / name
    if name == "digits":
        from training.data.split import load_split
        from training.digits.train import DigitNet as Net

        inputs = load_split("test").images[:128].astype(np.float32)
    else:
        from training.data.envelopes import make_envelopes
        from training.zip_reader.train import ZipReaderNet as Net

        inputs = make_envelopes("test", 64, seed=5)[0]
    net = Net()
    net.load_state_dict(load_weights(shipped))  # strict: every tensor present, none left over
    net.eval()
    with torch.no_grad():
        torch_classes = net(torch.from_numpy(np.asarray(inputs))).argmax(-1).numpy()
    session = ort.InferenceSession(str(shipped / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.asarray(inputs)}
    onnx_classes = session.run(None, feed)[0].argmax(-1)
    assert (torch_classes == onnx_classes).mean() == 1.0
    assert (shipped / "weights.pt").stat().st_size < 4_000_000  # the repository stays small


def test_retrain_and_shadow_children_run_at_a_lower_priority(tmp_path: Path) -> None:
    from stack.demo_loop import lower_priority

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        lower_priority(child.pid, 10)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, own + 10)
    finally:
        child.kill()
        child.wait()
