"""ONNX export on a tiny model: registry-acceptable, dynamic batch, parity, and a broken export refused."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import pytest
import torch

from auditstream.errors import ExportParityError
from auditstream.registry import verify_onnx
from training.export import OPSET, check_parity, export_onnx, git_revision, run_onnx


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
