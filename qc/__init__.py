"""Pure decisions and statistics of quality control, shared by serving, training and the monitor.

Owns: triage and the hash that draws QC samples (:mod:`qc.triage`), binomial bounds
(:mod:`qc.binomial`), certification of an auto-accept threshold (:mod:`qc.certify`), calibration
(:mod:`qc.calibration`), drift tests (:mod:`qc.drift`), the cost model (:mod:`qc.cost`), the QC
snapshot a monitor publishes (:mod:`qc.snapshot`) and the statistics benchmark (:mod:`qc.bench`).
Functions of data and a named frozen config; no I/O, no Kafka, no store.

May import: ``auditstream`` (wire vocabulary, model card), numpy, scipy.
"""
