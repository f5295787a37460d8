"""auditstream.model_safety on hand-built protos (RELIABILITY #14): every place an ONNX file can
hold a tensor is searched for external data, recursively -- graph initializers, sparse
initializers, node attributes (``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``, also when
the attribute's declared type lies), subgraphs (If/Loop/Scan bodies, ``g``/``graphs``), model-local
functions and their attribute defaults, training-info graphs -- and a sparse tensor is held to
the memory budget by its dense size (ONNX Runtime densifies sparse initializers when it loads a
model). Absurd dimensions (negative, or more elements than an int64 counts) are refused with a
message, never an OverflowError.

The end-to-end refusals (registry.load, ``auditstream serve`` exit code 2) of the reproducers are
in test_registry.py's HOSTILE table."""

from __future__ import annotations

import time

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper

from auditstream.errors import ModelRefused
from auditstream.model_safety import MAX_CONSTANT_BYTES, check_model_proto, constant_bytes

OPSET = [helper.make_opsetid("", 17)]
LOCAL = helper.make_opsetid("local.fn", 1)  # the domain of the model-local functions below
MiB = 1024**2


def external(name: str, location: str = "secret.bin", data_type: int = TensorProto.FLOAT, n: int = 4) -> TensorProto:
    """A tensor whose bytes ONNX Runtime would read from ``location`` (relative to its working
    directory when the session is built from bytes, as serving does)."""
    t = TensorProto(name=name, data_type=data_type, dims=[n], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def values(name: str = "v") -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])


def indices(name: str = "i") -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [1], [0])


def sparse(dims=(1, 4), vals: TensorProto | None = None, idx: TensorProto | None = None) -> onnx.SparseTensorProto:
    return helper.make_sparse_tensor(vals or values(), idx or indices(), list(dims))


def graph(nodes=(), initializer=(), sparse_initializer=(), name: str = "g") -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    return helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), *nodes], name, [x], [y],
                             initializer=list(initializer), sparse_initializer=list(sparse_initializer))


def model(g: onnx.GraphProto, functions=(), training=()) -> onnx.ModelProto:
    m = helper.make_model(g, opset_imports=OPSET + ([LOCAL] if functions else []), functions=list(functions))
    for init in training:
        m.training_info.add().initialization.CopyFrom(init)
    return m


# -- where a tensor can hide: a payload (the tensor, in a graph) and containers around it ---------

def payload(kind: str, tensor_external: bool, location: str) -> onnx.GraphProto:
    """A graph holding one tensor at the place ``kind`` names; external data when asked."""
    dense = external("t", location) if tensor_external else helper.make_tensor("t", TensorProto.FLOAT, [4], [0.0] * 4)
    vals = external("sv", location) if tensor_external else values("sv")
    idx = external("si", location, TensorProto.INT64, 1) if tensor_external else indices("si")
    in_values = sparse(vals=vals)
    in_indices = sparse(vals=values("sv2"), idx=idx)
    mistyped = AttributeProto(name="sparse_value", type=AttributeProto.INT)  # says INT, holds a tensor
    mistyped.sparse_tensor.CopyFrom(in_values)
    node_with = {
        "Constant value (t)": lambda: helper.make_node("Constant", [], ["c"], value=dense),
        "Constant sparse_value, values": lambda: helper.make_node("Constant", [], ["c"], sparse_value=in_values),
        "Constant sparse_value, indices": lambda: helper.make_node("Constant", [], ["c"], sparse_value=in_indices),
        "tensors attribute": lambda: helper.make_node("Identity", ["x"], ["c"], extra=[dense]),
        "sparse_tensors attribute": lambda: helper.make_node("Identity", ["x"], ["c"], extra=[in_values]),
    }
    if kind in node_with:
        return graph([node_with[kind]()])
    if kind == "attribute whose type lies":
        node = helper.make_node("Constant", [], ["c"])
        node.attribute.append(mistyped)
        return graph([node])
    if kind == "initializer":
        return graph(initializer=[dense])
    if kind == "sparse_initializer, values":
        return graph(sparse_initializer=[in_values])
    assert kind == "sparse_initializer, indices", kind
    return graph(sparse_initializer=[in_indices])


PAYLOADS = ["initializer", "sparse_initializer, values", "sparse_initializer, indices", "Constant value (t)",
            "Constant sparse_value, values", "Constant sparse_value, indices", "tensors attribute",
            "sparse_tensors attribute", "attribute whose type lies"]
CONTAINERS = ["If", "Loop", "Scan", "graphs attribute", "function", "function attribute default", "training info"]


