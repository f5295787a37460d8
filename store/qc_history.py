"""QC snapshots over time, kept in the audit store so the dashboard can draw them.

The monitor process computes :class:`monitor.tracker.ModelQC` snapshots in memory
(``QCTracker.snapshot()``); every statistics tick it also appends them here. The dashboard runs
in another process (possibly on another machine) and reads the history back to draw coverage
over time, the current error interval against the certified budget, and drift. The store is the
one place both already share, so no extra service is needed.

One table, ``{p}qc_snapshots``, created on first use (``IF NOT EXISTS``): a row per (time, model,
version) with the snapshot as JSON; rows older than ``RETENTION_S`` are pruned on each save.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from qc.snapshot import ModelQC

RETENTION_S = 7 * 24 * 3600.0

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS {p}qc_snapshots (
        t_s {float} NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        snapshot TEXT NOT NULL              -- JSON of monitor.tracker.ModelQC
    )""",
    "CREATE INDEX IF NOT EXISTS {p}qc_snapshots_time ON {p}qc_snapshots (t_s)",
)


@dataclasses.dataclass(frozen=True)
class QCPoint:
    """A :class:`ModelQC` snapshot and when it was taken."""

    t_s: float
    qc: ModelQC


class QCHistory:
    """The snapshot history of one store. ``QCHistory(store)``; cheap to build."""

    def __init__(self, store: Any) -> None:
        # The store's database handle: the history shares its connections and transactions.
        self._db = store._db
        with self._db.write() as cur:
            for text in _DDL:
                for name, sql_type in self._db.types.items():
                    text = text.replace("{" + name + "}", sql_type)
                cur.run(text)

    def save(self, snapshots: Sequence[ModelQC], now_s: float) -> int:
        """Append ``snapshots`` taken at ``now_s`` and prune old rows; returns rows written."""
        rows = [(float(now_s), s.model, s.version, _dumps(dataclasses.asdict(s))) for s in snapshots]
        with self._db.write() as cur:
            for row in rows:
                cur.run("INSERT INTO {p}qc_snapshots (t_s, model, version, snapshot) VALUES (?, ?, ?, ?)", row)
            cur.run("DELETE FROM {p}qc_snapshots WHERE t_s < ?", (float(now_s) - RETENTION_S,))
        return len(rows)

    def since(self, since_s: float, model: str | None = None, limit: int = 5000) -> list[QCPoint]:
        """Snapshots taken at or after ``since_s``, by time then model and version (at most the
        newest ``limit``)."""
        sql, params = "", [float(since_s)]
        if model is not None:
            sql, params = " AND model = ?", [*params, model]
        rows = self._db.query(
            f"SELECT t_s, snapshot FROM {{p}}qc_snapshots WHERE t_s >= ?{sql} ORDER BY t_s DESC, model DESC, version DESC LIMIT ?",
            (*params, int(limit)),
        )
        return [QCPoint(float(t), _model_qc(json.loads(text))) for t, text in reversed(rows)]


def _dumps(obj: dict[str, Any]) -> str:
    # NaN/inf are not JSON: an undefined statistic is stored as null.
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()})


def _model_qc(obj: dict[str, Any]) -> ModelQC:
    names = {f.name for f in dataclasses.fields(ModelQC)}
    values = {k: v for k, v in obj.items() if k in names}
    for f in dataclasses.fields(ModelQC):  # a field added after the row was written
        values.setdefault(f.name, None)
    for name in ("ci_low", "ci_high", "effective_sample_size"):
        if values[name] is None:
            values[name] = float("nan")
    return ModelQC(**values)
