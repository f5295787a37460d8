"""The command every model family's training script gets from its arguments dataclass:
``auditstream train <name> [--json]`` and ``python -m training.<family>.train``, both ending in
the script's one ``main(args, as_json)``. The script is imported only when the command runs, so
``auditstream --help`` never imports torch."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from auditstream.cli_args import add_dataclass_arguments, dataclass_from_namespace


@dataclass(frozen=True)
class TrainCommand:
    name: str  # the subcommand: auditstream train <name>
    package: str  # the family's package; its ``train`` module holds ``main``
    args: type  # the family's frozen arguments dataclass
    help: str  # what the model does, one line

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_dataclass_arguments(parser, self.args)
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    def register(self, train: argparse._SubParsersAction) -> None:
        parser = train.add_parser(self.name, help=f"{self.help}: train, calibrate, certify, export ONNX, publish")
        self.add_arguments(parser)
        parser.set_defaults(handler=self.run)

    def parse(self, argv: list[str]) -> tuple[object, bool]:
        """(arguments, --json) for ``python -m <package>.train``."""
        parser = argparse.ArgumentParser(prog=f"python -m {self.package}.train", description=self.help)
        self.add_arguments(parser)
        ns = parser.parse_args(argv)
        return dataclass_from_namespace(self.args, ns), ns.json

    def run(self, ns: argparse.Namespace) -> int:
        script = importlib.import_module(f"{self.package}.train")
        return script.main(dataclass_from_namespace(self.args, ns), ns.json)


def train_and_report(run: Callable[[object, Path], dict], print_summary: Callable[[dict], None], args: object,
                     as_json: bool) -> int:
    """Every family script's ``main``: ``run(args, models_dir)`` trains, calibrates, certifies,
    exports and publishes to the registry (``AUDITSTREAM_MODELS_DIR``); the summary is printed for
    people and, with ``as_json``, as one JSON object on the last line."""
    import json

    from auditstream.settings import Settings

    summary = run(args, Settings.from_env().models_dir)
    print_summary(summary)
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    return 0

