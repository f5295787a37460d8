"""Is this ONNX file safe to hand to ONNX Runtime? The checks :meth:`auditstream.registry.ModelRegistry.load`
runs before anyone creates an inference session.

A model is verified as **bytes read once**: the checksum, the parse and the safety checks all
look at the same buffer, and the serving runtime creates its session from that buffer
(``ort.InferenceSession(model_bytes)``), never from the path again. Reading the path twice would
let a file swapped between the check and the load run unverified.

The checks: the file must not be empty, the sha256 must match the model card's; the bytes must
parse as an ONNX protobuf with a graph; no tensor may reference an external data file (a hostile
model could make the runtime read arbitrary paths: a sparse ``Constant`` whose values were at
``secret.bin`` put that file of the working directory into a graph output); every operator must
come from a standard domain or be a function defined inside the model (anything else needs a
native custom-op library); no tensor may have a negative dimension or more elements than an
int64 counts; the constant tensors the file holds (initializers, ``Constant`` values, sparse ones
at their dense size: ONNX Runtime densifies a sparse initializer when it loads the model) must fit
the memory budget (``AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES``, default :data:`MAX_CONSTANT_BYTES`), and
so must every tensor whose size ONNX shape inference can work out from constants alone -- what
``ConstantOfShape``, ``Expand``, ``Tile`` or ``Range`` would build at warm-up (one hostile file
asked for 40 GB and was stopped only by a ulimit); model-local functions may not call each other
in a cycle or inline to a bomb (:func:`check_function_nesting`: 2 kB of functions each calling
the previous twice made 2**40 nodes); and, given the card's inputs and outputs, the graph must
have them with the same element types and ranks.

Everything runs in process except ONNX shape inference, which is C++ that a hostile file can
abort (SIGABRT) or exhaust: it runs in a child process (:mod:`auditstream.model_sandbox`), once
per process for the same bytes. The serving runtime vets the ONNX Runtime session and its
warm-up the same way (``serving/vetting.py``).

Every place a file can hold a tensor is searched, recursively: graph initializers and sparse
initializers, node attributes (``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``, read by
what the attribute holds, not by the type it declares), subgraphs (If/Loop/Scan bodies, any
``g``/``graphs`` attribute), model-local functions with their attribute defaults, and
training-info graphs. Each refusal is a :class:`~auditstream.errors.ModelRefused` saying why and
what to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from auditstream.errors import ModelRefused

# Standard ONNX domains that ONNX Runtime implements without custom-op libraries.
ALLOWED_OP_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Default budget for the constant tensors a model holds, and for any one tensor of a size known
# from constants alone (the project's models: < 10 MB of weights). A setting overrides it.
MAX_CONSTANT_BYTES = 2 * 1024**3
# ONNX Runtime counts elements in int64: dims whose product is larger describe no tensor, only an
# attempt to overflow a size computation (and would make ours multiply ever larger integers).
MAX_ELEMENTS = 2**63 - 1
# Model-local functions, as inlined: exported models nest module functions a dozen levels and
# repeat a layer's function per layer; a chain of functions each calling the last twice doubles
# the graph per level (a function bomb). ONNX Runtime took > 2 minutes on 2**16 inlined nodes of
# a doubling chain, but loads and runs a 96-layer stack of one 400-node layer function (38,400
# inlined nodes from ~500 stored: 77-fold) in 2 s: the growth rule starts well above such models
# (the sandboxed checks' timeouts stop a slow graph below it).
MAX_FUNCTION_DEPTH = 32
MAX_INLINED_NODES = 1_000_000
MAX_INLINE_GROWTH = 64
INLINE_GROWTH_FLOOR = 250_000


def verify_onnx_bytes(data: bytes, expected_sha256: str, path: Path | str = "<bytes>",
                      inputs: Sequence[Any] = (), outputs: Sequence[Any] = (),
                      max_constant_bytes: int = MAX_CONSTANT_BYTES, timeout_s: float | None = None) -> None:
    """Refuse model bytes that are empty, fail their checksum, do not parse, are unsafe to load,
    would allocate more than ``max_constant_bytes`` from constants, or disagree with the card's
    ``inputs``/``outputs`` (``TensorSpec``-like: name, dtype, shape). ``timeout_s``: shape
    inference's time limit, the ``model_check_timeout_s`` setting (None: the fixed default).

    ``path`` only names the model in error messages: nothing is read from it.
    """
    if len(data) == 0:
        raise ModelRefused(path, "model.onnx is empty (0 bytes): the export or the copy failed; re-export it")
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
    if not model.HasField("graph") or not model.graph.output:
        raise ModelRefused(path, "the file parses but holds no graph with outputs: not an exported model")
    check_model_proto(model, path, max_constant_bytes)
    check_io_against_card(model, inputs, outputs, path)
    check_static_tensors(data, actual, path, max_constant_bytes, timeout_s)


def verify_onnx(path: Path | str, expected_sha256: str, inputs: Sequence[Any] = (),
                outputs: Sequence[Any] = (), max_constant_bytes: int = MAX_CONSTANT_BYTES,
                timeout_s: float | None = None) -> bytes:
    """Read ``path`` once, verify those bytes (:func:`verify_onnx_bytes`) and return them:
    create the inference session from the returned bytes, not from the path. ``path`` must be a
    regular file (a symlink to one is fine) of at most
    :data:`~auditstream.registry_files.MAX_ONNX_BYTES`; anything else (a
    FIFO, ``/dev/zero``, an 8 GiB file) is refused before it is read
    (:mod:`auditstream.registry_files`)."""
    from auditstream.registry_files import MAX_ONNX_BYTES, read_regular

    path = Path(path)
    try:  # a regular file (a FIFO is refused, not waited on) of at most what protobuf parses
        data = read_regular(path, MAX_ONNX_BYTES, "model.onnx", "an ONNX model is a regular file under 2 GiB "
                            "(protobuf parses no larger one): re-export it")
    except FileNotFoundError:
        raise ModelRefused(path, "model.onnx is missing") from None
    verify_onnx_bytes(data, expected_sha256, path, inputs, outputs, max_constant_bytes, timeout_s)
    return data


def check_model_proto(model: Any, path: Path | str, max_constant_bytes: int = MAX_CONSTANT_BYTES) -> None:
    """The content checks on a parsed ``onnx.ModelProto`` that need no native code: function
    nesting, operator domains, external data, tensor dims and the memory its constants would
    take (:func:`check_static_tensors` runs shape inference, in a child process)."""
    import onnx

    # First: every check below is linear in the file, but inlining a function bomb is not.
    check_function_nesting(model, path)
    # A model-local function is an op (domain, name) whose body is in the file; any other op of
    # a non-standard domain would need a native custom-op library.
    local_ops = {(f.domain, f.name) for f in model.functions}
    local_domains = {domain for domain, _ in local_ops}
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_OP_DOMAINS and opset.domain not in local_domains:
            raise ModelRefused(path, f"imports operator domain {opset.domain!r}; only {sorted(ALLOWED_OP_DOMAINS)} "
                               "and functions defined inside the model are allowed (custom ops need native libraries)")
    for where, tensor in _all_tensors(model):
        # A sparse tensor stores its values and indices as two tensors; its own dims are the dense shape.
        parts = [tensor.values, tensor.indices] if isinstance(tensor, onnx.SparseTensorProto) else [tensor]
        for part in parts:
            if part.data_location == onnx.TensorProto.EXTERNAL or len(part.external_data) > 0:
                location = next((e.value for e in part.external_data if e.key == "location"), "?")
                raise ModelRefused(path, f"tensor {part.name!r} in {where} references external data file {location!r}; "
                                   "models must be self-contained (export with all weights inside model.onnx)")
        for part in parts:
            _check_dims(part.name, list(part.dims), where, path)
        if len(parts) == 2:  # the dense shape the sparse tensor stands for, named by its values
            _check_dims(tensor.values.name, list(tensor.dims), where, path)
    for graph in _all_graphs(model):
        for node in graph.node:
            if node.domain not in ALLOWED_OP_DOMAINS and (node.domain, node.op_type) not in local_ops:
                raise ModelRefused(path, f"node {node.name or node.op_type!r} uses operator {node.op_type!r} of domain "
                                   f"{node.domain!r}, neither standard nor a function defined in the model")
    budget = f"the {_gib(max_constant_bytes)} budget (AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES)"
    needed = constant_bytes(model)
    if needed > max_constant_bytes:
        raise ModelRefused(path, f"its constant tensors (initializers, Constant, sparse ones at their dense size, "
                           f"ConstantOfShape/Expand to constant shapes) need {_gib(needed)}, over {budget}: "
                           "not a model this project serves")


def check_static_tensors(data: bytes, sha256: str, path: Path | str, max_constant_bytes: int = MAX_CONSTANT_BYTES,
                         timeout_s: float | None = None) -> None:
    """Refuse a model with a tensor whose size constants alone fix over ``max_constant_bytes``
    (:func:`largest_static_tensor`). ONNX shape inference is C++ that a hostile file can abort or
    exhaust, so it runs in a child process (:mod:`auditstream.model_sandbox`), once per process
    for the same bytes and budget. Called after :func:`check_model_proto`: shape inference on a
    model with huge initializers would copy them, and a function bomb would never finish."""
    from auditstream import model_sandbox

    # Without a timeout_s (a registry made without the setting) the step has the fixed default:
    # its message must not name AUDITSTREAM_MODEL_CHECK_TIMEOUT_S then.
    model_sandbox.run_checked(
        _check_static_tensors_in_child, (data, max_constant_bytes), what="ONNX shape inference", path=path,
        key=("static-tensors", sha256, max_constant_bytes), memory_bytes=max_constant_bytes,
        timeout_s=model_sandbox.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s, model_bytes=len(data),
        timeout_setting=None if timeout_s is None else model_sandbox.TIMEOUT_SETTING)


def _check_static_tensors_in_child(data: bytes, max_constant_bytes: int) -> None:
    """In the child process: the refusal is decided here, so that a check that returns passed."""
    import onnx

    largest = largest_static_tensor(onnx.load_model_from_string(data))
    if largest is not None and largest[1] > max_constant_bytes:
        budget = f"the {_gib(max_constant_bytes)} budget (AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES)"
        raise ModelRefused("", f"tensor {largest[0]!r} has a size fixed by constants alone and would take "
                           f"{_gib(largest[1])} when the model runs, over {budget}: not a model this project serves")


def check_function_nesting(model: Any, path: Path | str) -> None:
    """Refuse model-local functions that call each other in a cycle, nest deeper than
    :data:`MAX_FUNCTION_DEPTH`, or inline to more nodes than :data:`MAX_INLINED_NODES` (or more
    than :data:`MAX_INLINE_GROWTH` times the nodes the file holds, past
    :data:`INLINE_GROWTH_FLOOR`). Each function in a chain calling the previous twice doubles
    the graph: 40 functions in 2 kB made 2**40 nodes, which ONNX shape inference and ONNX
    Runtime inline (exponential time, holding the GIL). Counted here without inlining: each
    function's size once, from its callees' sizes.

    A function is keyed as ONNX (IR 10) and ONNX Runtime key it, by (domain, name, overload), and
    a call resolves by the node's overload: keyed by (domain, name) alone, a chain of overloads of
    one name each calling the previous twice was sized as its last-defined leaf. Two functions
    with the same key are refused (which one a runtime would call is not ours to guess)."""
    functions: dict[tuple[str, str, str], Any] = {}
    for f in model.functions:
        fkey = (f.domain, f.name, getattr(f, "overload", ""))
        if fkey in functions:
            raise ModelRefused(path, f"model-local function {_function_name(fkey)} is defined twice: which one a "
                               "call means is ambiguous; the file is damaged or hostile")
        functions[fkey] = f
    if not functions:
        return
    sizes: dict[tuple[str, str, str], tuple[int, int]] = {}  # (inlined nodes, nesting depth)
    visiting: set[tuple[str, str, str]] = set()

    def nodes_of(graph: Any) -> Iterator[Any]:  # a graph's nodes and, recursively, its subgraphs'
        stack = [graph]
        while stack:
            g = stack.pop()
            for node in g.node:
                yield node
                stack.extend(value for kind, value in _attribute_values(node.attribute) if kind == "graph")

    def size(graph: Any) -> tuple[int, int]:
        nodes, depth = 0, 0
        for node in nodes_of(graph):
            callee = (node.domain, node.op_type, getattr(node, "overload", ""))
            if callee not in functions:
                nodes += 1
                continue
            if callee not in sizes:
                if callee in visiting:
                    raise ModelRefused(path, f"model-local function {_function_name(callee)} calls itself (directly or "
                                       "through others): it can never be inlined; the file is damaged or hostile")
                if len(visiting) >= MAX_FUNCTION_DEPTH:
                    raise ModelRefused(path, f"model-local functions nest deeper than {MAX_FUNCTION_DEPTH} levels: "
                                       "not a model this project serves (the file is damaged or hostile)")
                visiting.add(callee)
                sizes[callee] = size(functions[callee])
                visiting.discard(callee)
            nodes += sizes[callee][0]
            depth = max(depth, sizes[callee][1] + 1)
        return nodes, depth

    inlined, depth = size(model.graph)
    for f in functions.values():  # an unused function is still inlined by some tools
        fn_inlined, fn_depth = size(f)
        inlined, depth = max(inlined, fn_inlined), max(depth, fn_depth)
    stored = sum(1 for g in _all_graphs(model) for _ in g.node)
    if depth > MAX_FUNCTION_DEPTH or inlined > MAX_INLINED_NODES or (
            inlined > INLINE_GROWTH_FLOOR and inlined > MAX_INLINE_GROWTH * stored):
        raise ModelRefused(path, f"its model-local functions inline to {inlined:,} nodes from the {stored:,} the file "
                           f"holds, {depth} levels deep (limits: {MAX_INLINED_NODES:,} nodes, {MAX_INLINE_GROWTH}-fold "
                           f"growth past {INLINE_GROWTH_FLOOR:,}, {MAX_FUNCTION_DEPTH} levels): functions calling "
                           "functions to multiply the graph is a function bomb, not a model this project serves")


def _function_name(key: tuple[str, str, str]) -> str:
    domain, name, overload = key
    return f"{domain}.{name}" + (f" (overload {overload!r})" if overload else "")


def check_io_against_card(model: Any, inputs: Sequence[Any], outputs: Sequence[Any], path: Path | str) -> None:
    """Every card input and output is in the graph with the card's element type and rank, and
    static sizes agree where both are static: a mismatch would otherwise surface as an ONNX
    Runtime traceback at warm-up or, worse, as every request failing."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = {v.name: v for v in model.graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in model.graph.output}
    for role, specs, graph in (("input", inputs, graph_inputs), ("output", outputs, graph_outputs)):
        for spec in specs:
            value = graph.get(spec.name)
            if value is None:
                raise ModelRefused(path, f"the card's {role} {spec.name!r} is not a graph {role} (the graph has "
                                   f"{sorted(graph)}): the card and the model disagree; re-export or fix the card")
            tensor = value.type.tensor_type
            try:
                dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
            except (KeyError, ValueError, TypeError):
                dtype = f"onnx type {tensor.elem_type}"
            if dtype != str(spec.dtype):
                raise ModelRefused(path, f"{role} {spec.name!r} is {dtype} in the graph but {spec.dtype} on the card")
            if tensor.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
                card_dims = [d if isinstance(d, int) else None for d in spec.shape]
                if len(dims) != len(card_dims) or any(a is not None and b is not None and a != b
                                                       for a, b in zip(dims, card_dims)):
                    shown = [d if d is not None else "?" for d in dims]
                    raise ModelRefused(path, f"{role} {spec.name!r} has shape {shown} in the graph but {spec.shape} "
                                       "on the card")


