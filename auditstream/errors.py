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


class BadArguments(AuditstreamError, ValueError):
    """A command's arguments were each well formed but do not go together (its dataclass's own
    check refused them); the message says which and what to do."""


class DecodeError(AuditstreamError, ValueError):
    """A record on the wire could not be decoded. ``code`` is the dead-letter reason code."""

    def __init__(self, code: str, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


class UnknownTaskKind(AuditstreamError, ValueError):
    """A model card or a record names a task kind auditstream does not know."""

    def __init__(self, value: object, known: list[str]) -> None:
        self.value, self.known = value, known
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        super().__init__(f"unknown task kind {shown}: a model card's 'task' must be one of {known} "
                         "(docs/architecture.md, 'Adding a task kind', says how to add one)")


class ModelRefused(AuditstreamError):
    """A model in the registry failed a safety check and was not loaded."""

    def __init__(self, path: object, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"refusing model {path}: {why}")


class PublishFailed(AuditstreamError):
    """A model version could not be written into the registry (disk full, no permission...)."""

    def __init__(self, path: object, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"cannot publish {path}: {why}")


class ModelNotFound(AuditstreamError, LookupError):
    """No such model (or version) in the registry."""

    def __init__(self, root: object, name: str, version: str | None = None, versions: list[str] | None = None) -> None:
        self.root, self.name, self.version = root, name, version
        if version and versions:  # the model is there, not this version: say which there are
            number = "" if version.isascii() and version.isdigit() else f" ({version!r} is not a version number)"
            super().__init__(f"model {name} version {version} not found under {root}{number}; "
                             f"its versions are {', '.join(versions)}")
            return
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


class BrokerRefused(AuditstreamError, ConnectionError):
    """The broker answered but refused the connection's security: an untrusted certificate, a
    wrong password, an unsupported SASL mechanism. Retrying cannot help; the message says what
    setting to fix (it never contains a secret)."""

    def __init__(self, bootstrap: str, detail: str) -> None:
        self.bootstrap, self.detail = bootstrap, detail
        super().__init__(f"Kafka broker at {bootstrap} refused the connection: {detail}")


class TopicsNotCreated(AuditstreamError):
    """Topics this process reads or writes are not there for it and the broker refused to create
    them. ``denied``: an authorization failure -- on a cluster with ACLs a topic the principal may
    not Describe is hidden from it, so an existing topic looks missing too. Retrying cannot help."""

    def __init__(self, bootstrap: str, topics: list[str], detail: str, denied: bool, principal: str = "") -> None:
        self.bootstrap, self.topics, self.detail, self.denied = bootstrap, list(topics), detail, denied
        names = ", ".join(self.topics)
        if denied:
            who = f"User:{principal}" if principal else "this process's principal"
            todo = (f"they are hidden from {who} (no Describe ACL) or do not exist and it may not create them: "
                    f"grant {who} Describe on them besides its Read/Write (docs/serving.md, 'Who may write what': "
                    f"kafka-acls.sh --add --allow-principal {f'User:{principal}' if principal else 'User:NAME'} "
                    "--operation Describe --topic ...), "
                    "or create them by hand as deploy/kafka/docker-compose.yml's create-topics does")
        else:
            todo = ("create them by hand as deploy/kafka/docker-compose.yml's create-topics does, or fix what the "
                    "broker refused (AUDITSTREAM_PARTITIONS, AUDITSTREAM_REPLICATION_FACTOR)")
        super().__init__(f"Kafka at {bootstrap} did not create topics {names} ({detail}): {todo}")


class DeliveryFailed(AuditstreamError):
    """An output record was not acknowledged by the broker; the batch is not committed."""

    def __init__(self, topic: str, key: bytes | None, detail: str) -> None:
        self.topic, self.key, self.detail = topic, key, detail
        super().__init__(f"delivery to {topic} (key={key!r}) failed: {detail}")


class SendBlocked(DeliveryFailed):
    """The producer did not take a record within its ``max_block_s`` (its buffer full, the
    topic's metadata not yet known): the record was not sent at all."""


class ExportParityError(AuditstreamError):
    """An exported ONNX graph disagrees with the torch module it was exported from."""

    def __init__(self, max_abs_diff: float, atol: float, n_inputs: int, detail: str = "") -> None:
        self.max_abs_diff, self.atol, self.n_inputs, self.detail = max_abs_diff, atol, n_inputs, detail
        if detail:  # not a size of disagreement: NaN/inf outputs, a missing output, a shape apart
            super().__init__(
                f"ONNX Runtime and torch disagree on {n_inputs} inputs: {detail}; the export is refused "
                f"(a non-finite output is never parity: check the inputs' range and the model's "
                f"numerics -- log of 0, division by 0, overflow -- before publishing this model)"
            )
            return
        super().__init__(
            f"ONNX Runtime and torch disagree by max |diff| = {max_abs_diff:.3g} > atol {atol:g} "
            f"on {n_inputs} inputs; check for ops that export differently (dropout/batch-norm left in "
            f"training mode, data-dependent control flow) before publishing this model"
        )


class CommitRejected(AuditstreamError):
    """An offset commit was refused (the group rebalanced meanwhile) or could not reach the
    broker (a restart).

    The records stay uncommitted and are redelivered to the partition's new owner: duplicates,
    never losses. ``offsets`` maps (topic, partition) to the next offset that was to be committed.
    """

    def __init__(self, offsets: dict, detail: str) -> None:
        self.offsets, self.detail = offsets, detail
        where = ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
        super().__init__(f"offset commit rejected for {where}: {detail}")


class BatchFailed(AuditstreamError):
    """Processing a whole batch failed (a broken model or dependency, not one bad record).

    The consumer stops; nothing of the batch was committed, so it is redelivered after a restart.
    """

    def __init__(self, first: str, last: str, count: int, detail: str) -> None:
        self.first, self.last, self.count, self.detail = first, last, count, detail
        super().__init__(f"batch of {count} records {first} .. {last} failed: {detail}; "
                         "check the model file and the broker, then restart the consumer")


class EpisodeStateNotRestored(AuditstreamError):
    """A policy consumer could not read its episode-state topic when it was assigned partitions:
    it stops instead of answering their episodes from no state (every episode restarted, its
    frames and step count lost). Raised out of the next batch, so nothing of it is committed and
    it is redelivered after a restart (serving/episodes.py)."""

    def __init__(self, topic: object, partitions: list[int], detail: str) -> None:
        self.topic, self.partitions, self.detail = topic, partitions, detail
        super().__init__(f"episode state was not restored from {topic} for request partitions {partitions}: "
                         f"{detail}; check the broker and that topic, then restart the consumer (nothing was "
                         "committed past the failure)")


class InferenceBroken(AuditstreamError):
    """The model no longer runs (not one bad record): the consumer stops instead of dead-lettering
    every request. Nothing of the batch was committed: it is redelivered after a restart."""

    def __init__(self, model: str, version: str, detail: str) -> None:
        self.model, self.version, self.detail = model, version, detail
        super().__init__(f"model {model} v{version} is broken: {detail}; check the model file, the ONNX Runtime "
                         "install and the device (GPU memory, drivers), then restart the consumer")


class PermissionDenied(AuditstreamError, PermissionError):
    """A user tried something their role does not allow (checked again inside every write)."""

    def __init__(self, user: str, role: str | None, action: str, allowed: tuple[str, ...]) -> None:
        self.user, self.role, self.action, self.allowed = user, role, action, allowed
        has = f"role {role!r}" if role else "no account"
        super().__init__(f"user {user!r} ({has}) may not {action}; it needs one of the roles {', '.join(allowed)}")


class LeaseNotHeld(AuditstreamError):
    """A verdict or lease renewal came from someone who does not hold the item's live lease."""

    def __init__(self, item_id: int, auditor: str, holder: str | None, expires_s: float | None, now_s: float) -> None:
        self.item_id, self.auditor, self.holder, self.expires_s = item_id, auditor, holder, expires_s
        if holder is None:
            why = "nobody holds a lease on it (it was released, decided, or never claimed)"
        elif holder != auditor:
            why = f"it is leased by {holder!r}"
        else:
            why = f"your lease expired {now_s - (expires_s or now_s):.1f} s ago"
        super().__init__(f"item {item_id}: {auditor!r} cannot submit, {why}; claim the next item again")


class VerdictConflict(AuditstreamError, ValueError):
    """A verdict id was reused for a different item or auditor (ids are one per shown form)."""

    def __init__(self, verdict_id: str, detail: str) -> None:
        self.verdict_id, self.detail = verdict_id, detail
        super().__init__(f"verdict id {verdict_id!r} already used: {detail}; make a new id per form")


class TrainingDiverged(AuditstreamError, ArithmeticError):
    """A training loss became NaN or infinite; training stops at once rather than export garbage."""

    def __init__(self, job: str, step: int, loss: float) -> None:
        self.job, self.step, self.loss = job, step, loss
        super().__init__(f"{job}: loss became {loss} at step {step}; lower the learning rate or check the "
                         f"data for NaN/inf (rewards, observations) and rerun")


class TuneRefused(AuditstreamError):
    """``auditstream tune`` cannot search this family, or the search found nothing to train with."""

    def __init__(self, family: str, why: str) -> None:
        self.family, self.why = family, why
        super().__init__(f"auditstream tune {family}: {why}")
