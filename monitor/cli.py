"""Commands of the audit loop: ``monitor``, ``labels export``, ``users add|list|role|password|disable|enable``.

    auditstream monitor                                   # audit -> store, outbox -> verdicts/decisions
    auditstream users add alice --role auditor            # prompts for the password (not echoed)
    printf '%s\\n' "$PW" | auditstream users add ci --role viewer --password-stdin
    auditstream users list
    auditstream users disable alice                       # her sessions end at their next page
    auditstream labels export --out labels.jsonl --model zip --format jsonl
    auditstream promote --model digits --candidate 3 [--canary-share 0.1] [--dry-run]
    auditstream rollback --model digits --to 2 --reason "v3 over budget"   # no gate: a person decided

Every command opens the store at ``--store-url`` (default: ``AUDITSTREAM_STORE_URL``, else SQLite
in the state directory). Nothing heavy is imported at the top, so ``auditstream --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from auditstream.cli_args import PROBABILITY, SHARE, add_dataclass_arguments
    from monitor.service import MonitorArgs

    store_help = ("audit store URL: sqlite:///rel/path.db (under the working directory), sqlite:////abs/path.db "
                  "(four slashes) or postgresql://user@host:port/db (default: AUDITSTREAM_STORE_URL, else sqlite in "
                  "the state dir); a URL with a password belongs in AUDITSTREAM_STORE_URL: a command line is visible "
                  "to every local user (ps)")

    monitor = commands.add_parser("monitor", help="ingest audit items, publish verdicts and decisions, keep QC statistics")
    monitor.add_argument("--store-url", default="", help=store_help)
    monitor.add_argument("--double-review-rate", type=float, default=0.0,
                         help=f"share of items (by hash of request id) reviewed by two auditors; {SHARE.describe()} "
                              "(default: 0)")
    add_dataclass_arguments(monitor, MonitorArgs)
    monitor.set_defaults(handler=run_monitor_command)

    labels = commands.add_parser("labels", help="verdicts as training data")
    labels_sub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    export = labels_sub.add_parser("export", help="write every verdict as a labelled example (JSONL or CSV)")
    export.add_argument("--out", required=True, type=output_file, help="output file")
    export.add_argument("--model", default=None, help="only this model (default: all)")
    export.add_argument("--format", choices=("jsonl", "csv", "coco"), default="jsonl",
                        help="file format (default: jsonl); coco: a detector's verdicts as a COCO data set, "
                             "pixels in <--out's stem>_images/ beside it (needs --model)")
    export.add_argument("--include-gold", action="store_true",
                        help="also export verdicts on gold items (--format coco: gold images, is_gold true, "
                             "annotated with their known answer)")
    export.add_argument("--store-url", default="", help=store_help)
    export.set_defaults(handler=run_labels_export)

    users = commands.add_parser("users", help="dashboard accounts in the audit store")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser("add", help="create an account (the password is prompted, never echoed)")
    add.add_argument("name", help="user name")
    add.add_argument("--role", choices=("auditor", "admin", "viewer"), required=True, help="what the user may do")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (for scripts)")
    add.add_argument("--store-url", default="", help=store_help)
    add.set_defaults(handler=run_users_add)
    listing = users_sub.add_parser("list", help="list accounts and roles (never hashes)")
    listing.add_argument("--store-url", default="", help=store_help)
    listing.set_defaults(handler=run_users_list)
    role = users_sub.add_parser("role", help="change an account's role (at the user's next page or write)")
    role.add_argument("name", help="user name")
    role.add_argument("--role", choices=("auditor", "admin", "viewer"), required=True, help="the new role")
    password = users_sub.add_parser("password", help="set a new password: lifts a lock-out and ends the "
                                    "account's sessions (the password is prompted, never echoed)")
    password.add_argument("name", help="user name")
    password.add_argument("--password-stdin", action="store_true", help="read the password from stdin (for scripts)")
    disable = users_sub.add_parser("disable", help="disable an account: its sessions end at their next page, "
                                   "and it cannot sign in; its verdicts stay")
    disable.add_argument("name", help="user name")
    enable = users_sub.add_parser("enable", help="enable a disabled account again (with its role)")
    enable.add_argument("name", help="user name")
    for sub, handler in ((role, run_users_role), (password, run_users_password), (disable, run_users_disable),
                         (enable, run_users_enable)):
        sub.add_argument("--store-url", default="", help=store_help)
        sub.set_defaults(handler=handler)

    promote = commands.add_parser("promote", help="make a shadow candidate live if its certificate holds and the "
                                  "paired comparison on audited items shows it is not worse (or start a canary)")
    promote.add_argument("--model", required=True, help="model name")
    promote.add_argument("--candidate", required=True, help="the candidate version (served with serve --shadow)")
    promote.add_argument("--canary-share", type=float, default=None, help="instead of promoting: let the candidate "
                         "answer this hashed share of the requests, acting (0 ends the canary); needs its "
                         f"certificate; {SHARE.describe()}")
    promote.add_argument("--margin", type=float, default=0.02, help="largest tolerated increase of the error rate "
                         f"(absolute); {PROBABILITY.describe()} (default 0.02)")
    promote.add_argument("--delta", type=float, default=0.05, help="error probability of the gate over all its looks "
                         f"at this candidate; {PROBABILITY.describe()} (default 0.05)")
    promote.add_argument("--pooled", action="store_true", help="one test over all audited items instead of one per "
                         "route (deferred, QC samples); speaks about the audited mix only")
    promote.add_argument("--dry-run", action="store_true", help="decide and record, but move nothing")
    promote.add_argument("--store-url", default="", help=store_help)
    promote.set_defaults(handler=run_promote)

    rollback = commands.add_parser("rollback", help="make an earlier version live again now (no gate: your "
                                   "decision), end any canary, tell the running consumers, record why")
    rollback.add_argument("--model", required=True, help="model name")
    rollback.add_argument("--to", required=True, dest="version", help="the version to serve (models/<model>/<V>/)")
    rollback.add_argument("--reason", required=True, help="why, for the record in the version's promotion.json")
    rollback.set_defaults(handler=run_rollback)

    control = commands.add_parser("control", help="the monitor's word to the consumers: queue depth, tightened thresholds")
    control_sub = control.add_subparsers(dest="control_command", metavar="ACTION", required=True)
    show = control_sub.add_parser("show", help="print the latest control state of every model (JSON lines)")
    show.set_defaults(handler=run_control_show)
    clear = control_sub.add_parser("clear", help="remove a threshold override (a person's decision, after review)")
    clear.add_argument("--model", required=True, help="model name")
    clear.add_argument("--version", default=None, help="only this version's override (default: all versions)")
    clear.set_defaults(handler=run_control_clear)


def output_file(text: str) -> str:
    """``--out``: a file this user can write (or create), checked before the store is opened, so
    a typo costs one line, not a traceback after the export's reads."""
    import os
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("give a file name, e.g. --out labels.jsonl")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file in it, e.g. {path / 'labels.jsonl'}")
    parent = path.absolute().parent
    while not parent.exists():  # export_labels creates the missing folders: the first existing one decides
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot create {text}: {parent} is not a folder this user may write to")
    return text


