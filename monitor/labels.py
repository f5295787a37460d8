"""Verdicts as a training set: ``auditstream labels export --out FILE [--model M] [--format jsonl|csv]``
(``--format coco`` for detectors: :mod:`monitor.coco_export`).

Each decisive verdict (accept, correct, reject; skips are not labels) becomes one example:

==================  ==========================================================================
``input``           the model input in its wire encoding (``{"tensor": ...}`` or ``{"image": ...}``;
                    ``auditstream.wire.decode_input`` turns it back into an array or image)
``model_output``    what the model answered
``human_label``     the auditor's answer: the model's (accept), the correction, or null (reject)
``verdict_kind``    accept | correct | reject
``inclusion_prob``  probability the item was audited at all (1.0 for deferred items): weight
                    QC examples by ``1 / inclusion_prob`` for unbiased estimates
``route``           HUMAN (deferred, low confidence) or AUTO_QC (auto-accepted, sampled)
==================  ==========================================================================

plus request id, model, version, task, confidence, auditor, time and review round. A
double-reviewed item gives two rows (one per auditor); gold items are left out unless asked for.
Training reads this file (training/ never touches the store).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from store import AuditStore

FORMATS = ("jsonl", "csv")
COLUMNS = (
    "verdict_id", "request_id", "model", "model_version", "task", "route", "confidence", "inclusion_prob",
    "verdict_kind", "model_output", "human_label", "auditor", "decided_at_s", "review_round", "is_gold", "input",
)  # fmt: skip
_JSON_COLUMNS = ("model_output", "human_label", "input")  # nested values: JSON text in a CSV cell


def export_labels(
    store: AuditStore,
    out: Path,
    model: str | None = None,
    fmt: str = "jsonl",
    include_gold: bool = False,
    progress: bool = True,
) -> int:
    """Write every label to ``out`` (written to ``out.tmp`` first, then renamed, so a reader never
    sees half a file); returns the number of rows."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} not in {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = store.count_labels(model, include_gold)
    rows: Iterable[dict[str, Any]] = store.labels(model, include_gold)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=total, unit="label", desc=f"export {out.name}")
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for row in rows:
                f.write(json.dumps({c: row[c] for c in COLUMNS}, separators=(",", ":")) + "\n")
                n += 1
        else:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: json.dumps(row[c]) if c in _JSON_COLUMNS else row[c] for c in COLUMNS})
                n += 1
    tmp.replace(out)
    return n


def read_labels(path: Path) -> list[dict[str, Any]]:
    """Read an export back (either format) with nested values decoded."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = []
            for row in csv.DictReader(f):
                for c in _JSON_COLUMNS:
                    row[c] = json.loads(row[c])
                row["confidence"], row["inclusion_prob"] = float(row["confidence"]), float(row["inclusion_prob"])
                row["decided_at_s"], row["review_round"] = float(row["decided_at_s"]), int(row["review_round"])
                row["is_gold"] = row["is_gold"] == "True"
                rows.append(row)
            return rows
        return [json.loads(line) for line in f if line.strip()]
