"""The model registry: ``models/<name>/<version>/`` holds ``model.onnx`` and ``card.json``.

A model card says everything serving, triage and monitoring need to know about a model: its
inputs and outputs, preprocessing (which lives inside the graph), labels, metrics, calibration,
the certified auto-accept threshold, reference statistics of its confidence for drift detection,
how it was trained, and the sha256 of the ONNX file.

:meth:`ModelRegistry.load` verifies a model before anyone creates an inference session from it
(:mod:`auditstream.model_safety`): it reads ``model.onnx`` once, the checksum must match the card,
and the graph may not reference external data files or operator domains outside the standard
ones (a hostile file could read arbitrary paths or need a custom-op library), and what its
constants would allocate must fit the registry's memory budget. Each refusal is a
:class:`~auditstream.errors.ModelRefused` saying why. The verified bytes travel in the
:class:`RegisteredModel`, and the serving runtime builds its session from them: a file swapped
after the check is never what runs.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditstream.errors import ModelNotFound, ModelRefused
# The ONNX safety checks live in their own module; re-exported here for existing callers.
from auditstream.model_safety import ALLOWED_OP_DOMAINS, MAX_CONSTANT_BYTES, verify_onnx, verify_onnx_bytes
from auditstream.wire.codec import TaskKind

__all__ = ["ALLOWED_OP_DOMAINS", "CARD_DTYPES", "CARD_FILE", "LIVE_FILE", "ONNX_FILE", "ModelCard", "ModelRegistry",
           "RegisteredModel", "TensorSpec", "TriageSpec", "sha256_file", "verify_onnx", "verify_onnx_bytes"]

ONNX_FILE = "model.onnx"
CARD_FILE = "card.json"
LIVE_FILE = "LIVE"  # models/<name>/LIVE: the version `auditstream serve` picks (set by `rl promote`)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Element types a card's tensors may have: numpy names of the ONNX types numpy knows without
# extensions (what the registry compares with the graph, and serving casts inputs to).
CARD_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                         "float16", "float32", "float64", "complex64", "complex128"})
# Confidences are in [0, 1]; a threshold just above 1 accepts nothing (certify's reject-all
# threshold, the monitor's DEFER_ALL of 1.01). Past 2 it is a unit mistake (a percentage).
MAX_THRESHOLD = 2.0


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
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "ModelCard":
        """A card from its JSON form. Every field's type and range is checked first: a wrong one
        is a ``ValueError`` naming the field, what it holds and what it must hold (a ``"0.5"``
        threshold would otherwise pass every start-up check and fail each record at triage).
        Unknown top-level fields are ignored (a newer card still loads)."""
        _check_card(obj)
        obj = dict(obj)
        obj["inputs"] = [TensorSpec(**t) for t in obj["inputs"]]
        obj["outputs"] = [TensorSpec(**t) for t in obj["outputs"]]
        obj["triage"] = TriageSpec(**obj["triage"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model: its card, its file and (from :meth:`ModelRegistry.load`) the bytes that
    passed verification. Create an inference session from :meth:`verified_bytes`, never by reading
    ``onnx_path`` again (the file may have changed since it was checked)."""

    card: ModelCard
    onnx_path: Path
    # The bytes that passed verification (ModelRegistry.load); b"": not verified yet.
    model_bytes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def directory(self) -> Path:
        return self.onnx_path.parent

    def verified_bytes(self) -> bytes:
        """The ONNX bytes that passed the checks; a model built without them is read and
        verified now, once, against its card's sha256."""
        if self.model_bytes:
            return self.model_bytes
        return verify_onnx(self.onnx_path, self.card.sha256, self.card.inputs, self.card.outputs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """Versions of each model live in ``root/<name>/<version>/``; versions are integers as text.

    ``root/<name>/LIVE`` (optional) names the live version: the one :meth:`load` and :meth:`card`
    pick when no version is given. Without it the latest version is live, so a registry that
    never promoted anything behaves as before. Publishing a version does not move the pointer;
    ``auditstream rl promote`` does, through :meth:`set_live`.

    ``max_constant_bytes``: the memory budget :meth:`load` holds a model to (serving passes the
    ``max_model_constant_bytes`` setting).
    """

    def __init__(self, root: Path | str, max_constant_bytes: int = MAX_CONSTANT_BYTES) -> None:
        if max_constant_bytes < 1:
            raise ValueError(f"max_constant_bytes={max_constant_bytes} must be >= 1")
        self.root = Path(root)
        self.max_constant_bytes = max_constant_bytes

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        if not _NAME.match(name):  # also keeps "../x" from walking out of the registry
            return []
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir() if _is_version(p.name) and (p / CARD_FILE).is_file()]
        return sorted(found, key=int)

    def latest(self, name: str) -> str | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def live_version(self, name: str) -> str | None:
        """The version ``root/<name>/LIVE`` names, or None when there is no pointer."""
        if not _NAME.match(name):
            return None
        path = self.root / name / LIVE_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not _is_version(text) or not (self.root / name / text / CARD_FILE).is_file():
            raise ModelRefused(path, f"live pointer names version {text[:40]!r}, which is not a published version of "
                               f"{name} (have {self.versions(name)}); fix it with set_live or delete the file")
        return text

    def reference_version(self, name: str, candidate: str) -> str:
        """The version a candidate is compared with: the one ``LIVE`` names, or without the
        pointer the newest version older than the candidate (what consumers started before it was
        published serve); the candidate itself when there is neither."""
        version = self.live_version(name)
        if version is None:
            older = [v for v in self.versions(name) if int(v) < int(candidate)]
            version = older[-1] if older else candidate
        return version

    def default_version(self, name: str) -> str | None:
        """The live version if a pointer exists, else the latest."""
        return self.live_version(name) or self.latest(name)

    def set_live(self, name: str, version: str) -> Path:
        """Point ``name``'s live version at ``version`` (atomically: a reader sees old or new)."""
        if not _NAME.match(name) or not _is_version(version) or not (self.root / name / version / CARD_FILE).is_file():
            raise ModelNotFound(self.root, name, version)
        directory = self.root / name
        fd, tmp = tempfile.mkstemp(prefix=".live-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(f"{version}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / LIVE_FILE)
        _fsync_dir(directory)
        return directory / LIVE_FILE

    def card(self, name: str, version: str | None = None) -> ModelCard:
        """The verified-to-parse card of ``name`` (the live version unless given)."""
        version = version or self.default_version(name)
        valid = _NAME.match(name) and version is not None and _is_version(version)
        if not valid or not (self.root / name / version / CARD_FILE).is_file():
            raise ModelNotFound(self.root, name, version)
        path = self.root / name / version / CARD_FILE
        try:
            card = ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelRefused(path, f"model card does not parse: {e}") from None
        if card.name != name or card.version != version:
            raise ModelRefused(path, f"card says {card.name} version {card.version} but lives in {name}/{version}; "
                               "a copied or renamed directory would serve the wrong model under this name")
        return card

    def load(self, name: str, version: str | None = None) -> RegisteredModel:
        """The card and verified ONNX bytes of ``name`` (the live version unless given; see the class)."""
        card = self.card(name, version)
        onnx_path = self.root / name / card.version / ONNX_FILE
        # read once: what was checked runs
        data = verify_onnx(onnx_path, card.sha256, card.inputs, card.outputs, self.max_constant_bytes)
        return RegisteredModel(card=card, onnx_path=onnx_path, model_bytes=data)

    def publish(self, card: ModelCard, onnx_bytes: bytes) -> RegisteredModel:
        """Write a new version (the card's version is replaced by the next free number).

        The version directory appears atomically (written under a temporary name, then
        renamed), so a concurrent reader never sees a half-written model.
        """
        if not _NAME.match(card.name):
            raise ValueError(f"model name {card.name!r} must match {_NAME.pattern}")
        ModelCard.from_dict(json.loads(card.to_json()))  # write no card that load would refuse
        base = self.root / card.name
        base.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        while True:
            version = str(int(self.latest(card.name) or 0) + 1)
            final = dataclasses.replace(card, version=version, sha256=sha)
            tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=base))
            # fsync before the rename: after a crash the version is either absent or complete.
            _write_synced(tmp / ONNX_FILE, onnx_bytes)
            _write_synced(tmp / CARD_FILE, final.to_json().encode("utf-8"))
            try:
                os.rename(tmp, base / version)
            except OSError as e:
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another writer took this number
                    continue
                raise
            _fsync_dir(base)
            # No bytes attached: publishing checks nothing, so a session needs verified_bytes() first.
            return RegisteredModel(card=final, onnx_path=base / version / ONNX_FILE)


