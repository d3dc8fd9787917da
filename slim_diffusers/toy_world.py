"""A procedural, labelled image world where the class is decided by one object: the RoI is known.

Each image shows one saturated shape (its class: shape and colour together, ten classes) at a random
position and scale on a cluttered, textured background of desaturated colours. The background carries no
information about the class but costs bits to code, so a codec for machines gains by spending its rate on
the object. Every sample comes with the object's true mask and a plain caption ("a red circle").

The captions come from the generator, not from a captioning model: in this world they stand in for the
RoI-focused BLIP-2 captions of the real system.

Used by the tiny test datasets (:mod:`slim_diffusers.testing`), the Grad-CAM and evaluation tests, and the
toy-scale reproduction in ``benchmarks/toy/``. Everything is a pure function of ``(seed, index, size)``.
"""

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 30),
}
# ten classes; every shape comes in two colours and every colour in two or three shapes, so neither the
# colour nor the outline alone tells the class
CLASSES: Tuple[Tuple[str, str], ...] = (
    ("red", "circle"),
    ("blue", "circle"),
    ("blue", "square"),
    ("green", "square"),
    ("green", "triangle"),
    ("yellow", "triangle"),
    ("yellow", "diamond"),
    ("red", "diamond"),
    ("red", "cross"),
    ("blue", "cross"),
)
CLASS_NAMES: Tuple[str, ...] = tuple(f"{colour} {shape}" for colour, shape in CLASSES)
_SUPERSAMPLE = 4


@dataclass
class ToySample:
    image: Image.Image  # RGB, size × size
    label: int
    object_mask: np.ndarray  # float32 (size, size), 1 on the object
    caption: str


def caption_for(label: int) -> str:
    return f"a {CLASS_NAMES[label]}"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r / math.sqrt(2) * 1.15
    elif shape == "diamond":
        corners = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
        scale = r
    elif shape == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        scale = r * 1.1
    elif shape == "cross":
        w = 0.34
        corners = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        scale = r
    else:
        raise ValueError(shape)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in corners]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # smooth earthy colour field + fine grain + desaturated clutter strokes and blobs
    coarse = rng.uniform(60, 190, size=(4, 4, 1)) + rng.uniform(-25, 25, size=(4, 4, 3))
    field = np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    grey = field.mean(axis=2, keepdims=True)
    field = grey + 0.35 * (field - grey)  # keep the background desaturated: saturated colour means "object"
    field += rng.normal(0, 14, size=(size, size, 1)) + rng.normal(0, 5, size=(size, size, 3))
    image = Image.fromarray(field.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 12))):
        tone = int(rng.integers(30, 230))
        tint = rng.integers(-18, 19, size=3)
        colour = tuple(int(np.clip(tone + t, 0, 255)) for t in tint)
        x0, y0 = rng.uniform(-0.1, 1.1, 2) * size
        if rng.random() < 0.5:
            x1, y1 = np.array([x0, y0]) + rng.normal(0, size / 3, 2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=max(1, int(rng.integers(1, 4)) * size // 64))
        else:
            rx, ry = rng.uniform(0.03, 0.1, 2) * size
            draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=colour)
    return image


def render(label: int, rng: np.random.Generator, size: int = 64) -> ToySample:
    """One image of class ``label`` drawn with ``rng``."""
    colour, shape = CLASSES[label]
    background = _background(rng, size)
    big = size * _SUPERSAMPLE
    r = rng.uniform(0.16, 0.27) * big  # object spans about a third to a half of the image
    cx, cy = rng.uniform(r * 1.05, big - r * 1.05, 2)
    angle = rng.uniform(-0.35, 0.35)
    mask_big = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_big)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    alpha = mask_big.resize((size, size), Image.BOX)  # anti-aliased edge
    rgb = np.array(COLOURS[colour], np.float32) + rng.normal(0, 10, 3)
    shade = rng.normal(0, 6, size=(size, size, 1))  # a little texture on the object too
    obj = Image.fromarray((rgb + shade).clip(0, 255).astype(np.uint8))
    image = Image.composite(obj, background, alpha).filter(ImageFilter.SMOOTH_MORE if size < 48 else ImageFilter.SMOOTH)
    mask = (np.asarray(alpha, np.float32) / 255.0 >= 0.5).astype(np.float32)
    return ToySample(image=image, label=label, object_mask=mask, caption=caption_for(label))


def sample(index: int, seed: int = 0, size: int = 64) -> ToySample:
    """The ``index``-th image of the world with ``seed``: class ``index % 10``, everything else random."""
    rng = np.random.default_rng([seed, index, size])
    return render(index % len(CLASSES), rng, size)


def samples(n: int, seed: int = 0, size: int = 64, start: int = 0) -> List[ToySample]:
    return [sample(i, seed, size) for i in range(start, start + n)]


def as_dataset(n: int, seed: int = 0, size: int = 64, start: int = 0):
    """A ``datasets.Dataset`` with columns ``image``, ``label`` (a ClassLabel), ``object_mask``, ``caption``."""
    import datasets

    items = samples(n, seed, size, start)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
            "object_mask": datasets.Array2D(shape=(size, size), dtype="float32"),
            "caption": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [s.image for s in items],
            "label": [s.label for s in items],
            "object_mask": [s.object_mask for s in items],
            "caption": [s.caption for s in items],
        },
        features=features,
    )
