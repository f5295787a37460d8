"""check_function_nesting keys model-local functions as ONNX IR 10 and ONNX Runtime do, by
(domain, name, overload); a layer function reused per layer is a model, not a bomb; the shape
inference step's timeout message names no setting it does not read."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from auditstream import model_safety  # noqa: E402
from auditstream.errors import ModelRefused  # noqa: E402
from auditstream.model_safety import check_function_nesting  # noqa: E402

OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]


def fn(overload: str, nodes) -> onnx.FunctionProto:
    f = helper.make_function("local", "F", ["x"], ["y"], nodes, OPSETS)
    f.overload = overload
    return f


def call(overload: str, i: str, o: str) -> onnx.NodeProto:
    node = helper.make_node("F", [i], [o], domain="local")
    node.overload = overload
    return node


def with_functions(nodes, functions) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, functions=list(functions), opset_imports=OPSETS)
    m.ir_version = 10
    return m


def overload_bomb(levels: int) -> onnx.ModelProto:
    """Overloads of one function F, each calling the previous twice; the leaf defined last (keyed
    by (domain, name) only, every call was sized as the leaf: one node)."""
    functions = [fn(str(i), [call(str(i - 1), "x", "t"), call(str(i - 1), "t", "y")]) for i in range(1, levels + 1)]
    functions.append(fn("0", [helper.make_node("Identity", ["x"], ["y"])]))
    return with_functions([call(str(levels), "x", "y")], functions)


def test_an_overload_bomb_is_refused() -> None:
    with pytest.raises(ModelRefused, match="function bomb"):
        check_function_nesting(overload_bomb(21), "m.onnx")  # 2**21 nodes, 21 levels deep
    check_function_nesting(overload_bomb(3), "m.onnx")  # 8 nodes: a model


def test_a_call_resolves_by_its_overload() -> None:
    neg = fn("neg", [helper.make_node("Neg", ["x"], ["y"])])
    big = fn("big", [helper.make_node("Neg", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}" if i < 99 else "y"])
                     for i in range(100)])
    # 50,000 calls of the one-node overload: fine; the same calls of the 100-node overload: 5,000,000 nodes.
    calls = [call("neg", "x" if i == 0 else f"h{i}", f"h{i + 1}" if i < 49_999 else "y") for i in range(50_000)]
    check_function_nesting(with_functions(calls, [neg, big]), "m.onnx")  # the call's overload, not the last defined
    for c in calls:
        c.overload = "big"
    with pytest.raises(ModelRefused, match="inline to 5,000,000 nodes"):
        check_function_nesting(with_functions(calls, [big, neg]), "m.onnx")


def test_a_function_defined_twice_is_refused() -> None:
    one = fn("a", [helper.make_node("Identity", ["x"], ["y"])])
    two = fn("a", [helper.make_node("Neg", ["x"], ["y"])])
    with pytest.raises(ModelRefused, match=r"local.F \(overload 'a'\) is defined twice"):
        check_function_nesting(with_functions([call("a", "x", "y")], [one, two]), "m.onnx")
    check_function_nesting(with_functions([call("a", "x", "y")], [one, fn("b", list(two.node))]), "m.onnx")


def test_a_layer_function_reused_per_layer_is_a_model() -> None:
    """96 calls of a 400-node layer function (38,400 nodes inlined from ~500, 77-fold): ONNX
    Runtime runs it in seconds; the 64-fold growth rule refused it."""
    ops = ["Relu", "Neg", "Abs", "Neg"]
    layer = helper.make_function("local", "Layer", ["x"], ["y"], [
        helper.make_node(ops[i % 4], ["x" if i == 0 else f"t{i}"], ["y" if i == 399 else f"t{i + 1}"])
        for i in range(400)], [helper.make_opsetid("", 18)])
    main = [helper.make_node("Layer", ["x" if i == 0 else f"h{i}"], ["y" if i == 95 else f"h{i + 1}"], domain="local")
            for i in range(96)]
    check_function_nesting(with_functions(main, [layer]), "m.onnx")


def test_shape_inference_timeout_names_no_setting_it_does_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_run_checked(task, args, **kw):
        seen.update(kw)

    from auditstream import model_sandbox

    monkeypatch.setattr(model_sandbox, "run_checked", fake_run_checked)
    model_safety.check_static_tensors(b"model", "sha", "m.onnx")
    assert seen["timeout_setting"] is None and seen["model_bytes"] == 5
    model_safety.check_static_tensors(b"model", "sha", "m.onnx", timeout_s=5)
    assert seen["timeout_setting"] == "AUDITSTREAM_MODEL_CHECK_TIMEOUT_S" and seen["timeout_s"] == 5