def hide(kind: str, containers: list[str], tensor_external: bool = True,
         location: str = "secret.bin") -> onnx.ModelProto:
    """A model whose only remarkable tensor sits at ``kind``, wrapped innermost-first in
    ``containers``. Structurally what ONNX Runtime walks; not necessarily a runnable model."""
    g, functions, training = payload(kind, tensor_external, location), [], []
    for i, container in enumerate(containers):
        empty = graph(name=f"empty{i}")
        if container == "If":
            g = graph([helper.make_node("If", ["c"], ["z"], then_branch=g, else_branch=empty)], name=f"if{i}")
        elif container == "Loop":
            g = graph([helper.make_node("Loop", ["n", ""], ["z"], body=g)], name=f"loop{i}")
        elif container == "Scan":
            g = graph([helper.make_node("Scan", ["x"], ["z"], body=g, num_scan_inputs=1)], name=f"scan{i}")
        elif container == "graphs attribute":
            g = graph([helper.make_node("Identity", ["x"], ["z"], branches=[empty, g])], name=f"graphs{i}")
        elif container == "function":
            body = [helper.make_node("If", ["c"], ["b"], then_branch=g, else_branch=empty)]
            functions.append(helper.make_function("local.fn", f"f{i}", ["a"], ["b"], body, OPSET))
            g = graph([helper.make_node(f"f{i}", ["x"], ["z"], domain="local.fn")], name=f"calls_f{i}")
        elif container == "function attribute default":
            identity = helper.make_node("Identity", ["a"], ["b"])
            function = helper.make_function("local.fn", f"f{i}", ["a"], ["b"], [identity], OPSET)
            function.attribute_proto.append(helper.make_attribute("body", g))
            functions.append(function)
            g = graph([helper.make_node(f"f{i}", ["x"], ["z"], domain="local.fn")], name=f"calls_f{i}")
        else:
            assert container == "training info", container
            training.append(g)
            g = graph(name=f"after_training{i}")
    return model(g, functions, training)


@pytest.mark.parametrize("location", ["secret.bin", "../cwd/secret.bin"])
@pytest.mark.parametrize("kind", PAYLOADS)
def test_external_data_is_refused_wherever_a_tensor_sits(kind: str, location: str) -> None:
    message = f"references external data file {location!r}; models must be self-contained"
    with pytest.raises(ModelRefused, match=message):
        check_model_proto(hide(kind, [], location=location), "m.onnx")
    check_model_proto(hide(kind, [], tensor_external=False), "m.onnx")  # the same model, self-contained: fine


@pytest.mark.parametrize("container", CONTAINERS)
def test_external_data_is_refused_inside_every_container(container: str) -> None:
    with pytest.raises(ModelRefused, match="references external data file 'secret.bin'"):
        check_model_proto(hide("Constant sparse_value, values", [container]), "m.onnx")
    check_model_proto(hide("Constant sparse_value, values", [container], tensor_external=False), "m.onnx")


def test_external_data_is_refused_deep_down() -> None:
    """A sparse Constant in a Loop body in an If branch in a function whose default attribute is
    a Scan body inside a training-info graph."""
    path = ["Loop", "If", "function", "Scan", "function attribute default", "training info", "graphs attribute"]
    with pytest.raises(ModelRefused, match="'sv' in .* references external data file '../cwd/secret.bin'"):
        check_model_proto(hide("Constant sparse_value, values", path, location="../cwd/secret.bin"), "m.onnx")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(PAYLOADS), containers=st.lists(st.sampled_from(CONTAINERS), max_size=5),
       location=st.sampled_from(["secret.bin", "../cwd/secret.bin", "/etc/passwd", "sub/dir/w.bin"]))
def test_property_external_data_never_passes(kind: str, containers: list[str], location: str) -> None:
    """Wherever and however deep the tensor sits, external data is refused -- and the same model
    without it is not (the check finds the reference, it does not refuse everything)."""
    with pytest.raises(ModelRefused, match=f"references external data file {location!r}"):
        check_model_proto(hide(kind, containers, location=location), "m.onnx")
    check_model_proto(hide(kind, containers, tensor_external=False), "m.onnx")


# -- sparse tensors count at their dense size ----------------------------------------------------

