"""One small exception hierarchy. Each class builds its own message from its arguments, so
the message always says what failed and what to check."""

from __future__ import annotations


class AuditstreamError(Exception):
    """Base class of every error auditstream raises on purpose."""


class ConfigError(AuditstreamError, ValueError):
    """A setting or argument is invalid; the message says which and what to do."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"invalid {name}={value!r}: expected {expected}")


class DecodeError(AuditstreamError, ValueError):
    """A record on the wire could not be decoded. ``code`` is the dead-letter reason code."""

    def __init__(self, code: str, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


class ModelRefused(AuditstreamError):
    """A model in the registry failed a safety check and was not loaded."""

    def __init__(self, path: object, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"refusing model {path}: {why}")


class ModelNotFound(AuditstreamError, LookupError):
    """No such model (or version) in the registry."""

    def __init__(self, root: object, name: str, version: str | None = None) -> None:
        self.root, self.name, self.version = root, name, version
        what = f"{name} version {version}" if version else name
        super().__init__(
            f"model {what} not found under {root}; train it (auditstream train ...) "
            f"or point AUDITSTREAM_MODELS_DIR at a registry that has it"
        )


class BrokerUnavailable(AuditstreamError, ConnectionError):
    """The Kafka broker could not be reached (for good, not a transient blip)."""

    def __init__(self, bootstrap: str, detail: str) -> None:
        self.bootstrap, self.detail = bootstrap, detail
        super().__init__(
            f"Kafka broker at {bootstrap} unavailable: {detail}; start one with "
            f"'auditstream broker start' or set AUDITSTREAM_BOOTSTRAP_SERVERS"
        )


class DeliveryFailed(AuditstreamError):
    """An output record was not acknowledged by the broker; the batch is not committed."""

    def __init__(self, topic: str, key: bytes | None, detail: str) -> None:
        self.topic, self.key, self.detail = topic, key, detail
        super().__init__(f"delivery to {topic} (key={key!r}) failed: {detail}")


class ExportParityError(AuditstreamError):
    """An exported ONNX graph disagrees with the torch module it was exported from."""

    def __init__(self, max_abs_diff: float, atol: float, n_inputs: int) -> None:
        self.max_abs_diff, self.atol, self.n_inputs = max_abs_diff, atol, n_inputs
        super().__init__(
            f"ONNX Runtime and torch disagree by max |diff| = {max_abs_diff:.3g} > atol {atol:g} "
            f"on {n_inputs} inputs; check for ops that export differently (dropout/batch-norm left in "
            f"training mode, data-dependent control flow) before publishing this model"
        )
