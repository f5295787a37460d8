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
``audit_split``     the request's split value in [0, 1), computed by the store with its secret
                    split key: the row is on the certify side iff it is below the certify share
                    (qc/audit_split.py); training reads it, never hashes the request id itself
``audit_split_key`` which key computed it (``secret:<id>`` or ``legacy:audit-split``; never the
                    secret itself)
==================  ==========================================================================

plus request id, model, version, task, confidence, auditor, time and review round. A
double-reviewed item gives two rows (one per auditor); gold items are left out unless asked for.
Training reads this file (training/ never touches the store): :func:`read_labels`, every row with
its input. :class:`LabelsFile` reads it without holding the inputs (``certify --from-audits
--labels``): the rows one at a time, an input left out and replaced by where its record starts
(``input_at``), and later the inputs of a batch of those records, each read back at its place. A
file that is not an export (a line that is not a JSON object, a cell that does not decode) raises
:class:`LabelsFileError`, naming the file, the line and what is wrong. A CSV cell may be far over
the csv module's default field limit (131072 characters: an input tensor, a long correction);
reading raises that limit, for the whole process, to :data:`MAX_CSV_CELL_CHARS`, the largest cell
an export of the store can hold.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn

import numpy as np

from auditstream.errors import AuditstreamError
from auditstream.wire.codec import ALLOWED_DTYPES, MAX_RANK, MAX_RECORD_BYTES, MAX_TENSOR_ELEMENTS, short_repr

if TYPE_CHECKING:  # a hint only: reading an export (stack/recertify.py at CLI start) loads no store
    from store import AuditStore

