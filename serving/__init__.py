"""Serving: ``auditstream serve`` consumes a model's requests in a consumer group, micro-batches
them into ONNX Runtime (CUDA/TensorRT when they load, else CPU), turns outputs into answers with
the task kind (:mod:`auditstream.tasks`), routes each with the triage (:mod:`qc.triage`) and
publishes predictions, decisions, audit items and dead letters. Also per-episode state for
policies, dead-letter replay, the lag probe, the load generator and serving metrics.

May import: ``qc``, ``auditstream``, onnxruntime and the Kafka clients (through
``auditstream.kafka``); never torch, ``training``, ``store`` or ``monitor``.
"""