def _is_version(text: str) -> bool:
    return text.isascii() and text.isdigit()


# -- the card's JSON form, field by field ----------------------------------------------------------

def _wrong(field: str, value: Any, must: str) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ValueError(f"card field {field} is {type(value).__name__} {shown}; it must be {must}")


def _need(ok: Any, field: str, value: Any, must: str) -> None:
    if not ok:
        raise _wrong(field, value, must)


def _finite(value: Any, lo: float, hi: float) -> bool:
    """A JSON number (not a bool) in [lo, hi] (so not NaN, not infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi


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
    _need(isinstance(specs, list), role, specs, "a list of {name, dtype, shape} objects")
    names = set()
    for i, spec in enumerate(specs):
        where = f"{role}[{i}]"
        _fields(spec, where, {"name": True, "dtype": True, "shape": True}, "an object {name, dtype, shape}")
        _need(isinstance(spec["name"], str) and spec["name"] and spec["name"] not in names, f"{where}.name",
              spec["name"], f"a non-empty graph tensor name, unique among the {role}")
        names.add(spec["name"])
        _need(isinstance(spec["dtype"], str) and spec["dtype"] in CARD_DTYPES, f"{where}.dtype", spec["dtype"],
              f"one of {sorted(CARD_DTYPES)}")
        _need(isinstance(spec["shape"], list), f"{where}.shape", spec["shape"],
              "a list of sizes (null: a dynamic axis)")
        for j, d in enumerate(spec["shape"]):
            _need(d is None or (_finite(d, 1, 2**63 - 1) and isinstance(d, int)), f"{where}.shape[{j}]", d,
                  "a positive integer, or null for a dynamic axis")


def _check_card(obj: Any) -> None:
    """Refuse a card's JSON form whose fields are missing, of the wrong type or out of range."""
    known = {f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
             for f in dataclasses.fields(ModelCard)}
    _fields(obj, "", known, "name, version, task, inputs, outputs and triage are required")
    _need(isinstance(obj["name"], str) and _NAME.match(obj["name"]), "name", obj["name"],
          f"a model name matching {_NAME.pattern}")
    _need(isinstance(obj["version"], str) and _is_version(obj["version"]), "version", obj["version"],
          "a version number as text, like '3'")
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
    for key in ("confidence_kind", "method"):
        value = triage.get(key, "-")
        _need(isinstance(value, str) and value, f"triage.{key}", value, "a non-empty string")
    safe = triage.get("safe_action")
    _need(safe is None or (isinstance(safe, int) and _finite(safe, 0, 2**63 - 1)), "triage.safe_action", safe,
          "null or an action index (an integer >= 0)")
    _need(isinstance(obj.get("sha256", ""), str), "sha256", obj.get("sha256"), "the model file's sha256 as hex text")
    labels = obj.get("labels", [])
    _need(isinstance(labels, list), "labels", labels, "a list of label names (strings)")
    for i, label in enumerate(labels):
        _need(isinstance(label, str), f"labels[{i}]", label, "a label name (a string)")
    for key in ("preprocessing", "metrics", "calibration", "reference", "training", "extra"):
        _need(isinstance(obj.get(key, {}), dict), key, obj.get(key), "a JSON object")
    sample = obj.get("reference", {}).get("confidence_sample", [])
    _need(isinstance(sample, list) and all(_finite(c, -math.inf, math.inf) for c in sample),
          "reference.confidence_sample", sample, "a list of finite numbers (confidences on held-out data)")
    curve = obj.get("risk_coverage", [])
    _need(isinstance(curve, list), "risk_coverage", curve, "a list of {threshold, coverage, risk} objects")
    for i, point in enumerate(curve):
        _need(isinstance(point, dict) and all(_finite(v, -math.inf, math.inf) for v in point.values()),
              f"risk_coverage[{i}]", point, "an object of finite numbers {threshold, coverage, risk}")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
