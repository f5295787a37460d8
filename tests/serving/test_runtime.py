"""serving.runtime: provider selection falls back to the CPU silently; session matches its card."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.conftest import TinyRegistry

from auditstream.errors import ModelRefused
from auditstream.registry import RegisteredModel, TensorSpec
from serving import runtime


def test_cuda_probe_falls_back_to_cpu_silently(capfd: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    runtime.provider_loads.cache_clear()
    providers = runtime.select_providers()
    assert providers[-1] == "CPUExecutionProvider"
    available = ort.get_available_providers()
    for gpu in runtime.GPU_PROVIDERS:
        # used only where compiled in and actually loading (never on this CPU-only CI machine)
        assert (gpu in providers) <= (gpu in available)
    if "CUDAExecutionProvider" not in available:
        assert providers == ["CPUExecutionProvider"]
    out, err = capfd.readouterr()
    assert "error" not in (out + err).lower()


def test_models_built_at_run_time_declare_an_ir_version_every_supported_ort_loads() -> None:
    """onnx stamps its newest IR version (14 in onnx 1.23); onnxruntime 1.30 refuses it, and the
    provider probe then said that not even the CPU loads. pyproject allows onnxruntime >= 1.18,
    which reads IR versions up to 10."""
    import onnx

    from stack.serve_bench import bench_cnn_onnx

    for built in (runtime._probe_model_bytes(), bench_cnn_onnx()):
        assert onnx.load_model_from_string(built).ir_version <= 10


def test_a_cpu_build_preloads_nothing_and_says_so() -> None:
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as info

    runtime.preload_gpu_libraries.cache_clear()
    said = runtime.preload_gpu_libraries()
    if not getattr(info, "cuda_version", ""):
        assert said == "a CPU build of ONNX Runtime: no CUDA libraries to preload"
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_unknown_provider_is_refused_quietly(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    # onnxruntime-gpu without CUDA libraries lists the provider but cannot create it: emulate that
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    runtime.provider_loads.cache_clear()
    try:
        assert runtime.select_providers() == ["CPUExecutionProvider"]
    finally:
        runtime.provider_loads.cache_clear()
    out, err = capfd.readouterr()
    assert "error" not in (out + err).lower()


def test_session_runs_and_is_warmed_up(tiny_registry: TinyRegistry) -> None:
    session = runtime.load_session(tiny_registry.model, intra_op_threads=1)
    assert session.providers[0] == "CPUExecutionProvider" and session.warmup_s > 0
    probs = session.run(np.zeros((3, 8, 8), np.float32))["probs"]
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_card_graph_mismatch_is_refused(tiny_registry: TinyRegistry) -> None:
    model = tiny_registry.model
    wrong = dataclasses.replace(model.card, outputs=[TensorSpec("logits", "float32", [None, 10])])
    # refused when the bytes are verified against the card (auditstream/model_safety.py), before a session
    with pytest.raises(ModelRefused, match="the card's output 'logits' is not a graph output"):
        runtime.load_session(RegisteredModel(wrong, model.onnx_path))


def test_a_file_swapped_after_verification_is_not_what_runs(tiny_registry: TinyRegistry) -> None:
    """The session is built from the bytes the registry verified, not by reading the path again."""
    import onnxruntime as ort
    from tests.conftest import tiny_classifier_onnx

    model = tiny_registry.model  # loaded: checksum and content checked on these bytes
    verified = model.verified_bytes()
    assert verified == tiny_classifier_onnx(seed=0)
    model.onnx_path.write_bytes(tiny_classifier_onnx(seed=1))  # swapped after the check
    session = runtime.load_session(model, intra_op_threads=1)
    x = np.random.default_rng(3).standard_normal((4, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(verified, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    swapped = ort.InferenceSession(tiny_classifier_onnx(seed=1), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert not np.allclose(expected, swapped)
    np.testing.assert_allclose(session.run(x)["probs"], expected, rtol=1e-6)
    # a RegisteredModel without verified bytes is verified on use: the swapped file is refused
    with pytest.raises(ModelRefused, match="does not match the model card"):
        runtime.load_session(RegisteredModel(model.card, model.onnx_path))


def test_probe_runs_the_warm_up_input(tiny_registry: TinyRegistry) -> None:
    session = runtime.load_session(tiny_registry.model, intra_op_threads=1, warmup_batch=2)
    assert session.warmup_input is not None and session.warmup_input.shape == (2, 8, 8)
    session.probe()  # a working model: no error
    session.close()
    with pytest.raises(AttributeError):
        session.probe()  # a closed session does not run


def _classifier_graph(nodes: list, initializers: list = ()) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 4])], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _reshape_that_fails() -> bytes:
    from onnx import TensorProto, helper

    t = helper.make_tensor
    return _classifier_graph(
        [helper.make_node("Reshape", ["x", "to"], ["r"]), helper.make_node("Slice", ["r", "s", "e", "a"], ["probs"])],
        [t("to", TensorProto.INT64, [2], [3, 5]), t("s", TensorProto.INT64, [1], [0]),
         t("e", TensorProto.INT64, [1], [4]), t("a", TensorProto.INT64, [1], [1])])


@pytest.mark.parametrize("case, build, message", [
    ("an op ONNX Runtime does not know", lambda: _classifier_graph([__import__("onnx").helper.make_node(
        "NoSuchOp", ["x"], ["probs"])]), "ONNX Runtime cannot load it: .*No Op registered for NoSuchOp"),
    ("a graph that fails on its own input shape", _reshape_that_fails,
     r"the warm-up run on zeros of the card's input shape \[8, 4\] failed: .*cannot be reshaped"),
])
def test_a_model_ort_refuses_or_cannot_warm_up_is_refused_with_exit_code_2(
        tmp_path, monkeypatch, capsys, case: str, build, message: str) -> None:
    """Past the file checks, ONNX Runtime's own refusal and a failed warm-up are ModelRefused too:
    one line and exit code 2 from ``auditstream serve``, not a traceback."""
    from auditstream.cli import main
    from auditstream.registry import ModelRegistry
    from tests.conftest import tiny_card

    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("x", "float32", [None, 4])],
                               outputs=[TensorSpec("probs", "float32", [None, 4])], labels=["a", "b", "c", "d"])
    registry = ModelRegistry(tmp_path / "models")
    published = registry.publish(card, build())
    with pytest.raises(ModelRefused, match=message):
        runtime.load_session(registry.load(card.name))
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    assert main(["serve", "--model", card.name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"auditstream: error: refusing model {published.onnx_path}") and "Traceback" not in err


def test_a_card_its_task_kind_cannot_serve_is_refused_with_exit_code_2(tmp_path, monkeypatch, capsys) -> None:
    """A classification card whose outputs lack ``probs``: refused before any connection."""
    from auditstream.cli import main
    from auditstream.registry import ModelRegistry
    from tests.conftest import tiny_card, tiny_classifier_onnx

    card = tiny_card()
    onnx_bytes = tiny_classifier_onnx()
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(dataclasses.replace(card, task="policy"), onnx_bytes)  # a policy card needs action_probs
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    assert main(["serve", "--model", card.name]) == 2
    err = capsys.readouterr().err
    assert "refusing model" in err and "lacks graph outputs" in err and "Traceback" not in err


def test_settings_choose_device_and_threads(tiny_registry: TinyRegistry, tmp_path) -> None:
    from auditstream.errors import ConfigError
    from auditstream.settings import Settings

    session = runtime.load_session(tiny_registry.model, settings=Settings(device="cpu", intra_op_threads=1,
                                                                          state_dir=tmp_path))
    assert session.providers == ["CPUExecutionProvider"] and session.bound is None and session.last_timing is None
    assert session.session.get_session_options().intra_op_num_threads == 1
    if not runtime.provider_loads("CUDAExecutionProvider"):  # this CPU machine: asking for a GPU is refused
        with pytest.raises(ConfigError, match="AUDITSTREAM_DEVICE='cuda:0'"):
            runtime.load_session(tiny_registry.model, settings=Settings(device="cuda:0", state_dir=tmp_path))


def _dynamic_graph() -> bytes:
    """x [B, ?, ?] -> ReduceMax over the last axis: the sizes live only on the card."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["probs"], axes=[2], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, None])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_card_declaring_a_huge_input_is_refused_before_any_warm_up_buffer(tmp_path, monkeypatch, capsys) -> None:
    """A graph with dynamic dims passes every file check; its card declared [None, 10**6, 10**6]
    and serving's warm-up tried np.zeros([8, 10**6, 10**6]): a MemoryError traceback (or, with
    overcommit, a host brought to its knees). The card is refused when read, naming the field."""
    import hashlib
    import json

    from auditstream.cli import main
    from auditstream.registry import CARD_FILE, ModelRegistry
    from tests.conftest import tiny_card

    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("x", "float32", [None, 4, 4])],
                               outputs=[TensorSpec("probs", "float32", [None, 4])], labels=["a", "b", "c", "d"])
    registry = ModelRegistry(tmp_path / "models")
    data = _dynamic_graph()
    published = registry.publish(card, data)
    runtime.load_session(registry.load(card.name), warmup_batch=2)  # the honest card serves
    obj = json.loads((published.directory / CARD_FILE).read_text())
    obj["inputs"][0]["shape"] = [None, 10**6, 10**6]
    assert obj["sha256"] == hashlib.sha256(data).hexdigest()
    (published.directory / CARD_FILE).write_text(json.dumps(obj))
    with pytest.raises(ModelRefused, match=r"inputs\[0\]\.shape is \[None, 1000000, 1000000\], more than"):
        registry.load(card.name)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    assert main(["serve", "--model", card.name]) == 2
    err = capsys.readouterr().err
    assert "refusing model" in err and "inputs[0].shape" in err and "Traceback" not in err


