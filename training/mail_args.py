"""Arguments of the mail-sorting training jobs, one frozen dataclass per script.

They live apart from the scripts only so that ``auditstream --help`` can build the options
without importing torch; each field's help text is its ``--help`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DigitsArgs:
    """Arguments of ``auditstream train digits``."""

    seed: int = field(default=1, metadata={"help": "seed of weights, shuffling and augmentation"})
    epochs: int = field(default=40, metadata={"help": "passes over the 898 training digits"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    lr: float = field(default=4e-3, metadata={"help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=5e-4, metadata={"help": "AdamW weight decay"})
    augment: bool = field(default=True, metadata={"help": "random affine augmentation of training digits"})
    target_risk: float = field(default=0.02, metadata={"help": "error rate the auto-accepted answers must stay under"})
    delta: float = field(default=0.05, metadata={"help": "the certificate may fail with probability at most delta"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest on a shared, loaded machine)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})


@dataclass(frozen=True)
class ZipReaderArgs:
    """Arguments of ``auditstream train zip-reader``."""

    seed: int = field(default=1, metadata={"help": "seed of weights and of the training envelopes"})
    steps: int = field(default=1200, metadata={"help": "optimizer steps; every step renders a fresh batch"})
    batch_size: int = field(default=64, metadata={"help": "envelopes per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=5e-4, metadata={"help": "AdamW weight decay"})
    augment: bool = field(default=True, metadata={"help": "wider glyph scale/rotation/slant on training envelopes"})
    n_calibration: int = field(default=4000, metadata={"help": "calibration envelopes (calibration-split digits)"})
    n_test: int = field(default=4000, metadata={"help": "test envelopes (test-split digits)"})
    target_risk: float = field(default=0.02, metadata={"help": "ZIP-level error rate auto-sorted letters must stay under"})
    delta: float = field(default=0.05, metadata={"help": "the certificate may fail with probability at most delta"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest on a shared, loaded machine)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})