def constant_bytes(model: Any) -> int:
    """Bytes of the constant tensors the model holds or builds from constant shapes. A sparse
    tensor counts at its dense size plus what it stores (ONNX Runtime densifies sparse
    initializers at load); a size past :data:`MAX_ELEMENTS` elements counts as that many."""
    import onnx

    def size(dims: Iterable[int], elem_type: int) -> int:
        count = _element_count(max(int(d), 0) for d in dims)
        return (MAX_ELEMENTS if count is None else count) * _itemsize(elem_type)

    total, constants = 0, {}
    for _, tensor in _all_tensors(model):
        if isinstance(tensor, onnx.SparseTensorProto):
            total += size(tensor.dims, tensor.values.data_type)
            total += sum(size(t.dims, t.data_type) for t in (tensor.values, tensor.indices))
        else:
            total += size(tensor.dims, tensor.data_type)
            constants[tensor.name] = tensor
    for graph in _all_graphs(model):
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.HasField("t") and node.output:
                        constants[node.output[0]] = attr.t
            if node.op_type in ("ConstantOfShape", "Expand") and len(node.input) >= 1:
                shape_input = node.input[0] if node.op_type == "ConstantOfShape" else node.input[-1]
                shape = constants.get(shape_input)
                if shape is not None:
                    try:
                        dims = onnx.numpy_helper.to_array(shape).reshape(-1).tolist()
                    except Exception:  # noqa: BLE001 - an undecodable shape: ONNX Runtime will refuse the model
                        continue
                    total += size(dims, onnx.TensorProto.FLOAT)
    return total


