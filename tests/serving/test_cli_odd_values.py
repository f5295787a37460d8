"""Odd values on the serving commands (``serve``, ``produce``, ``dlq replay``), the top-level
``--log-level`` and the ``AUDITSTREAM_*`` variables end in a clean refusal -- exit code 2, no
traceback, a message that says what to give -- before any model, broker or worker is touched.

Before: ``serve --shadow`` without ``--version`` ended in a raw ValueError traceback;
``produce --source bogus`` (and a source that does not fit the card: digits for a 12x12 input, any
source for a float16 input) raised ValueError at the first request, after the broker was
contacted; ``--log-level loud`` raised logging's ValueError; a bad ``AUDITSTREAM_*`` variable was a
traceback from ``main()``, outside its error handling; ``serve --workers 2`` with
``AUDITSTREAM_METRICS_PORT=65535`` started a worker that died on port 65536; ``serve --workers
100000`` set out to start a hundred thousand processes; a misspelt ``dlq replay --reason``
replayed nothing, silently."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from auditstream.cli import build_parser, main
from auditstream.registry import ModelRegistry, TensorSpec
from tests.conftest import tiny_card, tiny_classifier_onnx


def _refuse(*args: object, **kwargs: object) -> None:
    pytest.fail("the work started: the odd value was not refused first")


@pytest.fixture
def odd_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models whose input a load-generator source may not fit; every step past the checks fails the test."""
    registry = ModelRegistry(tmp_path / "models")
    cards = {
        "tiny": tiny_card(),
        "vector": dataclasses.replace(tiny_card("vector"), inputs=[TensorSpec("image", "float32", [None, 8])]),
        "half": dataclasses.replace(tiny_card("half"), inputs=[TensorSpec("image", "float16", [None, 8, 8])]),
        "twelve": dataclasses.replace(tiny_card("twelve"), inputs=[TensorSpec("image", "float32", [None, 12, 12])]),
        "mnist": dataclasses.replace(tiny_card("mnist"), extra={"loadgen_source": "mnist"}),
    }
    for card in cards.values():
        registry.publish(card, tiny_classifier_onnx())
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(registry.root))
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AUDITSTREAM_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    for work in ("auditstream.kafka.make_producer", "serving.app.serve", "serving.workers.Supervisor.start",
                 "serving.dlq.replay"):
        monkeypatch.setattr(work, _refuse)
    return registry.root


CASES = [  # (argv, AUDITSTREAM_* variables, what the last line of the refusal says)
    (["serve", "--model", "tiny", "--shadow"], {}, "serve --shadow needs --version V"),
    (["serve", "--model", "tiny", "--shadow", "--workers", "2"], {}, "serve --shadow needs --version V"),
    (["--log-level", "loud", "serve", "--model", "tiny"], {}, "invalid choice: 'LOUD'"),
    (["serve", "--model", "tiny", "--workers", "2"], {"METRICS_PORT": "65535"},
     "invalid AUDITSTREAM_METRICS_PORT=65535: expected a port from 1 to 65534 with --workers 2"),
    (["serve", "--model", "tiny", "--workers", "1025"], {}, "invalid --workers=1025: expected a whole number from 1 "
     "to 1024"),
    (["serve", "--model", "tiny"], {"MAX_WAIT_MS": "3600000"}, "invalid AUDITSTREAM_MAX_WAIT_MS=3600000"),
    (["serve", "--model", "tiny"], {"QC_SALT": ""}, "invalid AUDITSTREAM_QC_SALT=''"),
    (["serve", "--model", "tiny"], {"MAX_BATCH_SIZE": "2000000"}, "AUDITSTREAM_MAX_BATCH_SIZE=2000000"),
    (["serve", "--model", "tiny"], {"QC_RATE": "2"}, "invalid AUDITSTREAM_QC_RATE=2.0"),
    (["serve", "--model", "tiny"], {"TOPIC_PREFIX": "my team"}, "invalid AUDITSTREAM_TOPIC_PREFIX='my team'"),
    (["produce"], {}, "produce needs --model NAME"),
    (["produce", "--model", "tiny", "--source", "bogus"], {}, "invalid choice: 'bogus'"),
    (["produce", "--model", "vector", "--source", "png"], {}, "does not take a grayscale image"),
    (["produce", "--model", "half"], {}, "dtype float16 not allowed on the wire"),
    (["produce", "--model", "twelve", "--source", "digits"], {}, "digits are 8x8"),
    (["produce", "--model", "mnist"], {}, "('mnist' is none of random, png, digits); give --source random"),
    (["produce", "--model", "../tiny"], {}, "model ../tiny not found"),
    (["produce", "--model", "tiny"], {"BOOTSTRAP_SERVERS": "localhost:notaport"},
     "invalid AUDITSTREAM_BOOTSTRAP_SERVERS='localhost:notaport'"),
    (["dlq", "replay", "--reason", "wrong-shape"], {}, "invalid choice: 'wrong-shape'"),
    (["dlq", "replay"], {"SESSION_TIMEOUT_MS": "4000000", "MAX_POLL_INTERVAL_MS": "5000000"},
     "invalid AUDITSTREAM_SESSION_TIMEOUT_MS=4000000"),
]  # fmt: skip


def run_refused(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals (choices, a missing option)
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, variables, says", CASES, ids=[" ".join(c[0]) + "".join(f" {k}={v!r}" for k, v in
                                                                                      c[1].items()) for c in CASES])
def test_an_odd_value_is_refused_cleanly_before_the_work(argv, variables, says, odd_registry, monkeypatch,
                                                         capsys) -> None:
    for name, value in variables.items():
        monkeypatch.setenv("AUDITSTREAM_" + name, value)
    code, err = run_refused(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert says in err.strip().splitlines()[-1], err


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [leaf for name, sub in subs[0].choices.items() for leaf in leaf_commands(sub, path + (name,))]


def parser_without_work() -> argparse.ArgumentParser:
    """The CLI's parser with every command's handler replaced by a failure: a check that did
    not refuse must not start a broker, a training run or a dashboard."""
    parser = build_parser()
    stack = [parser]
    while stack:
        current = stack.pop()
        if "handler" in current._defaults:
            current.set_defaults(handler=_refuse)
        stack += [sub for a in current._actions if isinstance(a, argparse._SubParsersAction)
                  for sub in a.choices.values()]
    return parser


def required_options(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    """Values argparse takes for the leaf command's required options and positionals (a choice,
    else "1", which every number and name option accepts), so the command gets past parsing."""
    for name in path:
        (subs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subs.choices[name]
    argv: list[str] = []
    for action in parser._actions:
        if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
            value = str(next(iter(action.choices))) if action.choices else "1"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


@pytest.mark.parametrize("path", leaf_commands(build_parser()), ids=" ".join)
def test_every_command_refuses_a_bad_variable_in_one_line(path, odd_registry, monkeypatch, capsys) -> None:
    """Whatever the command (its required options given), a bad variable is one line naming it
    and exit 2, before its handler runs."""
    monkeypatch.setenv("AUDITSTREAM_QC_SALT", "")
    monkeypatch.setattr("auditstream.cli.build_parser", parser_without_work)
    code, err = run_refused(list(path) + required_options(build_parser(), path), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "AUDITSTREAM_QC_SALT" in err, err
