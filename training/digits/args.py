"""Arguments of the digits family's jobs (``auditstream train digits`` and ``auditstream bench
certify``), one frozen dataclass each; each field's help text is its ``--help`` line.

They live apart from the script only so that ``auditstream --help`` can build the options
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from auditstream.cli_args import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, check_fields
from qc.delta_spending import FAMILY_DELTA_HELP
from training.tuning.space import Choice, FloatRange


@dataclass(frozen=True)
class DigitsArgs:
    """Arguments of ``auditstream train digits``."""

    seed: int = field(default=1, metadata={"check": SEED, "help": "seed of weights, shuffling and augmentation"})
    epochs: int = field(default=40, metadata={"check": COUNT, "help": "passes over the 898 training digits"})
    batch_size: int = field(default=64, metadata={"check": COUNT, "help": "minibatch size"})
    lr: float = field(default=4e-3, metadata={
        "check": POSITIVE, "help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=5e-4, metadata={"check": NON_NEGATIVE, "help": "AdamW weight decay"})
    augment: bool = field(default=True, metadata={"help": "random affine augmentation of training digits"})
    target_risk: float = field(default=0.02, metadata={
        "check": PROBABILITY, "help": "error rate the auto-accepted answers must stay under"})
    delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": FAMILY_DELTA_HELP})
    threads: int = field(default=1, metadata={
        "check": COUNT, "help": "torch CPU threads (1 is fastest on a shared, loaded machine)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})
    train_fraction: float = field(default=1.0, metadata={"check": FRACTION,
        "help": "share of each label's training digits used (a fixed subset; < 1 makes the small seed of a "
                "learning-curve run; auditstream tune refuses it: its trials fit on all of "
                "train/fit)"})

    def __post_init__(self) -> None:
        check_fields(self)  # every "check" above, before any work starts (auditstream/cli_args.py)


# What `auditstream tune digits` draws (the other fields stay as given); judged on the
# cross-entropy of the train/validation digits after every epoch (training/tuning/).
SEARCH_SPACE = {
    "lr": FloatRange(3e-4, 3e-2, log=True),
    "weight_decay": FloatRange(1e-5, 1e-2, log=True),
    "batch_size": Choice((32, 64, 128)),
    "augment": Choice((True, False)),
}


@dataclass(frozen=True)
class CertifyBenchArgs:
    """Arguments of ``auditstream bench certify``."""

    splits: int = field(default=20, metadata={"check": COUNT,
                                              "help": "random calibration/test re-splits of the held-out pool"})
    target_risk: float = field(default=0.02, metadata={"check": PROBABILITY,
                                                       "help": "target risk of the auto-accepted answers"})
    delta: float = field(default=0.05, metadata={"check": PROBABILITY, "help": "failure probability of the certificate"})
    seed: int = field(default=0, metadata={"check": SEED, "help": "seed of the re-splits"})
    weak_epochs: int = field(default=2, metadata={"check": COUNT, "help": "epochs of the weak model (no augmentation)"})

    def __post_init__(self) -> None:
        check_fields(self)  # before the models are trained (auditstream/cli_args.py)
