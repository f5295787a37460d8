"""Caption: a sentence describing a scene.

An answer is the caption text; each token is a part. Two captions are the same when their words
are (runs of white space do not make another caption). Serving a captioner is the captioner
family's work (its encoder/decoder graphs and decoding loop); until then a caption card is valid
and the serving consumer refuses it at start-up.
"""

from __future__ import annotations

from typing import Any

from auditstream.tasks.base import Task, canonical_json, register
from auditstream.wire import TaskKind


class Caption(Task):
    kind = TaskKind.CAPTION
    served = False

    def answer_key(self, output: Any) -> str:
        return canonical_json(" ".join(output.split()) if isinstance(output, str) else output)


TASK = register(Caption())