def test_a_warm_up_batch_over_the_model_memory_budget_is_refused(tmp_path) -> None:
    from auditstream.registry import ModelRegistry
    from auditstream.settings import Settings
    from tests.conftest import tiny_card, tiny_classifier_onnx

    registry = ModelRegistry(tmp_path / "models")
    registry.publish(tiny_card(), tiny_classifier_onnx())  # float32 [B, 8, 8]: 256 bytes an input
    model = registry.load(tiny_card().name)
    settings = Settings(device="cpu", intra_op_threads=1, state_dir=tmp_path, max_model_constant_bytes=1000)
    with pytest.raises(ModelRefused, match=r"tiny v1: a warm-up batch of 8 of input shape .* take 2,048 bytes, "
                                           r"over the 1,000"):
        runtime.load_session(model, warmup_batch=8, settings=settings)
    assert runtime.load_session(model, warmup_batch=2, settings=settings).warmup_input.shape == (2, 8, 8)


def test_a_warm_up_that_fails_names_the_model_and_version_in_one_line(tmp_path) -> None:
    from auditstream.registry import ModelRegistry
    from tests.conftest import tiny_card

    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("x", "float32", [None, 4])],
                               outputs=[TensorSpec("probs", "float32", [None, 4])], labels=["a", "b", "c", "d"])
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(card, _reshape_that_fails())
    with pytest.raises(ModelRefused) as info:
        runtime.load_session(registry.load(card.name))
    message = str(info.value)
    assert "\n" not in message and f"{card.name} v1: the warm-up run" in message and "/1/model.onnx" in message


