"""Task kinds, the pure part: one module per kind, each implementing the small contract of
:mod:`auditstream.tasks.base` and registering itself. Everything outside the kind modules looks a
kind up with :func:`lookup` and never compares task-kind values (``tests/test_task_kinds.py``).

Owns: how graph outputs become an answer, answer equality and text, per-part triage, action
selection. May import: ``auditstream.registry``, ``auditstream.wire`` and numpy.
"""

from auditstream.tasks.base import ACTION_SALT, Answer, Part, Task, lookup, rule_for, served_kinds
from auditstream.tasks import caption, classification, detection, policy, sequence  # noqa: F401  (they register)

__all__ = ["ACTION_SALT", "Answer", "Part", "Task", "lookup", "rule_for", "served_kinds"]
