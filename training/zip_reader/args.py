"""Arguments of ``auditstream train zip-reader``: one frozen dataclass; each field's help text is
its ``--help`` line. Apart from the script only so that ``auditstream --help`` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from auditstream.cli_args import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, check_fields
from qc.delta_spending import FAMILY_DELTA_HELP
from training.tuning.space import Choice, FloatRange


@dataclass(frozen=True)
class ZipReaderArgs:
    """Arguments of ``auditstream train zip-reader``."""

    seed: int = field(default=1, metadata={"check": SEED, "help": "seed of weights and of the training envelopes"})
    steps: int = field(default=1200, metadata={
        "check": COUNT, "help": "optimizer steps; every step renders a fresh batch"})
    batch_size: int = field(default=64, metadata={"check": COUNT, "help": "envelopes per step"})
    lr: float = field(default=3e-3, metadata={
        "check": POSITIVE, "help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=5e-4, metadata={"check": NON_NEGATIVE, "help": "AdamW weight decay"})
    augment: bool = field(default=True, metadata={"help": "wider glyph scale/rotation/slant on training envelopes"})
    n_calibration: int = field(default=4000, metadata={
        "check": COUNT, "help": "calibration envelopes (calibration-split digits)"})
    n_test: int = field(default=4000, metadata={"check": COUNT, "help": "test envelopes (test-split digits)"})
    target_risk: float = field(default=0.02, metadata={
        "check": PROBABILITY, "help": "ZIP-level error rate auto-sorted letters must stay under"})
    delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": FAMILY_DELTA_HELP})
    threads: int = field(default=1, metadata={
        "check": COUNT, "help": "torch CPU threads (1 is fastest on a shared, loaded machine)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})
    train_fraction: float = field(default=1.0, metadata={"check": FRACTION,
        "help": "share of each label's training digits the envelopes are made of (a fixed subset; < 1 makes the "
                "small seed of a learning-curve run; auditstream tune refuses it: its trials fit on all of "
                "train/fit)"})

    def __post_init__(self) -> None:
        check_fields(self)  # every "check" above, before any work starts (auditstream/cli_args.py)


# What `auditstream tune zip-reader` draws (the other fields, --steps too, stay as given); judged
# on the character cross-entropy of envelopes of the train/validation digits (training/tuning/).
SEARCH_SPACE = {
    "lr": FloatRange(1e-3, 1e-2, log=True),
    "weight_decay": FloatRange(1e-5, 1e-2, log=True),
    "batch_size": Choice((32, 64)),
    "augment": Choice((True, False)),
}
