"""Every numeric option of every ``auditstream`` command says what it accepts and refuses the rest:
``nan``, ``inf``, ``1e999``, negatives, fractions where a whole number is due, ports past 65535
and seeds past 2**32 - 1 end in exactly one ``auditstream: error: invalid --OPTION=VALUE:
expected ...`` line and exit code 2, before any work starts.

The walk over ``build_parser()`` is the class fix: a numeric option added later without a range
(a plain ``add_argument(..., type=int)``, or a dataclass field without ``metadata["check"]``)
fails :func:`test_every_numeric_option_declares_its_range`. Before, 42 options were unchecked
(``broker start --port``, ``serve --workers``, ``demo --retrain-nice``, ``cost --max-risk``,
``rl run --seed``, ...)."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types
from typing import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import auditstream.cli
from auditstream.cli import build_parser, main
from auditstream.cli_args import SEED, Checked, _whole_number
from tests.monitor.test_cli_errors import UNREACHABLE_POSTGRES

NUMERIC_TYPES = (int, float, _whole_number)
# What Range.describe() says (and cost --max-risk's own "a number from 0 to 1, or -1 for no limit")
RANGE_WORDS = ("a whole number", "a finite number", "a number ")


def numeric_options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """(command path, action) of every option with a numeric type, through all subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_options(sub, path + (name,))
        elif action.option_strings and action.type in NUMERIC_TYPES:
            yield path, action


OPTIONS = list(numeric_options(build_parser()))
CHECKED = [(path, a) for path, a in OPTIONS if isinstance(a, Checked)]


def test_the_walk_finds_the_commands() -> None:
    """The walk reaches nested subcommands (a walk that found nothing would pass anything)."""
    found = {(" ".join(path), a.option_strings[0]) for path, a in OPTIONS}
    assert {("broker start", "--port"), ("dlq replay", "--max-records"), ("rl run", "--seed"),
            ("bench wire", "--repeats"), ("demo", "--retrain-nice"), ("cost", "--max-risk")} <= found
    assert len(OPTIONS) > 150 and len(CHECKED) >= 9


def test_every_numeric_option_declares_its_range() -> None:
    """A plain option is a ``Checked`` action (add_checked_argument); a dataclass field's help
    carries its Range's words (metadata["check"], appended by add_dataclass_arguments)."""
    unchecked = [f"{' '.join(path)} {a.option_strings[0]}" for path, a in OPTIONS
                 if not isinstance(a, Checked) and not any(w in (a.help or "") for w in RANGE_WORDS)]
    assert unchecked == [], "numeric options without a range (auditstream/cli_args.py says how): " + ", ".join(unchecked)


def test_a_checked_option_shows_its_range_in_help() -> None:
    for path, action in CHECKED:
        assert action.accepted.describe() in action.help, (path, action.help)


class WorkStarted(AssertionError):
    pass


def _refuse(*args: object, **kwargs: object) -> None:
    raise WorkStarted("a refused value reached the command's work")


