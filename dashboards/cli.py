"""``auditstream dashboard``: serve the audit dashboard and print its URL.

    auditstream dashboard --port 8501 --store-url sqlite:///.auditstream/audit.db

Imports nothing heavy at the top (Streamlit loads in the server process only).
"""

from __future__ import annotations

import argparse
import signal
import subprocess

from auditstream.cli_args import LISTEN_PORT, add_checked_argument, add_dataclass_arguments, dataclass_from_namespace
from auditstream.stop_signal import StopSignal


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from dashboards.config import DashboardConfig

    parser = commands.add_parser("dashboard", help="serve the audit dashboard (login, workbench, overview)")
    add_checked_argument(parser, "--port", LISTEN_PORT, default=8501, help="TCP port")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; use 0.0.0.0 behind a TLS proxy only)")
    add_dataclass_arguments(parser, DashboardConfig)
    parser.set_defaults(handler=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    from auditstream.settings import Settings
    from dashboards.config import DashboardConfig
    from dashboards.launch import check_address, check_models_dir, check_port, start_dashboard
    from store import open_store

    # SIGTERM (a service manager, a test) stops the server too: turn it into SystemExit so the
    # finally below runs instead of leaving the Streamlit child behind; recorded as well, so the
    # wait below raises it even if the raise was swallowed (auditstream.stop_signal).
    stop_signal = StopSignal(lambda signum: SystemExit(128 + signum))
    stop_signal.install((signal.SIGTERM,))
    settings = Settings.from_env()
    config = dataclass_from_namespace(DashboardConfig, args)
    store_url = config.store_url or settings.resolved_store_url
    check_port(args.port), check_address(args.address)  # a one-line error, not Streamlit's traceback
    check_models_dir(config.models_dir or settings.models_dir, "--models-dir" if config.models_dir else "AUDITSTREAM_MODELS_DIR")
    import streamlit  # noqa: F401 - a missing dashboard extra is said first (auditstream/cli.py), before the store

    # An unreachable store fails here, in one line, not in every browser tab; so does one that does
    # not exist (a mistyped path): the dashboard never creates a store, where every login would fail.
    store = open_store(store_url, create=False)
    where = store.location
    store.close()
    server = start_dashboard(args.port, store_url, config, address=args.address, inherit_output=True)
    print(f"audit dashboard: {server.url}  (store {where}; Ctrl-C stops it)", flush=True)
    try:
        while True:
            try:
                return server.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                stop_signal.check()
    finally:
        server.stop()
