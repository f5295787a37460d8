"""Detection verdicts export as a COCO data set that pycocotools reads: the auditor's boxes, one
image per request (the last decisive review), rejects and non-box answers left out, the exact
input array beside a viewable PNG."""

from __future__ import annotations

import json

import numpy as np

from auditstream.wire import encode_input
from monitor.coco_export import coco_from_labels, export_coco


def _row(request_id: str, kind: str, label, round_: int = 1, at: float = 1.0, image=None) -> dict:
    image = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32) if image is None else image
    return {"request_id": request_id, "model": "parcel", "model_version": "3", "route": "HUMAN", "inclusion_prob": 1.0,
            "verdict_kind": kind, "human_label": label, "review_round": round_, "decided_at_s": at,
            "input": encode_input(image), "task": "detection"}


BOXES = [{"box": [2.0, 3.0, 12.0, 18.0], "label": 7, "score": 1.0}, {"box": [30, 30, 40, 44], "label": 1}]


def test_the_export_is_a_coco_data_set_pycocotools_reads(tmp_path):
    from pycocotools.coco import COCO

    rows = [
        _row("a", "accept", BOXES),
        _row("b", "correct", [{"box": [5, 5, 9, 9], "label": 3}, {"box": [9, 9, 5, 5], "label": 3}, "junk"]),
        _row("c", "reject", None),
        _row("d", "correct", [{"box": [0, 0, 4, 4], "label": 2}], round_=1, at=1.0),
        _row("d", "correct", [{"box": [1, 1, 6, 6], "label": 4}], round_=2, at=2.0),  # the second review wins
    ]
    out = tmp_path / "coco" / "annotations.json"
    out.parent.mkdir()
    assert export_coco(rows, out, labels=[str(d) for d in range(10)]) == 3
    coco = COCO(str(out))
    assert sorted(img["request_id"] for img in coco.dataset["images"]) == ["a", "b", "d"]
    by_request = {img["request_id"]: img for img in coco.dataset["images"]}
    a = coco.loadAnns(coco.getAnnIds(imgIds=[by_request["a"]["id"]]))
    assert [(x["category_id"], x["bbox"], x["area"], x["iscrowd"]) for x in a] == [
        (7, [2.0, 3.0, 10.0, 15.0], 150.0, 0), (1, [30.0, 30.0, 10.0, 14.0], 140.0, 0)]
    assert len(coco.getAnnIds(imgIds=[by_request["b"]["id"]])) == 1  # the inverted box and the junk are dropped
    assert [x["category_id"] for x in coco.loadAnns(coco.getAnnIds(imgIds=[by_request["d"]["id"]]))] == [4]
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == {1: "1", 3: "3", 4: "4", 7: "7"}
    image = by_request["a"]
    assert (image["width"], image["height"]) == (64, 64) and (out.parent / image["file_name"]).is_file()
    sent = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)  # what _row encoded
    assert np.array_equal(np.load(out.parent / image["tensor_file"]), sent)  # the exact input, for training


def test_ids_start_at_one_and_are_unique(tmp_path):
    coco = coco_from_labels([_row(str(i), "accept", BOXES) for i in range(5)], tmp_path / "images")
    assert [img["id"] for img in coco["images"]] == [1, 2, 3, 4, 5]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 11))
    json.dumps(coco)  # plain JSON
