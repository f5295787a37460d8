"""Argument dataclasses become argparse options and come back unchanged (every field kind)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace


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