def _control_view(settings):  # noqa: ANN001, ANN202
    from auditstream.control import ControlView

    view = ControlView(settings).start()
    if not view.wait_caught_up(60):
        view.stop()
        raise SystemExit("auditstream: error: could not read the control topic within 60 s; is the broker up?")
    return view


def run_control_show(args: argparse.Namespace) -> int:
    import dataclasses
    from auditstream import finite_json

    from auditstream import topics
    from auditstream.settings import Settings

    settings = Settings.from_env()
    view = _control_view(settings)
    try:
        states, rollouts = view.states(), view.rollouts()
        for state in states.values():
            finite_json.print_summary(dataclasses.asdict(state), sort_keys=True)
        for rollout in rollouts.values():
            finite_json.print_summary({"rollout": dataclasses.asdict(rollout)}, sort_keys=True)
    finally:
        view.stop()
    if not states and not rollouts:  # said on stderr: stdout stays JSON lines (none)
        print(f"auditstream: no control state on {settings.topic(topics.CONTROL)} yet (the monitor publishes it once it "
              "runs; a rollout, once one starts)", file=sys.stderr)
    return 0


def run_control_clear(args: argparse.Namespace) -> int:
    import time

    from auditstream.kafka import make_producer
    from auditstream.settings import Settings
    from monitor.control import cleared
    from monitor.service import publish_control

    from auditstream.errors import ConfigError
    from auditstream.registry import ModelRegistry

    settings = Settings.from_env()
    view = _control_view(settings)
    try:
        state, states = view.get(args.model), view.states()
    finally:
        view.stop()
    registered = ModelRegistry.from_settings(settings).names()
    if state is None and args.model not in registered:  # a typo must not read as a clean state
        known = sorted(set(registered) | set(states))
        raise ConfigError("--model", args.model, f"a model in the registry ({settings.models_dir}) or on the control "
                                                 "topic: " + (", ".join(known) if known else "there is none yet"))
    if state is None or not state.threshold_override:
        print(f"model {args.model}: no threshold override to clear")
        return 0
    if args.version is not None and args.version not in state.threshold_override:
        raise ConfigError("--version", args.version, f"a version of {args.model} with an override: "
                                                     f"{', '.join(sorted(state.threshold_override))} (or leave "
                                                     "--version out to clear them all)")
    producer = make_producer(settings, client_id="auditstream-control")
    try:
        publish_control(producer, settings, [cleared(state, args.version, time.time())], 30.0)
    finally:
        producer.close()
    print(f"model {args.model}: override cleared ({args.version or 'all versions'})")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """Prints the decision (a line for people on stderr, the JSON on stdout); exit 0 when it
    promoted or set the canary (or would have, with --dry-run), 1 when the live version stays."""
    from auditstream import finite_json

    from auditstream.cli_args import PROBABILITY, SHARE, check_value
    from monitor.promotion import promote
    from qc.paired import PairedGateConfig

    # every number before the store is opened: one line naming the option, exit 2 (auditstream/cli_args.py)
    check_value("--margin", args.margin, PROBABILITY, 0.02)
    check_value("--delta", args.delta, PROBABILITY, 0.05)
    if args.canary_share is not None:
        check_value("--canary-share", args.canary_share, SHARE, 0.1)
    config = PairedGateConfig(args.margin, args.delta, per_route=not args.pooled)
    settings, store = _open(args)
    with store:
        decision = promote(settings, args.model, args.candidate, dry_run=args.dry_run, canary_share=args.canary_share,
                           config=config, store=store)
    print(("(dry run) " if args.dry_run else "") + decision.summary(), file=sys.stderr)
    finite_json.print_summary(decision.to_dict(), sort_keys=True, default=str)
    return 0 if decision.promote or decision.code in ("canary", "canary_ended") else 1


