"""CLI of the captioner family: ``auditstream train captioner [--json]``. Nothing heavy is imported
until the handler runs."""

from __future__ import annotations

import argparse

from training.captioner.args import CaptionerArgs
from training.family_cli import TrainCommand

COMMAND = TrainCommand("captioner", "training.captioner", CaptionerArgs,
                       "scene captioner (coloured shapes, relations; greedy decoding inside the graph)")


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
