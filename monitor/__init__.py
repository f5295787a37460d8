"""The monitor process (``auditstream monitor``): ingests the audit topic into the audit store,
publishes the store's outbox (verdicts, human decisions), keeps the live QC statistics of every
model version (:mod:`monitor.tracker`), plans the control channel, exports Prometheus metrics,
and exports labels.

May import: ``store``, ``qc``, ``auditstream``; never torch, ``training``, ``serving`` or
``dashboards``.
"""
