"""Argument dataclasses become argparse options and come back unchanged (every field kind); a
field's ``check`` refuses a value out of its range with one message naming the option."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditstream.cli_args import (COUNT, FRACTION, LEFTOVER, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, SHARE, Range,
                                  _whole_number, add_dataclass_arguments, check_fields, check_value,
                                  dataclass_from_namespace)
from auditstream.errors import ConfigError


@dataclass(frozen=True)
class JobArgs:
    """A job's arguments, every kind of field the CLI supports."""

    dataset: Path = field(metadata={"help": "where the data is"})
    epochs: int = field(default=3, metadata={"help": "passes over the data"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    name: str = field(default="digits", metadata={"help": "model name"})
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata={"help": "where to train"})
    seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "random seeds"})
    tags: list[str] = field(default_factory=list, metadata={"help": "free-form tags"})
    limit: int | None = field(default=None, metadata={"help": "at most this many samples"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: at least 1")


def parser_for(cls) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job", exit_on_error=False)
    add_dataclass_arguments(parser, cls)
    return parser


def test_cli_args_round_trip_defaults():
    args = dataclass_from_namespace(JobArgs, parser_for(JobArgs).parse_args(["--dataset", "d"]))
    assert args == JobArgs(dataset=Path("d"))


def test_cli_args_round_trip_every_kind():
    argv = ["--dataset", "/data", "--epochs", "7", "--lr", "0.5", "--name", "zip", "--device", "cuda",
            "--seeds", "4", "5", "6", "--tags", "a", "b", "--limit", "100", "--no-progress"]
    args = dataclass_from_namespace(JobArgs, parser_for(JobArgs).parse_args(argv))
    assert args == JobArgs(Path("/data"), 7, 0.5, "zip", "cuda", (4, 5, 6), ["a", "b"], 100, False)
    assert hash(args.seeds) is not None  # a tuple, as the frozen field says


def test_cli_args_override_and_ignore_foreign_options():
    namespace = parser_for(JobArgs).parse_args(["--dataset", "d"])
    namespace.command = "train"  # options of the enclosing CLI are not fields
    assert dataclass_from_namespace(JobArgs, namespace, epochs=1).epochs == 1


@pytest.mark.parametrize("argv", [[], ["--dataset", "d", "--device", "tpu"], ["--dataset", "d", "--epochs", "x"]])
def test_cli_args_reject_bad_options(argv, capsys):
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parser_for(JobArgs).parse_args(argv)


def test_cli_args_help_comes_from_field_metadata():
    text = parser_for(JobArgs).format_help()
    for f in dataclasses.fields(JobArgs):
        assert "--" + f.name.replace("_", "-") in text
    assert "passes over the data (default: 3)" in text and "{cpu,cuda}" in text


def test_cli_args_a_refused_combination_is_an_auditstream_error_with_the_check_s_message():
    from auditstream.errors import AuditstreamError

    namespace = parser_for(JobArgs).parse_args(["--dataset", "d", "--epochs", "0"])
    with pytest.raises(AuditstreamError, match="epochs=0: at least 1") as caught:
        dataclass_from_namespace(JobArgs, namespace)
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do


@pytest.mark.parametrize("argv", [
    ["bench", "faults", "--scenario", "nope"],
    ["bench", "faults", "--scenario", "broker_restart", "--bootstrap", "127.0.0.1:9"],
    ["bench", "loop", "--rounds", "0"],
    ["demo", "--retrain-every", "-1"],
])
def test_every_command_answers_a_refused_combination_with_a_message_and_exit_2(argv, capsys):
    """Through the real CLI: the argument dataclass's own check (``__post_init__``) ends in one
    ``auditstream: error:`` line and exit code 2, never a traceback."""
    from auditstream.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("auditstream: error: ") and "Traceback" not in err


# --- checked fields: metadata['check'] (a Range) -------------------------------------------------

RANGES = [POSITIVE, NON_NEGATIVE, PROBABILITY, SHARE, FRACTION, LEFTOVER, COUNT, SEED, Range(2, 6, whole=True)]


@dataclass(frozen=True)
class CheckedArgs:
    lr: float = field(default=1e-3, metadata={"help": "learning rate", "check": POSITIVE})
    delta: float = field(default=0.05, metadata={"help": "failure probability", "check": PROBABILITY})
    epochs: int = field(default=3, metadata={"help": "passes", "check": COUNT})
    preset: int | None = field(default=None, metadata={"help": "None: the preset", "check": COUNT})

    def __post_init__(self) -> None:
        check_fields(self)


def test_ranges_say_what_they_accept_in_words():
    assert POSITIVE.describe() == "a finite number > 0"
    assert PROBABILITY.describe() == "a number strictly between 0 and 1"
    assert SHARE.describe() == "a number from 0 to 1"
    assert FRACTION.describe() == "a number > 0 and <= 1"
    assert COUNT.describe() == "a whole number >= 1"
    assert "lr: learning rate; a finite number > 0 (default: 0.001)" in " ".join(
        parser_for(CheckedArgs).format_help().replace("--lr LR", "lr:").split())


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "invalid --lr=nan: expected a finite number > 0, e.g. 0.001"),
    (["--lr", "1e999"], "invalid --lr=inf: expected a finite number > 0, e.g. 0.001"),
    (["--delta", "1"], "invalid --delta=1.0: expected a number strictly between 0 and 1, e.g. 0.05"),
    (["--epochs", "0"], "invalid --epochs=0: expected a whole number >= 1, e.g. 3"),
    (["--preset", "0"], "invalid --preset=0: expected a whole number >= 1, or leave --preset out for the preset"),
])  # fmt: skip
def test_a_checked_field_refuses_with_the_option_and_what_to_give(argv, message):
    with pytest.raises(ConfigError) as caught:
        dataclass_from_namespace(CheckedArgs, parser_for(CheckedArgs).parse_args(argv))
    assert str(caught.value) == message


