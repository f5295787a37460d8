"""Arguments of ``auditstream tune FAMILY`` beside the family's own training arguments (which fix
everything the search space does not draw). Apart from the driver so that ``--help`` needs
neither Optuna nor torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TuneArgs:
    """Arguments of the search itself."""

    trials: int = field(default=20, metadata={"help": "trials to run now (a resumed study adds them to its own)"})
    timeout_s: float | None = field(default=None, metadata={
        "help": "stop starting trials after this many seconds (the running one finishes)"})
    storage: str = field(default="", metadata={"help": "Optuna storage URL to keep and resume the study, e.g. "
                                                       "sqlite:///tune.db (empty: in memory)"})
    study_name: str = field(default="", metadata={"help": "name of the study in the storage (empty: tune-FAMILY)"})
    study_seed: int = field(default=0, metadata={"help": "seed of the TPE sampler"})
    startup_trials: int = field(default=5, metadata={
        "help": "random trials before TPE models the space; pruning also waits for this many finished trials"})
    warmup_checks: int = field(default=1, metadata={
        "help": "validation checks a trial makes before it may be pruned"})

    def __post_init__(self) -> None:
        if self.trials < 1 or self.startup_trials < 0 or self.warmup_checks < 0:
            raise ValueError(f"need trials >= 1, startup_trials >= 0 and warmup_checks >= 0; got {self.trials}, "
                             f"{self.startup_trials}, {self.warmup_checks}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0 (or omitted)")
