"""The command every model family's training script gets from its arguments dataclass:
``auditstream train <name> [--json]`` and ``python -m training.<family>.train``, both ending in
the script's one ``main(args, as_json)``. The script is imported only when the command runs, so
``auditstream --help`` never imports torch."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

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
