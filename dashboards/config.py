"""The dashboard's own options: one frozen object, given to ``app.main`` by the launcher.

``auditstream dashboard`` passes them to the Streamlit script after ``--`` (Streamlit hands a
script its own argv); tests build them directly. The audit store and model registry default to
the process :class:`~auditstream.settings.Settings` (``AUDITSTREAM_STORE_URL``,
``AUDITSTREAM_MODELS_DIR``), so the dashboard and the monitor read the same store unless told
otherwise.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Sequence

import math

from auditstream.cli_args import NON_NEGATIVE, Range, add_dataclass_arguments, dataclass_from_namespace
from auditstream.errors import ConfigError

MIN_LEASE_S, MAX_LEASE_S = 10.0, 86_400.0  # time to look at an item; a day is already a forgotten tab


@dataclass(frozen=True)
class DashboardConfig:
    """Options of the audit dashboard."""

    store_url: str = field(default="", metadata={"help": "audit store URL (sqlite:///rel/path.db under the working "
                                                         "directory, sqlite:////abs/path.db, or postgresql://...); "
                                                         "empty: AUDITSTREAM_STORE_URL or SQLite in the state dir"})
    models_dir: str = field(default="", metadata={"help": "model registry root; empty: AUDITSTREAM_MODELS_DIR"})
    lease_s: float = field(default=300.0, metadata={"help": "how long a claimed item stays leased without activity (s); "
                                                            "renewed on every interaction while it is open",
                                                    "check": Range(MIN_LEASE_S, MAX_LEASE_S)})
    blind_qc: bool = field(default=True, metadata={"help": "QC samples are audited blind: the model's answer is hidden "
                                                           "until the auditor has answered"})
    refresh_s: float = field(default=5.0, metadata={"help": "overview refresh interval (s); 0 turns auto-refresh off",
                                                    "check": NON_NEGATIVE})
    idle_s: float = field(default=900.0, metadata={"help": "an open item goes back to the queue after this long "
                                                           "without a click or submit on the workbench (s); 0: never",
                                                   "check": NON_NEGATIVE})

    def __post_init__(self) -> None:
        # math.isfinite first: "inf" and "nan" parse as floats, and nan fails every comparison
        if not isinstance(self.lease_s, (int, float)) or not math.isfinite(self.lease_s) \
                or not MIN_LEASE_S <= self.lease_s <= MAX_LEASE_S:
            raise ConfigError("--lease-s", self.lease_s, f"a number of seconds from {MIN_LEASE_S:g} (an auditor "
                              f"needs time to look) to {MAX_LEASE_S:g} (a lease outliving a day only hides the item)")
        if not isinstance(self.refresh_s, (int, float)) or not math.isfinite(self.refresh_s) or self.refresh_s < 0:
            raise ConfigError("--refresh-s", self.refresh_s, "a finite number of seconds >= 0 (0 turns auto-refresh off)")
        if not isinstance(self.idle_s, (int, float)) or not math.isfinite(self.idle_s) or self.idle_s < 0:
            raise ConfigError("--idle-s", self.idle_s, "a finite number of seconds >= 0 (0: an open item is never given back)")

    def to_argv(self) -> list[str]:
        """The options as script arguments (the inverse of :func:`config_from_argv`), all but the
        store URL: it may carry a password, and any local user can read a command line (``ps``),
        so the launcher hands it to the child in its environment (``AUDITSTREAM_STORE_URL``)."""
        return [
            f"--models-dir={self.models_dir}",
            f"--lease-s={self.lease_s}",
            "--blind-qc" if self.blind_qc else "--no-blind-qc",
            f"--refresh-s={self.refresh_s}",
            f"--idle-s={self.idle_s}",
        ]


def config_from_argv(argv: Sequence[str]) -> DashboardConfig:
    parser = argparse.ArgumentParser(prog="dashboards/app.py")
    add_dataclass_arguments(parser, DashboardConfig)
    return dataclass_from_namespace(DashboardConfig, parser.parse_args(list(argv)))
