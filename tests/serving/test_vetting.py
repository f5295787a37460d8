"""Hostile models meet onnx and ONNX Runtime in a child process, never in the serving one: a
model that aborts shape inference, a function bomb, an allocation hidden behind one op, an
endless Loop and a graph whose real outputs disagree with the card are each refused with one
line, at start and during a hot reload, while the process (and the live version) carries on."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import tiny_card, tiny_classifier_onnx

from auditstream.errors import ModelRefused
from auditstream.model_card import ModelCard, TensorSpec, TriageSpec
from auditstream.model_safety import check_model_proto
from auditstream.registry import ModelRegistry
from auditstream.settings import Settings
from serving.inference import infer
from serving.rollout import VersionLoader
from serving.runtime import load_session

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

OPSET = [helper.make_opsetid("", 17)]


def card(out_shape=(None, 4)) -> ModelCard:
    return ModelCard(name="hostile", version="0", task="classification",
                     inputs=[TensorSpec("x", "float32", [None, 4])], outputs=[TensorSpec("probs", "float32", list(out_shape))],
                     triage=TriageSpec(threshold=0.9), labels=["a", "b", "c", "d"])


def model(nodes, extra_outputs=(), functions=(), opsets=()) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph(list(nodes) + [helper.make_node("Softmax", ["x"], ["probs"], axis=1)] * (
        not any("probs" in n.output for n in nodes)), "hostile", [x], [probs, *extra_outputs])
    m = helper.make_model(graph, opset_imports=OPSET + list(opsets), functions=list(functions))
    m.ir_version = 8
    return m.SerializeToString()


def const(name: str, values, dtype=TensorProto.INT64):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, [len(values)], values))


def abort_model() -> bytes:
    """Expand of a constant to shape [-2, -1, 1], then Slice: onnx shape inference asserts (SIGABRT)."""
    nodes = [const("one", [1]), const("shape", [-2, -1, 1]), helper.make_node("Expand", ["one", "shape"], ["t"]),
             const("st", [3, 3]), const("en", [0, -1]), const("ax", [0, 1]), const("sp", [1, -1]),
             helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["u"])]
    return model(nodes, [helper.make_tensor_value_info("u", TensorProto.INT64, None)])


def bomb_model(levels: int) -> bytes:
    """Function F_k calls F_{k-1} twice: 2**levels nodes inlined from a file of ~2 * levels."""
    domain = [helper.make_opsetid("local.fn", 1)]
    functions = [helper.make_function("local.fn", "F0", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], OPSET)]
    for k in range(1, levels + 1):
        body = [helper.make_node(f"F{k - 1}", ["a"], ["t"], domain="local.fn"),
                helper.make_node(f"F{k - 1}", ["t"], ["b"], domain="local.fn")]
        functions.append(helper.make_function("local.fn", f"F{k}", ["a"], ["b"], body, OPSET + domain))
    return model([helper.make_node(f"F{levels}", ["x"], ["probs"], domain="local.fn")], functions=functions, opsets=domain)


def publish(tmp_path: Path, data: bytes, c: ModelCard | None = None) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models", max_constant_bytes=64 * 1024**2)
    registry.publish(c or card(), data)
    return registry


def test_a_model_that_aborts_shape_inference_is_refused_and_this_process_lives(tmp_path: Path) -> None:
    registry = publish(tmp_path, abort_model())
    with pytest.raises(ModelRefused, match=r"crashed \(SIGABRT\) while checking the model"):
        registry.load("hostile", "1")


def test_a_function_bomb_is_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(ModelRefused, match="function bomb"):
        check_model_proto(onnx.load_model_from_string(bomb_model(30)), "m.onnx")  # 2**30 nodes inlined
    assert time.perf_counter() - started < 2
    check_model_proto(onnx.load_model_from_string(bomb_model(3)), "m.onnx")  # 8 nodes: a model


def test_a_function_calling_itself_is_refused() -> None:
    domain = [helper.make_opsetid("local.fn", 1)]
    loop = helper.make_function("local.fn", "F", ["a"], ["b"], [helper.make_node("F", ["a"], ["b"], domain="local.fn")],
                                OPSET + domain)
    m = model([helper.make_node("F", ["x"], ["probs"], domain="local.fn")], functions=[loop], opsets=domain)
    with pytest.raises(ModelRefused, match="calls itself"):
        check_model_proto(onnx.load_model_from_string(m), "m.onnx")


def test_an_allocation_hidden_behind_one_op_is_refused_by_the_memory_limit(tmp_path: Path) -> None:
    """ConstantOfShape(Abs(Constant)): no static check sees the 8 GB; the child's RLIMIT_AS does."""
    nodes = [const("n", [2_000_000_000]), helper.make_node("Abs", ["n"], ["m"]),
             helper.make_node("ConstantOfShape", ["m"], ["big"])]
    registry = publish(tmp_path, model(nodes, [helper.make_tensor_value_info("big", TensorProto.FLOAT, None)]))
    loaded = registry.load("hostile", "1")  # the registry's static checks cannot see it
    with pytest.raises(ModelRefused, match="needed more than"):
        load_session(loaded, settings=Settings(max_model_constant_bytes=64 * 1024**2, device="cpu"))


