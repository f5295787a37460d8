"""Malformed audit items never block the workbench: whatever an item's details, output or input,
the verdict form is drawn with Reject and Skip and a one-line message of what could not be shown,
and the item can be judged or handed back. A huge class or action index does not size the picker.

Two levels: the pure views (answer panel, input picture) fuzzed with hypothesis over details
dicts for every task kind, and the whole page through AppTest with hostile items of every kind.
"""

from __future__ import annotations

import functools
import io
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tests.dashboards.conftest import items_by_task, log_in, png, prediction, start_app, texts

from auditstream.wire import AuditItem, ImageInput, Route, VerdictKind
from dashboards import render, workbench
from dashboards.tasks.base import MAX_CHOICES
from dashboards.tasks.classification import class_labels
from dashboards.tasks.policy import action_labels

KINDS = ("classification", "detection", "caption", "sequence", "policy")
KEYS = ("runner_ups", "probs", "index", "char_confidences", "action_probs", "value", "tokens", "token_confidences",
        "threshold", "part_routes", "text", "prob", "label", "relative_prob", "box", "score")


def _details(finite: bool):
    """Details dicts of any shape; ``finite``: only what the store keeps (JSON has no NaN)."""
    scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
               | st.floats(allow_nan=not finite, allow_infinity=not finite)
               | st.text(max_size=12) | st.sampled_from(["AUTO", "HUMAN", "nan", ""]))  # fmt: skip
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                          | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5),
                          max_leaves=25)  # fmt: skip
    return st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=8)


details_dicts, stored_details = _details(finite=False), _details(finite=True)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)


def _well_typed_output(kind: str):
    """The kind's output, right type but any value: the details are what is fuzzed here."""
    return {"classification": st.integers(min_value=-5, max_value=10**9) | st.sampled_from(["1", "cat"]),
            "policy": st.integers(min_value=-5, max_value=10**9),
            "sequence": st.text(max_size=8), "caption": st.text(max_size=30),
            "detection": st.lists(st.fixed_dictionaries({"box": st.lists(scalars, min_size=4, max_size=4),
                                                         "label": scalars, "score": scalars}), max_size=3),
            }[kind]  # fmt: skip


@settings(max_examples=40)
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_answer_panel_and_picture_never_fail_on_hostile_details(data, kind: str) -> None:
    item = items_by_task()[kind]
    details = data.draw(details_dicts, label="details")
    output = data.draw(_well_typed_output(kind), label="output")
    labels = data.draw(st.sampled_from([(), ("a", "b", "c")]), label="labels")
    pred = replace(item.prediction, **{"details": details, "output": output})
    view = render.answer_view(pred, item.input, labels)
    assert isinstance(view.answer, str) and math.isfinite(view.confidence)
    assert all(math.isfinite(p) for _, p in view.runner_ups + view.char_confidences)
    assert len(view.actions) <= MAX_CHOICES
    render.input_picture(pred, item.input, labels)
    if kind == "classification":
        assert 0 < len(class_labels(pred, ())) <= MAX_CHOICES
    if kind == "policy":
        assert len(action_labels(pred, item.input, ())) <= MAX_CHOICES


def test_a_huge_index_builds_a_capped_picker_and_the_card_decides_when_it_has_labels() -> None:
    huge = 20_000_000
    pred = items_by_task()["classification"].prediction
    pred = replace(pred, **{"output": huge, "details": {"index": huge, "runner_ups": [{"index": huge}]}})
    assert len(class_labels(pred, ())) == MAX_CHOICES
    assert class_labels(pred, ("cat", "dog")) == ["cat", "dog"]  # the card's real classes
    policy = items_by_task()["policy"]
    pred = replace(policy.prediction, **{"output": huge, "details": {}})
    assert len(action_labels(pred, policy.input, ())) == MAX_CHOICES
    assert action_labels(pred, policy.input, ("left", "right")) == ["left", "right"]


