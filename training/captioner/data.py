"""Generated scenes of coloured shapes (Sort-of-CLEVR-like, numpy only) and their one true caption.

A scene is a 64x64 RGB image (uint8, light grey background) with 2-6 objects. Each object has a
colour of its own (six colours, at most one object of each, as in Sort-of-CLEVR), a shape
(circle, square, triangle) and a position. The caption is *canonical*: one grammar, one order,
so a scene has exactly one right caption and exact match is a fair measure::

    caption  := COUNT "objects" ":" object ("," object)*
    object   := COLOUR SHAPE REGION "near" COLOUR "far" COLOUR

    three objects: red circle top left near blue far green, green square bottom right near blue
    far red, blue triangle center near red far green

Objects are listed in the fixed colour order (:data:`COLOURS`). ``REGION`` is the cell of a 3x3
grid that holds the object's centre (``top left`` .. ``center`` .. ``bottom right``, one or two
words). ``near``/``far`` name the colour of the object whose centre is nearest / farthest from
this one (with two objects, the other one both times). COUNT, colour, shape and region are the
*non-relational* facts (one object or the whole scene decides them); ``near`` and ``far`` are the
*relational* ones (they compare every pair, the part plain CNNs fail at in Santoro et al. 2017).

Ambiguity is kept out of the ground truth by rejection: an object centre within
:data:`REGION_MARGIN_PX` of a region border is moved, and a scene in which some object's nearest
or farthest neighbour wins by less than :data:`DISTANCE_MARGIN_PX` is drawn again, so no scene
asks a person (or the model) to judge a near-tie. A rejected scene is drawn again with the same
number of objects, so the count is uniform over 2..6. Objects never overlap.

Every split has its own seed stream (:data:`SPLIT_SEEDS`): training batches, the confidence
selection set, the certificate set and the test set never share a scene generator. Split ``s``
with seed ``k`` draws from ``default_rng(SPLIT_SEEDS[s] + k)``; the bases are
:data:`~training.captioner.args.SEED_SPAN` apart and every ``k`` is below it (``--seed`` refuses
more, :func:`split_scenes` and :func:`training_batches` too), so no seed makes one split's
stream another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.captioner.args import SEED_SPAN

IMAGE_SIZE = 64
MIN_OBJECTS, MAX_OBJECTS = 2, 6
COLOURS = ("red", "green", "blue", "orange", "gray", "yellow")
RGB = {"red": (214, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "orange": (245, 140, 20),
       "gray": (110, 110, 110), "yellow": (225, 205, 20)}
SHAPES = ("circle", "square", "triangle")
ROWS, COLUMNS = ("top", "", "bottom"), ("left", "", "right")
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
BACKGROUND = 235
RADIUS_PX = 5.0  # half the side of a square, the radius of a circle, half the base of a triangle
REGION_MARGIN_PX = 2.0  # an object centre keeps this far from the 3x3 grid's borders
DISTANCE_MARGIN_PX = 3.0  # the nearest (farthest) object beats the runner-up by at least this
MIN_GAP_PX = 2.0  # between two objects' bounding circles
MIN_CENTRE_DISTANCE_PX = 2 * RADIUS_PX * 1.42 + MIN_GAP_PX  # a square's corner reaches 1.42 r

# The vocabulary: every word a caption can hold, special tokens first. The card's ``labels``.
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
PUNCTUATION = (":", ",")
WORDS = (*COUNT_WORDS.values(), "objects", *COLOURS, *SHAPES, "top", "bottom", "left", "right", "center",
         "near", "far")
VOCABULARY = (*SPECIALS, *PUNCTUATION, *WORDS)
TOKEN_ID = {token: i for i, token in enumerate(VOCABULARY)}
PAD_ID, BOS_ID, EOS_ID = TOKEN_ID[PAD], TOKEN_ID[BOS], TOKEN_ID[EOS]
# COUNT objects : + per object (colour shape region(<=2) near c far c ,) + <eos>
MAX_TOKENS = 3 + MAX_OBJECTS * 9 - 1 + 1

# Seeds of the split generators, so no two splits ever draw the same scenes: split s with seed k
# (0 <= k < SEED_SPAN) draws from default_rng(SPLIT_SEEDS[s] + k). Fixed: the shipped captioner's
# card records its certificate scenes by this seed.
SPLIT_SEEDS = {"train": 1_000_000, "selection": 2_000_000, "certificate": 3_000_000, "test": 4_000_000}
# The streams [base, base + SEED_SPAN) of two splits never meet.
assert all(b - a >= SEED_SPAN for a, b in zip(sorted(SPLIT_SEEDS.values()), sorted(SPLIT_SEEDS.values())[1:])), \
    f"split seeds {SPLIT_SEEDS} must be at least SEED_SPAN = {SEED_SPAN} apart"


def stream_seed(split: str, seed: int) -> int:
    """The generator seed of ``split``'s scenes for ``seed`` (``0 <= seed <`` :data:`SEED_SPAN`)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; one of {sorted(SPLIT_SEEDS)}")
    if not 0 <= seed < SEED_SPAN:
        raise ValueError(f"scene seed {seed} of split {split!r} must be from 0 to {SEED_SPAN - 1}: from {SEED_SPAN} "
                         f"on, split {split!r} would draw another split's scenes")
    return SPLIT_SEEDS[split] + seed


