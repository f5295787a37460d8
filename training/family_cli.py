"""The command every model family's training script gets from its arguments dataclass:
``auditstream train <name> [--json]`` and ``python -m training.<family>.train``, both ending in
the script's one ``main(args, as_json)``. The script is imported only when the command runs, so
``auditstream --help`` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from auditstream import finite_json
from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace
from auditstream.errors import AuditstreamError
from training.tuning.args import TuneArgs


@dataclass(frozen=True)
class TrainCommand:
    name: str  # the subcommand: auditstream train <name>
    package: str  # the family's package; its ``train`` module holds ``main``
    args: type  # the family's frozen arguments dataclass
    help: str  # what the model does, one line
    # auditstream tune <name>: the family's SEARCH_SPACE (args.py), or why it cannot be tuned.
    search_space: Mapping[str, Any] | None = None
    not_tunable: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_dataclass_arguments(parser, self.args)
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    def register(self, train: argparse._SubParsersAction) -> None:
        parser = train.add_parser(self.name, help=f"{self.help}: train, calibrate, certify, export ONNX, publish")
        self.add_arguments(parser)
        parser.set_defaults(handler=self.run)

    def register_tune(self, tune: argparse._SubParsersAction) -> None:
        """``auditstream tune <name>``: the family's arguments fix what the search space does not
        draw; a family without a search space is listed too, and refuses with its reason."""
        overlap = {f.name for f in fields(self.args)} & {f.name for f in fields(TuneArgs)}
        assert not overlap, f"{self.args.__name__} and TuneArgs share option names {overlap}"
        what = "search hyperparameters (Optuna), then train, certify, publish" if self.search_space else \
            "not tunable (says why)"
        parser = tune.add_parser(self.name, help=f"{self.help}: {what}")
        self.add_arguments(parser)
        add_dataclass_arguments(parser, TuneArgs)
        parser.set_defaults(handler=self.run_tune)

    def run_tune(self, ns: argparse.Namespace) -> int:
        args, tune_args = dataclass_from_namespace(self.args, ns), dataclass_from_namespace(TuneArgs, ns)
        from training.tuning.study import main  # (Optuna) only once the arguments are known to be good

        return main(self, args, tune_args, ns.json)

    def parse(self, argv: list[str]) -> tuple[object, bool]:
        """(arguments, --json) for ``python -m <package>.train``."""
        parser = argparse.ArgumentParser(prog=f"python -m {self.package}.train", description=self.help)
        self.add_arguments(parser)
        ns = parser.parse_args(argv)
        try:
            return dataclass_from_namespace(self.args, ns), ns.json
        except AuditstreamError as e:  # a value out of range: one line, as `auditstream train` prints it
            print(f"auditstream: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def run(self, ns: argparse.Namespace) -> int:
        args = dataclass_from_namespace(self.args, ns)  # refuse a bad value before torch is even imported
        script = importlib.import_module(f"{self.package}.train")
        return script.main(args, ns.json)


def train_and_report(run: Callable[[object, Path], dict], print_summary: Callable[[dict], None], args: object,
                     as_json: bool) -> int:
    """Every family script's ``main``: ``run(args, models_dir)`` trains, calibrates, certifies,
    exports and publishes to the registry (``AUDITSTREAM_MODELS_DIR``); the summary is printed for
    people and, with ``as_json``, as one JSON object on the last line."""

    from auditstream.settings import Settings

    summary = run(args, Settings.from_env().models_dir)
    print_summary(summary)
    if as_json:
        finite_json.print_summary(summary, sort_keys=True)
    return 0

