"""The live demo (README's first command). Filled in once the parts exist."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    return None
