"""Arguments of ``auditstream train detector``: one frozen dataclass; each field's help text is its
``--help`` line. Apart from the script only so that ``auditstream --help`` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from auditstream.cli_args import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, SHARE, check_fields


@dataclass(frozen=True)
class DetectorArgs:
    """Arguments of ``auditstream train detector``."""

    seed: int = field(default=1, metadata={"check": SEED, "help": "seed of weights and of the training labels"})
    steps: int = field(default=3400, metadata={
        "check": COUNT, "help": "optimizer steps; every step renders a fresh batch"})
    batch_size: int = field(default=32, metadata={"check": COUNT, "help": "labels per step"})
    lr: float = field(default=3e-3, metadata={
        "check": POSITIVE, "help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=1e-4, metadata={"check": NON_NEGATIVE, "help": "AdamW weight decay"})
    hard_share: float = field(default=0.3, metadata={
        "check": SHARE, "help": "share of 'hard' labels in training batches (one model "
                                "serves both variants)"})
    elastic: float = field(default=0.0, metadata={
        "check": NON_NEGATIVE, "help": "training augmentation: smooth random bending of each "
                                       "digit's strokes, standard deviation in source pixels "
                                       "(of 8; 0.4 bends them visibly); 0, the default, is off"})
    n_platt: int = field(default=1000, metadata={
        "check": COUNT, "help": "labels of calibration/temperature digits that fit the score "
                                "calibration"})
    n_certificate: int = field(default=3000, metadata={
        "check": COUNT, "help": "labels of calibration/certificate digits that "
                                "certify the thresholds"})
    n_test: int = field(default=1000, metadata={"check": COUNT, "help": "test labels per variant (test-split digits)"})
    target_fdr: float = field(default=0.02, metadata={
        "check": PROBABILITY, "help": "share of auto-accepted boxes that may be false (alpha)"})
    target_miss: float = field(default=0.01, metadata={
        "check": PROBABILITY, "help": "expected share of an image's objects the dropped boxes "
                                      "may miss (beta)"})
    delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": "the family delta: all versions' FDR certificates on the same certificate "
                                      "labels together fail with probability <= delta (the k-th version certified on "
                                      "them gets delta*6/(pi^2 k^2): qc/delta_spending.py)"})
    match_iou: float = field(default=0.5, metadata={
        "check": FRACTION, "help": "IoU at which a box matches an object (and two answers' "
                                   "boxes are the same)"})
    p_value: Literal["wsr", "hoeffding-bentkus"] = field(default="wsr", metadata={
        "help": "p-value of the Learn-then-Test FDR tests"})
    threads: int = field(default=2, metadata={"check": COUNT, "help": "torch CPU threads"})
    background_data: bool = field(default=True, metadata={"help": "render the training labels in a worker process "
                                                                  "while the model trains (the same labels, in order)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})

    def __post_init__(self) -> None:
        check_fields(self)  # every "check" above, before any work starts (auditstream/cli_args.py)