def test_a_failing_warm_up_writes_one_line_to_stderr(tmp_path, monkeypatch, capfd) -> None:
    """ONNX Runtime logged its own error line (colour codes, C++ source location) to the process's
    stderr before our refusal; the warm-up run is now quiet, so ``serve`` writes the one line."""
    from auditstream.cli import main
    from auditstream.registry import ModelRegistry
    from tests.conftest import tiny_card

    card = dataclasses.replace(tiny_card(), inputs=[TensorSpec("x", "float32", [None, 4])],
                               outputs=[TensorSpec("probs", "float32", [None, 4])], labels=["a", "b", "c", "d"])
    registry = ModelRegistry(tmp_path / "models")
    registry.publish(card, _reshape_that_fails())
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    capfd.readouterr()
    assert main(["serve", "--model", card.name]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("auditstream: error: refusing model"), lines


def test_a_gpu_session_that_falls_back_to_the_cpu_is_refused_for_cuda_n(tiny_registry: TinyRegistry, tmp_path,
                                                                        monkeypatch, caplog) -> None:
    """The provider probe runs on the default GPU; ``cuda:1`` on a host with one GPU passed it, and
    ONNX Runtime then created the session on the CPU without a word. Here the probe is told the
    CUDA provider loads, and this CPU build of ONNX Runtime falls back as it would: ``cuda:N`` is
    refused in one line, ``auto`` serves on the CPU with a warning."""
    import logging

    from auditstream.errors import ConfigError
    from auditstream.settings import Settings

    monkeypatch.setattr(runtime, "provider_loads", lambda provider: provider == "CUDAExecutionProvider")
    with pytest.raises(ConfigError, match="AUDITSTREAM_DEVICE='cuda:1'.*a GPU this host has.*CPUExecutionProvider"):
        runtime.load_session(tiny_registry.model, settings=Settings(device="cuda:1", state_dir=tmp_path))
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        session = runtime.load_session(tiny_registry.model, settings=Settings(device="auto", state_dir=tmp_path))
    assert session.providers == ["CPUExecutionProvider"] and session.bound is None
    assert "serving on the CPU" in caplog.text