def run_rollback(args: argparse.Namespace) -> int:
    from auditstream import finite_json

    from auditstream.settings import Settings
    from monitor.promotion import rollback

    record = rollback(Settings.from_env(), args.model, args.version, args.reason)
    before, after = record["live_before"], record["live_after"]
    if before is None:
        moved = f"v{after} live (no live version before)"
    elif before != after:
        moved = f"v{before} -> v{after} live"
    else:
        moved = f"v{after} was live already, announced again (any canary ended)"
    print(f"{args.model}: {moved}, consumers told (recorded in models/{args.model}/{args.version}/promotion.json)",
          file=sys.stderr)
    finite_json.print_summary(record, sort_keys=True)
    return 0


def _open(args: argparse.Namespace, double_review_rate: float = 0.0, create: bool = False):  # noqa: ANN202
    """The settings and the store. Only a command that fills the store passes ``create=True``; it
    then says where a store it created is. Any other refuses a store that does not exist (a
    mistyped --store-url), in one line, instead of working on a fresh empty one."""
    from auditstream.settings import Settings
    from store import StoreConfig, open_store

    settings = Settings.from_env()
    store = open_store(args.store_url or settings.resolved_store_url, StoreConfig(double_review_rate=double_review_rate),
                       create=create)
    if store.created:
        print(f"auditstream: created a new audit store at {store.location}", file=sys.stderr, flush=True)
    return settings, store


def run_monitor_command(args: argparse.Namespace) -> int:
    from auditstream.cli_args import SHARE, check_value, dataclass_from_namespace
    from auditstream.settings import Settings
    from monitor.service import MonitorArgs, run_monitor

    # Checked here, before the store is opened, so the refusal names the option (StoreConfig's own
    # check names its field, double_review_rate, and comes after the settings are read).
    check_value("--double-review-rate", args.double_review_rate, SHARE, 0.05)
    monitor_args = dataclass_from_namespace(MonitorArgs, args)
    monitor_args.check_settings(Settings.from_env())  # before the store is opened, not only before the broker
    settings, store = _open(args, args.double_review_rate, create=True)
    if (public_salt := settings.public_qc_salt_warning()) is not None:
        logging.getLogger("monitor").warning("%s", public_salt)
    with store:
        return run_monitor(settings, monitor_args, store)


def run_labels_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from auditstream.errors import ConfigError
    from monitor.labels import export_labels

    settings, store = _open(args)
    try:
        with store:
            if args.model:
                _check_model_known(settings, store, args.model)
            if args.format == "coco":
                return _export_coco(settings, store, args)
            n = export_labels(store, Path(args.out), args.model, args.format, args.include_gold)
    except OSError as e:  # a folder that cannot be made, a full disk: what went wrong, not a traceback
        raise ConfigError("--out", args.out, f"a file that can be written ({e.strerror or e})") from None
    print(f"wrote {n} labels to {args.out}")
    return 0


