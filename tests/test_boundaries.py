"""Boundaries you can see (STYLE habit 1): the runtime entry points never import torch or
``training``, each checked in a fresh interpreter, and every command of the ``auditstream`` CLI
answers ``--help`` (which guards every part's command module at once)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules a serving host, the monitor or the dashboard runs. Parts not written yet are skipped,
# but the CLI entry point is always checked.
RUNTIME_ENTRY_POINTS = ["serving.cli", "serving.consumer", "monitor.cli", "monitor.service", "dashboards.app"]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package itself is missing
        return False


def _imports_in_fresh_interpreter(code: str) -> list[str]:
    """Runs ``code`` in a new interpreter and returns the names of every module it imported."""
    probe = textwrap.dedent(code) + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def _heavy(modules: list[str], allow_training: bool = False) -> list[str]:
    """torch, and (unless allowed) anything of ``training``, among ``modules``."""
    names = ("torch",) if allow_training else ("torch", "training")
    return [m for m in modules if m in names or m.startswith(tuple(n + "." for n in names))]


@pytest.mark.parametrize("module", RUNTIME_ENTRY_POINTS)
def test_runtime_entry_point_imports_no_torch(module):
    if not _exists(module):
        pytest.skip(f"{module} does not exist (yet)")
    modules = _imports_in_fresh_interpreter(f"import {module}")
    assert module in modules
    assert _heavy(modules) == [], f"importing {module} pulled in {_heavy(modules)}"


def test_cli_and_its_parser_import_no_torch():
    modules = _imports_in_fresh_interpreter("import auditstream.cli\nauditstream.cli.build_parser()")
    # The CLI registers the training commands (their argument dataclasses), never torch itself.
    assert _heavy(modules, allow_training=True) == [], "building the CLI parser must not import torch"
    assert "onnxruntime" not in modules, "CLI modules import onnxruntime inside their handlers, not at the top"


def test_wire_and_registry_import_no_heavy_libraries():
    modules = _imports_in_fresh_interpreter("import auditstream.wire, auditstream.registry, auditstream.topics")
    assert not {"torch", "onnx", "onnxruntime", "kafka", "confluent_kafka"} & set(modules)


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (path, parser) of the CLI tree, the root included."""
    yield path, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share one parser
                    seen.add(id(sub))
                    yield from _subcommands(sub, path + (name,))


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_every_command_answers_help_and_has_a_handler(capsys):
    from auditstream.cli import build_parser

    parser = build_parser()
    commands = list(_subcommands(parser))
    assert len(commands) > 2
    failures = []
    for path, sub in commands:
        try:
            parser.parse_args(list(path) + ["--help"])
            failures.append(f"{' '.join(path)} --help did not exit")
        except SystemExit as e:
            if e.code not in (0, None):
                failures.append(f"{' '.join(path)} --help exited {e.code}")
        except Exception as e:  # a broken help string (e.g. a bare %) raises here
            failures.append(f"{' '.join(path)} --help raised {e!r}")
        text = capsys.readouterr().out
        if path and "usage: auditstream " + " ".join(path) not in " ".join(text.split()):
            failures.append(f"{' '.join(path)} --help printed no usage")
        if path and _is_leaf(sub) and not callable(sub.get_default("handler")):
            failures.append(f"{' '.join(path)} sets no handler (parser.set_defaults(handler=fn))")
    assert failures == []


def test_console_script_help_exits_zero():
    script = Path(sys.executable).with_name("auditstream")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "auditstream.cli"]
    done = subprocess.run(command + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: auditstream" in done.stdout and "bench" in done.stdout
