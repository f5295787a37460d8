"""The model runtime: one ONNX Runtime session per served model, created once from a verified
:class:`~auditstream.registry.RegisteredModel` and warmed up before the consumer's first poll.

Providers: TensorRT and CUDA are used only when they can actually load. onnxruntime-gpu lists
them in ``get_available_providers()`` even when the CUDA/cuDNN/TensorRT libraries are missing,
and then logs errors for every session; so each GPU provider is probed once with a tiny
session at log severity FATAL and kept only if the session really runs on it. A CPU-only
machine therefore starts silently on ``CPUExecutionProvider``.

The session is created from the bytes :meth:`~auditstream.registry.RegisteredModel.verified_bytes`
returns -- the very buffer whose checksum and content were checked -- never from the file path,
so a model file swapped after verification is not what runs.

Which providers, with which options, is planned by :mod:`serving.providers` from the ``device``
setting; on a GPU the runs go through I/O binding (:mod:`serving.iobinding`) and every batch
bucket is warmed up here, before the consumer's first poll.

The contract is tiny (load / run / close), as in MLServer: ``ModelSession.run(batch)`` maps the
model's input array to its named outputs; ``ModelSession.probe()`` runs the warm-up input again,
which tells a record the model cannot handle from a model that no longer runs at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditstream.errors import ConfigError, ModelRefused
from auditstream.model_sandbox import DEFAULT_TIMEOUT_S, HEADROOM_BYTES
from auditstream.model_safety import MAX_CONSTANT_BYTES
from auditstream.registry import ModelCard, RegisteredModel
from auditstream.settings import Settings
from serving.iobinding import BoundRunner, RunTiming
from serving.providers import CUDA, TENSORRT, ProviderPlan, plan_providers
from serving.vetting import Spec, vet_session

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_ORT_FATAL = 4  # ORT log severity: 0 verbose .. 4 fatal
_ORT_DEFAULT_SEVERITY = 2


def _probe_model_bytes() -> bytes:
    """A one-node graph (Identity) to test whether a provider loads."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # onnx stamps its own newest IR version (14 in onnx 1.23), which an older ONNX Runtime refuses
    # ("Unsupported model IR version"): the probe then failed even for the CPU, and no provider
    # "loaded" on a host with onnx 1.23 + onnxruntime 1.30. IR 8 loads in every supported ORT.
    model.ir_version = 8
    return model.SerializeToString()


def ort_cuda_version() -> str:
    """The CUDA version the installed ONNX Runtime was built for; "" for a CPU build."""
    try:
        from onnxruntime.capi.build_and_package_info import cuda_version
    except ImportError:
        return ""
    return cuda_version or ""


@functools.lru_cache(maxsize=1)
def preload_gpu_libraries() -> str:
    """Load CUDA and cuDNN from pip's ``nvidia-*`` packages (``onnxruntime-gpu[cuda,cudnn]``), once.

    ORT's CUDA provider finds its libraries only on the loader's path (its RUNPATH is its own
    folder), and a serving host has no torch import to load them first; ``ort.preload_dlls()``
    (onnxruntime-gpu >= 1.21) loads them from the site-packages it was installed into, falling
    back to the loader's path (system CUDA, ``LD_LIBRARY_PATH``). It *prints* what it could not
    load: that is captured and returned (logged at debug), since a CPU host is not an error.
    """
    import onnxruntime as ort

    cuda_version = ort_cuda_version()
    if not cuda_version:
        return "a CPU build of ONNX Runtime: no CUDA libraries to preload"
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return f"onnxruntime {ort.__version__} has no preload_dlls (older than 1.21): the loader's path decides"
    said = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(said):
            warnings.simplefilter("ignore")
            preload()
    except Exception as e:  # noqa: BLE001 - a failed preload only means the provider probe decides
        said.write(f"preload_dlls failed: {e}")
    log.debug("CUDA/cuDNN preload: %s", said.getvalue().strip() or "loaded")
    return said.getvalue().strip() or f"CUDA {cuda_version} and cuDNN libraries loaded"