def largest_static_tensor(model: Any) -> tuple[str, int] | None:
    """The name and size in bytes of the largest tensor whose every dimension ONNX shape inference
    (with constant propagation) can fix without an input -- what ``ConstantOfShape``, ``Tile``,
    ``Range``, ``Expand`` and friends would allocate. None when inference gives up: ONNX Runtime
    then does its own checks, and the constant budget above still holds."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph ONNX cannot infer is left to ONNX Runtime to refuse
        return None
    largest: tuple[str, int] | None = None
    for graph in _all_graphs(inferred):
        for value in list(getattr(graph, "value_info", [])) + list(getattr(graph, "output", [])):
            if not hasattr(value, "type"):  # a function's outputs are bare names
                continue
            tensor = value.type.tensor_type
            if not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
                continue
            count = _element_count(max(d.dim_value, 0) for d in tensor.shape.dim)
            size = (MAX_ELEMENTS if count is None else count) * _itemsize(tensor.elem_type)
            if largest is None or size > largest[1]:
                largest = (value.name, size)
    return largest


def _gib(n: int) -> str:
    if n > 1024**5:  # a float would overflow on absurd sizes; no budget is near this
        return "more than 1 PiB"
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 / 10 else f"{n:,} bytes"


def _itemsize(elem_type: int) -> int:
    import numpy as np
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, ValueError, TypeError):
        return 8


def _element_count(dims: Iterable[int]) -> int | None:
    """The product of ``dims``; None when a dim is negative or the product passes
    :data:`MAX_ELEMENTS`. Stops at the first dim past the limit (a zero dim anywhere: 0)."""
    dims = [int(d) for d in dims]
    if any(d < 0 for d in dims):
        return None
    if 0 in dims:
        return 0
    count = 1
    for d in dims:
        count *= d
        if count > MAX_ELEMENTS:
            return None
    return count


def _check_dims(name: str, dims: list[int], where: str, path: Path | str) -> None:
    if any(d < 0 for d in dims):
        raise ModelRefused(path, f"tensor {name!r} in {where} has dims {_shown(dims)}: a negative dimension is not a "
                           "tensor; the file is damaged or hostile: re-export it")
    if _element_count(dims) is None:
        raise ModelRefused(path, f"tensor {name!r} in {where} has dims {_shown(dims)}: more elements than an int64 "
                           "counts (2**63 - 1), not a tensor any runtime can hold; the file is damaged or hostile")


def _shown(dims: list[int]) -> str:
    return str(dims) if len(dims) <= 8 else f"{str(dims[:8])[:-1]}, ... ({len(dims)} dims)]"


def _attribute_values(attrs: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """("graph" | "tensor", value) for everything the attributes hold. Read by field presence,
    not by ``attr.type``: an attribute that declares INT but carries a sparse tensor is still
    searched (what ONNX Runtime would read of it is its business; we refuse a superset)."""
    for attr in attrs:
        if attr.HasField("g"):
            yield "graph", attr.g
        for g in attr.graphs:
            yield "graph", g
        if attr.HasField("t"):
            yield "tensor", attr.t
        yield from (("tensor", t) for t in attr.tensors)
        if attr.HasField("sparse_tensor"):
            yield "tensor", attr.sparse_tensor
        yield from (("tensor", t) for t in attr.sparse_tensors)


def _all_graphs(model: Any) -> Iterator[Any]:
    """The main graph, model-local functions, training-info graphs and, recursively, every
    subgraph any of them holds in a node attribute or a function's attribute default."""
    stack = [model.graph] + list(model.functions)
    for info in model.training_info:
        stack += [info.initialization, info.algorithm]
    while stack:
        graph = stack.pop()
        yield graph
        attrs = [a for node in graph.node for a in node.attribute] + list(getattr(graph, "attribute_proto", []))
        stack.extend(value for kind, value in _attribute_values(attrs) if kind == "graph")


def _all_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(where, tensor) for every ``TensorProto`` and ``SparseTensorProto`` the model holds."""
    for graph in _all_graphs(model):
        is_graph = hasattr(graph, "initializer")  # else a FunctionProto
        name = (graph.name or "an unnamed graph") if is_graph else f"function {graph.domain}.{graph.name}"
        yield from ((name, t) for t in getattr(graph, "initializer", []))
        yield from ((name, s) for s in getattr(graph, "sparse_initializer", []))
        attrs = [a for node in graph.node for a in node.attribute] + list(getattr(graph, "attribute_proto", []))
        yield from ((name, value) for kind, value in _attribute_values(attrs) if kind == "tensor")
