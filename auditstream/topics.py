"""The topics of the flow (docs/architecture.md). Names are ``<prefix>.<name>``; see
:meth:`auditstream.settings.Settings.topic`."""

from __future__ import annotations

from auditstream.settings import Settings

PREDICTIONS = "predictions"  # every prediction, with route and confidence
DECISIONS = "decisions"  # answers that act: AUTO at once, HUMAN once decided
AUDIT = "audit"  # HUMAN and QC items for the audit store
VERDICTS = "verdicts"  # every human verdict (= a label)
DEAD_LETTER = "dead-letter"  # records that could not be processed, original bytes kept
DEAD_LETTER_REPLAYED = "dead-letter-replayed"  # compacted: ledger of dead letters replayed (serving/dlq.py)
CONTROL = "control"  # compacted: the monitor's word to the consumers per model (auditstream/control.py)
ACTIONS = "actions"  # RL: actions sent back to the environment driver
TRANSITIONS = "transitions"  # RL: what the environment did (reward, terminal) after each action

SHARED_TOPICS = (PREDICTIONS, DECISIONS, AUDIT, VERDICTS, DEAD_LETTER, ACTIONS, TRANSITIONS)
COMPACTED_TOPICS = (CONTROL, DEAD_LETTER_REPLAYED)  # shared; each model's episode-state.<model> is compacted too


def model_topics(settings: Settings, model: str) -> list[str]:
    """A model's own topics: its requests, and its episode state (written only if it is a policy:
    its keys are its clients' episode keys, which another model's clients may use too)."""
    return [settings.request_topic(model), settings.episode_state_topic(model)]


def compacted_topics(settings: Settings, models: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The compacted topics among :func:`all_topics`."""
    return [settings.topic(t) for t in COMPACTED_TOPICS] + [settings.episode_state_topic(m) for m in models]


def all_topics(settings: Settings, models: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every topic to create for the given models."""
    names = [settings.topic(t) for t in SHARED_TOPICS + COMPACTED_TOPICS]
    names += [name for m in models for name in model_topics(settings, m)]
    return names
