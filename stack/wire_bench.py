"""``auditstream bench wire``: what the wire contract costs per record on the hot path.

Measures encode (``to_bytes``) and decode (``from_bytes``) of the records the serving consumer
handles for every request: a digits-sized tensor request (8x8 float32, the ``digits`` model's
input) in both tensor forms
(base64 and a plain ``values`` list), envelope-sized image requests (PNG-sized payloads of
1 KiB and 40 KiB; the bytes are not decoded as an image here, that is the serving side's job),
a prediction (with its latency headers) and an audit item carrying the digits tensor.
When ``orjson`` happens to be installed, the same objects are also dumped/parsed with it, to
show what a faster JSON library would save; the product code does not use it.

    auditstream bench wire            # human-readable lines, last line one JSON object
    auditstream bench wire --json     # only the JSON object

Numbers are the median over ``--repeats`` runs of a loop sized to ``--budget-s`` each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

from auditstream import finite_json
from auditstream.cli_args import COUNT, POSITIVE, add_checked_argument


def _per_op_us(fn: Callable[[], Any], budget_s: float, repeats: int) -> float:
    """Median microseconds per call of ``fn``, each repeat a loop of about ``budget_s``."""
    fn()  # warm caches and lazy imports
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s / 10:
        fn()
        n += 1
    per_call_s = (time.perf_counter() - start) / n
    loops = max(1, int(budget_s / per_call_s))
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        timings.append((time.perf_counter() - t0) / loops)
    return statistics.median(timings) * 1e6


def _cases() -> dict[str, tuple[Callable[[], bytes], Callable[[bytes], Any], Any]]:
    """name -> (encode, decode, the object) for every record measured."""
    import numpy as np

    from auditstream import wire

    rng = np.random.default_rng(0)
    digits = rng.random((8, 8), dtype=np.float32)
    request = wire.InferenceRequest("req-000001", "digits", digits, 1_700_000_000.0)

    def values_encode() -> bytes:  # what a client without base64 writes
        obj = {"v": 1, "request_id": request.request_id, "model": request.model, "created_at_s": request.created_at_s,
               "input": {"tensor": {"dtype": "float32", "shape": [8, 8], "values": digits.tolist()}}}
        return json.dumps(obj, separators=(",", ":")).encode()

    prediction = wire.Prediction(
        request_id="req-000001", model="digits", model_version="3", task="classification", output=7,
        confidence=0.9731, route=wire.Route.AUTO, reason="confidence 0.973 >= threshold 0.950",
        qc_inclusion_prob=0.02, created_at_s=1_700_000_000.0,
        details={"probs": [round(float(p), 4) for p in rng.dirichlet(np.ones(10))]},
        latency={"queue-s": 0.0031, "inference-s": 0.0012, "end-to-end-s": 0.0057},
    )
    headers = prediction.latency_headers()
    audit = wire.AuditItem(prediction, digits)
    cases: dict[str, tuple[Callable[[], bytes], Callable[[bytes], Any], Any]] = {
        "digits_request_b64": (request.to_bytes, wire.InferenceRequest.from_bytes, request),
        "digits_request_values": (values_encode, wire.InferenceRequest.from_bytes, request),
    }
    for kib in (1, 40):
        image = wire.InferenceRequest(f"img-{kib}", "zip", wire.ImageInput(rng.bytes(kib * 1024)), 1_700_000_000.0)
        cases[f"image_request_{kib}kib"] = (image.to_bytes, wire.InferenceRequest.from_bytes, image)
    cases["prediction"] = (prediction.to_bytes, lambda data: wire.Prediction.from_bytes(data, headers), prediction)
    cases["audit_item"] = (audit.to_bytes, wire.AuditItem.from_bytes, audit)
    return cases


def run(budget_s: float = 0.2, repeats: int = 5) -> dict[str, Any]:
    try:
        import orjson  # optional, only measured
    except ImportError:
        orjson = None
    results: dict[str, Any] = {}
    for name, (encode, decode, _) in _cases().items():
        data = encode()
        row = {
            "bytes": len(data),
            "encode_us": round(_per_op_us(encode, budget_s, repeats), 2),
            "decode_us": round(_per_op_us(lambda: decode(data), budget_s, repeats), 2),
            # parsing alone: how much of decode is the JSON library rather than our checks
            "json_loads_us": round(_per_op_us(lambda: json.loads(data), budget_s, repeats), 2),
        }
        if orjson is not None:
            obj = json.loads(data)
            row["orjson_loads_us"] = round(_per_op_us(lambda: orjson.loads(data), budget_s, repeats), 2)
            row["json_dumps_us"] = round(_per_op_us(lambda: json.dumps(obj, separators=(",", ":")).encode(), budget_s, repeats), 2)
            row["orjson_dumps_us"] = round(_per_op_us(lambda: orjson.dumps(obj), budget_s, repeats), 2)
        results[name] = row
    b64, values = results["digits_request_b64"], results["digits_request_values"]
    return {
        "records": results,
        "values_over_b64_decode": round(values["decode_us"] / b64["decode_us"], 2),
        "values_over_b64_encode": round(values["encode_us"] / b64["encode_us"], 2),
        "orjson": orjson is not None,
    }


def _handler(args: argparse.Namespace) -> int:
    summary = run(args.budget_s, args.repeats)
    if not args.json:
        print(f"{'record':24s} {'bytes':>8s} {'encode µs':>10s} {'decode µs':>10s} {'json.loads µs':>14s}")
        for name, row in summary["records"].items():
            print(f"{name:24s} {row['bytes']:8d} {row['encode_us']:10.1f} {row['decode_us']:10.1f} {row['json_loads_us']:14.1f}")
        print(f"values list vs base64 (digits request): decode x{summary['values_over_b64_decode']}, "
              f"encode x{summary['values_over_b64_encode']}")
        if summary["orjson"]:
            for name, row in summary["records"].items():
                print(f"{name:24s} orjson loads {row['orjson_loads_us']:.1f} µs vs json {row['json_loads_us']:.1f}; "
                      f"dumps {row['orjson_dumps_us']:.1f} vs {row['json_dumps_us']:.1f}")
    finite_json.print_summary(summary, sort_keys=True)
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("wire", help="encode/decode cost per record of the wire contract (µs)")
    add_checked_argument(p, "--budget-s", POSITIVE, default=0.2, help="seconds per timing loop")
    add_checked_argument(p, "--repeats", COUNT, default=5, help="timing loops per measurement; the median is kept")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.set_defaults(handler=_handler)
