"""Arguments of ``auditstream tune FAMILY`` beside the family's own training arguments (which fix
everything the search space does not draw). Apart from the driver so that ``--help`` needs
neither Optuna nor torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from auditstream.cli_args import COUNT, COUNT_OR_ZERO, POSITIVE, SEED, check_fields


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
