"""Load generator (``auditstream produce --model NAME --rate R --count N``): requests that fit
the model card's input spec, produced to ``requests.<model>`` at a steady rate.

Sources: ``random`` (default; standard-normal floats or random integers of the spec's dtype and
shape), ``png`` (random grayscale images encoded as PNG, for image models: exercises the image
decoder), ``digits`` (scikit-learn's bundled 8×8 digits, upscaled by an integer factor to the
spec's height × width; chosen automatically when the card's ``extra.loadgen_source`` says
``digits``; needs scikit-learn, which a serving host may not have).
"""

from __future__ import annotations

import io
import itertools
import time
import typing
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from auditstream.errors import ConfigError
from auditstream.kafka import Producer
from auditstream.registry import ModelCard
from auditstream.wire import CONTENT_TYPE_HEADER, REQUEST_CONTENT_TYPE, ImageInput, InferenceRequest, ModelInput
from serving.cli import Source
from serving.inputs import image_hw

SOURCES = typing.get_args(Source)  # ("auto", "random", "png", "digits"): produce's --source


def _random_tensor(rng: np.random.Generator, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    high = 256 if dtype == np.uint8 else 10
    return rng.integers(0, high, size=shape).astype(dtype)


def _digits(card: ModelCard) -> Iterator[ModelInput]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    spec = card.inputs[0]
    height, width = image_hw(spec)
    if height % 8 or width % 8:
        raise ValueError(f"digits are 8x8; model {card.name} takes {height}x{width}, not a multiple of 8")
    images = load_digits().images  # values 0..16
    scale = np.ones((height // 8, width // 8))
    dtype = np.dtype(spec.dtype)
    peak = 255.0 if dtype == np.uint8 else 1.0
    while True:
        for img in images:
            yield (np.kron(img, scale) * (peak / 16.0)).astype(dtype).reshape(spec.shape[1:])


def inputs_for(card: ModelCard, source: str = "auto", seed: int = 0) -> Iterator[ModelInput]:
    """An endless stream of inputs that fit ``card``'s input spec.

    Checked here, before anything is sent: a source that is not one of :data:`SOURCES`, or that
    does not fit the card (png for a tensor model, digits for a size not a multiple of 8, a dtype
    the wire does not carry, scikit-learn missing), is refused with :class:`ConfigError` naming
    ``--source`` -- the first input is made and encoded as a request, so any such mismatch shows
    now, not as a traceback at the first send."""
    if source not in SOURCES:
        raise ConfigError("--source", source, f"one of {', '.join(SOURCES)}")
    resolved = card.extra.get("loadgen_source", "random") if source == "auto" else source
    if resolved not in SOURCES[1:]:
        raise ConfigError("--source", source, f"a source the card names in extra.loadgen_source ({resolved!r} is "
                          f"none of {', '.join(SOURCES[1:])}); give --source random")
    shown = source if source == resolved else f"{source} (the card's {resolved})"
    inputs = _generate(card, resolved, seed)
    try:
        first = next(inputs)
        InferenceRequest("loadgen-check", card.name, first, 1.0).to_bytes()
    except ImportError as e:
        raise ConfigError("--source", shown, f"a source this host can make: {resolved} needs the '{e.name}' "
                          "package (the train extra); or give --source random") from None
    except ValueError as e:  # DecodeError included: the card's input does not take this source
        raise ConfigError("--source", shown, f"a source whose inputs fit model {card.name}'s input "
                          f"{card.inputs[0].name} {card.inputs[0].dtype} {card.inputs[0].shape}: {e}") from None
    return itertools.chain([first], inputs)


def _generate(card: ModelCard, source: str, seed: int) -> Iterator[ModelInput]:
    if source == "digits":
        yield from _digits(card)
        return
    spec = card.inputs[0]
    rng = np.random.default_rng(seed)
    shape = [d if d is not None else 1 for d in spec.shape[1:]]
    if source == "png":
        from PIL import Image

        height, width = image_hw(spec)
        while True:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L").save(buf, format="PNG")
            yield ImageInput(buf.getvalue(), "png")
    while True:
        yield _random_tensor(rng, np.dtype(spec.dtype), shape)


@dataclass
class ProduceStats:
    request_ids: list[str] = field(default_factory=list)
    created_at_s: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    encode_s: float = 0.0  # time spent in InferenceRequest.to_bytes


def produce_requests(producer: Producer, topic: str, model: str, inputs: Iterator[ModelInput], count: int,
                     rate_per_s: float = 0.0, id_prefix: str | None = None, progress: bool = True) -> ProduceStats:
    """Send ``count`` requests (paced at ``rate_per_s``; 0 = as fast as possible), flush, verify."""
    from tqdm import tqdm

    if count < 0 or rate_per_s < 0:
        raise ValueError(f"count={count} and rate_per_s={rate_per_s} must be >= 0")
    prefix = id_prefix or uuid.uuid4().hex[:12]
    stats = ProduceStats()
    started = time.monotonic()
    bar = tqdm(total=count, desc=f"produce {model}", unit="req", disable=not progress, mininterval=0.5)
    for i in range(count):
        if rate_per_s:
            delay = started + i / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        request_id = f"{prefix}-{i}"
        now = time.time()
        t0 = time.perf_counter()
        request = InferenceRequest(request_id, model, next(inputs), now)
        value = request.to_bytes()
        stats.encode_s += time.perf_counter() - t0
        producer.send(topic, request.key, value, ((CONTENT_TYPE_HEADER, REQUEST_CONTENT_TYPE),))
        stats.request_ids.append(request_id)
        stats.created_at_s[request_id] = now
        bar.update(1)
    producer.flush(60.0)
    bar.close()
    stats.elapsed_s = time.monotonic() - started
    return stats
