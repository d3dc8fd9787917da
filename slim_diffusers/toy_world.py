"""A procedural, labelled image world where the class is decided by the fine detail of one object.

Version 2. Each image (96×96 by default) shows one **target** object among a few **distractors** on a
cluttered, grainy background:

- **Classes** (20): a coarse **kind** — the target's outline: circle, square, triangle, star, cross — times a
  fine **variant** — its markings: plain, striped, spotted, checked. Label ``kind_index * 4 + variant_index``
  (``kind_of``, ``variant_of``); ``CLASS_NAMES`` reads "plain circle", "checked star", ….
- **What decides the class** is the target's outline and its markings, nothing else. Its colour is a random
  saturated hue in every image: it tells which object is the target, not which class. The markings are
  luminance patterns (every image codec subsamples chroma, so markings in chroma alone would vanish at any
  quality) with one scale per variant, at 96²: stripes of period 9 px, spots on a 10 px grid, checks of period
  10 px (5 px squares; ±15 % per image), 28–64 grey levels darker or lighter than the target. (A first version had
  stripes of 6 px, spots on 5 px and checks of 3.5 px at 16–52 levels: the toy VAE, which every codec of the
  latent decodes through, kept 64 %, 28 % and 10 % of them — the world was changed before any SLIM number.) Fine, faint detail is what a
  codec drops first: as the rate falls, a classifier trained on clean images first loses the variant (a
  target whose markings are gone looks plain, so about a quarter of the classes stay right while the kind is
  kept), then the outline (chance, 1/20). Coarser and stronger markings survive longer, which spreads the
  loss over a decade of bpp instead of a cliff (``benchmarks/toy/calibrate_world.py`` measures it).
- **The target** covers about a tenth of the frame (radius 15–21 % of the image side), tilted by up to 20°.
- **Distractors** (2–4 per image): objects of any kind, up to the target's size, desaturated and plain. They
  cost bits and draw attention but say nothing about the class; the target is painted over them.
- **Background**: a smooth, desaturated colour field with grain and clutter strokes and blobs, as in v1: it
  costs bits to code and carries nothing, so a codec for machines gains by spending its rate on the target.
- **Captions** name the kind only ("a star"), never the markings ("a checked star"): that is the detail a
  RoI-focused BLIP-2 caption gives of a small object. So the caption carries log2(5) ≈ 2.3 of the class's
  log2(20) ≈ 4.3 bits, and the variant must come through the image.

Every sample carries the target's true mask (and, for analysis, where the distractors show). The captions
come from the generator, not from a captioning model: in this world they stand in for the RoI-focused
BLIP-2 captions of the real system.

Used by the tiny test datasets (:mod:`slim_diffusers.testing`), the Grad-CAM and evaluation tests, and the
toy-scale reproduction in ``benchmarks/toy/``. Everything is a pure function of ``(seed, index, size)``.
Marking periods scale with ``size`` but never go below 2.5 px, so at the 32–64 px of the tests the markings
are coarse for their objects.
"""

import colorsys
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# no markings first, then the markings; all three of one scale (9–10 px at 96²), told apart by their shape
VARIANTS: Tuple[str, ...] = ("plain", "striped", "spotted", "checked")
CLASSES: Tuple[Tuple[str, str], ...] = tuple((kind, variant) for kind in KINDS for variant in VARIANTS)
CLASS_NAMES: Tuple[str, ...] = tuple(f"{variant} {kind}" for kind, variant in CLASSES)
DEFAULT_SIZE = 96

# marking period in pixels of a 96² image (scaled with the image size); the checks' squares are half of it. "plain"
# has one too, unused: every variant draws the same random numbers, so one rng gives the same scene whatever the
# variant (the tests compare variants that way)
_PERIOD = {"plain": 9.0, "striped": 9.0, "spotted": 10.0, "checked": 10.0}
_MIN_PERIOD = 2.5
_MARKING_CONTRAST = (28.0, 64.0)  # luminance step between a target's base colour and its markings, in grey levels
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SUPERSAMPLE = 4


@dataclass
class ToySample:
    image: Image.Image  # RGB, size × size
    label: int
    object_mask: np.ndarray  # float32 (size, size), 1 on the target object
    caption: str
    distractor_mask: Optional[np.ndarray] = None  # float32 (size, size), 1 where a distractor is visible


