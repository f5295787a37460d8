"""The serving entry points never import torch (a serving host installs none)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["serving.consumer", "serving.cli", "serving.app", "stack.serve_bench",
                                    "auditstream.stream", "auditstream.cli"])
def test_no_torch_in_a_fresh_interpreter(module: str) -> None:
    code = (f"import sys, {module}\n"
            "bad = [m for m in ('torch', 'training') if m in sys.modules]\n"
            "assert not bad, bad\n")
    if module == "auditstream.cli":
        code += "auditstream.cli.build_parser()\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