def test_an_unused_sparse_initializer_counts_at_its_dense_size() -> None:
    """[8192, 8192] with one non-zero: 256 MiB once ONNX Runtime densifies it at load (it took
    277 MiB of RSS), not the 12 bytes the file stores."""
    m = model(graph(sparse_initializer=[sparse([8192, 8192])]))
    assert constant_bytes(m) >= 8192 * 8192 * 4
    with pytest.raises(ModelRefused, match=r"constant tensors .* need 0\.\d GiB, over the 16,777,216 bytes budget"):
        check_model_proto(m, "m.onnx", max_constant_bytes=16 * MiB)
    check_model_proto(m, "m.onnx", max_constant_bytes=512 * MiB)  # fits a budget that holds it


@pytest.mark.parametrize("where", ["sparse_initializer", "Constant sparse_value", "sparse Constant in a function"])
def test_a_40_gb_sparse_tensor_is_refused_from_its_dims_alone(where: str) -> None:
    s = sparse([100_000, 100_000])
    in_function = helper.make_function("local.fn", "f", ["a"], ["b"],
                                       [helper.make_node("Constant", [], ["b"], sparse_value=s)], OPSET)
    m = {"sparse_initializer": lambda: model(graph(sparse_initializer=[s])),
         "Constant sparse_value": lambda: model(graph([helper.make_node("Constant", [], ["c"], sparse_value=s)])),
         "sparse Constant in a function": lambda: model(graph([helper.make_node("f", ["x"], ["z"], domain="local.fn")]),
                                                        [in_function]),
         }[where]()
    with pytest.raises(ModelRefused, match=r"constant tensors .* need 37\.3 GiB, over the 2\.0 GiB budget"):
        check_model_proto(m, "m.onnx", MAX_CONSTANT_BYTES)


ABSURD = {
    "sparse dims with a negative": (lambda: graph(sparse_initializer=[sparse([-1, 4])]), r"'v' .* dims \[-1, 4\]"),
    "dense dims with a negative": (lambda: graph(initializer=[TensorProto(name="w", data_type=1, dims=[-3])]),
                                   r"'w' .* dims \[-3\]"),
    "sparse dims past int64": (lambda: graph(sparse_initializer=[sparse([2**62, 2**62])]), "more elements than"),
    "dense dims past int64": (lambda: graph(initializer=[TensorProto(name="w", data_type=1, dims=[2**62] * 20)]),
                              "more elements than"),
    "sparse values with a negative dim": (
        lambda: graph(sparse_initializer=[sparse(vals=TensorProto(name="v", data_type=1, dims=[-1]))]),
        r"'v' .* \[-1\]"),
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_dims_are_refused_with_a_message(case: str) -> None:
    build, message = ABSURD[case]
    with pytest.raises(ModelRefused, match=message) as info:
        check_model_proto(model(build()), "m.onnx")
    assert "not a tensor" in str(info.value) or "more elements than" in str(info.value)


def test_huge_sizes_never_overflow_the_message() -> None:
    """40 dims of 2**62 in a shape ConstantOfShape reads (computed, not stored): refused as over
    the budget, not an OverflowError while formatting the size."""
    shape = helper.make_tensor("s", TensorProto.INT64, [40], [2**62] * 40)
    m = model(graph([helper.make_node("ConstantOfShape", ["s"], ["z"])], initializer=[shape]))
    with pytest.raises(ModelRefused, match="over the 2.0 GiB budget"):
        check_model_proto(m, "m.onnx")


def test_a_hundred_thousand_huge_dims_are_refused_quickly() -> None:
    """The element count stops at the first dim past the limit: a file with 100,000 dims of
    2**62 must not make the check multiply ever larger integers (minutes)."""
    m = model(graph(initializer=[TensorProto(name="w", data_type=1, dims=[2**62] * 100_000)]))
    started = time.perf_counter()
    with pytest.raises(ModelRefused, match="more elements than"):
        check_model_proto(m, "m.onnx")
    assert time.perf_counter() - started < 5.0


@settings(max_examples=200, deadline=None)
@given(dims=st.lists(st.one_of(st.integers(-3, 70_000), st.integers(-(2**63), 2**63 - 1)), max_size=5),
       budget=st.just(16 * MiB))
def test_property_sparse_dims_are_refused_or_fit_the_budget(dims: list[int], budget: int) -> None:
    """Any dims on a sparse initializer: ModelRefused, or accepted with its dense size counted
    and within the budget. Never another exception."""
    m = model(graph(sparse_initializer=[sparse(dims)]))
    dense = 4
    for d in dims:
        dense *= d
    try:
        check_model_proto(m, "m.onnx", budget)
    except ModelRefused:
        return
    assert all(d >= 0 for d in dims) and dense <= budget and constant_bytes(m) >= dense