def test_an_endless_loop_is_refused_after_the_timeout(tmp_path: Path) -> None:
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["v"], ["v_out"])],
                             "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                      helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                      helper.make_tensor_value_info("v", TensorProto.FLOAT, [None, 4])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None, 4])])
    go = helper.make_node("Constant", [], ["go"], value=helper.make_tensor("go_v", TensorProto.BOOL, [], [True]))
    nodes = [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t_v", TensorProto.INT64, [], [10**15])),
             go, helper.make_node("Loop", ["trips", "go", "x"], ["xf"], body=body),
             helper.make_node("Softmax", ["xf"], ["probs"], axis=1)]  # 1e15 trips before the answer
    registry = publish(tmp_path, model(nodes))
    started = time.perf_counter()
    with pytest.raises(ModelRefused, match="took longer than 2 s"):
        load_session(registry.load("hostile", "1"), settings=Settings(model_check_timeout_s=2, device="cpu"))
    assert time.perf_counter() - started < 20


def wide_model() -> bytes:
    """Declares probs [None, 4], returns [batch, 8]: index 7 is no label of the card."""
    return model([const("reps", [1, 2]), helper.make_node("Tile", ["x", "reps"], ["t"]),
                  helper.make_node("Softmax", ["t"], ["probs"], axis=1)])


def test_outputs_that_disagree_with_the_card_are_refused_at_warm_up(tmp_path: Path) -> None:
    registry = publish(tmp_path, wide_model())
    with pytest.raises(ModelRefused, match=r"output 'probs' has shape \[8, 8\] for a batch of 8, the card says \[8, 4\]"):
        load_session(registry.load("hostile", "1"), providers=["CPUExecutionProvider"])


def test_a_batch_whose_outputs_disagree_with_the_card_fails_not_mislabels() -> None:
    class Wide:  # a model whose output width depends on its input: fine at warm-up, wrong here
        def run(self, batch):
            return {"probs": np.full((len(batch), 8), 1 / 8, np.float32)}

        def probe(self) -> None:
            pass

    rows, _ = infer(Wide(), card(), [np.zeros(4, np.float32), np.zeros(4, np.float32)])
    assert all(isinstance(r, Exception) and "the card says" in str(r) for r in rows)


def test_a_hot_reload_to_a_crashing_model_leaves_the_live_version_serving(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx(seed=0))
    live = load_session(registry.load("tiny", "1"), providers=["CPUExecutionProvider"], warmup_batch=1)
    hostile = dataclasses.replace(tiny_card(), inputs=card().inputs, outputs=card().outputs, labels=card().labels)
    for data in (abort_model(), bomb_model(20), wide_model()):
        registry.publish(hostile, data)
    failures: list[BaseException] = []
    loader = VersionLoader(lambda v: load_session(registry.load("tiny", v), providers=["CPUExecutionProvider"]),
                           lambda v, e: failures.append(e))
    for version in ("2", "3", "4"):
        loader.want(version)
    deadline = time.monotonic() + 60
    while (loader.busy() or len(failures) < 3) and time.monotonic() < deadline:
        live.run(np.zeros((1, 8, 8), np.float32))  # the live version answers meanwhile
        time.sleep(0.01)
    assert sorted(str(e).split(": ", 1)[1][:40] for e in failures) == sorted(
        [w[:40] for w in ("ONNX shape inference crashed (SIGABRT) while checking the model",
                          "its model-local functions inline to 1,048,576 nodes",
                          "tiny v4: output 'probs' has shape [8, 8] for a batch of 8")])
    assert live.run(np.zeros((1, 8, 8), np.float32))["probs"].shape == (1, 10)


