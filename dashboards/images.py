"""Pictures of audit inputs, drawn with Pillow: what an auditor looks at in the workbench.

Each function is pure (input in, ``PIL.Image`` out) so it is tested without Streamlit, and
``render.py`` decides which one a task kind needs. Inputs arrive as the wire's ``ModelInput``:
a numpy tensor (possibly with batch/channel axes of size 1) or ``ImageInput`` bytes.

Image bytes are decoded as serving decodes them (serving/inputs.py): only as the format they
declare (PNG or JPEG; Pillow would otherwise try its few dozen parsers), and only after the
header says the picture is within serving's pixel limit, so an oversized image (a decompression
bomb: a few kilobytes of PNG for 13,000 x 13,000 pixels) is refused at its header with one line
instead of being decoded in the dashboard process. :func:`image_size` reads the header only.

Environment frames are drawn from the observation vector alone (no gymnasium import: the
dashboard host installs no simulator); they follow gymnasium's geometry closely enough that an
auditor recognises the situation at a glance.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from auditstream.tasks.base import label_name
from auditstream.wire import ImageInput, ModelInput
from serving.inputs import MAX_IMAGE_PIXELS, PILLOW_FORMATS  # one rule for what an image may be

# Pixel budget of an image in the workbench: small inputs (8x8 digits) are upscaled with
# nearest-neighbour so the pixels stay crisp, never blurred.
DISPLAY_MIN_SIDE = 256
DISPLAY_MAX_SIDE = 720


class NotAPicture(ValueError):
    """A tensor with no picture form (its shape); the caller shows its raw values instead. An
    image whose bytes cannot be decoded raises a plain ``ValueError``: that item is malformed."""


BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def to_image(value: ModelInput, value_range: tuple[float, float] | None = None, ink: bool = False) -> Image.Image:
    """An input as a grayscale or RGB image.

    ``value_range`` maps tensor values to 0..255 (e.g. ``(0, 16)`` for sklearn digits); without
    it, uint8 tensors are taken as they are and float tensors are scaled by their own min/max.
    ``ink``: high values are ink, drawn dark on white paper as a person would write them.
    """
    if isinstance(value, ImageInput):
        image = _opened(value)
        try:
            image.load()
            return image.convert("RGB") if image.mode not in ("L", "RGB") else image
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct/zlib errors...
            raise _undecodable(value, e) from None
    array = np.asarray(value)
    while array.ndim > 2 and array.shape[0] == 1:  # batch / channel axes of size 1
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise NotAPicture(f"cannot show a tensor of shape {np.asarray(value).shape} as an image")
    if array.dtype == np.uint8 and value_range is None:
        pixels = array
    else:
        low, high = value_range or (float(np.min(array)), float(np.max(array)))
        span = (high - low) or 1.0
        pixels = (np.clip((array.astype(np.float64) - low) / span, 0.0, 1.0) * 255).round().astype(np.uint8)
    if ink:
        pixels = 255 - pixels
    return Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")


def image_size(value: ImageInput) -> tuple[int, int]:
    """(width, height) of an image input from its header, without decoding the pixels (an
    oversized one's too: nothing is decoded); ``ValueError`` for bytes :func:`to_image` refuses."""
    with _opened(value, max_pixels=None) as image:
        return image.size


def _opened(value: ImageInput, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """The image with only its header read: the declared format only, within ``max_pixels``."""
    pillow_format = PILLOW_FORMATS.get(value.format)
    if pillow_format is None:
        raise ValueError(f"image format {value.format!r} is none of {', '.join(PILLOW_FORMATS)}")
    try:
        image = Image.open(io.BytesIO(value.data), formats=[pillow_format])  # reads the header only
    except Exception as e:  # noqa: BLE001 - hostile bytes make a parser raise anything
        raise _undecodable(value, e) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:  # before a single pixel is decompressed
        image.close()
        raise ValueError(f"the {value.format.upper()} input is {width:,}×{height:,} pixels, over the "
                         f"{max_pixels:,} this dashboard (and serving) decode; not drawn")
    return image


def _undecodable(value: ImageInput, e: Exception) -> ValueError:
    return ValueError(f"the {value.format.upper()} input ({len(value.data):,} bytes) cannot be decoded as an "
                      f"image ({type(e).__name__}: {str(e)[:200]})")


def for_display(image: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """Scale an image into the workbench's pixel budget (integer upscale for tiny inputs)."""
    width, height = image.size
    if min(width, height) < min_side:
        factor = max(1, math.ceil(min_side / min(width, height)))
        factor = min(factor, max(1, DISPLAY_MAX_SIDE // max(width, height)))
        return image.resize((width * factor, height * factor), Image.NEAREST)
    if max(width, height) > DISPLAY_MAX_SIDE:
        image = image.copy()
        image.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    return image


def draw_boxes(image: Image.Image, boxes: Sequence[dict[str, Any]], labels: Sequence[str] = (),
               colours: Sequence[str] | None = None, numbers: Sequence[int] | None = None,
               legend: Sequence[tuple[str, str]] = (), min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:  # fmt: skip
    """The image with each ``{"box": [x0, y0, x1, y1], "label", "score"}`` outlined and tagged.

    Box coordinates are in the input's pixels; the picture is upscaled first (to ``min_side``)
    so thin outlines and tags stay legible on small inputs. ``colours``: one per box (say, by
    its status), else a colour per box number; ``numbers``: the tag numbers (1, 2, ... by
    default), so a box keeps its number when others are left out; ``legend``: (colour, text)
    entries written in a band under the picture, which keeps the image coordinates unshifted.
    Whatever a stored answer holds is drawn or skipped, never raised: a box that is not four
    finite numbers is left out, a reversed or far-off one drawn in order at the picture's edge,
    a score that is not a finite number not written.
    """
    base = image.convert("RGB")
    scaled = for_display(base, min_side)
    sx, sy = scaled.width / base.width, scaled.height / base.height
    draw = ImageDraw.Draw(scaled)
    font = _font(14)
    for i, det in enumerate(boxes):
        rect = _drawable_rect(det.get("box"), scaled.size, sx, sy)
        if rect is None:  # not four finite numbers: nothing to outline (the table says so)
            continue
        number = numbers[i] if numbers is not None else i + 1
        colour = colours[i] if colours is not None else BOX_COLOURS[i % len(BOX_COLOURS)]
        draw.rectangle(rect, outline=colour, width=3)
        tag = f"#{number}: {label_name(det.get('label'), labels)}"
        score = _finite(det.get("score"))
        if score is not None:
            tag += f" ({score:.2f})"
        left, top, right, bottom = draw.textbbox((rect[0], rect[1]), tag, font=font)
        tag_y = max(0.0, rect[1] - (bottom - top) - 4)
        draw.rectangle((rect[0], tag_y, rect[0] + (right - left) + 6, tag_y + (bottom - top) + 4), fill=colour)
        draw.text((rect[0] + 3, tag_y + 1), tag, fill="white", font=font)
    return _with_legend(scaled, legend) if legend else scaled


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (text, bools, NaN, infinities, ints beyond a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _drawable_rect(box: Any, size: tuple[int, int], sx: float, sy: float
                   ) -> tuple[float, float, float, float] | None:  # fmt: skip
    """``box`` in display pixels, corners in order and clamped to a little past the picture (a
    model's box may be reversed or lie far outside; Pillow refuses the one and overflows on the
    other), or None when it is not four finite numbers."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    coords = [_finite(v) for v in box]
    if any(v is None for v in coords):
        return None
    x0, y0, x1, y1 = coords
    width, height = size
    xs = sorted(min(max(v * sx, -4.0), width + 4.0) for v in (x0, x1))  # type: ignore[operator]
    ys = sorted(min(max(v * sy, -4.0), height + 4.0) for v in (y0, y1))  # type: ignore[operator]
    return xs[0], ys[0], xs[1], ys[1]


def _with_legend(image: Image.Image, legend: Sequence[tuple[str, str]]) -> Image.Image:
    """``image`` over a white band with a colour swatch and a text per legend entry, in one row."""
    font = _font(15)
    band = 30
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    x = 8.0
    for colour, text in legend:
        y = image.height + band / 2
        draw.rectangle((x, y - 7, x + 14, y + 7), fill=colour)
        draw.text((x + 20, y), text, fill="#222222", font=font, anchor="lm")
        x += 20 + draw.textlength(text, font=font) + 18
    return out


def caption_over(image: Image.Image, caption: str) -> Image.Image:
    """The image with the model's caption in a band above it, wrapped to the image width."""
    body = for_display(image.convert("RGB"))
    font = _font(18)
    draw = ImageDraw.Draw(body)
    lines, line = [], ""
    for word in str(caption).split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > body.width - 20:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    band = 14 + 24 * len(lines)
    out = Image.new("RGB", (body.width, body.height + band), "#1f2430")
    text = ImageDraw.Draw(out)
    for i, text_line in enumerate(lines):
        text.text((10, 8 + 24 * i), text_line, fill="white", font=font)
    out.paste(body, (0, band))
    return out


def cartpole_frame(obs: Sequence[float], width: int = 600, height: int = 400) -> Image.Image:
    """A CartPole frame from ``[cart position, cart velocity, pole angle (rad), angular velocity]``.

    Geometry follows gymnasium: the track spans +-2.4 m (beyond that the episode ends), the pole
    is 1 m long, and the episode also ends when the pole leans past 12 degrees.
    """
    x, x_dot, theta, theta_dot = (float(v) for v in np.asarray(obs, dtype=np.float64).reshape(-1)[:4])
    scale = width / 5.6  # the +-2.4 m track plus a margin, so its end marks stay visible
    ground = height * 0.7
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line((0, ground, width, ground), fill="black", width=2)
    for edge in (-2.4, 2.4):  # where the episode ends
        ex = width / 2 + edge * scale
        draw.line((ex, ground - 40, ex, ground + 10), fill="#cc3333", width=2)
    cx = width / 2 + x * scale
    cart = (cx - 25, ground - 15, cx + 25, ground + 15)
    draw.rectangle(cart, fill="#333333")
    pole_len = 1.0 * scale
    tip = (cx + pole_len * math.sin(theta), ground - 15 - pole_len * math.cos(theta))
    leaning_out = abs(theta) > math.radians(12)
    draw.line((cx, ground - 15, *tip), fill="#cc3333" if leaning_out else "#ca9865", width=10)
    draw.ellipse((cx - 5, ground - 20, cx + 5, ground - 10), fill="#8184cb")
    _arrow(draw, (cx, ground + 30), (cx + 40 * max(-2.0, min(2.0, x_dot)), ground + 30), "#4363d8")
    font = _font(15)
    draw.text(
        (10, 10),
        f"x = {x:+.2f} m   v = {x_dot:+.2f} m/s\nangle = {math.degrees(theta):+.1f} deg   "
        f"angular v = {theta_dot:+.2f} rad/s",
        fill="black",
        font=font,
    )
    return image


def lunar_lander_frame(obs: Sequence[float], width: int = 600, height: int = 400) -> Image.Image:
    """A LunarLander frame from gymnasium's 8-dim observation.

    ``[x, y, vx, vy, angle, angular velocity, left leg contact, right leg contact]``; x and y are
    normalised so the landing pad is centred at x = 0 and lies at y = 0, and the lander starts
    near y = 1.4. The pad sits between x = -0.2 and 0.2.
    """
    values = np.asarray(obs, dtype=np.float64).reshape(-1)[:8]
    x, y, vx, vy, angle, omega, left, right = (float(v) for v in values)
    ground = height * 0.85
    sx, sy = width / 2.4, (ground - 30) / 1.6  # x in [-1.2, 1.2]; y in [0, 1.6]
    image = Image.new("RGB", (width, height), "#0b0d1a")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, ground, width, height), fill="#bbbbbb")
    for px in (-0.2, 0.2):  # pad flags
        fx = width / 2 + px * sx
        draw.line((fx, ground, fx, ground - 30), fill="white", width=2)
        draw.polygon([(fx, ground - 30), (fx + 14, ground - 25), (fx, ground - 20)], fill="#e6c619")
    cx, cy = width / 2 + x * sx, ground - y * sy
    body = [(-20, -15), (20, -15), (26, 9), (-26, 9)]
    legs = [((-20, 9), (-34, 28)), ((20, 9), (34, 28))]

    def rotate(px: float, py: float) -> tuple[float, float]:
        c, s = math.cos(-angle), math.sin(-angle)  # gymnasium's angle is counter-clockwise
        return cx + px * c - py * s, cy + px * s + py * c

    draw.polygon([rotate(*p) for p in body], fill="#8066e6", outline="white")
    for (a, b), contact in zip(legs, (left, right)):
        draw.line((*rotate(*a), *rotate(*b)), fill="#44dd66" if contact > 0.5 else "#cccccc", width=4)
    _arrow(draw, (cx, cy), (cx + 40 * vx, cy - 40 * vy), "#42d4f4")
    font = _font(15)
    draw.text(
        (10, 10),
        f"x = {x:+.2f}  y = {y:+.2f}   vx = {vx:+.2f}  vy = {vy:+.2f}\n"
        f"angle = {math.degrees(angle):+.1f} deg  angular v = {omega:+.2f}   "
        f"legs: {'L' if left > 0.5 else '-'}{'R' if right > 0.5 else '-'}",
        fill="white",
        font=font,
    )
    return image


def policy_frame(obs: Sequence[float]) -> Image.Image | None:
    """The environment frame for an observation, chosen by its length; ``None`` if unknown."""
    size = int(np.asarray(obs).size)
    if size == 4:
        return cartpole_frame(obs)
    if size == 8:
        return lunar_lander_frame(obs)
    return None


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], colour: str) -> None:
    draw.line((*start, *end), fill=colour, width=3)
    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy)
    if length < 4:
        return
    ux, uy = dx / length, dy / length
    head = [end, (end[0] - 9 * ux + 5 * uy, end[1] - 9 * uy - 5 * ux), (end[0] - 9 * ux - 5 * uy, end[1] - 9 * uy + 5 * ux)]
    draw.polygon(head, fill=colour)


def with_border(image: Image.Image, colour: str = "#999999") -> Image.Image:
    """A thin frame, so a white envelope does not melt into a white page."""
    return ImageOps.expand(image.convert("RGB"), border=2, fill=colour)
