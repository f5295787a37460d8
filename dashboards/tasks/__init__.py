"""Task kinds in the dashboard: one module per kind (how its input is drawn, how its answer is
shown, its answer editor and how an entered answer is parsed), each implementing
:class:`~dashboards.tasks.base.TaskView` and registering itself, like :mod:`auditstream.tasks`.
Pages look a kind up with :func:`lookup`; none branches on it.

May import: ``auditstream`` (wire, tasks), ``dashboards.images``, PIL, numpy; Streamlit and pandas
only inside ``editor_ui``.
"""

from dashboards.tasks.base import AnswerView, TaskView, lookup
from dashboards.tasks import caption, classification, detection, policy, sequence  # noqa: F401  (they register)

__all__ = ["AnswerView", "TaskView", "lookup"]