FORMATS = ("jsonl", "csv")
COLUMNS = (
    "verdict_id", "request_id", "model", "model_version", "task", "route", "confidence", "inclusion_prob",
    "verdict_kind", "model_output", "human_label", "auditor", "decided_at_s", "review_round", "is_gold",
    "audit_split", "audit_split_key", "input",
)  # fmt: skip
# Written by every export since store schema 6; an older export lacks them and is still read (certify
# --labels splits with the store's key), but cannot say which rows may train (monitor/verdict_sets.py).
SPLIT_COLUMNS = ("audit_split", "audit_split_key")
_JSON_COLUMNS = ("model_output", "human_label", "input")  # nested values: JSON text in a CSV cell
# A CSV cell's text -> its value, and what the cell must be (the error says it).
_CSV_VALUES: dict[str, tuple[Callable[[str], Any], str]] = {
    **{c: (json.loads, "JSON") for c in _JSON_COLUMNS}, "confidence": (float, "a number"),
    "inclusion_prob": (float, "a number"), "decided_at_s": (float, "a number"), "review_round": (int, "an integer"),
    "is_gold": ({"True": True, "False": False}.__getitem__, "True or False"),
    "audit_split": (float, "a number"),
}  # fmt: skip
_TEXT_FIELDS = ("verdict_id", "request_id", "model", "model_version", "task", "route", "auditor")
VERDICT_KINDS = ("accept", "correct", "reject")  # skips are no label: never exported
INPUT_AT = "input_at"  # a row read without its input: where its record starts (LabelsFile.inputs)
# The largest CSV cell an export of this store can write (the csv module refuses a longer field,
# by default 131072 characters): an input, a tensor of MAX_TENSOR_ELEMENTS of the widest dtype as
# base64 plus its dtype and shape (about 179 million characters); every other cell holds what
# came in one record of at most MAX_RECORD_BYTES (the model's answer; a correction, at most 256
# KiB), which json.dumps writes in at most 3 characters a byte (a 4-byte UTF-8 character as two
# 6-character backslash-u escapes, a "," as ", "). Below 2**31 - 1, so it fits a C long everywhere (Windows'
# is 32 bits: csv.field_size_limit(sys.maxsize) raises OverflowError there).
_WIDEST_DTYPE_BYTES = max(np.dtype(d).itemsize for d in ALLOWED_DTYPES)
MAX_CSV_CELL_CHARS = max(
    4 * -(-MAX_TENSOR_ELEMENTS * _WIDEST_DTYPE_BYTES // 3) + 64 + MAX_RANK * (len(str(MAX_TENSOR_ELEMENTS)) + 2),
    3 * MAX_RECORD_BYTES,
)
assert MAX_CSV_CELL_CHARS < 2**31 - 1


class LabelsFileError(AuditstreamError, ValueError):
    """A labels file that cannot be read as an export: which file, where in it, what is wrong."""

    def __init__(self, path: Path, where: str, detail: str) -> None:
        self.path, self.where, self.detail = path, where, detail
        super().__init__(f"labels file {path}, {where}: {detail}; "
                         "is it an export (auditstream labels export --out FILE)?")


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
    try:
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
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written export left beside the path
        raise
    return n


def read_labels(path: Path) -> list[dict[str, Any]]:
    """Read an export back (either format) with nested values decoded, inputs included."""
    with LabelsFile(path) as export:
        return list(export.rows())


class LabelsFile:
    """A labels export opened for reading (``.csv``: CSV, else JSON lines): :meth:`rows` one at a
    time, and :meth:`inputs` of chosen records read back at their places. The file stays open
    until :meth:`close`, so both see the same file even if an export renames a new one over the
    path meanwhile (:func:`export_labels` does). Every read seeks to its own place first: reading
    inputs between two rows is safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._csv = self.path.suffix == ".csv"
        self._f = self.path.open("rb")
        self._header: list[str] | None = None  # CSV: the column names, once read
        self._body = 0  # CSV: where the first record starts

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LabelsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rows(self, with_input: bool = True) -> Iterator[dict[str, Any]]:
        """Every row in file order, nested values decoded. ``with_input`` False: the input is
        decoded (a bad one fails here, as when read whole) and left out, and the row has
        ``input_at`` (:data:`INPUT_AT`) instead, for :meth:`inputs`."""
        for start, where, row in self._records(0):
            if not with_input:
                if "input" not in row:
                    raise LabelsFileError(self.path, where, "the row has no input")
                del row["input"]
                row[INPUT_AT] = start
            yield row

    def inputs(self, starts: Iterable[int]) -> dict[int, Any]:
        """The decoded input of the record at each of ``starts`` (rows' ``input_at``), read one
        record each, in file order: a caller asking for one scoring batch holds that batch only."""
        out: dict[int, Any] = {}
        for start in sorted(set(starts)):
            try:
                found = next(self._records(start), None)
            except LabelsFileError:  # read from the middle of a record: said below
                found = None
            if found is None or found[0] != start or "input" not in found[2]:
                raise LabelsFileError(self.path, f"byte {start}", "no row with an input starts there "
                                      "(was the file changed in place since its rows were read?)")
            out[start] = found[2]["input"]
        return out

    def _records(self, start: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(where the record starts, where to say it is, its row decoded) from byte ``start``."""
        if not self._csv:
            number = None if start else 0  # line numbers are known when reading from the top
            for at, raw in self._lines(start):
                number = None if number is None else number + 1
                where = f"line {number}" if number is not None else f"byte {at}"
                text = self._text(raw, where)
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError as e:
                    raise LabelsFileError(self.path, where, f"not JSON ({e})") from None
                if not isinstance(row, dict):
                    raise LabelsFileError(self.path, where, f"a JSON {type(row).__name__}, not an object")
                yield at, where, self._checked(row, where)
            return
        header, body = self._csv_header()
        top = start == 0  # line numbers are known when reading from the top (the header: line 1)
        # The CSV reader pulls lines only as a record needs them: a record starts right after the
        # last line the one before it used. ``last`` is the number of the last line pulled, counted
        # here: DictReader's line_num is only set after a record is read whole, so a record that
        # failed was said to be on the line of the record before it (the header for the first).
        after, last = [max(start, body)], [1]

        def lines() -> Iterator[str]:
            for at, raw in self._lines(after[0]):
                after[0] = at + len(raw)
                last[0] += 1
                yield self._text(raw, f"line {last[0]}" if top else f"byte {at}")

        reader = csv.DictReader(lines(), fieldnames=header)
        while True:
            at = after[0]
            try:
                row = next(reader, None)
            except csv.Error as e:
                raise LabelsFileError(self.path, f"line {last[0]}" if top else f"byte {at}",
                                      f"not CSV ({e})") from None
            if row is None:
                return
            where = f"line {last[0]}" if top else f"byte {at}"
            for c, (value_of, what) in _CSV_VALUES.items():
                if c in SPLIT_COLUMNS and c not in header:  # an export older than the per-row split
                    continue
                if row[c] is None:
                    raise LabelsFileError(self.path, where, f"no {c!r} cell (fewer cells than columns)")
                try:
                    row[c] = value_of(row[c])
                except (ValueError, KeyError) as e:
                    raise LabelsFileError(self.path, where, f"column {c!r} is not {what} ({e})") from None
            yield at, where, self._checked(row, where)

    def _checked(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """``row`` if each column holds what an export writes there, else LabelsFileError: a row
        from another writer must fail here, naming its line, not as a traceback in training or
        as a certificate computed on a bool that read as False. ``input`` may be absent (the
        readers that need it say so)."""
        def refuse(detail: str) -> NoReturn:
            raise LabelsFileError(self.path, where, detail)

        missing = [c for c in COLUMNS if c not in row and c != "input" and c not in SPLIT_COLUMNS]
        if missing:
            refuse(f"no {missing[0]!r} in the row")
        for c in _TEXT_FIELDS:
            if not isinstance(row[c], str) or not row[c]:
                refuse(f"{c!r} must be a non-empty string, not {short_repr(row[c])}")
        # What the store holds: any finite confidence (a kind's scores may pass 1 by a rounding's
        # width), an inclusion probability in (0, 1] (its inverse weights the row).
        for c, fits, what in (("confidence", lambda v: True, ""), ("decided_at_s", lambda v: True, ""),
                              ("inclusion_prob", lambda v: 0 < v <= 1, " in (0, 1]")):
            value = row[c]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not fits(value):
                refuse(f"{c!r} must be a finite number{what}, not {short_repr(value)}")
        if type(row["review_round"]) is not int or row["review_round"] < 1:
            refuse(f"'review_round' must be a whole number >= 1, not {short_repr(row['review_round'])}")
        if type(row["is_gold"]) is not bool:
            refuse(f"'is_gold' must be true or false, not {short_repr(row['is_gold'])}")
        if row["verdict_kind"] not in VERDICT_KINDS:
            refuse(f"'verdict_kind' must be one of {VERDICT_KINDS}, not {short_repr(row['verdict_kind'])}")
        if ("audit_split" in row) != ("audit_split_key" in row):
            refuse("'audit_split' and 'audit_split_key' come together (an export has both or, older, neither)")
        if "audit_split" in row:
            value = row["audit_split"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value < 1:
                refuse(f"'audit_split' must be a number in [0, 1), not {short_repr(value)}")
            if not isinstance(row["audit_split_key"], str) or not row["audit_split_key"]:
                refuse(f"'audit_split_key' must be a non-empty string, not {short_repr(row['audit_split_key'])}")
        return row

    def _csv_header(self) -> tuple[list[str], int]:
        """The CSV's column names (checked once) and where its first record starts. Raises the
        csv module's field limit (one for the whole process) to :data:`MAX_CSV_CELL_CHARS`, the
        largest cell an export writes, if it is lower."""
        if csv.field_size_limit() < MAX_CSV_CELL_CHARS:
            csv.field_size_limit(MAX_CSV_CELL_CHARS)
        if self._header is None:
            raw = next(self._lines(0), (0, b""))[1]
            header = next(csv.reader([self._text(raw, "line 1")]), [])
            missing = [c for c in COLUMNS if c not in header and c not in SPLIT_COLUMNS]
            if raw and missing:  # an empty file is an export of no rows
                raise LabelsFileError(self.path, "line 1", f"no column {missing[0]!r} in the header")
            self._header, self._body = header, len(raw)
        return self._header, self._body

    def _lines(self, start: int) -> Iterator[tuple[int, bytes]]:
        """(where, the line's bytes) from ``start``, each read at its own place."""
        at = start
        while True:
            self._f.seek(at)
            raw = self._f.readline()
            if not raw:
                return
            yield at, raw
            at += len(raw)

    def _text(self, raw: bytes, where: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LabelsFileError(self.path, where, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