def test_checks_hold_for_every_construction_not_only_the_command_line():
    with pytest.raises(ConfigError, match="--lr"):
        CheckedArgs(lr=-1.0)
    with pytest.raises(ConfigError, match="--lr"):
        dataclasses.replace(CheckedArgs(), lr=float("inf"))
    with pytest.raises(ConfigError, match="--epochs"):
        CheckedArgs(epochs=True)  # a bool is not a count
    with pytest.raises(ConfigError, match="--epochs"):
        CheckedArgs(epochs=2.5)
    assert CheckedArgs(lr=2, preset=None).lr == 2  # an int where a float is declared is a number


HOSTILE = st.one_of(
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "1e999", "-1e999", "1e-400", "-0",
                     "0", "0.0", "1", "1.0", "-1", "0.5", "1e308", "4294967295", "4294967296", "9" * 40, "0x10",
                     "1_000", " 3 ", "", "one", "1,5", "١", "½", "\x00", "2.", ".5", "+.5e-3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet="0123456789.eE+-_ infaINFA", max_size=12),
)  # fmt: skip


@given(text=HOSTILE, accepted=st.sampled_from(RANGES))
def test_check_value_on_hostile_numeric_strings(text: str, accepted: Range):
    """Whatever a person types: argparse's own conversion refuses it, or the check refuses it
    with a ConfigError naming the option, or the value is a finite number inside the range."""
    convert = _whole_number if accepted.whole else float  # what add_dataclass_arguments gives argparse
    try:
        value = convert(text)
    except (ValueError, OverflowError):
        return  # argparse refuses it itself ("invalid int value"), exit 2
    try:
        assert check_value("--x", value, accepted) == value
    except ConfigError as e:
        assert str(e).startswith("invalid --x=") and accepted.describe() in str(e)
        assert not accepted.accepts(value)
        return
    assert math.isfinite(value)
    assert accepted.low is None or (value > accepted.low if accepted.low_open else value >= accepted.low)
    assert accepted.high is None or (value < accepted.high if accepted.high_open else value <= accepted.high)


def _every_option(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_option(sub, path + (name,))
        elif action.option_strings:
            yield " ".join(path), action


def test_no_option_of_any_command_says_its_default_twice() -> None:
    """Before, 13 options' help said it twice, e.g. produce --version "model version whose input
    spec to follow (default: latest) (default: )" (also bench serve/faults/loop, certify, cost,
    rl run, monitor, train policy, rl train-offline); with_default is the one place that appends it."""
    from auditstream.cli import build_parser

    options = list(_every_option(build_parser()))
    assert len(options) > 300 and {("produce", "--version"), ("bench serve", "--client")} <= {
        (path, a.option_strings[0]) for path, a in options}
    twice = [f"{path} {a.option_strings[0]}: {a.help}" for path, a in options if (a.help or "").count("(default:") > 1]
    empty = [f"{path} {a.option_strings[0]}" for path, a in options if "(default: )" in (a.help or "")]
    assert not twice and not empty, twice + empty
    helps = dict(((path, a.option_strings[0]), a.help) for path, a in options)
    assert helps[("produce", "--version")] == "model version whose input spec to follow (default: latest)"
    assert helps[("rl run", "--episodes")].endswith("(default: 10)")  # a default of its own still shows