@functools.lru_cache(maxsize=None)
def provider_loads(provider: str) -> bool:
    """True if ``provider`` is compiled in *and* a session actually runs on it (quietly probed)."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return False
    if provider in GPU_PROVIDERS:
        preload_gpu_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_FATAL
    # Library-load failures are logged by ORT's process-wide logger, not the session's: silence
    # it for the probe, then restore ORT's default (warnings).
    ort.set_default_logger_severity(_ORT_FATAL)
    try:
        # onnxruntime-gpu *prints* "EP Error ... Falling back to ['CPUExecutionProvider']" to stdout
        # when a provider's libraries are missing (tests/serving/test_serve_gpu_package.py)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "Specified provider ... is not in available provider names"
            session = ort.InferenceSession(_probe_model_bytes(), sess_options=options, providers=[provider])
            session.run(None, {"x": np.zeros(1, np.float32)})
    except Exception as e:  # missing shared libraries surface as RuntimeError/Fail from ORT
        log.debug("provider %s does not load: %s", provider, e)
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    return provider in session.get_providers()


def select_providers(prefer_gpu: bool = True) -> list[str]:
    """The providers to use, fastest first, always ending with the CPU."""
    gpu = [p for p in GPU_PROVIDERS if prefer_gpu and provider_loads(p)]
    return gpu + ["CPUExecutionProvider"]


def default_intra_op_threads() -> int:
    # All cores this process may use: inference dominates the serving process, and Kafka I/O
    # runs in the client's own threads that mostly wait on sockets.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass
class ModelSession:
    """A loaded, warmed-up model: ``run(x)`` returns the named outputs for a batch."""

    card: ModelCard
    session: object
    input_name: str
    output_names: list[str]
    providers: list[str]
    warmup_s: float = 0.0
    warmup_input: np.ndarray | None = None  # a known-good input: it ran at start-up
    bound: BoundRunner | None = None  # on a GPU: runs through I/O binding

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.bound is not None:
            return self.bound.run(batch)
        results = self.session.run(self.output_names, {self.input_name: batch})  # type: ignore[attr-defined]
        return dict(zip(self.output_names, results))

    @property
    def last_timing(self) -> RunTiming | None:
        """The last bound run's copies and ORT time apart (None without I/O binding)."""
        return self.bound.last_timing if self.bound is not None else None

    def probe(self) -> None:
        """Run the warm-up input again; raises if the model no longer runs on an input it ran before."""
        assert self.warmup_input is not None, "probe() needs a session created by load_session"
        self.run(self.warmup_input[:1])

    def close(self) -> None:
        self.session = None


def input_dtype(card: ModelCard) -> np.dtype:
    return np.dtype(card.inputs[0].dtype)


def plan_for(settings: Settings, card: ModelCard) -> ProviderPlan:
    """The providers ``settings.device`` asks for, among those that really load here."""
    import onnxruntime as ort

    cache_dir = Path(settings.trt_cache_dir) if settings.trt_cache_dir else Path(settings.state_dir) / "trt-cache"
    spec = card.inputs[0]
    plan = plan_providers(settings.device, provider_loads, ort.get_available_providers(), cache_dir, settings.gpu_fp16,
                          spec.name, spec.shape, settings.max_batch_size)
    if any(name == TENSORRT for name in plan.names()):
        cache_dir.mkdir(parents=True, exist_ok=True)
    return plan


