"""Vetting a model version before the serving process creates its session: the ONNX Runtime
session and warm-up runs happen first in a child process (:mod:`auditstream.model_sandbox`),
so a model that crashes ONNX Runtime, never finishes loading or running, or allocates past the
budget is refused with one line -- at start, and during a hot reload while the old version
keeps serving -- instead of killing or freezing the process.

The child creates a CPU session from the verified bytes with the serving session options (one
intra-op thread) and runs zeros of the card's input shape at batch sizes 1, 2 and the largest
batch serving will run, checking every card output's real shape and dtype against the card
(:func:`output_mismatch`): the graph's declared output shapes are only a claim (a graph
declaring ``[None, 4]`` returned ``(3, 8)``, and label index 7 was auto-accepted). A version that
passed is remembered for the process by its sha256, so a hot reload back to it is not vetted again.
GPU providers are not tried in the child (a forked CUDA context is not safe); the parent's own
session and warm-up on the GPU follow the vetting. So when serving runs on a GPU, a model whose
operator has only a GPU kernel (``com.microsoft.BiasAdd``: ONNX Runtime's NOT_IMPLEMENTED "Failed
to find kernel ... CPUExecutionProvider") is not refused: one warning says it could not be vetted
on the CPU, and the parent's GPU session and warm-up decide. On a CPU plan it stays a refusal.

The largest warm-up batch is the one serving will run (``AUDITSTREAM_MAX_BATCH_SIZE``): running out
of memory there says so, naming the setting, rather than blaming the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)
BATCH_SETTING = "AUDITSTREAM_MAX_BATCH_SIZE"
# What the child answers when the CPU provider has no kernel for an operator and serving is on a GPU.
NOT_VETTED_ON_CPU = "not-vetted-on-cpu"

# (name, dtype, shape) of a card tensor: what the child needs of the card, as plain data.
Spec = tuple[str, str, tuple]


def output_mismatch(outputs: Mapping[str, Any], specs: Sequence[Spec], batch: int) -> str | None:
    """What is wrong with a run's ``outputs`` for a batch of ``batch`` rows, given the card's
    output ``specs``; None when each has the card's dtype and rank, ``batch`` rows where the card's
    first axis is dynamic, and the card's size on every static axis."""
    for name, dtype, shape in specs:
        value = outputs.get(name)
        if value is None:
            return f"output {name!r} is missing from the model's answer"
        actual = tuple(getattr(value, "shape", ()))
        if str(getattr(value, "dtype", "?")) != str(dtype):
            return f"output {name!r} is {getattr(value, 'dtype', type(value).__name__)}, the card says {dtype}"
        expected = tuple(batch if i == 0 and d is None else d for i, d in enumerate(shape))
        if len(actual) != len(expected) or any(e is not None and a != e for a, e in zip(actual, expected)):
            shown = [d if d is not None else "?" for d in expected]
            return f"output {name!r} has shape {list(actual)} for a batch of {batch}, the card says {shown}"
    return None


def vet_session(data: bytes, sha256: str, path: object, title: str, input_spec: Spec, output_specs: Sequence[Spec],
                batches: Sequence[int], budget: int, timeout_s: float, *, max_batch: int | None = None,
                gpu: bool = False) -> None:
    """ModelRefused unless a CPU session of ``data`` loads and answers zeros at every batch size
    in ``batches`` (the first: the parent's warm-up batch) with outputs that match the card, within
    ``timeout_s`` and the memory limit (``budget``, the model's size, headroom:
    :func:`auditstream.model_sandbox.memory_limit`) in a child process. ``title``: "<name>
    v<version>" for the messages. ``max_batch``: the batch that is ``AUDITSTREAM_MAX_BATCH_SIZE``
    (running out of memory there names the setting). ``gpu``: serving runs on a GPU provider, so
    an operator the CPU provider has no kernel for is a warning, not a refusal."""
    from auditstream import model_sandbox

    batches = tuple(dict.fromkeys(batches))  # in order, once each: the first one names a failed warm-up
    max_batch = max(batches) if max_batch is None else max_batch
    answer = model_sandbox.run_checked(
        _vet_in_child, (data, title, input_spec, tuple(output_specs), batches, max_batch, gpu), what="ONNX Runtime",
        path=path, key=("session", sha256, input_spec, tuple(output_specs), batches, budget, max_batch, gpu),
        memory_bytes=budget, timeout_s=timeout_s, model_bytes=len(data))
    if isinstance(answer, tuple) and answer[0] == NOT_VETTED_ON_CPU:
        log.warning("%s could not be vetted on the CPU (%s): serving runs on a GPU, whose session and warm-up follow",
                    title, answer[1])


def _vet_in_child(data: bytes, title: str, input_spec: Spec, output_specs: tuple, batches: tuple,
                  max_batch: int | None = None, gpu: bool = False) -> tuple | None:
    import numpy as np
    import onnxruntime as ort

    from auditstream.errors import ModelRefused
    from auditstream.model_sandbox import is_allocation_failure

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own classes (InvalidGraph, Fail, ...)
        if is_allocation_failure(e):
            raise
        if gpu and cpu_kernel_missing(e):
            return NOT_VETTED_ON_CPU, _first_line(e)
        raise ModelRefused("", f"{title}: ONNX Runtime cannot load it: {_first_line(e)}") from None
    name, dtype, shape = input_spec
    wanted = [spec[0] for spec in output_specs]
    missing = sorted(set(wanted) - {o.name for o in session.get_outputs()})
    if [i.name for i in session.get_inputs()] != [name] or missing:
        return  # the parent's load_session says which (the same message as without vetting)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    for batch in batches:
        rows = [batch] + [d if d is not None else 1 for d in shape[1:]]
        try:
            zeros = np.zeros(rows, dtype=dtype)
            results = session.run(wanted, {name: zeros}, quiet)
        except Exception as e:  # noqa: BLE001 - a model that cannot run a zero input of its own shape is broken
            if is_allocation_failure(e) and batch == max_batch:
                raise ModelRefused("", f"{title}: the warm-up run at the largest batch serving runs, {batch} rows "
                                   f"({BATCH_SETTING}) of input shape {rows}, ran out of memory ({_first_line(e)}): "
                                   f"lower {BATCH_SETTING} or raise AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES") from None
            if is_allocation_failure(e):
                raise
            raise ModelRefused("", f"{title}: the warm-up run on zeros of the card's input shape {rows} "
                               f"failed: {_first_line(e)}") from None
        wrong = output_mismatch(dict(zip(wanted, results)), output_specs, batch)
        if wrong is not None:
            raise ModelRefused("", f"{title}: {wrong} (warm-up on zeros): the graph does not answer what the card "
                               "declares; re-export the model or fix the card")
    return None


def cpu_kernel_missing(error: BaseException) -> bool:
    """ONNX Runtime's CPU provider has no kernel for an operator of the model (a GPU-only one)."""
    text = str(error)
    return "NOT_IMPLEMENTED" in text and "Failed to find kernel" in text and "CPUExecutionProvider" in text


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else repr(error))[:500]
