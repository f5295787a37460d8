"""Arguments of ``auditstream train captioner``: one frozen dataclass; each field's help text is its
``--help`` line. Apart from the script only so that ``auditstream --help`` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from auditstream.cli_args import COUNT, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, Range, check_fields
from auditstream.errors import ConfigError

# Every scene split draws from its own generator, seeded SPLIT_SEEDS[split] + seed
# (training/captioner/data.py), and those bases are SEED_SPAN apart: a --seed of SEED_SPAN or more
# would make the training scenes another split's (--seed 2000000: the certificate scenes, in order).
SEED_SPAN = 1_000_000
TRAINING_SEED = Range(0, SEED_SPAN - 1, whole=True)

# Every attention layer of the model (model.py) splits the width into this many heads, so the
# width is a multiple of it; its CNN's first layer has width // 4 channels, so at least 4.
ATTENTION_HEADS = 4


@dataclass(frozen=True)
class CaptionerArgs:
    """Arguments of ``auditstream train captioner``."""

    seed: int = field(default=1, metadata={
        "check": TRAINING_SEED, "help": f"seed of the weights and of the training scenes (below {SEED_SPAN}: the "
                                        f"selection, certificate and test scenes' generators start there)"})
    steps: int = field(default=3000, metadata={
        "check": COUNT, "help": "optimizer steps; every step draws fresh scenes"})
    batch_size: int = field(default=48, metadata={"check": COUNT, "help": "scenes per step"})
    lr: float = field(default=2e-3, metadata={
        "check": POSITIVE, "help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = field(default=1e-4, metadata={"check": NON_NEGATIVE, "help": "AdamW weight decay"})
    width: int = field(default=96, metadata={
        "check": Range(ATTENTION_HEADS, whole=True),
        "help": f"model width (feature and word vector size), a multiple of {ATTENTION_HEADS}: the "
                f"{ATTENTION_HEADS} attention heads split it"})
    max_objects: int = field(default=6, metadata={
        "check": Range(2, 6, whole=True), "help": "most objects in a training scene (2..6; the "
                                                  "evaluation scenes always hold 2..6)"})
    n_selection: int = field(default=1500, metadata={
        "check": COUNT, "help": "scenes that choose the confidence (joint, mean or "
                                "min word probability)"})
    n_certificate: int = field(default=5000, metadata={
        "check": COUNT, "help": "scenes that certify the auto-accept threshold"})
    n_test: int = field(default=2000, metadata={
        "check": COUNT, "help": "test scenes (caption metrics, triage on new scenes)"})
    target_risk: float = field(default=0.01, metadata={
        "check": PROBABILITY, "help": "share of auto-accepted captions that may be wrong"})
    delta: float = field(default=0.05, metadata={
        "check": PROBABILITY, "help": "the family delta: all versions' certificates on the same certificate "
                                      "scenes together fail with probability <= delta (the k-th version certified on "
                                      "them gets delta*6/(pi^2 k^2): qc/delta_spending.py)"})
    precision: Literal["auto", "bf16", "fp32"] = field(default="auto", metadata={
        "help": "arithmetic of the training steps: bf16 autocast (weights, gradients and the exported graph stay "
                "float32; 2.4x faster steps on CPUs with AMX or AVX-512 BF16, 4x slower without: emulated), plain "
                "fp32, or auto: bf16 where the CPU has bf16 instructions, fp32 elsewhere"})
    background_data: bool = field(default=True, metadata={
        "help": "draw the training scenes in a second process while the model trains (the same scenes in the same "
                "order; drawing them took a third of a step)"})
    threads: int = field(default=1, metadata={
        "check": COUNT, "help": "torch CPU threads (1: on shared, loaded cores two threads "
                                "wait on each other; docs/captioner.md)"})
    publish: bool = field(default=True, metadata={"help": "write the model into the registry"})

    def __post_init__(self) -> None:
        if SEED.accepts(self.seed) and not TRAINING_SEED.accepts(self.seed):  # a seed numpy takes, but too large
            raise ConfigError("--seed", self.seed, f"{TRAINING_SEED.describe()}, e.g. 1: the training scenes' generator "
                                                   f"is seeded {SEED_SPAN} + seed, and from {SEED_SPAN} on it would "
                                                   f"draw the selection, certificate or test scenes")
        check_fields(self)  # every "check" above, before any work starts (auditstream/cli_args.py)
        if self.width % ATTENTION_HEADS:
            raise ConfigError("--width", self.width, f"a whole number >= 4 that is a multiple of {ATTENTION_HEADS} "
                                                     f"(the model's {ATTENTION_HEADS} attention heads split it), e.g. 96")
