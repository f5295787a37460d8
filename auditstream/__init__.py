"""auditstream: serve models on Kafka, certify what they may auto-accept, route the rest to humans.

This package is the shared core that every other part imports: the wire contracts
(:mod:`auditstream.wire`), the model registry and model card (:mod:`auditstream.registry`),
settings (:mod:`auditstream.settings`), the exception hierarchy (:mod:`auditstream.errors`) and
the ``auditstream`` command line (:mod:`auditstream.cli`). It depends on numpy only.
"""

__version__ = "0.1.0"