def image_model() -> tuple[bytes, ModelCard]:
    """A tiny valid model of a 3x224x224 image (602 kB a row)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 224, 224])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])
    node = helper.make_node("ReduceMean", ["image"], ["probs"], axes=[2, 3], keepdims=0)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    c = ModelCard(name="image", version="0", task="classification",
                  inputs=[TensorSpec("image", "float32", [None, 3, 224, 224])],
                  outputs=[TensorSpec("probs", "float32", [None, 3])], triage=TriageSpec(threshold=0.9),
                  labels=["a", "b", "c"])
    return m.SerializeToString(), c


def test_a_max_batch_over_the_budget_names_the_batch_setting_before_vetting(tmp_path: Path) -> None:
    """8192 rows of 602 kB: 4.9 GB of zeros in the child was blamed on the model."""
    data, c = image_model()
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(c, data)
    with pytest.raises(ModelRefused, match=r"a batch of 8192 rows \(AUDITSTREAM_MAX_BATCH_SIZE\).*lower "
                                           "AUDITSTREAM_MAX_BATCH_SIZE"):
        load_session(registry.load("image", "1"), settings=Settings(max_batch_size=8192, device="cpu"))


def test_running_out_of_memory_at_the_max_batch_names_the_setting() -> None:
    from serving.vetting import vet_session

    data, _ = image_model()
    with pytest.raises(ModelRefused, match=r"8192 rows \(AUDITSTREAM_MAX_BATCH_SIZE\).*ran out of memory.*lower "
                                           "AUDITSTREAM_MAX_BATCH_SIZE"):
        vet_session(data, "image-sha", "m.onnx", "image v1", ("image", "float32", (None, 3, 224, 224)),
                    [("probs", "float32", (None, 3))], (8, 1, 2, 8192), 64 * 1024**2, 60.0, max_batch=8192)


def gpu_only_model() -> bytes:
    """com.microsoft.BiasAdd: a CUDA kernel only (ONNX Runtime's CPU provider: NOT_IMPLEMENTED)."""
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 4, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None, 4, 4, 8])
    nodes = [helper.make_node("Identity", ["x"], ["s"]),
             helper.make_node("BiasAdd", ["x", "b", "s"], ["y"], domain="com.microsoft")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.ones(8, np.float16), "b")]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def test_a_gpu_only_operator_is_a_warning_on_a_gpu_plan_and_a_refusal_on_a_cpu_one(caplog: pytest.LogCaptureFixture) -> None:
    from serving.vetting import vet_session

    data = gpu_only_model()
    spec = ("x", "float16", (None, 4, 4, 8))
    with pytest.raises(ModelRefused, match="ONNX Runtime cannot load it: .*NOT_IMPLEMENTED"):
        vet_session(data, "gpu-only-sha", "m.onnx", "g v1", spec, [], (8, 1, 2), 2 * 1024**3, 60.0)
    with caplog.at_level("WARNING", logger="serving.vetting"):
        vet_session(data, "gpu-only-sha", "m.onnx", "g v1", spec, [], (8, 1, 2), 2 * 1024**3, 60.0, gpu=True)
    assert [r.message for r in caplog.records if "could not be vetted on the CPU" in r.message]


def test_the_vetting_memory_limit_counts_the_model_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditstream import model_sandbox
    from serving.vetting import vet_session

    seen: dict = {}
    monkeypatch.setattr(model_sandbox, "run_checked", lambda task, args, **kw: seen.update(kw))
    vet_session(b"12345", "sha", "m.onnx", "m v1", ("x", "float32", (None, 4)), [], (1,), 1 << 30, 60.0)
    assert seen["model_bytes"] == 5


def test_shape_inference_takes_the_settings_timeout_in_serving(tmp_path, monkeypatch) -> None:
    """AUDITSTREAM_MODEL_CHECK_TIMEOUT_S bounds every sandboxed step serving takes, shape inference
    included (it had a fixed 60 s whatever the setting); a registry made without it keeps the
    fixed default, and its timeout message then names no setting."""
    from auditstream import model_sandbox
    from auditstream.registry import ModelRegistry
    from tests.conftest import TINY_MODEL, tiny_card, tiny_classifier_onnx

    ModelRegistry(tmp_path).publish(tiny_card(), tiny_classifier_onnx(seed=11))
    seen = []
    real = model_sandbox.run_checked

    def spy(task, args, **kw):
        if kw.get("what") == "ONNX shape inference":
            seen.append((kw["timeout_s"], kw.get("timeout_setting")))
        return real(task, args, **kw)
    monkeypatch.setattr(model_sandbox, "run_checked", spy)
    ModelRegistry(tmp_path, check_timeout_s=7.5).load(TINY_MODEL)
    ModelRegistry(tmp_path).load(TINY_MODEL)
    assert seen == [(7.5, model_sandbox.TIMEOUT_SETTING), (model_sandbox.DEFAULT_TIMEOUT_S, None)]
