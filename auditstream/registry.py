"""The model registry: ``models/<name>/<version>/`` holds ``model.onnx`` and ``card.json``.

What a model card holds, and the checks every field of ``card.json`` passes on load, are in
:mod:`auditstream.model_card`.

:meth:`ModelRegistry.load` verifies a model before anyone creates an inference session from it
(:mod:`auditstream.model_safety`): it reads ``model.onnx`` once, the checksum must match the card,
and the graph may not reference external data files or operator domains outside the standard
ones (a hostile file could read arbitrary paths or need a custom-op library), and what its
constants would allocate must fit the registry's memory budget. Each refusal is a
:class:`~auditstream.errors.ModelRefused` saying why. The verified bytes travel in the
:class:`RegisteredModel`, and the serving runtime builds its session from them: a file swapped
after the check is never what runs.

Every file the registry reads (``LIVE``, ``card.json``, ``model.onnx``) is opened without
blocking, must be a regular file and is read up to a cap (``LIVE``: :data:`MAX_LIVE_BYTES`;
``card.json``: :data:`~auditstream.model_card.MAX_CARD_BYTES`, and its JSON values are counted
before it is parsed; ``model.onnx``: :data:`~auditstream.registry_files.MAX_ONNX_BYTES`, what
protobuf parses): a FIFO, a device, a socket or a file past its cap is refused in one line, never
waited on or read whole (:mod:`auditstream.registry_files`).

Symbolic links are followed, on purpose: a version directory, a card, a model file or ``LIVE``
may be a link to somewhere outside ``root`` (operators deploy registries on shared storage,
mounted volumes or link farms). Whoever can create an entry under ``root/<name>/`` can already
publish any model there, so refusing links would protect nothing; what a link leads to passes
every check a plain file does -- it must be a regular file under its cap, the card must name the
model and version of the path it is read from (a link to another model's directory is refused),
and the model must match the card's checksum and pass the safety checks.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from auditstream.errors import ModelNotFound, ModelRefused, PublishFailed
# The model card and its checks live in their own module; re-exported here for existing callers.
# The model-name pattern and the version test are the card's, shared with the directory layout.
from auditstream.model_card import (CARD_DTYPES, MAX_CARD_BYTES, MAX_THRESHOLD, MAX_VERSION_DIGITS, ModelCard,
                                    TensorSpec, TriageSpec, _is_version, _NAME, loads_card)
# The ONNX safety checks live in their own module; re-exported here for existing callers.
from auditstream.model_safety import ALLOWED_OP_DOMAINS, MAX_CONSTANT_BYTES, verify_onnx, verify_onnx_bytes
from auditstream.registry_files import open_regular, read_regular

if TYPE_CHECKING:
    from auditstream.settings import Settings

__all__ = ["ALLOWED_OP_DOMAINS", "CARD_DTYPES", "CARD_FILE", "LIVE_FILE", "MAX_THRESHOLD", "ONNX_FILE", "ModelCard",
           "ModelRegistry", "RegisteredModel", "TensorSpec", "TriageSpec", "sha256_file", "verify_onnx",
           "verify_onnx_bytes"]

ONNX_FILE = "model.onnx"
CARD_FILE = "card.json"
PUBLISH_ATTEMPTS = 100  # renames lost to other writers before publish gives up
LIVE_FILE = "LIVE"  # models/<name>/LIVE: the version `auditstream serve` picks (set by `rl promote`)
MAX_LIVE_BYTES = 256  # LIVE holds a version of at most 18 digits and a newline
MAX_VERSION = 10**MAX_VERSION_DIGITS - 1  # the last number publish may give a version

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
    """The sha256 of the regular file ``path`` (a FIFO or a device is refused, never waited on)."""
    digest = hashlib.sha256()
    with open_regular(path, Path(path).name, "hash a regular file") as f:
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
    ``max_model_constant_bytes`` setting); ``check_timeout_s``: the time :meth:`load`'s sandboxed
    shape inference may take (serving passes ``model_check_timeout_s``; None: the fixed default).
    """

    def __init__(self, root: Path | str, max_constant_bytes: int = MAX_CONSTANT_BYTES,
                 check_timeout_s: float | None = None) -> None:
        if max_constant_bytes < 1:
            raise ValueError(f"max_constant_bytes={max_constant_bytes} must be >= 1")
        self.root = Path(root)
        self.max_constant_bytes = max_constant_bytes
        self.check_timeout_s = check_timeout_s

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ModelRegistry":
        """The registry of ``settings.models_dir`` with its model limits (the memory budget and the
        shape-inference time): what every command that reads the settings loads models with."""
        return cls(settings.models_dir, settings.max_model_constant_bytes, settings.model_check_timeout_s)

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
        fix = "fix it with set_live (auditstream rl promote) or delete it"
        try:
            text = read_regular(path, MAX_LIVE_BYTES, "live pointer", fix).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as e:  # not text: refused, as a card is
            raise ModelRefused(path, f"live pointer cannot be read ({type(e).__name__}: {e}); {fix}") from None
        # exists(), as card() checks: a card.json that is a FIFO or a device is refused saying so there
        if not _is_version(text) or not (self.root / name / text / CARD_FILE).exists():
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
            raise ModelNotFound(self.root, name, version, self.versions(name))
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
        # exists(), not is_file(): a card.json that is a FIFO or a device is refused saying so, below
        if not valid or not (self.root / name / version / CARD_FILE).exists():
            raise ModelNotFound(self.root, name, version, self.versions(name))
        path = self.root / name / version / CARD_FILE
        try:  # a regular file of at most the limit, never read whole
            raw = read_regular(path, MAX_CARD_BYTES, "card.json", "the cards this project writes are regular files "
                               "under 100 kB: re-export the model")
        except FileNotFoundError:  # removed since the check above
            raise ModelNotFound(self.root, name, version, self.versions(name)) from None
        try:  # counted before it is parsed: a card of millions of "{}" is refused, not built
            obj = loads_card(raw)
        except ValueError as e:
            raise ModelRefused(path, str(e)) from None
        try:
            card = ModelCard.from_dict(obj)
        except RecursionError:
            raise ModelRefused(path, "model card does not parse: JSON nested too deeply") from None
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
        data = verify_onnx(onnx_path, card.sha256, card.inputs, card.outputs, self.max_constant_bytes,
                           self.check_timeout_s)
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
        for _ in range(PUBLISH_ATTEMPTS):
            version = str(self._next_number(base))
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
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):  # another writer took this number
                    continue
                raise PublishFailed(base / version, e.strerror or str(e)) from None
            _fsync_dir(base)
            # No bytes attached: publishing checks nothing, so a session needs verified_bytes() first.
            return RegisteredModel(card=final, onnx_path=base / version / ONNX_FILE)
        raise PublishFailed(base, f"{PUBLISH_ATTEMPTS} version numbers in a row were taken meanwhile: too many "
                            "writers at once, or a process keeps creating entries there")

    @staticmethod
    def _next_number(base: Path) -> int:
        """One past every number already used in ``base``: a published version, a half-copied one
        without its card, a stray file -- a number that names anything is never reused (the one
        without a card would have the rename fail for good, and an old number may be cached).
        Names that are no version (``.publish-*``, ``LIVE``, 19 digits) are ignored; when the
        largest version holds the last number a version may have, publish is refused."""
        highest = max((p.name for p in base.iterdir() if _is_version(p.name)), key=int, default="0")
        if int(highest) >= MAX_VERSION:
            raise PublishFailed(base, f"{base / highest} already holds the largest version number ({MAX_VERSION}, "
                                f"{MAX_VERSION_DIGITS} digits), and a version is never renumbered: if it is a stray "
                                "entry, remove it; else publish this model under a new name")
        return int(highest) + 1


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
