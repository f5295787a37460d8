"""Pictures and answer panels per task kind (pure functions, no Streamlit)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tests.dashboards.conftest import items_by_task, png

from dashboards import images, render
from dashboards.tasks.classification import class_labels


def test_digits_are_upscaled_crisply_with_the_ink_range():
    item = items_by_task()["classification"]
    picture = render.input_picture(item.prediction, item.input)
    assert min(picture.size) >= images.DISPLAY_MIN_SIDE
    gray = np.asarray(picture.convert("L"))
    assert set(np.unique(gray)) <= {0, 255, 153}  # ink 0 and 16 only (plus the grey frame): no blur
    assert gray[gray.shape[0] // 2, gray.shape[1] // 2] == 0  # the "1" stroke: full ink, dark on white
    assert gray[10, 10] == 255


def test_envelope_keeps_its_aspect_and_is_framed():
    item = items_by_task()["sequence"]
    picture = render.input_picture(item.prediction, item.input)
    width, height = picture.size
    assert math.isclose(width / height, 160 / 48, rel_tol=0.05)
    assert picture.getpixel((0, 0)) == (153, 153, 153)  # frame: a white envelope on a white page


def test_detection_boxes_are_drawn_where_the_model_put_them():
    item = items_by_task()["detection"]
    picture = render.input_picture(item.prediction, item.input)
    scale = picture.width / 64
    x0, y0, x1, y1 = (v * scale for v in (4, 6, 30, 40))
    edge = picture.getpixel((int(x0), int((y0 + y1) / 2)))
    assert edge == (230, 25, 75)  # first box colour, on the left edge of the box
    assert render.answer_view(item.prediction, item.input).answer == "1 box: car"


_any_value = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
              | st.lists(st.integers(), max_size=2))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.fixed_dictionaries({"box": st.lists(_any_value, min_size=3, max_size=5) | _any_value,
                                             "label": _any_value, "score": _any_value}), max_size=4))
def test_any_stored_box_is_drawn_or_skipped_never_raised(boxes):
    """A stored answer is whatever a client wrote: reversed, huge, text or NaN coordinates and
    scores never stop the picture (Pillow refuses y1 < y0 and overflows past a C long)."""
    picture = images.draw_boxes(images.Image.new("L", (16, 16)), boxes, ("a", "b"))
    assert min(picture.size) >= images.DISPLAY_MIN_SIDE


def test_a_reversed_or_far_off_box_is_drawn_in_order_at_the_edge():
    picture = images.draw_boxes(images.Image.new("RGB", (64, 64), "white"),
                                [{"box": [60, 60, 4, 4], "label": 1, "score": "high"},
                                 {"box": [10**30, 0, -(10**30), 10], "label": 2, "score": 0.5}],
                                colours=["#ff0000", "#0000ff"])  # fmt: skip
    rgb = np.asarray(picture)
    scale = picture.width / 64
    assert tuple(rgb[int(32 * scale), int(4 * scale) + 1]) == (255, 0, 0)  # the reversed box's left edge
    assert (rgb[: int(10 * scale), :, 2] > 200).any()  # the far-off box's outline along the picture


def test_caption_band_sits_over_the_image():
    item = items_by_task()["caption"]
    picture = render.input_picture(item.prediction, item.input)
    assert picture.height > picture.width  # the band adds height above the square image
    assert picture.getpixel((picture.width - 2, 2)) == (31, 36, 48)  # band colour at the top


@pytest.mark.parametrize("angle", [-0.15, 0.15])
def test_cartpole_pole_leans_the_way_the_observation_says(angle):
    frame = images.cartpole_frame([0.0, 0.0, angle, 0.0])
    middle, top = frame.width // 2, int(frame.height * 0.7) - 80  # about two thirds up the pole
    band = np.asarray(frame.crop((middle - 60, top - 10, middle + 60, top + 10)))
    pole = (band[..., 0] > 150) & (band[..., 2] < 140)  # the pole's tan colour
    columns = np.flatnonzero(pole.any(axis=0))
    assert columns.size and (columns.mean() > 60) == (angle > 0)


def test_lunar_lander_frame_places_the_lander_by_height():
    high = images.lunar_lander_frame([0, 1.4, 0, 0, 0, 0, 0, 0])
    low = images.lunar_lander_frame([0, 0.1, 0, 0, 0, 0, 1, 1])

    def lander_row(frame) -> float:
        rgb = np.asarray(frame)
        purple = (rgb[..., 0] == 128) & (rgb[..., 1] == 102) & (rgb[..., 2] == 230)
        return float(np.flatnonzero(purple.any(axis=1)).mean())

    assert lander_row(high) < lander_row(low)  # higher up = nearer the top of the picture
    green = np.asarray(low)[..., 1] == 221
    assert green.any()  # legs touching the ground are drawn green


def test_policy_panel_lists_every_action_with_card_or_default_labels():
    item = items_by_task()["policy"]
    view = render.answer_view(item.prediction, item.input)
    assert [a["action"] for a in view.actions] == ["push left", "push right"]
    assert [a["chosen"] for a in view.actions] == [False, True]
    assert view.answer == "push right (1)" and view.value == 21.5
    assert view.runner_ups == [("push left", 0.42)]
    named = render.answer_view(item.prediction, item.input, labels=["left", "right"])
    assert named.answer == "right (1)"
    assert render.input_picture(item.prediction, item.input).size == (600, 400)


def test_sequence_and_classification_runner_ups():
    items = items_by_task()
    seq = render.answer_view(items["sequence"].prediction, items["sequence"].input)
    assert seq.char_confidences[2] == ("1", 0.61)
    assert seq.runner_ups == [("02739", 0.42)]
    cls = render.answer_view(items["classification"].prediction, items["classification"].input)
    assert cls.runner_ups == [("7", 0.35), ("4", 0.05)]
    assert class_labels(items["classification"].prediction, []) == [str(i) for i in range(10)]


def test_image_inputs_and_unknown_shapes():
    picture = images.to_image(png(20, 10))
    assert picture.size == (20, 10)
    with pytest.raises(ValueError, match="shape"):
        images.to_image(np.zeros((2, 3, 4, 5)))


def test_dashboards_never_import_torch_or_training():
    code = ("import sys, dashboards.app, dashboards.cli, dashboards.launch; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('training')]; "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("task", "answer_colour"), [("detection", (230, 25, 75)), ("caption", (31, 36, 48))])
def test_blind_pictures_do_not_draw_the_answer(task, answer_colour):
    item = items_by_task()[task]

    def has(picture, colour) -> bool:
        return bool((np.asarray(picture.convert("RGB")) == colour).all(axis=-1).any())

    assert has(render.input_picture(item.prediction, item.input), answer_colour)  # box outline / caption band
    assert not has(render.input_picture(render.without_answer(item.prediction), item.input), answer_colour)
