"""What retraining hands a model family: the auditors' verdicts as examples, the live version's
weights to start from, and what the new card must say about both.

A family's ``run(args, models_dir, progress, feedback)`` trains on its usual data plus
``feedback.inputs``/``feedback.targets``, starts from ``feedback.init_state`` when it is given
(transfer learning) and writes ``feedback.card_extra`` into the card's ``extra``. Every published
version keeps its torch weights beside the ONNX file (:data:`WEIGHTS_FILE`): the exported graph has
its temperature baked in and is an inference graph, not a starting point for further
training, while the state dict is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from auditstream.errors import AuditstreamError

WEIGHTS_FILE = "weights.pt"  # models/<name>/<version>/weights.pt: the uncalibrated net's state dict


@dataclasses.dataclass(frozen=True)
class Feedback:
    """Training data and provenance from audited traffic, for one family run."""

    inputs: np.ndarray  # in the graph's input format (digits float32 [n, 8, 8], envelopes uint8 [n, 32, 96])
    targets: np.ndarray  # class index [n], or one class per position [n, positions]
    init_state: dict[str, Any] | None  # the live version's weights; None trains from scratch
    base_version: str | None  # the version whose weights are loaded
    card_extra: dict[str, Any]  # "learnt_from", "data_hygiene", ... merged into the card's extra

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")


class WeightsMissing(AuditstreamError):
    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} has no {WEIGHTS_FILE}: this version was published without its torch weights "
                         "(a shipped demo model, or trained before weights were kept), so it cannot be fine-tuned; "
                         "pass --from-scratch, or train the family again (auditstream train NAME) and promote that")


def record_provenance(card: Any, feedback: "Feedback | None", tuning: dict | None, **training: Any) -> Any:
    """The card with what made it: the weights file, ``training``'s extra fields, the version it
    was fine-tuned from and the verdicts it learnt (``feedback``), the search that chose its
    arguments (``tuning``). Both families' ``run`` record the same things this way."""
    card.training.update(weights=WEIGHTS_FILE, **training)
    if feedback is not None:
        card.training.update(fine_tuned_from=feedback.base_version)
        card.extra.update(feedback.card_extra)
    if tuning is not None:
        card = dataclasses.replace(card, training={**card.training, "tuning": tuning})
    return card


def save_weights(model: Any, directory: Path) -> Path:
    import torch

    path = Path(directory) / WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


def load_weights(directory: Path) -> dict[str, Any]:
    import torch

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsMissing(Path(directory))
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
