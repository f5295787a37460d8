"""Model safety (RELIABILITY #14): the registry refuses hostile or damaged model files — checksum
mismatch, truncation, external-data references, unknown operator domains (also inside If/Loop
bodies), a missing file — before any inference session exists, each with a message that says
why; a good model loads and runs; publishing is atomic and numbers versions.

Models are built with ``onnx.helper`` (tiny, no torch)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from auditstream import registry_files
from auditstream.errors import ModelNotFound, ModelRefused, PublishFailed
from auditstream.registry import CARD_FILE, ONNX_FILE, ModelCard, ModelRegistry, TensorSpec, TriageSpec, verify_onnx

OPSET = [helper.make_opsetid("", 17)]


def make_card(name: str = "tiny") -> ModelCard:
    return ModelCard(
        name=name,
        version="0",
        task="classification",
        inputs=[TensorSpec("x", "float32", [None, 4])],
        outputs=[TensorSpec("y", "float32", [None, 4])],
        triage=TriageSpec(threshold=0.9),
        labels=["a", "b", "c", "d"],
    )


def io():
    return (
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )


def good_model() -> onnx.ModelProto:
    """y = x + w, w an initializer: a graph with weights, like a real one."""
    inputs, outputs = io()
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "good", inputs, outputs, [w])
    return helper.make_model(graph, opset_imports=OPSET)


def external_weights_model() -> onnx.ModelProto:
    model = good_model()
    w = model.graph.initializer[0]
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model


def _branch(name: str, node: onnx.NodeProto) -> onnx.GraphProto:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [None, 4])])


def if_model(then_node: onnx.NodeProto, extra_opsets=()) -> onnx.ModelProto:
    """y = then_branch if cond else x: the hostile node sits in a subgraph only."""
    inputs, outputs = io()
    inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    else_branch = _branch("else", helper.make_node("Identity", ["x"], ["y_else"]))
    node = helper.make_node("If", ["cond"], ["y"], then_branch=_branch("then", then_node), else_branch=else_branch)
    graph = helper.make_graph([node], "with_if", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET + list(extra_opsets))


def loop_model(body_node: onnx.NodeProto) -> onnx.ModelProto:
    inputs, outputs = io()
    inputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), body_node],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(body_node.output[0], TensorProto.FLOAT, [None, 4])],
    )
    graph = helper.make_graph([helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], "with_loop", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET)


def evil_node(inp: str, out: str) -> onnx.NodeProto:
    return helper.make_node("ReadFile", [inp], [out], domain="com.evil.ops")


def custom_domain_model() -> onnx.ModelProto:
    inputs, outputs = io()
    graph = helper.make_graph([evil_node("x", "y")], "custom", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("com.evil.ops", 1)])


def local_function_model(call_op: str = "AddOne") -> onnx.ModelProto:
    """A model-local function (domain 'local.fn') is allowed: its body is inside the file."""
    one = helper.make_node("Constant", [], ["one"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [1.0]))
    body = [one, helper.make_node("Add", ["a", "one"], ["b"])]
    function = helper.make_function("local.fn", "AddOne", ["a"], ["b"], body, OPSET)
    inputs, outputs = io()
    graph = helper.make_graph([helper.make_node(call_op, ["x"], ["y"], domain="local.fn")], "fn", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("local.fn", 1)], functions=[function])


@pytest.fixture
def no_session(monkeypatch):
    """Fails the test if anything creates an inference session while the registry decides."""
    created = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: created.append(a) or pytest.fail("session created"))
    yield
    assert created == []


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def publish(registry: ModelRegistry, model: onnx.ModelProto, name: str = "tiny"):
    return registry.publish(make_card(name), model.SerializeToString())


def test_good_model_loads_and_runs(registry):
    published = publish(registry, good_model())
    loaded = registry.load("tiny")
    assert loaded.onnx_path == published.onnx_path and loaded.card == published.card
    session = onnxruntime.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((2, 4), dtype=np.float32)})
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]] * 2)


def test_model_local_function_is_allowed(registry):
    publish(registry, local_function_model())
    loaded = registry.load("tiny")
    session = onnxruntime.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
    np.testing.assert_array_equal(y, [[2, 2, 2, 2]])


def _damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate], ids=["changed", "truncated"])
def test_checksum_mismatch_is_refused(registry, no_session, damage):
    published = publish(registry, good_model())
    damage(published.onnx_path)
    with pytest.raises(ModelRefused, match="does not match the model card") as info:
        registry.load("tiny")
    assert "re-export or restore" in str(info.value) and info.value.path == published.onnx_path


def test_truncated_file_with_matching_card_is_refused_as_unreadable(tmp_path, no_session):
    """A file cut short before it was published (checksum of the cut file) still fails to parse."""
    path = tmp_path / ONNX_FILE
    data = good_model().SerializeToString()
    path.write_bytes(data[: len(data) - 5])
    from auditstream.registry import sha256_file

    with pytest.raises(ModelRefused, match="not a readable ONNX protobuf"):
        verify_onnx(path, sha256_file(path))


HOSTILE = {
    "external data in main graph": (external_weights_model, r"references external data file '\.\./\.\./\.\./etc/passwd'"),
    "external data in a Constant inside If": (
        lambda: if_model(_constant_external()),
        "references external data file 'weights.bin'",
    ),
    "custom op domain in main graph": (custom_domain_model, "imports operator domain 'com.evil.ops'"),
    "custom op inside If, domain imported": (
        lambda: if_model(evil_node("x", "y_then"), [helper.make_opsetid("com.evil.ops", 1)]),
        "imports operator domain 'com.evil.ops'",
    ),
    "custom op inside If, domain not imported": (
        lambda: if_model(evil_node("x", "y_then")),
        "operator 'ReadFile' of domain 'com.evil.ops'",
    ),
    "custom op inside Loop body": (lambda: loop_model(evil_node("x_in", "x_out")), "operator 'ReadFile' of domain 'com.evil.ops'"),
    "undefined op in a local function's domain": (
        lambda: local_function_model("ShellOut"),
        "operator 'ShellOut' of domain 'local.fn', neither standard nor a function",
    ),
}


def _with_io(x_type: int = TensorProto.FLOAT, x_shape=(None, 4), y_name: str = "y") -> onnx.ModelProto:
    """y = x + w with the graph's own declared input/output types: a model that disagrees with
    the card (which says x float32 [None, 4] -> y float32 [None, 4])."""
    inputs = [helper.make_tensor_value_info("x", x_type, list(x_shape))]
    outputs = [helper.make_tensor_value_info(y_name, x_type, list(x_shape))]
    w = helper.make_tensor("w", x_type, [4], [1, 2, 3, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], [y_name])], "mismatch", inputs, outputs, [w])
    return helper.make_model(graph, opset_imports=OPSET)


def _huge_constant_of_shape() -> onnx.ModelProto:
    """A 40 GB ConstantOfShape that ONNX Runtime would try to allocate at warm-up."""
    model = good_model()
    shape = helper.make_tensor("big_shape", TensorProto.INT64, [2], [100_000, 100_000])
    model.graph.initializer.append(shape)
    model.graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["junk"]))
    model.graph.output.append(helper.make_tensor_value_info("junk", TensorProto.FLOAT, [100_000, 100_000]))
    return model


def _built_from_constants(op: str) -> onnx.ModelProto:
    """A good model plus one tensor that only ``op`` builds, its ~40 GB size fixed by small
    constants: nothing in the file is large, the allocation would happen at warm-up."""
    model = good_model()
    t = helper.make_tensor
    inits, inputs = {
        "Range": ([t("start", TensorProto.FLOAT, [], [0.0]), t("limit", TensorProto.FLOAT, [], [1e10]),
                   t("delta", TensorProto.FLOAT, [], [1.0])], ["start", "limit", "delta"]),
        "Tile": ([t("repeats", TensorProto.INT64, [1], [2_500_000_000])], ["w", "repeats"]),
        "Expand": ([t("to", TensorProto.INT64, [2], [2_500_000_000, 4])], ["w", "to"]),
        # the shape is computed (Concat of two constants), not stored: only shape inference sees it
        "ConstantOfShape": ([t("rows", TensorProto.INT64, [1], [100_000]), t("cols", TensorProto.INT64, [1], [100_000])],
                            ["shape"]),
    }[op]
    model.graph.initializer.extend(inits)
    if op == "ConstantOfShape":
        model.graph.node.append(helper.make_node("Concat", ["rows", "cols"], ["shape"], axis=0))
    model.graph.node.append(helper.make_node(op, inputs, ["junk"]))
    model.graph.output.append(helper.make_tensor_value_info("junk", TensorProto.FLOAT, None))
    return model


def _output_as(elem_type: int, shape) -> onnx.ModelProto:
    """x float32 [None, 4] as the card says, then y = Cast(x) declared with its own type/shape."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])]
    outputs = [helper.make_tensor_value_info("y", elem_type, list(shape))]
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=elem_type)], "cast", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET)


