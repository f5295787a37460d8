"""The composition root: what runs the whole stack on one machine.

Owns: the embedded Kafka-protocol broker launcher (:mod:`stack.broker`), the live demo
(:mod:`stack.demo`) and the benchmarks that span packages (:mod:`stack.serve_bench`: broker +
consumers + load generator; :mod:`stack.wire_bench`), with their commands (:mod:`stack.cli`).

May import: every other package (it is the top layer); nothing imports it but the CLI's command
table and the tests.
"""
