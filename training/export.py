"""ONNX export with a parity check: the last step of every training script before publishing.

``export_onnx`` turns an eval-mode torch module (preprocessing and temperature scaling already
inside it) into self-contained ONNX bytes: dynamic batch axis, opset 17, every weight inside the
file, only standard operator domains, so :func:`auditstream.registry.verify_onnx` accepts it and
ONNX Runtime can run it on a serving host without torch. ``check_parity`` runs ONNX Runtime (CPU)
and torch on the same inputs and refuses the export when they disagree.

We use the TorchScript exporter (``dynamo=False``): for these small CNNs it is fast, deterministic,
and emits only the default domain; the dynamo exporter is slower and may add function domains.
"""

from __future__ import annotations

import io
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

from auditstream.errors import ExportParityError

OPSET = 17


def export_onnx(module: torch.nn.Module, example_input: torch.Tensor, input_name: str,
                output_names: list[str]) -> bytes:
    """Export ``module`` (put in eval mode) to ONNX bytes with axis 0 of every tensor dynamic."""
    import onnx

    module.eval()
    buffer = io.BytesIO()
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo; we choose it
        # on purpose (see the module docstring), so the warning is noise here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example_input,), buffer, input_names=[input_name], output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    data = buffer.getvalue()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    domains = {op.domain for op in model.opset_import} | {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"exporter emitted non-standard domains {domains}"
    return data


def run_onnx(onnx_bytes: bytes, inputs: np.ndarray) -> list[np.ndarray]:
    """Every output of the graph on ``inputs`` (ONNX Runtime, CPU, one thread: deterministic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})


def check_parity(module: torch.nn.Module, onnx_bytes: bytes, inputs: np.ndarray | torch.Tensor,
                 atol: float = 1e-4) -> float:
    """Max |ONNX Runtime - torch| over every output on ``inputs``; raise if it exceeds ``atol``.

    A NaN or an infinity in either runtime's outputs fails the check (:class:`ExportParityError`
    naming the output and how many values), even where both runtimes agree on it: ``inf - inf``
    is NaN, and a NaN compares False with everything, so a plain ``max |a - b| <= atol`` would let
    such an export through. So do a missing output and outputs of different shapes."""
    if not (math.isfinite(atol) and atol > 0):  # an infinite tolerance would pass anything finite
        raise ValueError(f"atol={atol} must be a finite number > 0")
    array = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"need at least one input to compare, got shape {array.shape}")
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(array.copy()))
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    actual = run_onnx(onnx_bytes, array)
    if len(actual) != len(expected):
        raise ExportParityError(float("inf"), atol, len(array),
                                f"ONNX Runtime gives {len(actual)} outputs, torch {len(expected)}")
    diff = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        e = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
        diff = max(diff, output_difference(np.asarray(a), e, f"output {i}", atol, len(array)))
    if not diff <= atol:  # belt and braces: output_difference never returns NaN
        raise ExportParityError(diff, atol, len(array))
    return diff


def output_difference(actual: np.ndarray, expected: np.ndarray, what: str, atol: float, n_inputs: int) -> float:
    """Max |actual - expected| of one output, a finite float; :class:`ExportParityError` when the
    shapes differ or either side holds a NaN or an infinity (``what`` names the output)."""
    if actual.shape != expected.shape:
        raise ExportParityError(float("inf"), atol, n_inputs, f"{what} has shape {list(actual.shape)} in ONNX "
                                f"Runtime but {list(expected.shape)} in torch")
    for runtime, values in (("ONNX Runtime", actual), ("torch", expected)):
        values = values.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ExportParityError(float("nan"), atol, n_inputs, f"{what} holds {int(np.isnan(values).sum())} NaN "
                                    f"and {int(np.isinf(values).sum())} infinite values in {runtime} "
                                    f"(first at index {tuple(int(j) for j in np.argwhere(bad)[0])})")
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def git_revision() -> str:
    """The commit the training code ran from (``+dirty`` if tracked files changed), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "training", "monitor"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
