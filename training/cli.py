"""Training commands. ``auditstream train <family>`` and ``auditstream rl ...``; each model
family registers its own subcommands from its own module, imported lazily by the handler, so
``auditstream --help`` never imports torch."""

from __future__ import annotations

import argparse

from auditstream.cli import command_modules

# Modules that add subcommands: register(train, rl, bench) with the three subparser groups.
FAMILY_MODULES = ("training.digits.cli", "training.zip_reader.cli", "training.detector.cli", "training.captioner.cli",
                  "training.rl.cli", "training.rl.stream_cli")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    train_parser = commands.add_parser("train", help="train a model, export it to ONNX and publish it to the registry")
    train = train_parser.add_subparsers(dest="family", metavar="FAMILY", required=True)
    rl_parser = commands.add_parser("rl", help="sequential decisions: run episodes, build offline datasets, promote policies")
    rl = rl_parser.add_subparsers(dest="rl_command", metavar="RL_COMMAND", required=True)
    tune_parser = commands.add_parser("tune", help="search a family's hyperparameters (Optuna), then train with "
                                                   "the best ones and publish")
    tune = tune_parser.add_subparsers(dest="tune_family", metavar="FAMILY", required=True)
    for module in command_modules(FAMILY_MODULES):
        module.register(train, rl, bench)
        if hasattr(module, "COMMAND"):  # the families that `auditstream train` knows
            module.COMMAND.register_tune(tune)