def kind_of(label: int) -> int:
    """Index into ``KINDS`` of the class's coarse object."""
    return label // len(VARIANTS)


def variant_of(label: int) -> int:
    """Index into ``VARIANTS`` of the class's markings."""
    return label % len(VARIANTS)


def caption_for(label: int) -> str:
    """The coarse caption: the kind only, as a RoI-focused BLIP-2 caption would say it."""
    return f"a {KINDS[kind_of(label)]}"


def caption_for_class_name(name: str) -> str:
    """The caption of a class given by name ("striped star" -> "a star"); empty for a name that is not a class."""
    return caption_for(CLASS_NAMES.index(name)) if name in CLASS_NAMES else ""


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if kind == "circle":
        corners = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
        scale = r
    elif kind == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r * 0.86
    elif kind == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        scale = r * 1.2
    elif kind == "star":
        corners = [((1.0 if i % 2 == 0 else 0.5) * math.cos(a), (1.0 if i % 2 == 0 else 0.5) * math.sin(a))
                   for i, a in enumerate(-math.pi / 2 + np.arange(10) * math.pi / 5)]
        scale = r * 1.15
    elif kind == "cross":
        w = 0.38
        corners = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        scale = r
    else:
        raise ValueError(f"unknown kind {kind!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in corners]


def _box(cx: float, cy: float, r: float, size: int) -> Tuple[int, int, int, int]:
    reach = 1.25 * r + 1  # every outline lies within 1.2 r of its centre
    return (max(0, int(cx - reach)), max(0, int(cy - reach)), min(size, int(cx + reach) + 1), min(size, int(cy + reach) + 1))


def _alpha(kind: str, cx: float, cy: float, r: float, angle: float, box) -> np.ndarray:
    """Anti-aliased coverage of the outline over ``box``: drawn 4× larger, then averaged down."""
    x0, y0, x1, y1 = box
    s = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    points = [((x - x0) * s, (y - y0) * s) for x, y in _outline(kind, cx, cy, r, angle)]
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas.resize((x1 - x0, y1 - y0), Image.BOX), np.float32) / 255.0


def _markings(variant: str, cx: float, cy: float, box, period: float, angle: float, phase: np.ndarray) -> np.ndarray:
    """Coverage (0–1) of the variant's marking pattern over ``box``, sampled 4× per pixel and averaged."""
    x0, y0, x1, y1 = box
    if variant == "plain":
        return np.zeros((y1 - y0, x1 - x0), np.float32)
    s = _SUPERSAMPLE
    xs = (x0 + (np.arange((x1 - x0) * s, dtype=np.float32) + 0.5) / s - cx).astype(np.float32)
    ys = (y0 + (np.arange((y1 - y0) * s, dtype=np.float32) + 0.5) / s - cy).astype(np.float32)
    dx, dy = xs[None, :], ys[:, None]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / period + phase[0]
    v = (-dx * sin + dy * cos) / period + phase[1]
    if variant == "striped":
        on = (u % 1.0) < 0.5
    elif variant == "spotted":
        on = (u % 1.0 - 0.5) ** 2 + (v % 1.0 - 0.5) ** 2 < 0.33**2
    elif variant == "checked":
        on = (np.floor(2 * u) + np.floor(2 * v)) % 2 == 0
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return on.astype(np.float32).reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # smooth earthy colour field + grain + desaturated clutter strokes and blobs
    coarse = rng.uniform(60, 190, size=(4, 4, 1)) + rng.uniform(-25, 25, size=(4, 4, 3))
    field = np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    grey = field.mean(axis=2, keepdims=True)
    field = grey + 0.35 * (field - grey)  # keep the background desaturated: saturated colour means "target"
    field += 14 * rng.standard_normal((size, size, 1), np.float32) + 5 * rng.standard_normal((size, size, 3), np.float32)
    image = Image.fromarray(field.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 12) * max(1.0, size / 64))):
        tone = int(rng.integers(30, 230))
        tint = rng.integers(-18, 19, size=3)
        colour = tuple(min(255, max(0, tone + int(t))) for t in tint)
        x0, y0 = rng.uniform(-0.1, 1.1, 2) * size
        if rng.random() < 0.5:
            x1, y1 = np.array([x0, y0]) + rng.normal(0, size / 3, 2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=max(1, int(rng.integers(1, 4)) * size // 64))
        else:
            rx, ry = rng.uniform(0.03, 0.1, 2) * size
            draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=colour)
    # the grain is smoothed a little, as camera noise is; the objects are drawn after, with their detail intact
    return np.asarray(image.filter(ImageFilter.SMOOTH), np.float32)


def _paint(canvas: np.ndarray, box, alpha: np.ndarray, colour: np.ndarray) -> None:
    x0, y0, x1, y1 = box
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., None] * (colour - region)


