"""The task-kind contract: what every kind module of :mod:`auditstream.tasks` implements.

In the spirit of MLServer's runtime classes, a kind is a small object with a fixed set of
methods, and the consumer, the audit store, the monitor and the dashboard look it up by the
model card's :class:`~auditstream.wire.TaskKind` instead of branching on it:

- the graph outputs it needs and the card check (:meth:`Task.check_card`);
- ``postprocess(outputs) -> Answer(output, confidence, parts, details)``, where ``parts`` are the
  independently auditable pieces of the answer (a character, a box, a token, an action), each
  with its own confidence;
- the one definition of answer equality (:meth:`Task.answer_key`: equal keys, same answer) and
  of the answer's text, used alike by the workbench, gold scoring and reviewer agreement;
- per-part triage (:meth:`Task.gating_confidences`: which part confidences must all clear the
  part threshold for the whole item to be auto-accepted);
- what a row of graph outputs must be to make an answer at all (:func:`answerable_rows`, shared
  by every kind's ``postprocess``: probabilities in [0, 1], boxes with x0 <= x1 and y0 <= y1,
  label indices in range; any other row is that record's model failure);
- that every confidence published lies in [0, 1]: a probability within :data:`PROB_TOLERANCE`
  above 1 is answerable, and is published as 1 (:func:`probability`; :class:`Answer` and
  :class:`Part` clip their confidences themselves, for every kind). A card that certified
  nothing has a threshold above 1 (``nextafter(1, 2)``), which no confidence then reaches;
- for kinds whose answers act on an environment (``acts``), the action selection
  (:meth:`Task.act`) and what a decision records about it (:meth:`Task.decision_details`).

Everything here is pure (numpy only): no Kafka, no ONNX Runtime, no Streamlit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Sequence, TypeVar

import numpy as np

from auditstream.registry import ModelCard
from auditstream.wire import Prediction, TaskKind

DECIMALS = 6  # answers are rounded so a redelivered request's records stay byte-identical
# How far outside [0, 1] a probability or score may be and still be one: a float32 softmax or
# sigmoid errs by an ulp or so, and the policy kind takes a sum off 1 by this much. Logits, or
# scores without their sigmoid, are off by far more.
PROB_TOLERANCE = 1e-3
T = TypeVar("T")
ACTION_SALT = "action"  # salt of the request-id hash at which an acting kind draws its action


def unit_interval(x: float) -> float:
    """``x`` clipped to [0, 1] (NaN stays NaN: triage never accepts it)."""
    x = float(x)
    return x if math.isnan(x) else min(max(x, 0.0), 1.0)


def probability(x: float) -> float:
    """A probability or score as it is published: in [0, 1], rounded (:func:`rounded`). Rows
    :func:`answerable_rows` took may be up to :data:`PROB_TOLERANCE` outside [0, 1] (a float32
    softmax's ulp): published as is, 1.0005 would clear a threshold above 1, the threshold of a
    card that certified nothing and is meant to accept nothing."""
    return rounded(unit_interval(x))


@dataclass(frozen=True)
class Part:
    """One independently auditable piece of an answer: a character, a box, a token, an action."""

    index: int
    value: Any
    confidence: float  # in [0, 1]: clipped on construction (:func:`unit_interval`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "confidence", unit_interval(self.confidence))


@dataclass(frozen=True)
class Answer:
    """A model's answer to one input, before triage."""

    output: Any  # what is published (JSON)
    # of the whole answer, compared with the card's threshold; in [0, 1] whatever the kind
    # computed: clipped on construction (:func:`unit_interval`), the one place every kind shares
    confidence: float
    parts: tuple[Part, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)  # travels in Prediction.details

    def __post_init__(self) -> None:
        object.__setattr__(self, "confidence", unit_interval(self.confidence))


def rounded(x: float) -> float:
    return round(float(x), DECIMALS)


def canonical_json(value: Any) -> str:
    """Canonical JSON: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# Prefix of the key of a value canonical JSON cannot write (NaN, an infinity, a key that is not a
# string): no JSON text starts with it, so such a key never equals the key of a well-formed answer.
MALFORMED_KEY_PREFIX = "~"


def key_json(value: Any) -> str:
    """:func:`canonical_json`, total: a value it cannot write (NaN or an infinity -- Python's
    ``json.loads`` reads ``NaN`` --, a dict key that is not a string, an object that is no JSON)
    gets :data:`MALFORMED_KEY_PREFIX` and the canonical JSON of a stand-in (each such number as
    the string of its ``repr``), so equal values still give equal keys and nothing raises.
    Answer keys are built with it: a row already in a store, or a verdict from another client,
    must never stop the reader that compares it."""
    try:
        return canonical_json(value)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return MALFORMED_KEY_PREFIX + canonical_json(_json_stand_in(value))
    except (TypeError, ValueError, RecursionError):  # deeper than the JSON encoder goes
        return MALFORMED_KEY_PREFIX + repr(type(value))


def _json_stand_in(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {MALFORMED_KEY_PREFIX: repr(value)}
    if isinstance(value, (list, tuple)):
        return [_json_stand_in(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else MALFORMED_KEY_PREFIX + repr(k): _json_stand_in(v) for k, v in value.items()}
    return {MALFORMED_KEY_PREFIX: repr(value)}


def answerable_rows(probs: np.ndarray | None = None, boxes: np.ndarray | None = None,
                    labels: np.ndarray | None = None, n_labels: int | None = None) -> np.ndarray:
    """Per row of the leading (batch) axis, whether its numbers can make an answer: every
    probability or score in ``probs`` in [0, 1] (up to :data:`PROB_TOLERANCE`), every box of
    ``boxes`` [..., 4] four finite numbers with x0 <= x1 and y0 <= y1, every index of ``labels``
    a whole number in [0, ``n_labels``) (``None``: >= 0). NaN and infinities are out of every
    range. A row that fails is no answer (``postprocess`` gives ``None``: an ``inference_failed``
    dead letter), never a confidence of 7.5 that clears any threshold or a box drawn backwards."""
    arrays = [a for a in (probs, boxes, labels) if a is not None]
    ok = np.ones(len(arrays[0]) if arrays else 0, dtype=bool)
    if probs is not None:
        p = _rows(probs)
        ok &= ((p >= -PROB_TOLERANCE) & (p <= 1.0 + PROB_TOLERANCE)).all(axis=1)  # False for NaN
    if boxes is not None:
        b = np.asarray(boxes)
        if b.ndim < 2 or b.shape[-1] != 4:
            ok &= False  # not boxes of four numbers
        else:
            b = b.reshape(len(b), int(np.prod(b.shape[1:-1], dtype=np.int64)), 4)
            ok &= (np.isfinite(b).all(axis=(1, 2)) & (b[..., 0] <= b[..., 2]).all(axis=1)
                   & (b[..., 1] <= b[..., 3]).all(axis=1))
    if labels is not None:
        lab = _rows(labels)
        in_range = (lab >= 0) & ((lab < n_labels) if n_labels is not None else True)
        if lab.dtype.kind not in "iub":  # float labels must still be whole, finite indices
            in_range &= np.isfinite(lab) & (np.floor(lab) == lab)
        ok &= in_range.all(axis=1)
    return ok


def _rows(array: np.ndarray) -> np.ndarray:
    """``array`` as [rows, everything else] (a row of no element included)."""
    array = np.asarray(array)
    return array.reshape(len(array), int(np.prod(array.shape[1:], dtype=np.int64)))


def label_name(index: Any, labels: Sequence[str]) -> str:
    """A class index as its name where the card has one (``3`` -> ``"cat"``), else as text."""
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(labels):
        return str(labels[index])
    return str(index)


def indexed_answer_text(output: Any, labels: Sequence[str]) -> str:
    """An index answer (a class, an action) as ``"3 (cat)"``; its name or index alone otherwise."""
    if output is None:
        return "(no answer)"
    if isinstance(output, int) and not isinstance(output, bool):
        name = label_name(output, labels)
        return name if name == str(output) else f"{name} ({output})"
    return str(output)


class Task:
    """The contract. Subclasses set the class attributes and override what differs."""

    kind: ClassVar[TaskKind]
    output_names: ClassVar[tuple[str, ...]] = ()  # graph outputs postprocess reads
    served: ClassVar[bool] = True  # False: cards of this kind are valid, serving them is not built yet
    acts: ClassVar[bool] = False  # answers are actions in an environment (episode state, action records)
    answers_are_boxes: ClassVar[bool] = False  # answers are labelled boxes (COCO export of verdicts)
    # each part of an answer is accepted on its own evidence (a detector's boxes): the card promises
    # a false-discovery rate of accepted parts, and audits count false parts (max_parts and below)
    accepts_parts: ClassVar[bool] = False
    # Least QC rate of its auto answers whatever the settings say (policies: OPE needs random audits).
    min_qc_rate: ClassVar[float] = 0.0
    # Two answers the same by same_answer are both right or both wrong against any label (equal
    # keys: an equivalence). A tolerance (a detector's IoU matching) breaks that, and the paired
    # promotion gate then may not take a shadow's agreement with live as a concordant pair.
    agreement_is_concordance: ClassVar[bool] = True

    # -- serving -----------------------------------------------------------------------------

    def check_card(self, card: ModelCard) -> None:
        """Refuse at start-up a card this kind cannot interpret (``ValueError`` saying why)."""
        if not self.served:
            raise ValueError(f"task {self.kind.value!r} of model {card.name} is not served yet; "
                             f"served: {[k.value for k in served_kinds()]}")
        have = {o.name for o in card.outputs}
        missing = [n for n in self.output_names if n not in have]
        if missing:
            raise ValueError(f"model {card.name} ({self.kind.value}) lacks graph outputs {missing}; "
                             f"card lists {sorted(have)}")

    def postprocess(self, card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Answer | None]:
        """One answer per batch row; ``None`` where the model produced non-finite numbers, or numbers
        that are no answer of the kind (:func:`answerable_rows`: a probability outside [0, 1], ...)."""
        raise ValueError(f"task {self.kind.value!r} is not served yet")

    def gating_confidences(self, answer: Answer) -> list[float] | None:
        """Part confidences that must each clear the part threshold, or the whole item is
        deferred. Default: every part (one unreadable digit makes a ZIP unreadable)."""
        return [p.confidence for p in answer.parts] or None

    def act(self, answer: Answer, card: ModelCard, uniform: float) -> Answer:
        """The answer that acts (``acts`` kinds draw an action with ``uniform`` in [0, 1))."""
        return answer

    def decision_details(self, prediction: Prediction) -> dict[str, Any]:
        """What a model decision records besides the output."""
        return {"confidence": prediction.confidence, "route": prediction.route.value,
                "threshold": prediction.details["threshold"]}

    # -- answers, for people and for statistics ----------------------------------------------

    def answer_key(self, output: Any) -> str:
        """Canonical form of an answer: two answers are the same exactly when their keys are
        equal (gold scoring, reviewer agreement and the workbench all use it). ``None`` is the
        reject answer (no valid answer exists). Total: any JSON value has a key, NaN included
        (:func:`key_json`); this, :meth:`same_answer`, :meth:`count_parts` and
        :meth:`false_parts` never raise on what a store or another client hands them."""
        return key_json(output)

    def same_answer(self, a: Any, b: Any) -> bool:
        return self.answer_key(a) == self.answer_key(b)

    def for_card(self, card: ModelCard | None) -> "Task":
        """The kind's rule under ``card``'s parameters: equality and false parts as the card
        certified them (a detector's ``extra.match_iou``). Every caller that holds the card
        (serving, the monitor) compares with this rule, never the bare :func:`lookup` one.
        Default: the kind's one rule (``card`` None: that too)."""
        return self

    def for_details(self, details: Any) -> "Task":
        """The kind's rule as a prediction's ``details`` recorded it at serving (a detector's
        ``match_iou``): for callers that hold the prediction but not the card (the store's
        reads, the workbench). Anything unreadable there: the kind's default rule."""
        return self

    def normalise_answer(self, output: Any, details: Any = None) -> Any:
        """An auditor's correction (or an admin's gold answer) in the one form every reader of
        verdicts compares, given the item's prediction ``details``; ``ValueError`` (a message for
        the person who typed it, nothing recorded) for one that cannot be (a detector's class name
        that is none of the card's). Called once, where the store records it. Default: unchanged."""
        return output

    def check_answer(self, output: Any) -> str | None:
        """Why ``output`` is not an answer of this kind that an auditor may record as a
        correction, or None when it is one (``store.records.check_verdict_input``). Default:
        any JSON value (the kind's equality is total over them)."""
        return None

    def shaped_like_its_answer(self, output: Any) -> bool:
        """Whether ``output`` has the shape only this kind's answers have (a detector's: a list
        holding a dict with a ``"box"``), so a caller that does not know the item's kind still
        checks it with :meth:`check_answer` (:func:`check_answer_of_any_kind`). Default: no."""
        return False


    def answer_text(self, output: Any, labels: Sequence[str] = ()) -> str:
        """An answer as one line of text for people."""
        return "(no answer)" if output is None else str(output)

    # -- risk of parts accepted one by one ---------------------------------------------------

    def max_parts(self, card: ModelCard) -> int | None:
        """For kinds whose card promises a false-discovery rate of accepted *parts* (a
        detector's boxes): the most parts one answer can have (``K``, which bounds the live
        estimate's bets, qc/sequential.py). None for the other kinds: their promise is about
        whole answers, and audits are judged answer by answer."""
        return None

    def count_parts(self, output: Any) -> int:
        """How many parts an answer has (the kinds with :meth:`max_parts`)."""
        raise ValueError(f"task {self.kind.value!r} does not accept parts one by one")

    def false_parts(self, model_output: Any, corrected_output: Any) -> int:
        """How many of the model answer's parts the auditor's answer does not confirm."""
        raise ValueError(f"task {self.kind.value!r} does not accept parts one by one")


def check_answer_of_any_kind(output: Any) -> str | None:
    """Why ``output`` is not an answer of a kind whose shape it has (:meth:`Task.shaped_like_its_answer`),
    or None: the check of a correction whose item's kind the caller does not know."""
    for kind, task in TASKS.items():
        if task.shaped_like_its_answer(output):
            problem = task.check_answer(output)
            if problem is not None:
                return f"not a {kind.value} answer: {problem}"
    return None


class KindRegistry(Generic[T]):
    """One object per task kind, registered by the kind's own module and looked up by everyone
    else (the same registry serves this layer's :class:`Task` and the dashboard's views)."""

    def __init__(self, what: str) -> None:
        self.what, self._by_kind = what, {}  # type: str, dict[TaskKind, T]

    def register(self, kind: TaskKind, item: T) -> T:
        assert kind not in self._by_kind, f"{self.what} of {kind} registered twice"
        self._by_kind[kind] = item
        return item

    def lookup(self, kind: TaskKind | str) -> T:
        """The kind's entry; an unknown kind raises :class:`~auditstream.errors.UnknownTaskKind`."""
        return self._by_kind[TaskKind.parse(kind)]

    def items(self) -> list[tuple[TaskKind, T]]:
        return list(self._by_kind.items())


TASKS = KindRegistry[Task]("task")


def register(task: Task) -> Task:
    """Add a kind module's :class:`Task` (each module registers its own at import)."""
    return TASKS.register(task.kind, task)


def lookup(kind: TaskKind | str) -> Task:
    """The kind's :class:`Task`; an unknown kind raises :class:`~auditstream.errors.UnknownTaskKind`."""
    return TASKS.lookup(kind)


def rule_for(kind: TaskKind | str, card: ModelCard | None = None, details: Any = None) -> Task:
    """The kind's rule (:func:`lookup`) bound to ``card``'s parameters, else to those a
    prediction's ``details`` recorded (:meth:`Task.for_card`, :meth:`Task.for_details`)."""
    task = lookup(kind)
    return task.for_card(card) if card is not None else task.for_details(details)


def served_kinds() -> list[TaskKind]:
    return [k for k, t in TASKS.items() if t.served]