def load_session(model: RegisteredModel, providers: list[str] | None = None, intra_op_threads: int | None = None,
                 warmup_batch: int = 8, settings: Settings | None = None) -> ModelSession:
    """Create the session once and warm it up (the first run allocates and plans the graph).
    ``settings``: the device, intra-op threads and batch size to plan for (default: the CPU
    providers that load, all cores); explicit ``providers`` win."""
    import onnxruntime as ort

    card = model.card
    if len(card.inputs) != 1:
        raise ModelRefused(model.onnx_path, f"serving supports one graph input, the card lists {len(card.inputs)}")
    plan = plan_for(settings, card) if settings is not None and providers is None else None
    options = ort.SessionOptions()
    options.intra_op_num_threads = (intra_op_threads or (settings.intra_op_threads if settings else 0)
                                    or default_intra_op_threads())
    options.inter_op_num_threads = 1
    # No spin-waiting between runs: the Kafka client threads and the decoder need those cycles
    # (on a small machine spinning intra-op threads starve them and slow the whole stream).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; providers were already probed quietly
    providers = plan.names() if plan is not None else providers or select_providers()
    provider_options = [opts for _, opts in plan.providers] if plan is not None else None
    # From the verified bytes, not the path: the file may have been swapped since it was checked.
    data = model.verified_bytes()
    # First in a child process: a model that crashes or freezes ONNX Runtime must not take this
    # process (and during a hot reload the version it serves) with it.
    budget = settings.max_model_constant_bytes if settings is not None else MAX_CONSTANT_BYTES
    max_batch = settings.max_batch_size if settings is not None else warmup_batch
    if settings is not None:
        # The vetting child runs the largest batch serving will, with what its memory limit allows
        # beyond the model (the budget plus HEADROOM_BYTES): a batch whose input and fixed-size
        # outputs alone take more is the setting's doing, not the model's.
        row = _item_bytes(card.inputs[0]) + sum(_item_bytes(o) for o in card.outputs
                                                if all(isinstance(d, int) for d in o.shape[1:]))
        allowed = budget + HEADROOM_BYTES
        if max_batch * row > allowed:
            raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: a batch of {max_batch} rows "
                               f"(AUDITSTREAM_MAX_BATCH_SIZE) of input shape {card.inputs[0].shape} and its outputs "
                               f"take {max_batch * row:,} bytes, more than the {allowed:,} the model checks allow (the "
                               f"model budget AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES plus {HEADROOM_BYTES:,}): lower "
                               "AUDITSTREAM_MAX_BATCH_SIZE or raise the budget")
    vet_session(data, hashlib.sha256(data).hexdigest(), model.onnx_path, f"{card.name} v{card.version}",
                _spec(card.inputs[0]), [_spec(o) for o in card.outputs], (warmup_batch, 1, 2, max_batch), budget,
                settings.model_check_timeout_s if settings is not None else DEFAULT_TIMEOUT_S,
                max_batch=max_batch if settings is not None else 0, gpu=plan is not None and plan.on_gpu)
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers, provider_options=provider_options)
    except Exception as e:  # noqa: BLE001 - ORT raises its own classes (InvalidGraph, Fail, ...)
        raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: ONNX Runtime cannot load it: "
                           f"{_first_line(e)}") from None
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = {o.name for o in session.get_outputs()}
    spec_in = card.inputs[0]
    wanted = [o.name for o in card.outputs]
    if graph_inputs != [spec_in.name] or not set(wanted) <= graph_outputs:
        raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: graph inputs {graph_inputs} / outputs "
                           f"{sorted(graph_outputs)} do not match the card's {spec_in.name!r} / {wanted}")
    ms = ModelSession(card, session, spec_in.name, wanted, session.get_providers())
    on_gpu = plan is not None and plan.on_gpu and bool({TENSORRT, CUDA} & set(ms.providers))
    if plan is not None and plan.on_gpu and not on_gpu:
        # The probe ran on the default GPU; ONNX Runtime quietly falls back to the CPU when the
        # provider cannot start on *this* device (cuda:1 on a host with one GPU, a busy card).
        if settings is not None and settings.device.startswith("cuda:"):
            ms.close()
            raise ConfigError("AUDITSTREAM_DEVICE", settings.device,
                              f"a GPU this host has: ONNX Runtime could not start {plan.names()[0]} on it and "
                              f"created the session on {ms.providers[0]} (nvidia-smi lists the GPUs' indices)")
        log.warning("a GPU provider loads here, but ONNX Runtime created %s v%s's session on %s: serving on the CPU",
                    card.name, card.version, ms.providers[0])
    shape = [warmup_batch] + [d if d is not None else 1 for d in spec_in.shape[1:]]
    # The card's shapes are bounded when it is read (model_card.MAX_TENSOR_ELEMENTS); what the
    # warm-up allocates from them must also fit the model memory budget: the warm-up batch, and on
    # a GPU every batch bucket's input and fixed-size output buffers (all kept for the session).
    item = _item_bytes(spec_in)
    if on_gpu and plan is not None:
        item += sum(_item_bytes(o) for o in card.outputs if all(d is not None for d in o.shape[1:]))
        rows, what = sum(plan.batch_buckets), f"the batch buckets {list(plan.batch_buckets)}"
    else:
        rows, what = warmup_batch, f"a warm-up batch of {warmup_batch}"
    needed = rows * item
    if needed > budget:
        raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: {what} of input shape {spec_in.shape} "
                           f"take {needed:,} bytes, over the {budget:,} byte model budget "
                           "(AUDITSTREAM_MAX_MODEL_CONSTANT_BYTES); fix the card's shapes or raise the budget")
    try:
        if on_gpu:
            ms.bound = BoundRunner(session, spec_in.name, spec_in.shape, input_dtype(card), wanted,
                                   {o.name: o.shape for o in card.outputs}, plan.batch_buckets, "cuda",
                                   plan.device_id or 0)
        ms.warmup_input = np.zeros(shape, dtype=input_dtype(card))
    except (MemoryError, ValueError, RuntimeError) as e:  # ORT's device allocations fail as RuntimeError
        raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: the warm-up buffers for input shape "
                           f"{shape} could not be allocated: {_first_line(e)}") from None
    started = time.perf_counter()
    try:
        if ms.bound is None:  # quietly: a failure is the one ModelRefused line below, not an ORT log line too
            quiet = ort.RunOptions()
            quiet.log_severity_level = _ORT_FATAL
            session.run(wanted, {spec_in.name: ms.warmup_input}, quiet)
        else:
            ms.run(ms.warmup_input)
        if ms.bound is not None:  # every batch bucket: TensorRT builds (or loads) its engine now, not at a poll
            ms.bound.warm_up()
    except Exception as e:  # noqa: BLE001 - a model that cannot run a zero input of its own shape is broken
        ms.close()
        raise ModelRefused(model.onnx_path, f"{card.name} v{card.version}: the warm-up run on zeros of the card's "
                           f"input shape {shape} failed: {_first_line(e)}") from None
    ms.warmup_s = time.perf_counter() - started
    log.info("model %s v%s on %s (%d intra-op threads), warm-up %.3f s", card.name, card.version,
             ms.providers[0], options.intra_op_num_threads, ms.warmup_s)
    return ms


def _spec(spec) -> Spec:
    """A card tensor as plain data for the vetting child (a named dim is a dynamic one)."""
    return spec.name, str(spec.dtype), tuple(d if isinstance(d, int) else None for d in spec.shape)


def _item_bytes(spec) -> int:
    """Bytes of one item of a card tensor (the batch axis dropped; a dynamic axis counts as 1)."""
    return int(np.prod([d or 1 for d in spec.shape[1:]], dtype=object)) * np.dtype(spec.dtype).itemsize


def _first_line(error: Exception) -> str:
    """ORT's messages carry a C++ source location and stack: the first line says what is wrong."""
    text = str(error).strip().splitlines()
    return (text[0] if text else repr(error))[:500]