def _target_colours(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A saturated base colour of random hue and a marking colour that differs from it in luminance.

    The contrast is set in luminance, not as a factor of the colour: dark markings on a dark blue would
    otherwise be a few grey levels apart, and a codec (or the eye) would not see them at all.
    """
    base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9)), np.float32) * 255
    luma = float(base @ _LUMA)
    step = rng.uniform(*_MARKING_CONTRAST)
    dark = rng.random() < 0.5
    if luma < step / 0.9:  # too dark to go darker by ``step``
        dark = False
    elif 255 - luma < step / 0.9:
        dark = True
    if dark:
        return base, base * (1 - step / luma)
    return base, base + (255 - base) * (step / (255 - luma))


def render(label: int, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> ToySample:
    """One image of class ``label`` drawn with ``rng``."""
    kind, variant = CLASSES[label]
    canvas = _background(rng, size)

    # the target: about a tenth of the frame, away from the border
    r = rng.uniform(0.15, 0.21) * size
    cx, cy = rng.uniform(1.2 * r, size - 1.2 * r, 2)
    angle = rng.uniform(-0.35, 0.35)

    # distractors: drawn first, mostly clear of the target, which is painted over them
    cover = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        dr = rng.uniform(0.09, 0.17) * size
        for _attempt in range(10):
            dx, dy = rng.uniform(dr, size - dr, 2)
            if math.hypot(dx - cx, dy - cy) > 0.9 * (r + dr):
                break
        dbox = _box(dx, dy, dr, size)
        tone = rng.uniform(35, 225)
        colour = np.clip(tone + rng.uniform(-12, 12, 3), 0, 255).astype(np.float32)
        shade = 5 * rng.standard_normal((dbox[3] - dbox[1], dbox[2] - dbox[0], 1), np.float32)
        dalpha = _alpha(KINDS[rng.integers(len(KINDS))], dx, dy, dr, rng.uniform(-0.35, 0.35), dbox)
        _paint(canvas, dbox, dalpha, colour + shade)
        region = cover[dbox[1] : dbox[3], dbox[0] : dbox[2]]
        np.maximum(region, dalpha, out=region)

    box = _box(cx, cy, r, size)
    alpha = _alpha(kind, cx, cy, r, angle, box)
    period = max(_PERIOD[variant] * size / DEFAULT_SIZE * rng.uniform(0.85, 1.15), _MIN_PERIOD)
    pattern = _markings(variant, cx, cy, box, period, rng.uniform(0, math.pi), rng.random(2))
    base, mark = _target_colours(rng)
    shade = 5 * rng.standard_normal(pattern.shape + (1,), np.float32)
    _paint(canvas, box, alpha, base + pattern[..., None] * (mark - base) + shade)

    mask = np.zeros((size, size), np.float32)
    mask[box[1] : box[3], box[0] : box[2]] = alpha >= 0.5
    cover[box[1] : box[3], box[0] : box[2]] *= 1 - alpha  # the target hides what lies under it
    distractors = ((cover >= 0.5) & (mask == 0)).astype(np.float32)
    image = Image.fromarray(canvas.clip(0, 255).round().astype(np.uint8))
    return ToySample(image=image, label=label, object_mask=mask, caption=caption_for(label), distractor_mask=distractors)


def sample(index: int, seed: int = 0, size: int = DEFAULT_SIZE) -> ToySample:
    """The ``index``-th image of the world with ``seed``: class ``index % 20``, everything else random."""
    rng = np.random.default_rng([seed, index, size])
    return render(index % len(CLASSES), rng, size)


def samples(n: int, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0) -> List[ToySample]:
    return [sample(i, seed, size) for i in range(start, start + n)]


def as_dataset(n: int, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0):
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
