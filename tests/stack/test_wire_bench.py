"""``auditstream bench wire`` runs end to end and its last line is one JSON object with every
record measured (the numbers themselves are not asserted: the machine is shared)."""

from __future__ import annotations

import json

from auditstream.cli import main

RECORDS = {"digits_request_b64", "digits_request_values", "image_request_1kib", "image_request_40kib",
           "prediction", "audit_item"}


def test_bench_wire_prints_one_json_summary(capsys):
    assert main(["bench", "wire", "--json", "--budget-s", "0.002", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[-1])
    assert set(summary["records"]) == RECORDS
    for row in summary["records"].values():
        assert row["bytes"] > 0 and row["encode_us"] > 0 and row["decode_us"] > 0
    assert summary["records"]["image_request_40kib"]["bytes"] > 40 * 1024 * 4 // 3
    assert summary["values_over_b64_decode"] > 0


def test_bench_wire_human_lines_end_with_json(capsys):
    assert main(["bench", "wire", "--budget-s", "0.002", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("record") and len(lines) >= len(RECORDS) + 2
    assert set(json.loads(lines[-1])["records"]) == RECORDS