HOSTILE.update({
    "output dtype disagrees with the card": (lambda: _output_as(TensorProto.DOUBLE, (None, 4)),
                                             "output 'y' is float64 in the graph but float32"),
    "output rank disagrees with the card": (lambda: _output_as(TensorProto.FLOAT, (None, 4, 1)),
                                            r"output 'y' has shape \['\?', 4, 1\]"),
    "input dtype disagrees with the card": (lambda: _with_io(TensorProto.DOUBLE), "input 'x' is float64 in the graph but float32"),
    "input shape disagrees with the card": (lambda: _with_io(x_shape=(None, 5)), r"input 'x' has shape \['\?', 5\]"),
    "output missing from the graph": (lambda: _with_io(y_name="z"), "the card's output 'y' is not a graph output"),
    "40 GB constant at warm-up": (_huge_constant_of_shape, "need 37.3 GiB, over the 2.0 GiB budget"),
    **{f"40 GB {op} at warm-up": (lambda op=op: _built_from_constants(op),
                                  r"(need|would take) 37\.3 GiB.* over the 2\.0 GiB budget")
       for op in ("Range", "Tile", "Expand", "ConstantOfShape")},
})


def test_an_empty_model_file_is_refused(registry, no_session):
    published = publish(registry, good_model())
    published.onnx_path.write_bytes(b"")
    with pytest.raises(ModelRefused, match="model.onnx is empty"):
        registry.load("tiny")
    from auditstream.model_safety import verify_onnx_bytes
    import hashlib

    with pytest.raises(ModelRefused, match="holds no graph"):  # parses (protobuf accepts b"\n\x00") but is no model
        data = onnx.ModelProto(ir_version=8).SerializeToString()
        verify_onnx_bytes(data, hashlib.sha256(data).hexdigest())


