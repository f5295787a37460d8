"""CLI of the detector family: ``auditstream train detector [--json]``. Nothing heavy is imported
until the handler runs."""

from __future__ import annotations

import argparse

from training.detector.args import DetectorArgs
from training.family_cli import TrainCommand

COMMAND = TrainCommand("detector", "training.detector", DetectorArgs, "digit detector on parcel labels (CenterNet)")


def register(train: argparse._SubParsersAction, rl: argparse._SubParsersAction,
             bench: argparse._SubParsersAction) -> None:
    COMMAND.register(train)
