"""CLI of the captioner family: ``auditstream train captioner [--json]``. Nothing heavy is imported
until the handler runs."""

from __future__ import annotations

import argparse

from training.captioner.args import CaptionerArgs
from training.family_cli import TrainCommand

COMMAND = TrainCommand(
    "captioner", "training.captioner", CaptionerArgs,
    "scene captioner (coloured shapes, relations; greedy decoding inside the graph)",
    not_tunable="its training reports no validation metric (its selection scenes choose the confidence and its "
                "certificate and test scenes may not choose hyperparameters either), and one trial is a ~10-min "
                "training on 2 cores; set --lr, --steps, --batch-size, --width by hand (docs/captioner.md), or tune "
                "digits or zip-reader")


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
