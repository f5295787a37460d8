"""Runs with inputs and outputs bound to pre-allocated buffers on the model's device (ONNX
Runtime's I/O binding), one set of buffers per batch bucket (:func:`serving.providers.batch_buckets`).

Without binding, every ``session.run`` on a GPU allocates device memory for the input and the
outputs, copies, runs, copies back and frees. Bound, a batch is padded to its bucket, copied
into the bucket's input buffer, run, and the outputs copied back from buffers that live as long
as the session; the three steps are timed apart (``last_timing``), so the serving metrics keep
ONNX Runtime's time separate from the copies.

The same code runs on the CPU (``device="cpu"``): that is how tests/serving/test_iobinding.py
checks it, against plain ``session.run``, on a machine without a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from serving.providers import bucket_for


@dataclass(frozen=True)
class RunTiming:
    """Seconds of one bound run: host → device copy, ONNX Runtime, device → host copy."""

    copy_in_s: float
    ort_s: float
    copy_out_s: float

    @property
    def copies_s(self) -> float:
        return self.copy_in_s + self.copy_out_s


class _Bucket:
    """The buffers and binding of one batch size."""

    def __init__(self, session: Any, input_name: str, input_shape: Sequence[int], dtype: np.dtype,
                 outputs: dict[str, tuple[Sequence[int] | None, Any]], device: str, device_id: int) -> None:
        from onnxruntime import OrtValue

        self.input = OrtValue.ortvalue_from_shape_and_type(list(input_shape), dtype, device, device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        for name, (shape, out_dtype) in outputs.items():
            if shape is None:  # a dimension only the run knows: ORT allocates it on the device
                self.binding.bind_output(name, device, device_id)
            else:
                self.binding.bind_ortvalue_output(name, OrtValue.ortvalue_from_shape_and_type(
                    list(shape), out_dtype, device, device_id))


class BoundRunner:
    """``run(batch)`` through I/O binding; ``warm_up()`` runs every bucket once (before the first poll)."""

    def __init__(self, session: Any, input_name: str, input_shape: Sequence[int | None], dtype: np.dtype,
                 output_names: list[str], output_shapes: dict[str, Sequence[int | None]],
                 buckets: Sequence[int], device: str = "cuda", device_id: int = 0) -> None:
        self.session, self.input_name, self.output_names = session, input_name, output_names
        self.input_rest = [d if isinstance(d, int) and d > 0 else None for d in input_shape[1:]]
        self.dtype, self.buckets, self.device, self.device_id = np.dtype(dtype), tuple(buckets), device, device_id
        self.output_dtypes = {o.name: _ORT_TYPES.get(o.type) for o in session.get_outputs()}
        self.output_shapes = output_shapes
        self._buckets: dict[tuple[int, ...], _Bucket] = {}
        self.last_timing: RunTiming | None = None

    def _bucket(self, shape: tuple[int, ...]) -> _Bucket:
        bucket = self._buckets.get(shape)
        if bucket is None:
            n = shape[0]
            outputs = {}
            for name in self.output_names:
                spec = self.output_shapes.get(name)
                rest = list(spec[1:]) if spec is not None else None
                dtype = self.output_dtypes.get(name)
                fixed = dtype is not None and rest is not None and all(isinstance(d, int) and d > 0 for d in rest)
                outputs[name] = ([n] + rest if fixed else None, dtype)  # type: ignore[operator]
            bucket = _Bucket(self.session, self.input_name, shape, self.dtype, outputs, self.device, self.device_id)
            self._buckets[shape] = bucket
        return bucket

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = batch.shape[0]
        size = bucket_for(n, self.buckets)
        started = time.perf_counter()
        if size != n:  # pad with zeros to the bucket: its buffers and engine already exist
            padded = np.zeros((size,) + batch.shape[1:], dtype=self.dtype)
            padded[:n] = batch
            batch = padded
        bucket = self._bucket(tuple(batch.shape))
        bucket.input.update_inplace(np.ascontiguousarray(batch, dtype=self.dtype))
        copied_in = time.perf_counter()
        self.session.run_with_iobinding(bucket.binding)
        ran = time.perf_counter()
        results = bucket.binding.copy_outputs_to_cpu()
        done = time.perf_counter()
        self.last_timing = RunTiming(copied_in - started, ran - copied_in, done - ran)
        return {name: value[:n] for name, value in zip(self.output_names, results)}

    def warm_up(self) -> float:
        """Run every bucket once on zeros (needs the input's other dimensions fixed); seconds taken."""
        if any(d is None for d in self.input_rest):
            return 0.0
        started = time.perf_counter()
        for size in self.buckets:
            self.run(np.zeros([size] + self.input_rest, dtype=self.dtype))  # type: ignore[operator]
        return time.perf_counter() - started


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}

