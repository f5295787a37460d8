"""Training: one folder per model family (``digits``, ``zip_reader``, ``rl``), each with its
arguments (``args.py``, importable without torch), one script with one ``main`` and its commands;
shared data sets (``data``), ONNX export with a parity check (``export``) and selective-prediction
helpers.

May import: torch, gymnasium, ``serving`` (the RL shadow consumer), ``store``, ``qc``,
``auditstream``. Nothing but ``stack`` imports ``training``.
"""
