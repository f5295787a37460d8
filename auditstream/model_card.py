"""The model card: ``models/<name>/<version>/card.json``, what serving, triage and monitoring need to know.

A card says everything about a model that is not its graph: its inputs and outputs, preprocessing
(which lives inside the graph), labels, metrics, calibration, the certified auto-accept threshold,
reference statistics of its confidence for drift detection, how it was trained, and the sha256 of
the ONNX file. :meth:`ModelCard.from_dict` checks every field's type and range when a card is
loaded: a wrong one is a ``ValueError`` naming the field, what it holds and what it must hold.
Every string of a card, at any depth, must encode as UTF-8 (no lone surrogate).
The on-disk registry that stores cards is :mod:`auditstream.registry`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator
from typing import Any

from auditstream import finite_json
from auditstream.text import is_utf8
from auditstream.wire.codec import TaskKind

__all__ = ["CARD_DTYPES", "MAX_CARD_BYTES", "MAX_CARD_CONTAINERS", "MAX_CARD_VALUES", "MAX_TENSOR_ELEMENTS",
           "MAX_THRESHOLD", "ModelCard", "TensorSpec", "TriageSpec", "loads_card"]

_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: "$" would let a final "\n" through
# Element types a card's tensors may have: numpy names of the ONNX types numpy knows without
# extensions (what the registry compares with the graph, and serving casts inputs to).
CARD_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                         "float16", "float32", "float64", "complex64", "complex128"})
# Confidences are in [0, 1]; a threshold just above 1 accepts nothing (certify's reject-all
# threshold, the monitor's DEFER_ALL of 1.01). Past 2 it is a unit mistake (a percentage).
MAX_THRESHOLD = 2.0
# Bounds on what a card may declare. Serving allocates its warm-up batch (and on a GPU every batch
# bucket's buffers) from the card's shapes before any request arrives, so a card declaring an input
# of 10**12 elements must be refused when it is read, not when numpy or the GPU runs out of memory.
# Per tensor, the product of its fixed dims (the batch axis and other dynamic axes count as 1):
# 2**26 elements is a 4096 x 4096 x 4 image; the project's models take under 2**14.
MAX_TENSOR_ELEMENTS = 2**26
MAX_TENSOR_RANK = 16  # ONNX Runtime's own kernels stop at 8 dims for most ops
MAX_TENSORS = 64  # inputs, outputs each
MAX_TENSOR_NAME = 256  # characters
MAX_LABELS = 100_000  # a classifier's classes or a caption model's vocabulary
MAX_LABEL_CHARS = 1_024
MAX_TEXT_CHARS = 4_096  # triage.method and other free text the serving path copies into records
MAX_SAMPLE = 1_000_000  # reference.confidence_sample, risk_coverage points
MAX_CARD_BYTES = 64 * 1024**2  # card.json on disk (the shipped cards: < 100 kB)
# What the JSON of a card may hold, counted on its bytes before it is parsed: under 64 MiB, 21
# million "{}" took 4.9 GiB and 164 s to read. The most a valid card needs is a risk-coverage curve
# at its limit (a million objects of three numbers) and a confidence sample at its own: room for
# both, and a hostile card costs about what that largest valid card costs (~350 MB).
MAX_CARD_CONTAINERS = MAX_SAMPLE + 100_000  # JSON arrays and objects
MAX_CARD_VALUES = 6 * MAX_SAMPLE  # JSON values of any kind, containers included
MAX_VERSION_DIGITS = 18  # a version is an int64 (and int() refuses texts past 4300 digits)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` uses ``None`` for dynamic axes (the batch axis)."""

    name: str
    dtype: str
    shape: list[int | None]