def _check_model_known(settings, store, model: str) -> None:  # noqa: ANN001
    """A model neither in the registry nor in the store is a typo: refused naming the known ones
    (it used to export nothing, "wrote 0 labels", exit 0)."""
    from auditstream.errors import ConfigError
    from auditstream.registry import ModelRegistry

    stored, registered = store.models(), ModelRegistry.from_settings(settings).names()
    if model in stored or model in registered:
        return
    known = sorted(set(stored) | set(registered))
    raise ConfigError("--model", model, f"a model in the registry ({settings.models_dir}) or with items in the store: "
                                        + (", ".join(known) if known else "there is none yet"))


def _export_coco(settings, store, args: argparse.Namespace) -> int:
    from pathlib import Path

    from auditstream import tasks
    from auditstream.errors import ConfigError, ModelNotFound
    from auditstream.registry import ModelRegistry
    from monitor.coco_export import export_coco, images_folder

    if not args.model:
        raise ConfigError("--model", "", "the detector whose verdicts to export (COCO holds one model's classes)")
    try:
        card = ModelRegistry.from_settings(settings).load(args.model).card
        labels = card.labels or ()
        if not tasks.lookup(card.task).answers_are_boxes:
            raise ConfigError("--model", args.model, f"a model whose answers are boxes for --format coco "
                                                     f"(it is a {card.task} model)")
    except ModelNotFound:
        labels = ()  # the registry is elsewhere: categories are named by their index
    with store.read_snapshot():  # the gold items' known answers and the verdicts of one moment
        # a gold image is annotated with its known answer, never with an auditor's verdict on it
        gold_answers = store.gold_answers(args.model) if args.include_gold else {}
        rows = (r for r in store.labels(args.model, args.include_gold) if tasks.lookup(r["task"]).answers_are_boxes)
        n = export_coco(rows, Path(args.out), labels, gold_answers)
    print(f"wrote {n} images to {args.out} (pixels in {images_folder(Path(args.out))})")
    return 0


def _read_password(from_stdin: bool) -> str:
    """The password from the prompt (twice) or, with --password-stdin, the first line of standard
    input. Input that ends first (Ctrl-D, </dev/null, one line piped to the prompt) is one line,
    exit 2, nothing changed -- not getpass's EOFError traceback."""
    import getpass

    from auditstream.errors import BadArguments

    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise BadArguments("--password-stdin: standard input ended before a password line; nothing was changed "
                               "(pipe the password in: printf '%s\\n' \"$PASSWORD\" | auditstream users ...)")
        return line.rstrip("\r\n")
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise BadArguments("the input ended before the password was typed twice; nothing was changed (type it "
                           "at the prompt, or pipe one line with --password-stdin)") from None
    if again != first:
        raise BadArguments("the two passwords differ; nothing was changed")
    return first


def run_users_add(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    _, store = _open(args, create=True)  # the first admin may come before the monitor's first start
    with store:
        try:
            user = store.accounts.add_user(args.name, password, args.role)
        except ValueError as e:
            print(f"auditstream: error: {e}", file=sys.stderr)
            return 2
    print(f"added {user.name} ({user.role.value})")
    return 0


def _change_user(args: argparse.Namespace, change, done: str) -> int:
    """Apply ``change(accounts, role, disabled)`` (the account's current role and state) to the
    account ``args.name``; one line either way."""
    _, store = _open(args)
    with store:
        current = {user.name: (user.role, disabled) for user, disabled in store.accounts.list_users()}
        if args.name not in current:
            print(f"auditstream: error: no user {args.name!r} (auditstream users list shows the accounts)",
                  file=sys.stderr)
            return 2
        try:
            change(store.accounts, *current[args.name])
        except ValueError as e:  # a password too short
            print(f"auditstream: error: {e}", file=sys.stderr)
            return 2
    print(done)
    return 0


def run_users_role(args: argparse.Namespace) -> int:
    return _change_user(args, lambda accounts, _role, disabled: accounts.set_role(args.name, args.role, disabled),
                        f"{args.name} is now {args.role}")


def run_users_password(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    return _change_user(args, lambda accounts, _role, _disabled: accounts.set_password(args.name, password),
                        f"new password for {args.name}; sessions signed in before it have ended")


def run_users_disable(args: argparse.Namespace) -> int:
    return _change_user(args, lambda accounts, role, _disabled: accounts.set_role(args.name, role, disabled=True),
                        f"disabled {args.name}; its sessions have ended")


def run_users_enable(args: argparse.Namespace) -> int:
    return _change_user(args, lambda accounts, role, _disabled: accounts.set_role(args.name, role, disabled=False),
                        f"enabled {args.name}")


def run_users_list(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        for user, disabled in store.accounts.list_users():
            print("\t".join([user.name, user.role.value] + (["disabled"] if disabled else [])))
    return 0
