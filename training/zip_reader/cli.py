"""CLI of the zip-reader family: ``auditstream train zip-reader [--json]``. Nothing heavy is
imported until the handler runs."""

from __future__ import annotations

import argparse

from training.family_cli import TrainCommand
from training.zip_reader.args import SEARCH_SPACE, ZipReaderArgs

COMMAND = TrainCommand("zip-reader", "training.zip_reader", ZipReaderArgs, "envelope image -> 5-digit ZIP",
                       search_space=SEARCH_SPACE)


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
