"""Is this ONNX file safe to hand to ONNX Runtime? The checks :meth:`auditstream.registry.ModelRegistry.load`
runs before anyone creates an inference session.

A model is verified as **bytes read once**: the checksum, the parse and the safety checks all
look at the same buffer, and the serving runtime creates its session from that buffer
(``ort.InferenceSession(model_bytes)``), never from the path again. Reading the path twice would
let a file swapped between the check and the load run unverified.

The checks: the sha256 must match the model card's; the bytes must parse as an ONNX protobuf;
no tensor may reference an external data file (a hostile model could make the runtime read
arbitrary paths); and every operator must come from a standard domain or be a function defined
inside the model (anything else needs a native custom-op library). Subgraphs (If/Loop/Scan
bodies), model-local functions and training-info graphs are checked like the main graph. Each
refusal is a :class:`~auditstream.errors.ModelRefused` saying why and what to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from auditstream.errors import ModelRefused

# Standard ONNX domains that ONNX Runtime implements without custom-op libraries.
ALLOWED_OP_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def verify_onnx_bytes(data: bytes, expected_sha256: str, path: Path | str = "<bytes>") -> None:
    """Refuse model bytes that fail their checksum, do not parse, or are unsafe to load.

    ``path`` only names the model in error messages: nothing is read from it.
    """
    actual = hashlib.sha256(data).hexdigest()
    if not expected_sha256 or actual != expected_sha256:
        raise ModelRefused(path, f"sha256 {actual} does not match the model card's {expected_sha256 or '(none)'}; "
                           "the file was changed or truncated after export: re-export or restore it")
    import onnx  # serve extra; imported here so the core stays numpy-only
    from google.protobuf.message import DecodeError as ProtobufDecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (ProtobufDecodeError, ValueError) as e:
        raise ModelRefused(path, f"not a readable ONNX protobuf ({e})") from None
    check_model_proto(model, path)


def verify_onnx(path: Path | str, expected_sha256: str) -> bytes:
    """Read ``path`` once, verify those bytes (:func:`verify_onnx_bytes`) and return them:
    create the inference session from the returned bytes, not from the path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelRefused(path, "model.onnx is missing") from None
    except IsADirectoryError:
        raise ModelRefused(path, "model.onnx is a directory, not a file") from None
    verify_onnx_bytes(data, expected_sha256, path)
    return data


def check_model_proto(model: Any, path: Path | str) -> None:
    """The content checks on a parsed ``onnx.ModelProto``: operator domains and external data."""
    import onnx

    # A model-local function is an op (domain, name) whose body is in the file; any other op of
    # a non-standard domain would need a native custom-op library.
    local_ops = {(f.domain, f.name) for f in model.functions}
    local_domains = {domain for domain, _ in local_ops}
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_OP_DOMAINS and opset.domain not in local_domains:
            raise ModelRefused(path, f"imports operator domain {opset.domain!r}; only {sorted(ALLOWED_OP_DOMAINS)} "
                               "and functions defined inside the model are allowed (custom ops need native libraries)")
    for where, tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ModelRefused(path, f"tensor {tensor.name!r} in {where} references external data file {location!r}; "
                               "models must be self-contained (export with all weights inside model.onnx)")
    for graph in _all_graphs(model):
        for node in graph.node:
            if node.domain not in ALLOWED_OP_DOMAINS and (node.domain, node.op_type) not in local_ops:
                raise ModelRefused(path, f"node {node.name or node.op_type!r} uses operator {node.op_type!r} of domain "
                                   f"{node.domain!r}, neither standard nor a function defined in the model")


def _all_graphs(model: Any) -> Iterator[Any]:
    import onnx

    # Subgraphs (If/Loop/Scan bodies) and training-info graphs are checked like the main graph.
    stack = [model.graph] + list(model.functions)
    for info in model.training_info:
        stack += [info.initialization, info.algorithm]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def _all_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    import onnx

    for graph in _all_graphs(model):
        name = getattr(graph, "name", "") or "function"
        for t in getattr(graph, "initializer", []):
            yield name, t
        for s in getattr(graph, "sparse_initializer", []):
            yield name, s.values
            yield name, s.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield name, attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        yield name, t