def run_refused(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """``main(argv)`` with every command's handler replaced by one that fails the test: a value
    refused while parsing never reaches a handler, so nothing is started."""
    parser = build_parser()
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if "handler" in sub._defaults:
                        sub.set_defaults(handler=_refuse)
                    stack.append(sub)
    monkeypatch.setattr(auditstream.cli, "build_parser", lambda: parser)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusal would be a usage block, not the one line
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


def bad_values(action: Checked) -> list[str]:
    """Values ``action``'s range refuses: NaN, an infinity, just below and above its ends, a
    fraction where a whole number is due."""
    accepted = action.accepted
    values = ["nan", "inf", "-1e999"]
    if accepted.whole:
        values.append("1.5")
        if accepted.low is not None:
            values.append(str(int(accepted.low) - 1))
        if accepted.high is not None:
            values.append(str(int(accepted.high) + 1))
    elif accepted.low is not None:
        values.append(repr(float(accepted.low) - 0.5))
    return values


PARSE_TIME_CASES = [(path, a.option_strings[0], value, a.accepted.whole) for path, a in CHECKED for value in bad_values(a)]


@pytest.mark.parametrize("path, flag, value, whole", PARSE_TIME_CASES,
                         ids=[f"{' '.join(p)} {f}={v}" for p, f, v, _ in PARSE_TIME_CASES])
def test_a_plain_option_refuses_a_bad_value_while_parsing(path, flag, value, whole, monkeypatch) -> None:
    code, err = run_refused([*path, f"{flag}={value}"], monkeypatch)
    assert code == 2, err
    assert err.splitlines() == [err.strip()] and "Traceback" not in err, err  # one line, nothing else
    shown = repr(_whole_number(value) if whole else float(value))  # "-1e999" is shown as -inf
    assert err.startswith(f"auditstream: error: invalid {flag}={shown}: expected "), err
    assert ", e.g. " in err, err


def test_a_plain_option_keeps_its_good_values(monkeypatch) -> None:
    """0 stays "a free port" for the broker, an unset --max-records stays "all"."""
    parser = build_parser()
    assert parser.parse_args(["broker", "start", "--port=0"]).port == 0
    assert parser.parse_args(["broker", "start"]).port == 0
    assert parser.parse_args(["dlq", "replay"]).max_records is None
    assert parser.parse_args(["dlq", "replay", "--max-records=1000"]).max_records == 1000
    assert parser.parse_args(["bench", "wire", "--budget-s=0.05"]).budget_s == 0.05
    assert parser.parse_args(["bench", "detector-handwriting", f"--seed={SEED.high}"]).seed == SEED.high


# Dataclass-backed options are checked when the handler builds the dataclass: the stand-ins for
# the work below fail the test if a refused value got that far.
DATACLASS_CASES = [
    (["demo", "--duration-s", "nan"], "--duration-s=nan", "a finite number >= 0", "stack.demo:run"),
    (["demo", "--rate-per-s", "inf"], "--rate-per-s=inf", "a finite number >= 0", "stack.demo:run"),
    (["demo", "--dashboard-port", "70000"], "--dashboard-port=70000", "a whole number from 0 to 65535",
     "stack.demo:run"),
    (["demo", "--metrics-port-base", "65530"], "--metrics-port-base=65530", "a whole number from 1 to 65525",
     "stack.demo:run"),
    (["demo", "--report-every-s", "0"], "--report-every-s=0.0", "a finite number > 0", "stack.demo:run"),
    (["demo", "--retrain-every", "-1"], "--retrain-every=-1", "a whole number >= 0", "stack.demo:run"),
    (["demo", "--retrain-nice", "20"], "--retrain-nice=20", "a whole number from 0 to 19", "stack.demo:run"),
    (["demo", "--promote-margin", "1"], "--promote-margin=1.0", "strictly between 0 and 1", "stack.demo:run"),
    (["produce", "--model", "m", "--rate", "-1"], "--rate=-1.0", "a finite number >= 0",
     "auditstream.kafka:make_producer"),
    (["produce", "--model", "m", "--count", "0"], "--count=0", "a whole number >= 1",
     "auditstream.kafka:make_producer"),
    (["produce", "--model", "m", "--seed", "4294967296"], "--seed=4294967296", "a whole number from 0 to 4294967295",
     "auditstream.kafka:make_producer"),
    (["rl", "run", "--episodes", "0"], "--episodes=0", "a whole number >= 1", "training.rl.env_driver:run"),
    (["rl", "run", "--decision-timeout-s", "inf"], "--decision-timeout-s=inf", "a finite number > 0",
     "training.rl.env_driver:run"),
    (["rl", "run", "--human-wait-s", "-1"], "--human-wait-s=-1.0", "a finite number >= 0",
     "training.rl.env_driver:run"),
    (["rl", "run", "--max-steps", "1.5"], "--max-steps=1.5", "a whole number >= 0", "training.rl.env_driver:run"),
    (["rl", "run", "--seed", "4294967295"], "--seed=4294967295", "from 0 to 4294967286, so that the largest seed "
     "derived from it (seed + episodes - 1)", "training.rl.env_driver:run"),
    (["cost", "--model", "m", "--cost-error", "nan"], "--cost-error=nan", "a finite number >= 0",
     "auditstream.registry:ModelRegistry"),
    (["cost", "--model", "m", "--qc-rate", "1.5"], "--qc-rate=1.5", "a number from 0 to 1",
     "auditstream.registry:ModelRegistry"),
    (["cost", "--model", "m", "--max-risk", "-0.5"], "--max-risk=-0.5", "a number from 0 to 1, or -1 for no limit",
     "auditstream.registry:ModelRegistry"),
    (["cost", "--model", "m", "--max-risk", "nan"], "--max-risk=nan", "a number from 0 to 1, or -1 for no limit",
     "auditstream.registry:ModelRegistry"),
    (["dashboard", "--refresh-s", "nan", "--store-url", UNREACHABLE_POSTGRES], "--refresh-s=nan", ">= 0",
     "store:open_store"),
    (["dashboard", "--lease-s", "inf", "--store-url", UNREACHABLE_POSTGRES], "--lease-s=inf", "from 10",
     "store:open_store"),
    # seeds from which a command derives more: refused where the largest derived one would pass 2**32 - 1
    (["bench", "offline", "--seed", "429496727"], "--seed=429496727", "from 0 to 429496726", None),
    (["bench", "overrides", "--seeds", "2", "--seed", "429496729"], "--seed=429496729", "from 0 to 429496728", None),
    (["bench", "ope", "--seed", "4294967295"], "--seed=4294967295", "from 0 to 4293963296", None),
    (["bench", "loop", "--seed", "4294961296"], "--seed=4294961296", "from 0 to 4294961295", "stack.loop_bench:main"),
    (["train", "policy", "--seed", "4294967295"], "--seed=4294967295", "from 0 to 4294957196", None),
]  # fmt: skip


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RL benches and PPO are replaced whole (importing them pulls in torch)."""
    for name in ("training.rl.ppo", "training.rl.ope_bench", "training.rl.offline_bench",
                 "training.rl.overrides_bench"):
        stand_in = types.ModuleType(name)
        stand_in.main = _refuse  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr("signal.signal", lambda *a: None)  # run_dashboard's SIGTERM hook stays out of pytest


@pytest.mark.parametrize("argv, shown, expected, work", DATACLASS_CASES, ids=[" ".join(c[0][:3]) for c in DATACLASS_CASES])
def test_a_dataclass_option_refuses_a_bad_value_before_the_work(argv, shown, expected, work, no_work, monkeypatch,
                                                                capsys) -> None:  # fmt: skip
    if work:
        module, name = work.split(":")
        monkeypatch.setattr(f"{module}.{name}", _refuse)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines() == [err.strip()] and "Traceback" not in err, err
    assert err.startswith(f"auditstream: error: invalid {shown}: expected ") and expected in err, err


def test_max_risk_keeps_minus_one_as_no_limit() -> None:
    from monitor.stats_cli import CostArgs

    assert CostArgs(max_risk=-1.0).max_risk == -1.0 and CostArgs(max_risk=0.0).max_risk == 0.0
    assert CostArgs(max_risk=1.0).max_risk == 1.0


def test_a_derived_seed_bound_is_the_largest_that_fits() -> None:
    from training.rl.args import OfflineBenchArgs, OverridesBenchArgs
    from training.rl.env_driver import RunArgs

    top = int(SEED.high)
    assert RunArgs(seed=top - 9, episodes=10).seed == top - 9
    assert OfflineBenchArgs(seed=(top - 6) // 10 - 2, seeds=3).seeds == 3
    assert OverridesBenchArgs(seed=(top - 4) // 10 - 1, seeds=2).seeds == 2


HOSTILE = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "-1e999", "-1", "-0.5", "1e308", "1.5", "65536",
                           "4294967296", "-0"])


@settings(max_examples=60, deadline=None)
@given(option=st.sampled_from(CHECKED), value=HOSTILE)
def test_hostile_numbers_on_plain_options_are_one_line_or_accepted(option, value) -> None:
    """Whatever the value, a plain option either takes it (it is in range) or refuses it in one
    line naming the option, exit 2: never argparse's usage block, never a traceback."""
    path, action = option
    parsed = _whole_number(value) if action.accepted.whole else float(value)
    assume(not action.accepted.accepts(parsed))
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, err = run_refused([*path, f"{action.option_strings[0]}={value}"], monkeypatch)
    assert code == 2 and err.startswith(f"auditstream: error: invalid {action.option_strings[0]}="), err
    assert len(err.strip().splitlines()) == 1, err
