"""auditstream: serve models on Kafka, certify what they may auto-accept, route the rest to humans.

This package is the ground floor that every other part imports: the wire contracts with the
shared vocabulary (:mod:`auditstream.wire`: ``Route``, ``Reason``, ``TaskKind``), the task
kinds' pure part (:mod:`auditstream.tasks`), the model registry and model card
(:mod:`auditstream.registry`), settings (:mod:`auditstream.settings`), the exception hierarchy
(:mod:`auditstream.errors`), the Kafka client interface (:mod:`auditstream.kafka`), the
at-least-once batch loop (:mod:`auditstream.stream`), the control channel and the ``auditstream``
command line (:mod:`auditstream.cli`, which finds the other parts' commands by module name).

May import: numpy (the Kafka clients lazily, inside :mod:`auditstream.kafka`); no other package
of the project (pyproject.toml, ``[tool.importlinter]``).
"""

__version__ = "0.1.0"
