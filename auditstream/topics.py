"""The topics of the flow (docs/architecture.md). Names are ``<prefix>.<name>``; see
:meth:`auditstream.settings.Settings.topic`."""

from __future__ import annotations

from auditstream.settings import Settings

PREDICTIONS = "predictions"  # every prediction, with route and confidence
DECISIONS = "decisions"  # answers that act: AUTO at once, HUMAN once decided
AUDIT = "audit"  # HUMAN and QC items for the audit store
VERDICTS = "verdicts"  # every human verdict (= a label)
DEAD_LETTER = "dead-letter"  # records that could not be processed, original bytes kept
EPISODE_STATE = "episode-state"  # compacted: per-episode consumer state
DEAD_LETTER_REPLAYED = "dead-letter-replayed"  # compacted: ledger of dead letters replayed (serving/dlq.py)
CONTROL = "control"  # compacted: the monitor's word to the consumers per model (auditstream/control.py)
ACTIONS = "actions"  # RL: actions sent back to the environment driver
TRANSITIONS = "transitions"  # RL: what the environment did (reward, terminal) after each action

SHARED_TOPICS = (PREDICTIONS, DECISIONS, AUDIT, VERDICTS, DEAD_LETTER, ACTIONS, TRANSITIONS)
COMPACTED_TOPICS = (EPISODE_STATE, CONTROL, DEAD_LETTER_REPLAYED)


def all_topics(settings: Settings, models: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every topic to create for the given models."""
    names = [settings.topic(t) for t in SHARED_TOPICS + COMPACTED_TOPICS]
    names += [settings.request_topic(m) for m in models]
    return names