def test_a_corrupt_image_is_a_clear_value_error_not_a_pillow_crash() -> None:
    from dashboards import images

    good = png(8, 8).data
    for data in (b"", b"\x89PNG\r\n\x1a\n-not-really", good[: len(good) // 2], good[:40] + b"\x00" * 40):
        with pytest.raises(ValueError, match="cannot be decoded as an image"):
            images.to_image(ImageInput(data, "png"))


@functools.cache
def _oversized_png() -> ImageInput:
    """One pixel row over serving's 4096 x 4096 limit: a few kilobytes of PNG, 16.8 M pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4097, 4096), 255).save(buffer, format="PNG", optimize=True)
    return ImageInput(buffer.getvalue(), "png")


def test_an_oversized_or_mislabelled_image_is_refused_at_its_header(monkeypatch) -> None:
    """Serving's rule (serving/inputs.py): the declared format only, the size from the header
    before any pixel is decompressed."""
    from PIL import Image, ImageFile

    from dashboards import images
    from dashboards.tasks.detection import image_size

    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real_load(self))
    oversized = _oversized_png()
    assert len(oversized.data) < 100_000
    with pytest.raises(ValueError, match="the PNG input is 4,097×4,096 pixels, over the 16,777,216 this dashboard"):
        images.to_image(oversized)
    assert image_size(oversized) == (4097, 4096)  # the box table's bounds, from the header
    assert loads == []  # not one pixel decoded
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="cannot be decoded as an image"):  # a GIF sent as "png": not parsed as GIF
        images.to_image(ImageInput(gif.getvalue(), "png"))
    assert images.to_image(png(8, 8)).size == (8, 8) and loads == [(8, 8)]


# --------------------------------------------------------------------------------------------
# the whole page


def _corrupt_png() -> ImageInput:
    buffer = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (16, 16), "white").save(buffer, format="PNG")
    return ImageInput(buffer.getvalue()[:60], "png")  # the header, then nothing


HOSTILE_DETAILS = {"runner_ups": [{"text": ["x"], "prob": "high", "index": None}, 5, None, ["a", "b", "c"]],
                   "probs": "abc", "char_confidences": "xyzzy", "action_probs": [True, "a"], "value": "v",
                   "tokens": 5, "token_confidences": [None], "threshold": "t", "part_routes": [[]],
                   "index": 10**40}  # fmt: skip


def _hostile_items() -> list[tuple[str, str, AuditItem]]:
    """(case, kind, item): bad details, a corrupt PNG, a wrong output type, a huge index, per kind."""
    items = items_by_task()
    cases = []
    for kind, item in items.items():
        p = item.prediction
        cases.append(("details", kind, AuditItem(replace(p, **{"details": HOSTILE_DETAILS}), item.input)))
        cases.append(("corrupt-png", kind, AuditItem(p, _corrupt_png())))
        cases.append(("oversized-png", kind, AuditItem(p, _oversized_png())))
        wrong = {"classification": {"class": 1}, "policy": [1, 2], "sequence": 12345, "caption": {"text": 1},
                 "detection": "car"}[kind]  # fmt: skip
        cases.append(("output-type", kind, AuditItem(replace(p, **{"output": wrong}), item.input)))
    for kind in ("classification", "policy"):
        p = items[kind].prediction
        cases.append(("huge-index", kind, AuditItem(replace(p, **{"output": 20_000_000,
                                                                  "details": {"index": 20_000_000}}), items[kind].input)))
    for kind in KINDS:  # a tensor no kind draws (the wire carries finite numbers only)
        cases.append(("odd-tensor", kind, AuditItem(items[kind].prediction, np.full((2, 3, 5, 7), 3e38, np.float32))))
    return cases


def _claim_and_check_form(at, item_request_id: str):
    at.button(key="next").click()
    at = at.run()
    assert not at.exception, at.exception
    claim = at.session_state[workbench.CLAIM]
    assert claim.item.request_id == item_request_id
    labels = [b.label for b in at.button]
    assert workbench.REJECT[1] in labels and workbench.SKIP[1] in labels  # the item can always be judged or handed back
    for box in at.selectbox:
        assert len(box.options) <= MAX_CHOICES + 2  # + the sidebar's "All models" and registry names
    return at, claim


@pytest.mark.parametrize(("case", "kind", "item"), [pytest.param(*c, id=f"{c[1]}-{c[0]}") for c in _hostile_items()])
def test_a_malformed_item_still_gets_its_verdict_form(store, store_url, tmp_path, case: str, kind: str,
                                                      item: AuditItem) -> None:  # fmt: skip
    store.ingest(item, time.time())
    at = log_in(start_app(store_url, tmp_path, blind_qc=False), "alice")
    at, claim = _claim_and_check_form(at, item.prediction.request_id)
    shown = texts(at)
    if case == "corrupt-png":
        assert "Cannot show the input of this item: ValueError: the PNG input" in shown
        assert "cannot be decoded as an image" in shown and "reject it (no valid answer) or skip it" in shown
    if case == "oversized-png":
        assert "Cannot show the input of this item: ValueError: the PNG input is 4,097×4,096 pixels" in shown
    if case == "huge-index":
        assert "is not one of the" in shown and "reject the item" in shown
    if "Cannot show" in shown:
        assert "reject it (no valid answer) or skip it" in shown  # what to do, in the same line
    [reject] = [b for b in at.button if b.label == workbench.REJECT[1]]
    reject.click()
    at = at.run()
    assert not at.exception, at.exception
    [verdict] = store.verdicts()
    assert verdict.item_id == claim.item_id and verdict.kind is VerdictKind.REJECT


def test_a_malformed_item_can_be_skipped(store, store_url, tmp_path) -> None:
    item = items_by_task()["caption"]
    store.ingest(AuditItem(item.prediction, _corrupt_png()), time.time())
    at = log_in(start_app(store_url, tmp_path), "alice")
    at, claim = _claim_and_check_form(at, item.prediction.request_id)
    assert "cannot be decoded as an image" in texts(at)
    at.button(key=f"skip-{at.session_state[workbench.VERDICT_ID]}").click()
    at = at.run()
    assert not at.exception
    assert store.item(claim.item_id).lease_owner is None  # back in the queue for someone else
    assert [v.kind for v in store.verdicts()] == [VerdictKind.SKIP]


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), details=stored_details)
def test_fuzzed_details_never_take_the_form_down(store, store_url, tmp_path, kind: str, details: dict) -> None:
    base = items_by_task()[kind]
    rid = f"fuzz-{time.monotonic_ns()}"
    pred = prediction(rid, base.prediction.model, kind, base.prediction.output, 0.5, details, route=Route.HUMAN)
    store.ingest(AuditItem(pred, base.input), time.time())
    at = log_in(start_app(store_url, tmp_path, blind_qc=False), "alice")
    at, claim = _claim_and_check_form(at, rid)
    [reject] = [b for b in at.button if b.label == workbench.REJECT[1]]
    reject.click()
    at = at.run()
    assert not at.exception
    assert store.item(claim.item_id).state == "done"  # judged: the queue moves on
