"""A model's output row that is no answer of its kind (auditstream.tasks.base.answerable_rows, the
detector's max_boxes) is that record's ``inference_failed`` dead letter, counted against the model,
never an auto-accepted prediction (tests/auditstream/test_task_outputs.py covers each kind)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.auditstream.test_task_outputs import detection_card, detections
from tests.conftest import tiny_card

from auditstream.kafka import Record
from auditstream.registry import ModelCard
from auditstream.settings import Settings
from auditstream.wire import InferenceRequest, Reason
from serving.consumer import ServeConfig, process_batch

NOW = 1_800_000_000.0


class FixedRunner:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.repeat(value, len(batch), axis=0) for name, value in self.outputs.items()}

    def probe(self) -> None:
        pass


def served(card: ModelCard, outputs: dict[str, np.ndarray], value: np.ndarray) -> Any:
    request = InferenceRequest("req-0", card.name, value, NOW - 0.5)
    record = Record("auditstream.requests.x", 0, 0, request.key, request.to_bytes(), ())
    config = ServeConfig.from_settings(Settings(max_request_bytes=1 << 20, qc_rate=1.0), card)
    (result,) = process_batch([record], FixedRunner(outputs), config, NOW)
    return result


@pytest.mark.parametrize("case", ["logits", "more-boxes-than-max_boxes", "backwards-box"])
def test_such_a_row_is_an_inference_failed_dead_letter_not_an_auto_accepted_answer(case: str) -> None:
    if case == "logits":
        card, out = tiny_card(threshold=0.95), {"probs": np.array([[7.5, -2.0] + [0.0] * 8], np.float32)}
        value = np.zeros((8, 8), np.float32)
    else:
        card, value = detection_card(max_boxes=2), np.zeros(4, np.float32)
        out = detections([([0, 0, 10, 10], 0, 0.9)] * 5) if case == "more-boxes-than-max_boxes" else \
            detections([([50, 60, -10, -20], 0, 0.9)])
    result = served(card, out, value)
    assert result.route is None and result.dead_letter_reason == Reason.INFERENCE_FAILED.value and result.model_failure
