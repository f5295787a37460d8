"""Arguments of ``auditstream tune FAMILY`` beside the family's own training arguments (which fix
everything the search space does not draw). Apart from the driver so that ``--help`` needs
neither Optuna nor torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from auditstream.cli_args import COUNT, COUNT_OR_ZERO, POSITIVE, SEED, check_fields
from auditstream.errors import ConfigError

STORAGE_EXAMPLE = "sqlite:///tune.db"


def redacted_storage(storage: str) -> str:
    """The storage URL without its password (for a card, a log line or an error message)."""
    if not storage:
        return "in memory"
    from sqlalchemy.engine import make_url  # Optuna's own dependency

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not a database URL: keep only its scheme where it might hold a password
        return storage.split(":", 1)[0] + ":..." if "@" in storage else storage


def check_storage(storage: str) -> str:
    """``storage`` if Optuna can keep a study there, checked before any trial: an empty string (in
    memory), or a database URL SQLAlchemy parses, whose dialect and driver are installed and, for
    an SQLite file, whose folder exists and may be written. Else :class:`ConfigError` naming
    ``--storage`` (the password hidden) with what to give instead. What only the database can say
    (it is down, the file is no database) comes up as one line too, when the study is opened
    (:mod:`training.tuning.study`)."""
    if not storage:
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    def refuse(expected: str) -> ConfigError:
        return ConfigError("--storage", redacted_storage(storage), expected)

    try:
        url = make_url(storage)
    except ArgumentError:
        path = f" (a file is given as sqlite:///{storage})" if "://" not in storage else ""
        raise refuse(f"an Optuna storage URL such as {STORAGE_EXAMPLE}{path} or "
                     "postgresql+psycopg://USER@HOST/DB") from None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        scheme = url.drivername.split("+")[0]
        alias = {"postgres": "postgresql+psycopg://USER@HOST/DB (SQLAlchemy does not know postgres://)"}
        raise refuse(f"a database URL SQLAlchemy knows (sqlite, postgresql, mysql, ...), e.g. "
                     f"{alias.get(scheme, STORAGE_EXAMPLE)}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise refuse(f"a database whose Python driver is installed ({url.drivername} needs {e.name or 'its driver'}, "
                     f"which is not): install it, or name an installed one, e.g. postgresql+psycopg://, or use "
                     f"{STORAGE_EXAMPLE}") from None
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        path = Path(database)
        if path.is_dir():
            raise refuse(f"an SQLite database file ({database} is a folder), e.g. sqlite:///{path / 'tune.db'}")
        parent = path.absolute().parent
        if not parent.is_dir():
            raise refuse(f"an SQLite file in a folder that exists ({parent} does not: create it first), e.g. "
                         f"{STORAGE_EXAMPLE}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise refuse(f"an SQLite file in a folder this user may write to ({parent} is not), e.g. {STORAGE_EXAMPLE}")
    return storage


@dataclass(frozen=True)
class TuneArgs:
    """Arguments of the search itself."""

    trials: int = field(default=20, metadata={
        "check": COUNT, "help": "trials to run now (a resumed study adds them to its own)"})
    timeout_s: float | None = field(default=None, metadata={
        "check": POSITIVE, "help": "stop starting trials after this many seconds (the running one finishes)"})
    storage: str = field(default="", metadata={"help": "Optuna storage URL to keep and resume the study, e.g. "
                                                       "sqlite:///tune.db (empty: in memory)"})
    study_name: str = field(default="", metadata={"help": "name of the study in the storage (empty: tune-FAMILY)"})
    study_seed: int = field(default=0, metadata={"check": SEED, "help": "seed of the TPE sampler"})
    startup_trials: int = field(default=5, metadata={
        "check": COUNT_OR_ZERO, "help": "random trials before TPE models the space; pruning also waits for this many "
                                        "finished trials"})
    warmup_checks: int = field(default=1, metadata={
        "check": COUNT_OR_ZERO, "help": "validation checks a trial makes before it may be pruned"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_storage(self.storage)  # before the family's data are loaded or a trial runs
