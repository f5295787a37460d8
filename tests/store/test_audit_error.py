"""An audited auto answer is an error by the task kind's own rule: a correction that is the same
answer (a detector's box nudged within the IoU match) is no error, for the live tracker and for
the store's replay alike."""

from __future__ import annotations

from auditstream import tasks
from auditstream.wire import VerdictKind
from store.records import audit_error

BOXES = [{"box": [10.0, 10.0, 20.0, 24.0], "label": 3, "score": 0.97}]
NUDGED = [{"box": [10.5, 10.0, 20.0, 24.5], "label": 3, "score": 1.0}]  # IoU ~0.93
RELABELLED = [{"box": [10.0, 10.0, 20.0, 24.0], "label": 8, "score": 1.0}]
MISSED = BOXES + [{"box": [30.0, 30.0, 40.0, 44.0], "label": 1, "score": 1.0}]


def test_a_correction_that_is_the_same_answer_is_no_error():
    detection = tasks.lookup("detection")
    assert not audit_error(VerdictKind.ACCEPT, detection, BOXES, None)
    assert not audit_error(VerdictKind.CORRECT, detection, BOXES, NUDGED)
    assert audit_error(VerdictKind.CORRECT, detection, BOXES, RELABELLED)
    assert audit_error(VerdictKind.CORRECT, detection, BOXES, MISSED)  # a missed digit
    assert audit_error(VerdictKind.REJECT, detection, BOXES, None)


def test_without_the_kind_or_the_correction_every_correction_counts():
    assert audit_error(VerdictKind.CORRECT, None, BOXES, NUDGED)
    assert audit_error(VerdictKind.CORRECT, tasks.lookup("sequence"), "02139", None)
    assert not audit_error(VerdictKind.CORRECT, tasks.lookup("sequence"), "02139", "02139")