@dataclass(frozen=True)
class TriageSpec:
    """The auto-accept rule certified at training time (see qc/certify.py).

    An answer is auto-accepted when its confidence (``confidence_kind``) is >= ``threshold``;
    on calibration data the exact (Clopper-Pearson) upper bound of the error of accepted items
    was ``certified_risk`` <= ``target_risk`` with confidence 1 - ``delta``.
    """

    threshold: float
    confidence_kind: str = "max_prob"
    target_risk: float | None = None
    delta: float | None = None
    certified_risk: float | None = None
    coverage: float | None = None
    method: str = "uncertified"
    safe_action: Any = None  # RL: what to do when a deferred decision times out


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: TaskKind  # a plain string is parsed; an unknown kind is refused (UnknownTaskKind)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    triage: TriageSpec
    sha256: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    # confidence distribution on held-out data, for KS drift tests: {"confidence_sample": [...], ...}
    reference: dict[str, Any] = field(default_factory=dict)
    risk_coverage: list[dict[str, float]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskKind.parse(self.task))

    def to_json(self) -> str:
        """The card as JSON. A NaN or infinity anywhere in it is refused
        (:class:`~auditstream.finite_json.NonFiniteJSON` naming the field), before the registry
        writes anything: it is not JSON, and an undefined metric is null with its reason."""
        return finite_json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "ModelCard":
        """A card from its JSON form. Every field's type and range is checked first: a wrong one
        is a ``ValueError`` naming the field, what it holds and what it must hold (a ``"0.5"``
        threshold would otherwise pass every start-up check and fail each record at triage).
        Unknown top-level fields are ignored (a newer card still loads). The fields that serving
        reads refuse NaN and infinity (above); anywhere else (metrics, extra: free-form facts) one
        is read as null, this project's "undefined" -- a card an older release wrote with ``NaN``
        still loads, and :meth:`to_json` writes it back as JSON."""
        _check_card(obj)
        obj = _free_form_nulled(obj)
        obj["inputs"] = [TensorSpec(**t) for t in obj["inputs"]]
        obj["outputs"] = [TensorSpec(**t) for t in obj["outputs"]]
        obj["triage"] = TriageSpec(**obj["triage"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


def _free_form_nulled(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checked card's JSON form with NaN/infinity read as null outside the parts
    :func:`_check_card` proved finite: the confidence sample and the risk-coverage curve, up to a
    million numbers each on every registry load, are not walked again."""
    out = {k: (v if k == "risk_coverage" else finite_json.nulled(v)) for k, v in obj.items() if k != "reference"}
    if "reference" in obj:
        reference = obj["reference"]
        out["reference"] = {k: (v if k == "confidence_sample" else finite_json.nulled(v)) for k, v in reference.items()}
    return out


def loads_card(raw: bytes) -> Any:
    """The JSON of a ``card.json`` file's bytes (at most :data:`MAX_CARD_BYTES`, which the
    registry caps when it reads them). Refused as a ``ValueError`` saying why: not UTF-8 JSON,
    nested past the parser's stack, or more arrays and objects than :data:`MAX_CARD_CONTAINERS`
    or values than :data:`MAX_CARD_VALUES` -- counted on the bytes before anything is parsed
    (brackets and commas inside strings count too: a bound, never an undercount)."""
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_CARD_CONTAINERS:
        raise ValueError(f"card.json holds up to {containers:,} JSON arrays and objects, over the "
                         f"{MAX_CARD_CONTAINERS:,} a card may hold (a risk-coverage curve at its limit of "
                         f"{MAX_SAMPLE:,} points is the most a card needs): not a card this project writes; "
                         "re-export the model")
    values = raw.count(b",") + containers + 1  # each further value of an array or object follows a comma
    if values > MAX_CARD_VALUES:
        raise ValueError(f"card.json holds up to {values:,} JSON values, over the {MAX_CARD_VALUES:,} a card may "
                         "hold: not a card this project writes; re-export the model")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:  # JSON nested deeper than the parser's stack
        raise ValueError("model card does not parse: JSON nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"model card does not parse: {e}") from None


def _is_version(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS


# -- the card's JSON form, field by field ----------------------------------------------------------

def _wrong(field: str, value: Any, must: str) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ValueError(f"card field {field} is {type(value).__name__} {shown}; it must be {must}")


def _need(ok: Any, field: str, value: Any, must: str) -> None:
    if not ok:
        raise _wrong(field, value, must)


def _finite(value: Any, lo: float, hi: float) -> bool:
    """A finite JSON number (not a bool) in [lo, hi]: never NaN or infinite, even with infinite
    bounds, and an int only if a float holds it (10**400 would overflow every float use later)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and lo <= value <= hi
    except OverflowError:
        return False


def _fields(obj: Any, field: str, known: dict[str, bool], must: str) -> None:
    """``obj`` is a JSON object with every required key of ``known`` (name -> required) and no other."""
    _need(isinstance(obj, dict), field or "(the whole card)", obj, must)
    for key, required in known.items():
        if required and key not in obj:
            raise ValueError(f"card field {field + '.' if field else ''}{key} is missing; it must be there ({must})")
    unknown = sorted(set(obj) - set(known))
    if unknown and field:  # the top level ignores unknown fields (a newer card)
        raise ValueError(f"card field {field}.{unknown[0]} is not a field of {field}; "
                         f"it must be one of {sorted(known)}")


def _check_tensors(role: str, specs: Any) -> None:
    # may be empty: a card the monitor or the dashboard reads needs no tensors (serving does)
    _need(isinstance(specs, list) and len(specs) <= MAX_TENSORS, role, specs,
          f"a list of at most {MAX_TENSORS} {{name, dtype, shape}} objects")
    names = set()
    for i, spec in enumerate(specs):
        where = f"{role}[{i}]"
        _fields(spec, where, {"name": True, "dtype": True, "shape": True}, "an object {name, dtype, shape}")
        name = spec["name"]
        _need(isinstance(name, str) and 0 < len(name) <= MAX_TENSOR_NAME and name not in names, f"{where}.name",
              name, f"a non-empty graph tensor name of at most {MAX_TENSOR_NAME} characters, unique among the {role}")
        names.add(name)
        _need(isinstance(spec["dtype"], str) and spec["dtype"] in CARD_DTYPES, f"{where}.dtype", spec["dtype"],
              f"one of {sorted(CARD_DTYPES)}")
        _need(isinstance(spec["shape"], list) and len(spec["shape"]) <= MAX_TENSOR_RANK, f"{where}.shape",
              spec["shape"], f"a list of at most {MAX_TENSOR_RANK} sizes (null: a dynamic axis)")
        elements = 1
        for j, d in enumerate(spec["shape"]):
            _need(d is None or (isinstance(d, int) and _finite(d, 1, MAX_TENSOR_ELEMENTS)), f"{where}.shape[{j}]", d,
                  f"a positive integer (at most {MAX_TENSOR_ELEMENTS:,}), or null for a dynamic axis")
            elements *= d or 1
            if elements > MAX_TENSOR_ELEMENTS:
                raise ValueError(f"card field {where}.shape is {_shown_shape(spec['shape'])}, more than "
                                 f"{MAX_TENSOR_ELEMENTS:,} elements per item; it must declare at most that many (the "
                                 "batch axis and other dynamic axes count as 1; serving allocates its warm-up batch "
                                 "from this shape): fix the card or re-export the model")


def _shown_shape(shape: list) -> str:
    return str(shape) if len(shape) <= 8 else f"{str(shape[:8])[:-1]}, ... ({len(shape)} dims)]"


def _check_text(obj: Any) -> None:
    """Every string of the card -- keys included, at any depth -- encodes as UTF-8. JSON's
    ``"\\ud800"`` escape reads as a lone surrogate, which a label (or any string the serving
    path copies into records) would carry into every record: each then refused by its reader.

    A walk with one iterator per open container (not recursion: a card may nest deeply) that
    checks the strings of each container together and spells a field's path only for the string
    it refuses: a card of millions of values costs no object per value."""
    if isinstance(obj, str):
        _need(is_utf8(obj), "(the whole card)", obj, _UTF8)
    if not isinstance(obj, _NESTED):
        return
    keys: list[tuple[bool, Any]] = []  # to the open container: (in a list?, its key or index), the card's first
    open_: list[tuple[bool, Iterator[tuple[Any, Any]]]] = [(False, iter([(None, obj)]))]
    while open_:
        in_list, containers = open_[-1]
        for key, value in containers:  # the next container inside the open one: open it
            if not value:  # empty: no text in it
                continue
            keys.append((in_list, key))
            _check_strings(value, keys)
            is_list = not isinstance(value, dict)
            items = enumerate(value) if is_list else value.items()
            open_.append((is_list, ((k, v) for k, v in items if isinstance(v, _NESTED))))
            break
        else:  # every container inside the open one is done
            open_.pop()
            if keys:
                keys.pop()


_NESTED = (dict, list, tuple)
_UTF8 = "text that encodes as UTF-8 (no lone surrogate \\ud800-\\udfff); fix the card"


def _check_strings(container: dict | list | tuple, keys: list[tuple[bool, Any]]) -> None:
    """The strings right inside ``container`` (a dict's keys too) encode as UTF-8; ``keys`` lead
    to it. Checked together (ASCII at C speed); the path is spelled for a refused one only."""
    if isinstance(container, dict):
        if not _all_utf8(container):
            name = next(n for n in container if isinstance(n, str) and not is_utf8(n))
            raise _wrong(f"{_path(keys)} key", name, _UTF8)
        values, items = container.values(), container.items()
    else:
        values, items = container, enumerate(container)
    if not _all_utf8(values):
        key, text = next((k, v) for k, v in items if isinstance(v, str) and not is_utf8(v))
        raise _wrong(_path([*keys, (not isinstance(container, dict), key)]), text, _UTF8)


def _all_utf8(values: Iterable[Any]) -> bool:
    """Whether every string among ``values`` (the others are skipped) encodes as UTF-8."""
    return all(text.isascii() or is_utf8(text) for text in values if isinstance(text, str))


def _path(keys: list[tuple[bool, Any]]) -> str:
    """A field's path as the card's errors spell it (``extra.vocabulary[1][0]``) from the keys
    that lead to it; the first is the card's own (``(the whole card)`` when it is the only one)."""
    where = ""
    for in_list, key in keys[1:]:
        where = f"{where}[{key}]" if in_list else (f"{where}.{key}" if where else str(key))
    return where or "(the whole card)"


def _check_card(obj: Any) -> None:
    """Refuse a card's JSON form whose fields are missing, of the wrong type or out of range."""
    known = {f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
             for f in dataclasses.fields(ModelCard)}
    _fields(obj, "", known, "name, version, task, inputs, outputs and triage are required")
    _check_text(obj)
    _need(isinstance(obj["name"], str) and _NAME.match(obj["name"]), "name", obj["name"],
          f"a model name matching {_NAME.pattern}")
    _need(isinstance(obj["version"], str) and _is_version(obj["version"]), "version", obj["version"],
          f"a version number as text of at most {MAX_VERSION_DIGITS} digits, like '3'")
    kinds = [k.value for k in TaskKind]
    _need(isinstance(obj["task"], str) and obj["task"] in kinds, "task", obj["task"], f"one of {kinds}")
    _check_tensors("inputs", obj["inputs"])
    _check_tensors("outputs", obj["outputs"])
    triage = obj["triage"]
    _fields(triage, "triage", {f.name: f.name == "threshold" for f in dataclasses.fields(TriageSpec)},
            "an object with at least 'threshold'")
    _need(_finite(triage["threshold"], 0.0, MAX_THRESHOLD), "triage.threshold", triage["threshold"],
          f"a finite number in [0, {MAX_THRESHOLD:g}] (confidences are in [0, 1]; above 1 accepts nothing)")
    for key in ("target_risk", "delta", "certified_risk", "coverage"):
        value = triage.get(key)
        _need(value is None or _finite(value, 0.0, 1.0), f"triage.{key}", value, "null or a number in [0, 1]")
    for key, most in (("confidence_kind", 64), ("method", MAX_TEXT_CHARS)):
        value = triage.get(key, "-")
        _need(isinstance(value, str) and 0 < len(value) <= most, f"triage.{key}", value,
              f"a non-empty string of at most {most} characters")
    safe = triage.get("safe_action")
    _need(safe is None or (isinstance(safe, int) and _finite(safe, 0, 2**63 - 1)), "triage.safe_action", safe,
          "null or an action index (an integer >= 0)")
    _need(isinstance(obj.get("sha256", ""), str), "sha256", obj.get("sha256"), "the model file's sha256 as hex text")
    labels = obj.get("labels", [])
    _need(isinstance(labels, list) and len(labels) <= MAX_LABELS, "labels", labels,
          f"a list of at most {MAX_LABELS:,} label names (strings)")
    for i, label in enumerate(labels):
        _need(isinstance(label, str) and len(label) <= MAX_LABEL_CHARS, f"labels[{i}]", label,
              f"a label name (a string of at most {MAX_LABEL_CHARS} characters)")
    for key in ("preprocessing", "metrics", "calibration", "reference", "training", "extra"):
        _need(isinstance(obj.get(key, {}), dict), key, obj.get(key), "a JSON object")
    sample = obj.get("reference", {}).get("confidence_sample", [])
    _need(isinstance(sample, list) and len(sample) <= MAX_SAMPLE and all(_finite(c, -math.inf, math.inf)
                                                                          for c in sample),
          "reference.confidence_sample", sample,
          f"a list of at most {MAX_SAMPLE:,} finite numbers (confidences on held-out data)")
    curve = obj.get("risk_coverage", [])
    _need(isinstance(curve, list) and len(curve) <= MAX_SAMPLE, "risk_coverage", curve,
          f"a list of at most {MAX_SAMPLE:,} {{threshold, coverage, risk}} objects")
    for i, point in enumerate(curve):
        _need(isinstance(point, dict) and {"threshold", "coverage", "risk"} <= point.keys()
              and all(_finite(v, -math.inf, math.inf) for v in point.values()),
              f"risk_coverage[{i}]", point, "an object of finite numbers {threshold, coverage, risk}")
