"""Commands that run the whole stack: ``broker start|stop|status`` (the embedded broker),
``bench serve`` (broker + consumers + load generator), and, from their own modules, ``demo`` and
``bench wire``. Handlers import their modules lazily, so ``auditstream --help`` stays fast.

Process settings come from ``AUDITSTREAM_*`` variables (auditstream/settings.py), built once per
command by ``Settings.from_env()``; job arguments are the frozen dataclasses below.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field

from auditstream import finite_json
from auditstream.cli_args import (COUNT, PORT, add_checked_argument, add_dataclass_arguments, check_fields,
                                  dataclass_from_namespace)
from auditstream.errors import ConfigError
from stack import demo, learning_cli, wire_bench


@dataclass(frozen=True)
class BenchServeArgs:
    model: str = field(default="", metadata={"help": "registry model to use (default: a built-in small CNN)"})
    client: str = field(default="", metadata={"help": "kafka-python or confluent (default: AUDITSTREAM_KAFKA_CLIENT)"})
    count: int = field(default=3200, metadata={"check": COUNT, "help": "requests in the max-throughput run"})
    latency_count: int = field(default=1000, metadata={"check": COUNT,
                                                       "help": "requests in the latency run at ~70%% of max rate"})
    batch_size: int = field(default=64, metadata={"check": COUNT,
                                                  "help": "micro-batch size, also used for the raw ORT run"})
    tls: bool = field(default=True, metadata={"help": "also run the max-rate step through an embedded TLS broker "
                                                      "(ratio_tls)"})
    json: bool = field(default=False, metadata={"help": "print only the final JSON line on stdout (progress on stderr)"})
    workers: int = field(default=1, metadata={"check": COUNT, "help": "also drain the max-rate requests with "
                                                                      "'auditstream serve --workers N' (ratio_workers)"})
    profile: bool = field(default=False, metadata={"help": "drain the max-rate requests once more under cProfile and "
                                                           "report where each record's time goes (key 'profile')"})
    without_path: bool = field(default=False, metadata={
        "help": "drain the max-rate requests once more with the project's path taken out (ONNX Runtime still runs "
                "each batch; the first batch's outputs are sent again): ratio_without_path, the ceiling the client, "
                "broker and machine leave"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the broker and the model are started


def _settings(**overrides: object):
    from auditstream.settings import Settings

    return Settings.from_env(**overrides)


def _broker_start(args: argparse.Namespace) -> int:
    from stack import broker

    settings = _settings()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.bucket is not None and not args.durable:  # (BrokerOptions refuses only a bucket other than the default)
        raise ConfigError("--bucket", args.bucket, "used with --durable")
    options = broker.BrokerOptions(durable=args.durable, s3_endpoint=args.s3_endpoint,
                                   bucket=broker.DEFAULT_BUCKET if args.bucket is None else args.bucket,
                                   tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    # No storage or TLS option given: the broker that runs will do, whatever it is (a different
    # one asked for is refused: broker.BrokerBusy, one line).
    asked = options != broker.BrokerOptions()
    info = broker.start(settings, models=models, port=args.port, foreground=args.foreground,
                        options=options if asked else None)
    if not args.foreground:
        tls = " (TLS)" if info.tls_proxy_pid else ""
        print(f"broker running: pid {info.pid}, bootstrap {info.bootstrap}{tls}, storage {info.storage}, log {info.log}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    from stack import broker

    print("broker stopped" if broker.stop(_settings(), storage=args.storage) else "no embedded broker running")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    from stack import broker

    info = broker.status(_settings())
    if info is None:
        print("no embedded broker running")
        return 1
    finite_json.print_summary(dataclasses.asdict(info))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from stack.serve_bench import run_bench

    a = dataclass_from_namespace(BenchServeArgs, args)
    result = run_bench(_settings(), a, out=sys.stderr if a.json else sys.stdout)
    finite_json.print_summary(result)
    return 0


def _bench_faults(args: argparse.Namespace) -> int:
    from stack.faults_bench import FaultsArgs, passed, run_faults

    a = dataclass_from_namespace(FaultsArgs, args)
    result = run_faults(_settings(), a, out=sys.stderr if a.json else sys.stdout)
    finite_json.print_summary(result)
    return 0 if all(passed(r) for r in result.values()) else 1


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    demo.register(commands, bench)
    b = commands.add_parser("broker", help="the embedded Kafka-protocol broker (Tansu) for one machine")
    bsub = b.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    start = bsub.add_parser("start", help="start it on a free loopback port, create the topics, return")
    add_checked_argument(start, "--port", PORT, default=0, help="port to listen on (0: a free one)")
    start.add_argument("--models", default="", help="comma-separated models whose request topics to create")
    start.add_argument("--foreground", action="store_true", help="stay in the foreground until Ctrl-C/SIGTERM")
    start.add_argument("--durable", action="store_true",
                       help="keep topics, records and offsets in Tansu's S3 storage engine: they survive a broker "
                            "stop, restart or crash (a local S3 server, moto, is started unless --s3-endpoint)")
    start.add_argument("--s3-endpoint", default="", help="with --durable: an S3-compatible server (MinIO, AWS) to use; "
                       "credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; the bucket must exist")
    start.add_argument("--bucket", default=None, help="with --durable: the bucket (default: auditstream)")
    start.add_argument("--tls-cert", default="", help="PEM server certificate: clients must connect with TLS "
                       "(set AUDITSTREAM_KAFKA_SECURITY_PROTOCOL=SSL and AUDITSTREAM_KAFKA_SSL_CAFILE)")
    start.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    start.add_argument("--tls-client-ca", default="", help="require client certificates signed by this CA (mutual TLS)")
    start.set_defaults(handler=_broker_start)
    stop = bsub.add_parser("stop", help="stop it (in-memory topics are gone; a durable broker's stay)")
    stop.add_argument("--storage", action="store_true",
                      help="also stop a durable broker's local S3 server (what it stored is gone)")
    stop.set_defaults(handler=_broker_stop)
    bsub.add_parser("status", help="print pid/port/bootstrap as JSON; exit 1 if not running").set_defaults(
        handler=_broker_status)

    bs = bench.add_parser("serve", help="raw ONNX Runtime vs the full stream path; p50/p99 at ~70%% load")
    add_dataclass_arguments(bs, BenchServeArgs)
    bs.set_defaults(handler=_bench_serve)
    from stack.faults_bench import FaultsArgs

    bf = bench.add_parser("faults", help="the fault suite on real processes: kill -9, broker restart, rolling "
                        "restart, a partitioned consumer, the output side away, a fresh group's assignment")
    add_dataclass_arguments(bf, FaultsArgs)
    bf.set_defaults(handler=_bench_faults)
    wire_bench.register(commands, bench)
    learning_cli.register(commands, bench)