@dataclass(frozen=True)
class Scene:
    """What a scene holds, in the canonical (colour) order."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    centres: np.ndarray  # [n, 2] (x, y) in pixels

    @property
    def n(self) -> int:
        return len(self.colours)

    def regions(self) -> list[str]:
        return [region_of(x, y) for x, y in self.centres]

    def neighbours(self) -> tuple[list[int], list[int]]:
        """Index of each object's nearest and of its farthest other object."""
        d = np.linalg.norm(self.centres[:, None] - self.centres[None], axis=-1)
        near = np.where(np.eye(self.n, dtype=bool), np.inf, d).argmin(1)
        far = np.where(np.eye(self.n, dtype=bool), -np.inf, d).argmax(1)
        return [int(i) for i in near], [int(i) for i in far]

    def caption(self) -> str:
        return words_to_text(self.tokens())

    def tokens(self) -> list[str]:
        """The canonical caption as vocabulary tokens (without <bos>/<eos>)."""
        near, far = self.neighbours()
        out = [COUNT_WORDS[self.n], "objects", ":"]
        for i, region in enumerate(self.regions()):
            if i:
                out.append(",")
            out += [self.colours[i], self.shapes[i], *region.split(), "near", self.colours[near[i]], "far",
                    self.colours[far[i]]]
        return out


