"""Which ONNX Runtime execution providers a served model runs on, with which options.

The ``device`` setting decides: ``cpu``; ``cuda:N`` (GPU N, TensorRT first when it loads, then
CUDA; start-up fails when neither loads); ``auto`` (``cuda:0`` when a GPU provider loads, else
the CPU, silently). Whether a provider *loads* is probed by :func:`serving.runtime.provider_loads`
and passed in, so this module is pure and tested on any machine (tests/serving/test_providers.py).

On a GPU:

- **TensorRT** keeps its built engines in a persistent cache (``trt_cache_dir``, default
  ``<state_dir>/trt-cache``), so a restart loads engines instead of building them (minutes for
  a large model); one optimisation profile spans batch 1 .. ``max_batch_size`` when the input's
  other dimensions are fixed, so no batch size triggers a rebuild; FP16 only with ``gpu_fp16``
  (the certified threshold was calibrated on FP32 confidences), and then only where the card
  has fast FP16 (ORT's TensorRT provider checks ``platformHasFastFp16`` and stays FP32 otherwise);
- **CUDA** runs what TensorRT does not take;
- inputs and outputs are bound to pre-allocated device buffers (:mod:`serving.iobinding`), one
  set per batch *bucket*: a batch is padded to the next power of two (or ``max_batch_size``),
  so a handful of shapes are built and warmed up before the first poll instead of one per size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from auditstream.errors import ConfigError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def device_unavailable(device: str, available: Sequence[str]) -> ConfigError:
    """``device=cuda:N`` was asked for, but neither GPU provider loads here."""
    return ConfigError("AUDITSTREAM_DEVICE", device, f"'cpu' or 'auto' on this host: neither TensorRT nor CUDA "
                       f"loads (ONNX Runtime lists {', '.join(available) or 'no providers'}); for a GPU install the "
                       "serve-gpu extra (onnxruntime-gpu with its CUDA and cuDNN) and an NVIDIA driver")


@dataclass(frozen=True)
class ProviderPlan:
    """Providers (fastest first, each with its options) and where I/O is bound."""

    providers: list[tuple[str, dict[str, str]]]
    device_id: int | None = None  # the GPU's index; None on the CPU
    batch_buckets: tuple[int, ...] = field(default=())  # batch sizes a GPU run is padded to

    @property
    def on_gpu(self) -> bool:
        return self.device_id is not None

    def names(self) -> list[str]:
        return [name for name, _ in self.providers]


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_batch_size`` (which is always the last bucket)."""
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(b)
        b *= 2
    return tuple(buckets + [max_batch_size])


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` itself past the largest: run unpadded)."""
    return next((b for b in buckets if b >= n), n)


def device_options(device_id: int) -> dict[str, str]:
    """The GPU provider option naming the device: none for GPU 0, ONNX Runtime's default. Given
    explicitly, onnxruntime-gpu 1.31 first looks for a *plugin* EP device of that id and logs
    "No registered plugin EP device found for 'CUDAExecutionProvider' with device_id=0" at every
    session it creates before using its built-in provider (seen on an H100, 2026-12-05; sessions
    created without the option logged nothing), a warning line per model load and worker that
    meant nothing. ``cuda:N`` with N > 0 still needs the option, and ONNX Runtime's line with it."""
    return {"device_id": str(device_id)} if device_id else {}


def tensorrt_options(device_id: int, cache_dir: Path, fp16: bool, input_name: str,
                     input_shape: Sequence[int | None], max_batch_size: int) -> dict[str, str]:
    options = {**device_options(device_id), "trt_engine_cache_enable": "True",
               "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": "True",
               "trt_timing_cache_path": str(cache_dir), "trt_fp16_enable": str(bool(fp16))}
    rest = list(input_shape[1:])
    if all(isinstance(d, int) and d > 0 for d in rest):  # one profile for every batch size
        dims = "x".join(str(d) for d in rest)
        options.update(trt_profile_min_shapes=f"{input_name}:1x{dims}",
                       trt_profile_opt_shapes=f"{input_name}:{max_batch_size}x{dims}",
                       trt_profile_max_shapes=f"{input_name}:{max_batch_size}x{dims}")
    return options


def plan_providers(device: str, loads: Callable[[str], bool], available: Sequence[str], cache_dir: Path,
                   fp16: bool, input_name: str, input_shape: Sequence[int | None], max_batch_size: int) -> ProviderPlan:
    """The plan for the ``device`` setting, given which providers really load (``loads``)."""
    if device == "cpu":
        return ProviderPlan([(CPU, {})])
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    gpu: list[tuple[str, dict[str, str]]] = []
    if loads(TENSORRT):
        gpu.append((TENSORRT, tensorrt_options(device_id, cache_dir, fp16, input_name, input_shape, max_batch_size)))
    if loads(CUDA):
        gpu.append((CUDA, device_options(device_id)))
    if not gpu:
        if device.startswith("cuda:"):
            raise device_unavailable(device, available)
        return ProviderPlan([(CPU, {})])
    return ProviderPlan(gpu + [(CPU, {})], device_id, batch_buckets(max_batch_size))
