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
        _row("b", "correct", [{"box": [5, 5, 9, 9], "label": 3}, {"box": [60, 9, 66, 14], "label": 3}]),
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
    b = coco.loadAnns(coco.getAnnIds(imgIds=[by_request["b"]["id"]]))
    assert [x["bbox"] for x in b] == [[5.0, 5.0, 4.0, 4.0], [60.0, 9.0, 4.0, 5.0]]  # the second clipped at x = 64
    assert coco.dataset["info"]["clipped_boxes"] == 1
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


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_rows_the_data_set_cannot_hold_are_skipped_counted_and_logged(tmp_path, caplog):
    """Review r6: an image that does not decode and a 1-D tensor (the dashboard shows both) made
    the export die with a traceback and write nothing; a box [0, 0, 1e308, 1e308] wrote
    ``Infinity`` (its area) into a file that is then not JSON. Each such row is left out, logged
    with its request id and counted in ``info["skipped"]``; the others are written as before,
    and nothing of a skipped row lands in images/."""
    from auditstream.wire import ImageInput

    rows = [
        _row("good", "accept", BOXES),
        _row("bad-image", "accept", BOXES, image=ImageInput(b"\x89PNG\r\n\x1a\n-not-really", "png")),
        _row("tensor-1d", "accept", BOXES, image=np.arange(5, dtype=np.float32)),
        _row("no-plane", "accept", BOXES, image=np.zeros((2, 8, 8), np.float32)),
        _row("empty", "accept", BOXES, image=np.zeros((0, 8), np.float32)),
        _row("far-box", "accept", [{"box": [0, 0, 1e308, 1e308], "label": 1}]),
        _row("wide-box", "correct", [{"box": [-1e308, 0, 1e308, 1], "label": 1}]),
    ]
    out = tmp_path / "annotations.json"
    with caplog.at_level("WARNING", logger="monitor.coco_export"):
        assert export_coco(rows, out) == 1
    coco = _strict(out.read_text())
    assert [img["request_id"] for img in coco["images"]] == ["good"] and len(coco["annotations"]) == 2
    assert coco["info"]["skipped"] == {"box_not_finite": 2, "input_not_a_picture": 4}
    for request_id in ("bad-image", "tensor-1d", "no-plane", "empty", "far-box", "wide-box"):
        assert f"request '{request_id}' left out" in caplog.text
    assert "6 rows left out" in caplog.text
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00000001.npy", "00000001.png"]


def test_labels_export_coco_survives_such_rows_from_the_command_line(tmp_path, monkeypatch, capsys):
    """The command itself (review r6 ran it): exit 0, strict JSON, the good item exported."""
    import dataclasses

    from auditstream.cli import main
    from auditstream.wire import AuditItem, ImageInput
    from store import accounts, open_store
    from tests.store.store_factories import add_users, audit_item

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path / "models"))
    url = f"sqlite:///{tmp_path / 'audit.db'}"

    def detection(request_id, value, boxes):
        item = audit_item(request_id, model="detector", output=boxes)
        return AuditItem(dataclasses.replace(item.prediction, task="detection", details={}), value)

    with open_store(url) as store:
        (alice,) = add_users(store, "alice")
        for item in (detection("good", np.zeros((64, 64), np.float32), BOXES),
                     detection("image", ImageInput(b"\x89PNG\r\n\x1a\n-not-really", "png"), BOXES),
                     detection("tensor", np.arange(5, dtype=np.float32), BOXES),
                     detection("inf", np.zeros((8, 8), np.float32), [{"box": [0, 0, 1e308, 1e308], "label": 1}])):
            store.ingest(item, 1000.0)
            claim = store.claim(alice, 60, 1001.0)
            store.record_verdict(store.new_verdict_id(), claim.item_id, alice, "accept", None, 1002.0)
    out = tmp_path / "coco" / "annotations.json"
    out.parent.mkdir()
    code = main(["labels", "export", "--format", "coco", "--model", "detector", "--out", str(out), "--store-url", url])
    assert code == 0, capsys.readouterr().err
    coco = _strict(out.read_text())
    assert [img["request_id"] for img in coco["images"]] == ["good"]
    assert coco["info"]["skipped"] == {"box_not_finite": 1, "input_not_a_picture": 2}


def test_a_malformed_or_outside_box_skips_its_row_rather_than_teaching_no_object_there(tmp_path, caplog):
    """Review 2026-12-04: the store takes any JSON correction from a client, and a box drawn
    backwards, a NaN corner or a class given as text was dropped while its image stayed in the
    data set -- with fewer objects than the auditor saw, i.e. a negative example where there is
    an object. A box wholly outside the image was written as it was. Each such row is now left
    out and counted; a box reaching a little past the edge is clipped (and counted)."""
    rows = [
        _row("backwards", "correct", [{"box": [5, 5, 9, 9], "label": 3}, {"box": [40, 40, 10, 10], "label": 1}]),
        _row("nan-corner", "correct", [{"box": [10, 10, float("nan"), 20], "label": 1}]),
        _row("text-class", "correct", [{"box": [10, 10, 20, 20], "label": "1"}]),
        _row("bool-class", "correct", [{"box": [10, 10, 20, 20], "label": True}]),
        _row("negative-class", "correct", [{"box": [10, 10, 20, 20], "label": -1}]),
        _row("junk", "correct", [{"box": [5, 5, 9, 9], "label": 3}, "junk"]),
        _row("not-a-list", "correct", "a caption, not boxes"),
        _row("outside", "correct", [{"box": [500, 500, 900, 900], "label": 1}]),
        _row("mostly-outside", "correct", [{"box": [50, 50, 150, 150], "label": 1}]),
        _row("edge", "accept", [{"box": [60, 60, 66, 65], "label": 1}]),
        _row("thin", "accept", [{"box": [10, 10, 10, 20], "label": 2}, {"box": [5, 5, 9, 9], "label": 3}]),
        _row("no-objects", "correct", []),  # a true negative: the auditor removed every box
    ]
    with caplog.at_level("WARNING", logger="monitor.coco_export"):
        coco = coco_from_labels(rows, tmp_path / "images")
    assert sorted(img["request_id"] for img in coco["images"]) == ["edge", "no-objects", "thin"]
    assert coco["info"]["skipped"] == {"box_malformed": 7, "box_outside_image": 2}
    assert sorted(a["bbox"] for a in coco["annotations"]) == [[5.0, 5.0, 4.0, 4.0], [60.0, 60.0, 4.0, 4.0]]
    assert coco["info"]["clipped_boxes"] == 1 and coco["info"]["flat_boxes"] == 1  # the thin box, not its image
    assert "request 'backwards' left out" in caplog.text and "9 rows left out" in caplog.text