def region_of(x: float, y: float) -> str:
    """The 3x3 grid cell of a point: ``top left`` .. ``center`` .. ``bottom right``."""
    third = IMAGE_SIZE / 3
    row, column = ROWS[min(int(y // third), 2)], COLUMNS[min(int(x // third), 2)]
    return " ".join(w for w in (row, column) if w) or "center"


def words_to_text(tokens: list[str]) -> str:
    """Tokens as a sentence: no space before ``:`` and ``,`` (the form people read and write)."""
    text = " ".join(tokens)
    for mark in PUNCTUATION:
        text = text.replace(f" {mark}", mark)
    return text


def _near_border(v: float) -> bool:
    third = IMAGE_SIZE / 3
    return min(abs(v - third), abs(v - 2 * third)) < REGION_MARGIN_PX


def _unambiguous(centres: np.ndarray) -> bool:
    n = len(centres)
    if n < 3:
        return True  # the other object is both the nearest and the farthest
    d = np.sort(np.linalg.norm(centres[:, None] - centres[None], axis=-1), axis=1)[:, 1:]  # self (0) dropped
    return bool((d[:, 1] - d[:, 0] >= DISTANCE_MARGIN_PX).all() and (d[:, -1] - d[:, -2] >= DISTANCE_MARGIN_PX).all())


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    """One scene of 2..``max_objects`` objects, drawn until it is unambiguous (module docstring)."""
    low, high = RADIUS_PX + 1, IMAGE_SIZE - RADIUS_PX - 1
    # The count is drawn once: redrawing it with the rejected positions would make crowded scenes
    # (more pairs, more near-ties) rare -- about 1 in 100 scenes with six objects instead of 1 in 5.
    n = int(rng.integers(MIN_OBJECTS, max_objects + 1))
    while True:
        colours = sorted(rng.choice(len(COLOURS), n, replace=False))
        centres: list[tuple[float, float]] = []
        for _ in range(200 * n):
            # Python floats, not numpy arrays: a crowded scene tries hundreds of candidates, and
            # per-candidate numpy calls were most of a training step's data time.
            x, y = rng.uniform(low, high, 2).tolist()
            if _near_border(x) or _near_border(y):
                continue
            if all(math.hypot(x - a, y - b) >= MIN_CENTRE_DISTANCE_PX for a, b in centres):
                centres.append((x, y))
                if len(centres) == n:
                    break
        if len(centres) < n or not _unambiguous(np.array(centres)):
            continue
        return Scene(tuple(COLOURS[i] for i in colours), tuple(SHAPES[int(s)] for s in rng.integers(0, 3, n)),
                     np.round(np.array(centres), 2))


_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres


def shape_mask(shape: str, x: float, y: float, r: float = RADIUS_PX) -> np.ndarray:
    if shape == "circle":
        return (_X - x) ** 2 + (_Y - y) ** 2 <= r * r
    if shape == "square":
        return (np.abs(_X - x) <= r) & (np.abs(_Y - y) <= r)
    if shape == "triangle":  # apex up, base 2r wide at y + r
        top = y - r
        return (_Y >= top) & (_Y <= y + r) & (np.abs(_X - x) <= (_Y - top) / 2)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def render(scene: Scene) -> np.ndarray:
    """The scene as uint8 [64, 64, 3]."""
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, np.uint8)
    for colour, shape, (x, y) in zip(scene.colours, scene.shapes, scene.centres):
        image[shape_mask(shape, x, y)] = RGB[colour]
    return image


def encode(tokens: list[str]) -> np.ndarray:
    """Token ids of a caption with <eos>, padded to :data:`MAX_TOKENS`."""
    ids = [TOKEN_ID[t] for t in tokens] + [EOS_ID]
    assert len(ids) <= MAX_TOKENS, f"caption of {len(ids)} tokens exceeds {MAX_TOKENS}"
    return np.array(ids + [PAD_ID] * (MAX_TOKENS - len(ids)), np.int64)


def decode(ids: np.ndarray) -> list[str]:
    """Tokens up to the first <eos> (specials dropped)."""
    out = []
    for i in ids:
        if int(i) == EOS_ID:
            break
        if int(i) >= len(SPECIALS):
            out.append(VOCABULARY[int(i)])
    return out


@dataclass(frozen=True)
class SceneSet:
    images: np.ndarray  # uint8 [n, 64, 64, 3]
    targets: np.ndarray  # int64 [n, MAX_TOKENS]
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.scenes)

    def captions(self) -> list[str]:
        return [s.caption() for s in self.scenes]


def make_scenes(n: int, rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> SceneSet:
    scenes = [sample_scene(rng, max_objects) for _ in range(n)]
    images = np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    targets = np.stack([encode(s.tokens()) for s in scenes]) if scenes else np.zeros((0, MAX_TOKENS), np.int64)
    return SceneSet(images, targets, scenes)


def split_scenes(split: str, n: int, seed: int = 0) -> SceneSet:
    """``n`` scenes of one split (``selection``, ``certificate``, ``test``; ``train`` for tests);
    ``seed`` (0 .. :data:`SEED_SPAN` - 1) picks another stretch of the split's scenes."""
    return make_scenes(n, np.random.default_rng(stream_seed(split, seed)))


def training_batches(batch_size: int, steps: int, seed: int, max_objects: int = MAX_OBJECTS):
    """``steps`` fresh batches of training scenes: (images, targets)."""
    rng = np.random.default_rng(stream_seed("train", seed))
    for _ in range(steps):
        data = make_scenes(batch_size, rng, max_objects)
        yield data.images, data.targets


def facts(tokens: list[str]) -> tuple[str | None, dict[str, tuple[str, ...]]]:
    """A caption read back: (count word, {colour: (shape, region, near colour, far colour)}).

    Tolerant: an object phrase that does not follow the grammar is skipped, so a wrong caption
    still scores the facts it got right (relational and non-relational accuracy)."""
    count = tokens[0] if tokens and tokens[0] in COUNT_WORDS.values() else None
    body = tokens[3:] if tokens[1:3] == ["objects", ":"] else []
    objects: dict[str, tuple[str, ...]] = {}
    phrase: list[str] = []
    for token in [*body, ","]:
        if token != ",":
            phrase.append(token)
            continue
        if len(phrase) >= 6 and phrase[0] in COLOURS and phrase[-4] == "near" and phrase[-2] == "far":
            objects.setdefault(phrase[0], (phrase[1], " ".join(phrase[2:-4]), phrase[-3], phrase[-1]))
        phrase = []
    return count, objects


def fact_scores(predicted: list[str], scene: Scene) -> tuple[int, int, int, int]:
    """(non-relational right, of, relational right, of) for one predicted caption.

    Non-relational facts: the count, and for each object its shape and region; relational: for
    each object its nearest and its farthest other object."""
    count, objects = facts(predicted)
    near, far = scene.neighbours()
    regions = scene.regions()
    non_rel, rel = int(count == COUNT_WORDS[scene.n]), 0
    for i, colour in enumerate(scene.colours):
        got = objects.get(colour)
        if got is None:
            continue
        non_rel += (got[0] == scene.shapes[i]) + (got[1] == regions[i])
        rel += (got[2] == scene.colours[near[i]]) + (got[3] == scene.colours[far[i]])
    return non_rel, 1 + 2 * scene.n, rel, 2 * scene.n
