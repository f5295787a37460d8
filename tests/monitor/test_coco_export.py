"""Detection verdicts export as a COCO data set that pycocotools reads: the auditor's boxes, one
image per request (the last decisive review), rejects and non-box answers left out, the exact
input array beside a viewable PNG; image ids stable per request, pixels in a folder of the
annotation file's own, gold images annotated with their known answer, class names mapped to the
card's indices, every card label a category."""

from __future__ import annotations

import json

import numpy as np

from auditstream.wire import encode_input
import pytest

from monitor import coco_export
from monitor.coco_export import coco_from_labels, export_coco, image_id


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
    # every class on the card, as the detector's own to_coco lists them (not only those seen)
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == {d: str(d) for d in range(10)}
    assert all(img["is_gold"] is False for img in coco.dataset["images"])
    image = by_request["a"]
    assert image["file_name"].startswith("annotations_images/")  # the annotation file's own folder
    assert (image["width"], image["height"]) == (64, 64) and (out.parent / image["file_name"]).is_file()
    sent = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)  # what _row encoded
    assert np.array_equal(np.load(out.parent / image["tensor_file"]), sent)  # the exact input, for training


def test_image_ids_are_stable_per_request_whatever_else_the_export_holds(tmp_path):
    """Review 2026-12 (shared_images.py): image ids were positions (1, 2, ... in request id
    order), so one more verdict on a request that sorts first moved every id and every pixel
    file. An id is now a 53-bit hash of the request id (>= 1, unique, exact in a double), the
    same in every export; annotation ids still count from 1. COCOeval takes such ids."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    first = coco_from_labels([_row(f"m-{i}", "accept", BOXES) for i in range(5)], tmp_path / "one")
    second = coco_from_labels([_row("a-0", "accept", BOXES)] + [_row(f"m-{i}", "accept", BOXES) for i in range(5)],
                              tmp_path / "two")
    ids = {img["request_id"]: img["id"] for img in first["images"]}
    assert ids == {img["request_id"]: img["id"] for img in second["images"] if img["request_id"] != "a-0"}
    assert ids == {f"m-{i}": image_id(f"m-{i}") for i in range(5)}
    every = [img["id"] for img in second["images"]]
    assert len(set(every)) == 6 and all(isinstance(i, int) and 1 <= i < 2**53 for i in every)
    assert [a["id"] for a in second["annotations"]] == list(range(1, 13))
    assert image_id("m-0", is_gold=True) != image_id("m-0")  # a gold item apart from traffic of its request id
    for img in second["images"]:  # the pixel files are named by the id too
        assert img["file_name"] == f"two/{img['id']:016d}.png" and (tmp_path / img["file_name"]).is_file()
    json.dumps(second, allow_nan=False)  # plain JSON
    out = tmp_path / "gt.json"
    out.write_text(json.dumps(second))
    truth = COCO(str(out))
    found = truth.loadRes([dict(a, score=1.0) for a in second["annotations"]])
    evaluation = COCOeval(truth, found, "bbox")
    evaluation.evaluate(), evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # the boxes found on every image: mAP 1


def test_requests_whose_hashes_meet_get_distinct_ids_the_same_in_every_export(tmp_path, monkeypatch):
    """Two request ids whose hashes meet: the later one (request id order) hashes again with a
    counter, so ids stay unique and, for the same requests, the same."""
    real = coco_export.image_id
    monkeypatch.setattr(coco_export, "image_id", lambda rid, gold=False, attempt=0: 7 if attempt == 0 else
                        real(rid, gold, attempt))
    rows = [_row(rid, "accept", BOXES) for rid in ("b", "a", "c")]
    once, again = (coco_from_labels(rows, tmp_path / name) for name in ("one", "two"))
    ids = [(img["request_id"], img["id"]) for img in once["images"]]
    assert ids == [(img["request_id"], img["id"]) for img in again["images"]]
    assert ids[0] == ("a", 7) and len({i for _, i in ids}) == 3
    assert ids[1:] == [("b", real("b", False, 1)), ("c", real("c", False, 1))]


def test_two_exports_in_one_folder_keep_their_own_pixels(tmp_path):
    """Review 2026-12 (shared_images.py): every export wrote images/NNNNNNNN.* by position, so a
    second export into the same folder replaced the pixels the first file's annotations point
    at. Each annotation file now has its own ``<stem>_images/``; a re-export replaces it whole
    (no files of requests it no longer holds) and leaves no temporary folder or file."""
    a_image, b_image = np.zeros((64, 64), np.float32), np.ones((32, 48), np.float32)
    small = [{"box": [1, 1, 9, 9], "label": 1}]
    assert export_coco([_row("a-req", "accept", small, image=a_image)], tmp_path / "a.json") == 1
    assert export_coco([_row("b-req", "accept", small, image=b_image)], tmp_path / "b.json") == 1
    for name, sent in (("a", a_image), ("b", b_image)):
        (image,) = json.loads((tmp_path / f"{name}.json").read_text())["images"]
        assert image["tensor_file"].startswith(f"{name}_images/")
        assert np.array_equal(np.load(tmp_path / image["tensor_file"]), sent)
    assert export_coco([_row("c-req", "accept", BOXES)], tmp_path / "a.json") == 1  # a re-export
    (image,) = json.loads((tmp_path / "a.json").read_text())["images"]
    assert sorted(p.name for p in (tmp_path / "a_images").iterdir()) == [f"{image['id']:016d}.npy",
                                                                         f"{image['id']:016d}.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a_images", "b.json", "b_images"]


def test_a_failed_export_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """The JSON and its pixels are renamed into place together: a failure while the rows are read
    or at the last rename undoes what was done, and the folder a crash left renamed aside
    (``.old``) is put back before the next export starts."""
    out = tmp_path / "annotations.json"
    export_coco([_row("a", "accept", BOXES)], out)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def broken():
        yield _row("b", "accept", BOXES)
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        export_coco(broken(), out)
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    real_replace = type(out).replace

    def failing_replace(self, target):
        if self.name == "annotations.json.tmp":
            raise OSError("disk full")
        return real_replace(self, target)

    monkeypatch.setattr(type(out), "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):  # after steps (1) and (2): both undone
        export_coco([_row("b", "accept", BOXES)], out)
    monkeypatch.undo()
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    (tmp_path / "annotations_images").rename(tmp_path / "annotations_images.old")  # a crash after step (1)
    with pytest.raises(OSError, match="connection lost"):
        export_coco(broken(), out)
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


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
    good = image_id("good")
    assert sorted(p.name for p in (tmp_path / "annotations_images").iterdir()) == [f"{good:016d}.npy",
                                                                                  f"{good:016d}.png"]


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

    with open_store(url, create=True) as store:
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
    assert f"(pixels in {out.parent / 'annotations_images'})" in capsys.readouterr().out
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
        _row("text-class", "correct", [{"box": [10, 10, 20, 20], "label": "1"}]),  # a name, and no card to map it
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
    assert coco["info"]["skipped"] == {"box_malformed": 6, "box_outside_image": 2, "label_not_on_card": 1}
    assert sorted(a["bbox"] for a in coco["annotations"]) == [[5.0, 5.0, 4.0, 4.0], [60.0, 60.0, 4.0, 4.0]]
    assert coco["info"]["clipped_boxes"] == 1 and coco["info"]["flat_boxes"] == 1  # the thin box, not its image
    assert "request 'backwards' left out" in caplog.text and "9 rows left out" in caplog.text


def _detection_store(tmp_path, monkeypatch):
    """A sqlite store URL, with the environment a CLI run in tests needs."""
    from store import accounts

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path / "models"))
    return f"sqlite:///{tmp_path / 'audit.db'}"


def _detection(request_id, boxes, image=None):
    import dataclasses

    from auditstream.wire import AuditItem
    from tests.store.store_factories import audit_item

    item = audit_item(request_id, model="detector", output=boxes)
    image = np.zeros((64, 64), np.float32) if image is None else image
    return AuditItem(dataclasses.replace(item.prediction, task="detection", details={"match_iou": 0.5}), image)


def test_a_gold_image_is_marked_and_annotated_with_its_known_answer(tmp_path, monkeypatch, capsys):
    """Review 2026-12 (gold_coco.py): with --include-gold a gold item's annotations were the last
    auditor's answer (here bob's wrong accept of class 5, after alice's right correction to 3),
    and its image entry looked like deferred traffic. A gold image now has ``is_gold`` true and
    the known answer stored with the gold item; a traffic image ``is_gold`` false; a gold item
    whose known answer is "should be rejected" is left out, as a reject is."""
    from auditstream.cli import main
    from store import StoreConfig, open_store
    from tests.store.store_factories import add_users

    url = _detection_store(tmp_path, monkeypatch)
    truth = [{"box": [10, 10, 20, 20], "label": 3}]
    shown = [{"box": [10, 10, 20, 20], "label": 5, "score": 0.3}]  # the "model answer" auditors see
    def answer(store, user, kind, corrected, at, expected):
        claim = store.claim(user, 60, at, model="detector")
        assert claim.item.request_id == expected
        store.record_verdict(store.new_verdict_id(), claim.item_id, user, kind, corrected, at + 1)

    # every claim serves gold while there is some
    with open_store(url, StoreConfig(gold_rate=1.0, seed=0), create=True) as store:
        alice, bob = add_users(store, "alice", "bob")
        (admin,) = add_users(store, "root", role="admin")
        store.ingest_many([_detection(f"traffic-{i}", shown) for i in range(2)], 1000.0)  # gold stands in for it
        store.add_gold(_detection("gold-1", shown), truth, admin, 1000.0)
        answer(store, alice, "correct", truth, 2000.0, "gold-1")  # right
        answer(store, bob, "accept", None, 3000.0, "gold-1")  # wrong, and later
        store.add_gold(_detection("gold-reject", shown), None, admin, 1000.0)
        answer(store, alice, "accept", None, 4000.0, "gold-reject")
    with open_store(url, StoreConfig(gold_rate=0.0), create=True) as store:
        answer(store, store.accounts.get("alice"), "accept", None, 5000.0, "traffic-0")
    out = tmp_path / "coco" / "annotations.json"
    common = ["labels", "export", "--format", "coco", "--model", "detector", "--out", str(out), "--store-url", url]
    assert main(common + ["--include-gold"]) == 0, capsys.readouterr().err
    coco = _strict(out.read_text())
    images = {img["request_id"]: img for img in coco["images"]}
    assert sorted(images) == ["gold-1", "traffic-0"]
    gold = images["gold-1"]
    assert (gold["is_gold"], gold["verdict_kind"], gold["id"]) == (True, None, image_id("gold-1", is_gold=True))
    assert [(a["category_id"], a["bbox"]) for a in coco["annotations"] if a["image_id"] == gold["id"]] == [
        (3, [10.0, 10.0, 10.0, 10.0])]
    assert images["traffic-0"]["is_gold"] is False
    # each image says which side of the store's train/certify split it is on, as a labels row does
    with open_store(url, create=True) as store:
        key = store.split_key
    assert images["traffic-0"]["audit_split"] == key.uniform("traffic-0")
    assert images["traffic-0"]["audit_split_key"] == key.key_id and coco["info"]["audit_split_keys"] == [key.key_id]
    assert "data_hygiene" in coco["info"]["audit_split_rule"]
    assert main(common) == 0  # without --include-gold: no gold image
    assert [img["request_id"] for img in _strict(out.read_text())["images"]] == ["traffic-0"]


def test_a_gold_row_without_its_known_answer_is_left_out_not_annotated_by_its_verdict(tmp_path, caplog):
    rows = [dict(_row("g", "correct", BOXES), is_gold=True), _row("t", "accept", BOXES)]
    with caplog.at_level("WARNING", logger="monitor.coco_export"):
        coco = coco_from_labels(rows, tmp_path / "images")
    assert [img["request_id"] for img in coco["images"]] == ["t"]
    assert coco["info"]["skipped"] == {"gold_answer_unknown": 1} and "request 'g' left out" in caplog.text
    coco = coco_from_labels(rows, tmp_path / "again", gold_answers={("g", "3"): []})  # known: no objects
    assert {img["request_id"]: img["is_gold"] for img in coco["images"]} == {"g": True, "t": False}
    assert {a["image_id"] for a in coco["annotations"]} == {image_id("t")}


def test_a_class_given_by_its_name_is_the_cards_index_and_only_unknown_names_are_left_out(tmp_path, caplog):
    """Review 2026-12 (label_names.py): the store takes a correction whose label is a class name
    (auditstream/tasks/detection.py), but the export left its whole image out as box_malformed.
    A name among the card's labels is its index; a name the card does not have (or gives to two
    classes), an index past its labels, or a name with no card known leaves its row out, counted
    as label_not_on_card."""
    labels = ["cat", "dog", "7", "twin", "twin"]
    rows = [
        _row("by-name", "correct", [{"box": [2, 3, 12, 18], "label": "dog"}, {"box": [20, 20, 30, 30], "label": 0}]),
        _row("digit-name", "correct", [{"box": [2, 3, 12, 18], "label": "7"}]),
        _row("unknown", "correct", [{"box": [2, 3, 12, 18], "label": "bird"}]),
        _row("ambiguous", "correct", [{"box": [2, 3, 12, 18], "label": "twin"}]),
        _row("past-card", "correct", [{"box": [2, 3, 12, 18], "label": 5}]),
        _row("empty-name", "correct", [{"box": [2, 3, 12, 18], "label": ""}]),
    ]
    with caplog.at_level("WARNING", logger="monitor.coco_export"):
        coco = coco_from_labels(rows, tmp_path / "images", labels=labels)
    images = {img["request_id"]: img["id"] for img in coco["images"]}
    assert sorted(images) == ["by-name", "digit-name"]
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [
        (images["by-name"], 1), (images["by-name"], 0), (images["digit-name"], 2)]
    assert coco["info"]["skipped"] == {"box_malformed": 1, "label_not_on_card": 3}
    assert "the card has no such label" in caplog.text and "gives it to several classes" in caplog.text
    no_card = coco_from_labels(rows[:2], tmp_path / "no-card")
    assert no_card["images"] == [] and no_card["info"]["skipped"] == {"label_not_on_card": 2}


def test_categories_are_every_label_on_the_card_or_without_it_the_classes_seen(tmp_path):
    """Review 2026-12: categories listed only the classes seen, while the detector's own data set
    (training/detector/data.py, to_coco) lists all of them: with the card, every label, id = its
    index (as to_coco's), whatever the verdicts hold; without it, the indices seen."""
    from training.detector.data import CLASSES

    rows = [_row("a", "accept", [{"box": [2, 3, 12, 18], "label": 4}])]
    digits = [str(d) for d in range(CLASSES)]
    coco = coco_from_labels(rows, tmp_path / "card", labels=digits)
    assert coco["categories"] == [{"id": d, "name": str(d)} for d in range(CLASSES)]
    assert [c["id"] for c in coco["categories"]] == list(range(CLASSES))  # the ids to_coco gives the digits
    assert coco_from_labels(rows, tmp_path / "no-card")["categories"] == [{"id": 4, "name": "4"}]
