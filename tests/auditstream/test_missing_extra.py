"""A command whose optional packages this install lacks says in one line which extra to install,
exit code 2, no traceback. Every install lists every command (``training/`` ships in each one and
its command modules import nothing heavy); before, on a serving host without the ``train`` extra,
``auditstream train digits`` died in ``import torch`` with a ``ModuleNotFoundError`` traceback,
exit 1, and so did ``tune``, the RL benches and (without the ``dashboard`` extra) ``dashboard``.

The host without an extra is simulated by a meta path finder that refuses its packages, in a
fresh interpreter run from an empty directory (nothing a command might start writes into the
repository)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import auditstream.cli
from auditstream.cli import EXTRA_OF_PACKAGE, EXTRA_PACKAGES, main

REPO = Path(__file__).resolve().parents[2]

# Runs ``auditstream ARGS...`` with the packages of sys.argv[1] (comma-separated) not importable.
WITHOUT = """
import sys
blocked = set(sys.argv[1].split(","))

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from auditstream.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(packages: tuple[str, ...], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "AUDITSTREAM_MODELS_DIR": str(cwd / "models")}
    return subprocess.run([sys.executable, "-c", WITHOUT, ",".join(packages), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


SERVING_HOST = EXTRA_PACKAGES["train"] + EXTRA_PACKAGES["dashboard"]  # 'serve' installed, nothing more

CASES = [
    (["train", "digits", "--epochs", "1"], SERVING_HOST, "auditstream train digits", "torch", "train"),
    (["bench", "ope", "--trials", "1"], SERVING_HOST, "auditstream bench ope", None, "train"),
    (["tune", "zip-reader"], SERVING_HOST, "auditstream tune zip-reader", None, "train"),
    (["dashboard"], ("streamlit",), "auditstream dashboard", "streamlit", "dashboard"),
]


@pytest.mark.parametrize("argv, blocked, command, package, extra", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_a_command_without_its_extra_is_one_line_naming_the_extra(argv, blocked, command, package, extra,
                                                                  tmp_path) -> None:  # fmt: skip
    done = run_without(blocked, argv, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"auditstream: error: {command} needs the {extra} extra ("), lines[0]
    assert lines[0].endswith(f"pip install 'auditstream[{extra}]'"), lines[0]
    if package:
        assert f"({package} is not installed)" in lines[0], lines[0]


def test_help_works_without_the_extras_and_lists_every_command(tmp_path) -> None:
    done = run_without(SERVING_HOST, ["--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for command in ("train", "rl", "tune", "retrain", "dashboard", "serve"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.M), command


def _main_with_handler(handler, monkeypatch) -> int:
    parser = auditstream.cli.build_parser()
    monkeypatch.setattr(auditstream.cli, "build_parser", lambda: parser)
    bench = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["bench"]
    bench_sub = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))
    bench_sub.choices["ope"].set_defaults(handler=handler)
    return main(["bench", "ope"])


def test_a_missing_module_that_no_extra_provides_still_fails_loudly(monkeypatch) -> None:
    """A project module or a submodule gone missing is a broken install or a bug: its traceback stays."""
    def handler(args):
        raise ModuleNotFoundError("No module named 'training.nowhere'", name="training.nowhere")

    with pytest.raises(ModuleNotFoundError, match="training.nowhere"):
        _main_with_handler(handler, monkeypatch)

    def submodule(args):
        raise ModuleNotFoundError("No module named 'torch._C'", name="torch._C")

    with pytest.raises(ModuleNotFoundError, match="torch._C"):
        _main_with_handler(submodule, monkeypatch)


def test_a_serving_package_names_both_serving_extras(monkeypatch, capsys) -> None:
    def handler(args):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    assert _main_with_handler(handler, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("auditstream: error: auditstream bench ope needs the serve extra (onnxruntime is not "
                           "installed): pip install 'auditstream[serve]' (on a GPU serving host: "
                           "'auditstream[serve-gpu]')"), err


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_package_of_an_extra_is_named_with_its_extra() -> None:
    """Each distribution pyproject.toml's extras install (those installed here, whose module names
    are known) has a module in EXTRA_OF_PACKAGE under its extra: a dependency added later is not
    forgotten. serve-core's count as 'serve' (what a person installs)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    checked = 0
    for extra, wanted in (("serve-core", "serve"), ("serve", "serve"), ("train", "train"), ("dashboard", "dashboard")):
        for requirement in extras[extra]:
            name = _requirement_name(requirement)
            if name == "auditstream" or name not in modules_of:
                continue  # another extra, or not installed here
            named = {m: EXTRA_OF_PACKAGE.get(m) for m in modules_of[name]}
            assert wanted in named.values(), f"{name} ({extra}): none of its modules {sorted(named)} is in " \
                                             f"EXTRA_PACKAGES[{wanted!r}] (auditstream/cli.py)"
            checked += 1
    assert checked >= 15
