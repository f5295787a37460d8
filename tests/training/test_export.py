"""ONNX export on a tiny model: registry-acceptable, dynamic batch, parity, and a broken export refused."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from auditstream.errors import ExportParityError
from auditstream.registry import verify_onnx
from training.export import OPSET, check_parity, export_onnx, git_revision, output_difference, run_onnx


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10),
                               torch.nn.Softmax(-1)).eval()


def test_export_is_self_contained_standard_and_batch_dynamic(tmp_path):
    module = _tiny()
    data = export_onnx(module, torch.zeros(2, 8, 8), "pixels", ["probs"])
    model = onnx.load_from_string(data)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= OPSET >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    verify_onnx(path, hashlib.sha256(data).hexdigest())  # the registry's safety checks accept it
    for batch in (1, 7, 256):
        (probs,) = run_onnx(data, np.random.default_rng(batch).random((batch, 8, 8), dtype=np.float32))
        assert probs.shape == (batch, 10)


def test_parity_returns_the_max_abs_difference():
    module = _tiny()
    data = export_onnx(module, torch.zeros(2, 8, 8), "pixels", ["probs"])
    inputs = np.random.default_rng(1).random((256, 8, 8), dtype=np.float32) * 16
    diff = check_parity(module, data, inputs)
    assert 0.0 <= diff <= 1e-5
    assert check_parity(module, data, torch.from_numpy(inputs)) == diff


def test_a_broken_export_is_refused():
    module = _tiny()
    data = export_onnx(module, torch.zeros(2, 8, 8), "pixels", ["probs"])
    with torch.no_grad():  # the graph now no longer matches the module it claims to be
        module[3].bias[0] += 0.5  # one class only: a shift of every logit would cancel in softmax
    with pytest.raises(ExportParityError, match="disagree"):
        check_parity(module, data, np.random.default_rng(2).random((256, 8, 8), dtype=np.float32))


def test_parity_needs_inputs_and_a_positive_tolerance():
    module = _tiny()
    data = export_onnx(module, torch.zeros(2, 8, 8), "pixels", ["probs"])
    with pytest.raises(ValueError, match="atol"):
        check_parity(module, data, np.zeros((1, 8, 8), np.float32), atol=0)
    with pytest.raises(ValueError, match="at least one"):
        check_parity(module, data, np.zeros((0, 8, 8), np.float32))


def test_git_revision_names_a_commit():
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", git_revision())


class _TwoOutputs(torch.nn.Module):
    """(first, second): ``first`` is poisoned where ``bad`` says, in torch only or in both runtimes."""

    def __init__(self, bad: float, where: str) -> None:
        super().__init__()
        self.bad, self.where = bad, where

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = x * 2.0
        if self.where == "both":  # exported: the ONNX graph holds the same constant
            first = first + torch.full_like(x[:, :1], self.bad) * (x[:, :1] == x[:, :1])
        return first, x + 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["torch", "both"])
def test_a_non_finite_output_never_passes_parity(bad: float, where: str):
    """NaN or inf in either runtime's output fails parity, even in the first of several outputs
    (``max(0.0, nan)`` is 0.0 in Python: the old loop dropped it) and even where both runtimes agree
    on it (``inf - inf`` is NaN)."""
    x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
    exported = export_onnx(_TwoOutputs(bad, "both" if where == "both" else "none"), torch.from_numpy(x[:2]),
                           "x", ["first", "second"])
    module = _TwoOutputs(bad, "both")  # torch is poisoned in every case
    with pytest.raises(ExportParityError, match=r"output 0 holds .*(NaN|infinite)"):
        check_parity(module, exported, x)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1e-6, 0.5, float("nan"), float("inf"), float("-inf")]), min_size=1, max_size=6),
       st.integers(0, 5))
def test_output_difference_is_finite_or_refuses(poison: list[float], offset: int):
    """Property: whatever NaN/inf either side holds, the difference is a finite number <= the
    true max, or ExportParityError -- never NaN, never a silent pass."""
    rng = np.random.default_rng(offset)
    expected = rng.random((3, 4))
    actual = expected.copy()
    flat = actual.reshape(-1)
    for k, v in enumerate(poison):
        flat[(offset + 5 * k) % flat.size] += v
    finite = np.isfinite(actual).all()
    if not finite:
        with pytest.raises(ExportParityError, match="NaN|infinite"):
            output_difference(actual, expected, "output 0", 1e-4, 3)
        with pytest.raises(ExportParityError, match="NaN|infinite"):
            output_difference(expected, actual, "output 0", 1e-4, 3)
    else:
        diff = output_difference(actual, expected, "output 0", 1e-4, 3)
        assert np.isfinite(diff) and diff == pytest.approx(float(np.abs(actual - expected).max()))


def test_outputs_of_different_shapes_fail_parity():
    with pytest.raises(ExportParityError, match=r"shape \[3, 4\] in ONNX Runtime but \[3, 5\]"):
        output_difference(np.zeros((3, 4)), np.zeros((3, 5)), "output 0", 1e-4, 3)


def test_an_infinite_or_nan_tolerance_is_refused():
    module = _tiny()
    data = export_onnx(module, torch.zeros(2, 8, 8), "pixels", ["probs"])
    for atol in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="atol"):
            check_parity(module, data, np.zeros((1, 8, 8), np.float32), atol=atol)
