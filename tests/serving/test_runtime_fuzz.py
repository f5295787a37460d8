"""Fuzz: a hostile or broken model.onnx -- random bytes flipped, or random changes to the graph's
dims, element types, operators, attributes, initializers and opset -- whose card names its sha256
is either served (registry checks, ONNX Runtime session, warm-up) or refused with ModelRefused;
never another exception, never a crash of the process."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditstream.errors import ModelRefused
from auditstream.registry import CARD_FILE, ModelRegistry
from serving import runtime
from tests.conftest import TINY_MODEL, tiny_card, tiny_classifier_onnx

OPS = ["Identity", "Relu", "Softmax", "Reshape", "MatMul", "Flatten", "Gemm", "Transpose", "ReduceSum", "Tile",
       "Expand", "ConstantOfShape", "Range", "Loop", "If", "Cast", "Gather", "TopK", "NonZero", "Resize", "Conv",
       "NoSuchOp"]


def mutate_graph(model: onnx.ModelProto, rng: random.Random) -> None:
    graph, r = model.graph, rng.random()
    if r < 0.15:
        value = rng.choice(list(graph.input) + list(graph.output))
        dim = rng.choice(value.type.tensor_type.shape.dim)
        if rng.random() < 0.7:
            dim.dim_value = rng.choice([0, 1, 3, 7, 64, 2**31, 2**40, 2**62])
        else:
            dim.dim_param = rng.choice(["b", "", "x" * 300])
    elif r < 0.25:
        rng.choice(list(graph.input) + list(graph.output)).type.tensor_type.elem_type = rng.randrange(0, 25)
    elif r < 0.45:
        rng.choice(graph.node).op_type = rng.choice(OPS)
    elif r < 0.55:
        attr = rng.choice(graph.node).attribute.add()
        attr.name = rng.choice(["axis", "axes", "perm", "to", "k", "keepdims"])
        attr.type = onnx.AttributeProto.INT
        attr.i = rng.choice([-100, -1, 0, 1, 2, 2**40])
    elif r < 0.65:
        tensor = graph.initializer[0]
        tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 7, 64, 640, 2**20])
    elif r < 0.72:
        graph.initializer[0].data_type = rng.randrange(0, 25)
    elif r < 0.8:
        model.opset_import[0].version = rng.choice([1, 5, 9, 13, 17, 21, 25, 99])
    elif r < 0.85:
        model.ir_version = rng.choice([1, 3, 7, 10, 11, 99])
    elif r < 0.92:
        node = rng.choice(graph.node)
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["image", "W", "flat", "logits", "probs", "", "x"])
    elif len(graph.node) > 1:
        del graph.node[rng.randrange(len(graph.node))]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos, op = rng.randrange(len(out)), rng.random()
        if op < 0.6:
            out[pos] = rng.randrange(256)
        elif op < 0.8:
            del out[pos:pos + rng.randint(1, 8)]
        else:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def serve_or_refuse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        registry = ModelRegistry(Path(root) / "models")
        published = registry.publish(tiny_card(), data)  # the card names these bytes' sha256
        assert json.loads((published.directory / CARD_FILE).read_text())["sha256"] == hashlib.sha256(data).hexdigest()
        try:
            session = runtime.load_session(registry.load(TINY_MODEL), warmup_batch=2, intra_op_threads=1)
        except ModelRefused as e:
            assert "\n" not in str(e)
            return
        session.probe()
        session.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), changes=st.integers(1, 3))
def test_property_a_mutated_graph_is_served_or_refused(seed: int, changes: int) -> None:
    rng = random.Random(seed)
    model = onnx.load_model_from_string(tiny_classifier_onnx())
    for _ in range(changes):
        mutate_graph(model, rng)
    serve_or_refuse(model.SerializeToString())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_property_mutated_bytes_are_served_or_refused(seed: int) -> None:
    serve_or_refuse(mutate_bytes(tiny_classifier_onnx(), random.Random(seed)))