def _constant_external() -> onnx.NodeProto:
    tensor = helper.make_tensor("c", TensorProto.FLOAT, [1, 4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    return helper.make_node("Constant", [], ["y_then"], value=tensor)


def _sparse_constant_reading(location: str) -> onnx.ModelProto:
    """The reproducer: a Constant whose sparse_value's values are external data at a relative
    path. ONNX Runtime (session from bytes) read that file of its working directory into a graph
    output, and the registry accepted it: sparse attributes were not searched."""
    values = onnx.TensorProto(name="C_v", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    indices = helper.make_tensor("C_i", TensorProto.INT64, [4], [0, 1, 2, 3])
    model = good_model()
    sparse_value = helper.make_sparse_tensor(values, indices, [1, 4])
    model.graph.node.append(helper.make_node("Constant", [], ["leak"], sparse_value=sparse_value))
    model.graph.output.append(helper.make_tensor_value_info("leak", TensorProto.FLOAT, [1, 4]))
    return model


def _sparse_initializer(dims) -> onnx.ModelProto:
    """An unused sparse initializer with one non-zero: ONNX Runtime densifies it at load."""
    model = good_model()
    values = helper.make_tensor("S_v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("S_i", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(dims)))
    return model


HOSTILE.update({
    "external data in a Constant's sparse_value, relative path": (
        lambda: _sparse_constant_reading("secret.bin"),
        "tensor 'C_v' in good references external data file 'secret.bin'"),
    "external data in a Constant's sparse_value, ../ path": (
        lambda: _sparse_constant_reading("../cwd/secret.bin"), r"references external data file '\.\./cwd/secret\.bin'"),
    "40 GB sparse initializer with one non-zero": (
        lambda: _sparse_initializer([100_000, 100_000]),
        r"sparse ones at their dense size.* need 37\.3 GiB, over the 2\.0 GiB"),
    "sparse initializer with a negative dim": (
        lambda: _sparse_initializer([-1, 4]), r"'S_v' in good has dims \[-1, 4\]"),
})


def test_a_sparse_initializer_is_held_to_the_budget_at_its_dense_size(registry, no_session):
    """The reproducer: [8192, 8192] with one non-zero cost 277 MiB at session creation, and was
    accepted under a 16 MiB budget with 2,572 bytes counted."""
    publish(registry, _sparse_initializer([8192, 8192]))
    with pytest.raises(ModelRefused, match=r"need 0\.\d GiB, over the 16,777,216 bytes budget"):
        ModelRegistry(registry.root, max_constant_bytes=16 * 1024**2).load("tiny")
    assert ModelRegistry(registry.root).load("tiny").model_bytes  # 256 MiB is within the 2 GiB default


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_is_refused_before_a_session(registry, no_session, case):
    build, message = HOSTILE[case]
    published = publish(registry, build())  # a correct checksum: only the content is hostile
    with pytest.raises(ModelRefused, match=message) as info:
        registry.load("tiny")
    assert str(info.value).startswith(f"refusing model {published.onnx_path}: ")


def test_missing_onnx_file_is_refused(registry, no_session):
    published = publish(registry, good_model())
    published.onnx_path.unlink()
    with pytest.raises(ModelRefused, match="model.onnx is missing"):
        registry.load("tiny")


def test_card_without_checksum_is_refused(tmp_path, no_session):
    path = tmp_path / ONNX_FILE
    path.write_bytes(good_model().SerializeToString())
    with pytest.raises(ModelRefused, match=r"\(none\)"):
        verify_onnx(path, "")


def test_card_that_does_not_parse_is_refused(registry):
    published = publish(registry, good_model())
    (published.directory / CARD_FILE).write_text('{"name": "tiny", "task": "poetry"}')
    with pytest.raises(ModelRefused, match="model card does not parse"):
        registry.load("tiny")


def test_copied_version_directory_is_refused(registry):
    published = publish(registry, good_model())
    shutil.copytree(published.directory, published.directory.parent / "7")
    with pytest.raises(ModelRefused, match="card says tiny version 1 but lives in tiny/7"):
        registry.load("tiny")
    assert registry.load("tiny", "1").card.version == "1"


@pytest.mark.parametrize("name,version", [("nope", None), ("tiny", "9"), ("../models/tiny", None), ("tiny", "../1")])
def test_unknown_or_escaping_names_are_not_found(registry, name, version):
    publish(registry, good_model())
    with pytest.raises(ModelNotFound, match="not found under"):
        registry.load(name, version)


@pytest.mark.parametrize("version, says", [
    ("abc", "model tiny version abc not found under {root} ('abc' is not a version number); its versions are 1, 2"),
    ("9", "model tiny version 9 not found under {root}; its versions are 1, 2"),
])  # fmt: skip
def test_a_missing_version_of_a_known_model_names_the_versions_there_are(registry, version, says):
    """``serve --version abc`` / ``rollback --to abc`` said only "version abc not found"."""
    publish(registry, good_model())
    publish(registry, good_model())
    for call in (registry.load, registry.card, registry.set_live):
        with pytest.raises(ModelNotFound) as e:
            call("tiny", version)
        assert str(e.value) == says.format(root=registry.root)


def test_publish_numbers_versions_and_records_checksum(registry):
    first = publish(registry, good_model())
    second = publish(registry, local_function_model())
    assert (first.card.version, second.card.version) == ("1", "2")
    assert registry.versions("tiny") == ["1", "2"] and registry.latest("tiny") == "2" and registry.names() == ["tiny"]
    assert registry.load("tiny").card.sha256 == second.card.sha256 != first.card.sha256
    assert not [p for p in (registry.root / "tiny").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_versions_sort_as_numbers(registry):
    for _ in range(11):
        publish(registry, good_model())
    assert registry.versions("tiny")[-3:] == ["9", "10", "11"] and registry.latest("tiny") == "11"


def test_concurrent_publishers_never_share_a_version(registry):
    data = good_model().SerializeToString()
    results, barrier = [], threading.Barrier(8)

    def one():
        barrier.wait()
        results.append(registry.publish(make_card(), data).card.version)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=int) == [str(i) for i in range(1, 9)]
    for version in results:
        registry.load("tiny", version)  # every version complete and verified


def test_publish_fails_loudly_instead_of_retrying_forever(registry, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PublishFailed, match="cannot publish .*: Permission denied"):  # one line, not a traceback
        publish(registry, good_model())
    assert list((registry.root / "tiny").iterdir()) == []  # the temporary directory is gone


def test_publish_rejects_bad_names(registry):
    with pytest.raises(ValueError, match="must match"):
        registry.publish(make_card("Bad/Name"), b"")


def test_load_reads_the_file_once_and_keeps_the_verified_bytes(registry, monkeypatch):
    """Checksum, parse and safety checks see one read of model.onnx; those bytes travel with the model."""
    data = good_model().SerializeToString()
    published = publish(registry, good_model())
    reads = []
    real_open_regular = registry_files.open_regular

    def counting_open_regular(path, *args):  # every registry read opens through it
        if Path(path).name == ONNX_FILE:
            reads.append(path)
        return real_open_regular(path, *args)

    monkeypatch.setattr(registry_files, "open_regular", counting_open_regular)
    loaded = registry.load("tiny")
    assert reads == [published.onnx_path] and loaded.verified_bytes() == data
    published.onnx_path.write_bytes(local_function_model().SerializeToString())  # swapped after the check
    assert loaded.verified_bytes() == data and reads == [published.onnx_path]  # not read again
    session = onnxruntime.InferenceSession(loaded.verified_bytes(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((1, 4), dtype=np.float32)})
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]])  # the verified model, not the swapped one


def test_safety_checks_live_in_model_safety_and_stay_importable_from_the_registry():
    from auditstream import model_safety, registry as registry_module

    assert registry_module.verify_onnx is model_safety.verify_onnx
    assert registry_module.ALLOWED_OP_DOMAINS is model_safety.ALLOWED_OP_DOMAINS
    with pytest.raises(ModelRefused, match="not a readable ONNX protobuf"):
        import hashlib

        junk = b"\x08\x01 definitely not a model"
        model_safety.verify_onnx_bytes(junk, hashlib.sha256(junk).hexdigest(), "junk.onnx")


def _damaged(registry: ModelRegistry, damage) -> None:
    damage(publish(registry, good_model()).onnx_path)


CLI_REFUSED = {
    **{case: (lambda r, build=build: publish(r, build()), message) for case, (build, message) in HOSTILE.items()},
    "empty file": (lambda r: _damaged(r, lambda p: p.write_bytes(b"")), "model.onnx is empty"),
    "zero-filled file": (lambda r: _damaged(r, lambda p: p.write_bytes(bytes(p.stat().st_size))), "does not match"),
    "truncated file": (lambda r: _damaged(r, _damage_truncate), "does not match the model card"),
    "changed file": (lambda r: _damaged(r, _damage_flip), "does not match the model card"),
    "missing file": (lambda r: _damaged(r, Path.unlink), "model.onnx is missing"),
}


@pytest.mark.parametrize("case", sorted(CLI_REFUSED))
def test_serve_refuses_a_hostile_model_with_a_message_and_exit_code_2(registry, no_session, monkeypatch, capsys, case):
    """What an operator sees for every hostile or damaged file: one line saying why, exit code 2,
    no traceback, no session."""
    from auditstream.cli import main

    make, message = CLI_REFUSED[case]
    make(registry)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("auditstream: error: refusing model ") and "Traceback" not in err
    assert re.search(message, err), err


def test_the_memory_budget_is_a_setting(registry, no_session, monkeypatch, capsys):
    """A model well within the default budget is refused under a smaller configured one, with
    the setting named; the same model loads under the default."""
    from auditstream.cli import main

    model = good_model()
    model.graph.initializer.append(helper.make_tensor("rows", TensorProto.INT64, [2], [1024, 1024]))
    model.graph.node.append(helper.make_node("ConstantOfShape", ["rows"], ["junk"]))  # 4 MiB at warm-up
    model.graph.output.append(helper.make_tensor_value_info("junk", TensorProto.FLOAT, None))
    publish(registry, model)
    assert ModelRegistry(registry.root).load("tiny").model_bytes  # within the 2 GiB default
    with pytest.raises(ModelRefused, match=r"need 4,194,336 bytes, over the 1,000,000 bytes budget"):
        ModelRegistry(registry.root, max_constant_bytes=1_000_000).load("tiny")
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES", "1000000")
    assert main(["serve", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES" in err and "Traceback" not in err


def test_serve_process_refuses_an_empty_model_with_exit_code_2(registry, tmp_path):
    """The real command in its own process: exit code 2 and one line on stderr, no traceback."""
    publish(registry, good_model()).onnx_path.write_bytes(b"")
    env = {**os.environ, "AUDITSTREAM_MODELS_DIR": str(registry.root), "AUDITSTREAM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "serve", "--model", "tiny"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "model.onnx is empty" in done.stderr and "Traceback" not in done.stderr
