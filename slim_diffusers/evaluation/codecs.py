"""The codec interface of the evaluation harness, and SLIM behind it.

Any object with these five members can be evaluated next to SLIM, through the same loop and the same rows::

    class MyCodec:
        name = "My codec"            # one curve per codec; unique within a run
        suffix = ".myc"              # file suffix of the bitstreams written under OUT_DIR
        rate_points = [1, 2, 4]      # one point of the curve each; str(point) names a folder

        def encode(self, image, rate_point, caption=None) -> bytes: ...   # image: RGB PIL image
        def decode(self, data, rate_point) -> PIL.Image.Image: ...

The bytes returned by ``encode`` are everything the receiver gets: the harness writes them to a file and
counts bits per pixel from that file's size, so a codec must put its own header (image size, shapes) into
them. ``caption`` is the dataset's caption of the image when it has one; codecs that send no text ignore
it. ``decode`` must be deterministic, so that a resumed or sharded run gives the rows of an uninterrupted
one.

A codec whose decoding draws noise (a diffusion decoder) says so with ``stochastic = True`` and takes the noise's
seed: ``decode(data, rate_point, seed=None)`` (and ``decode_batch(datas, rate_point, seed=None)`` if it has one),
``None`` meaning its own default ``seed``; the harness then decodes each file once per seed it is given
(``slim evaluate --seeds 0 1 2``), so that the report can tell the spread of the decoding noise from a difference.
"""

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, runtime_checkable

from PIL import Image

_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


@runtime_checkable
class Codec(Protocol):
    """What the harness needs from a codec (see the module docstring)."""

    name: str
    suffix: str

    @property
    def rate_points(self) -> Sequence[Any]: ...

    def encode(self, image: Image.Image, rate_point: Any, caption: Optional[str] = None) -> bytes: ...

    def decode(self, data: bytes, rate_point: Any) -> Image.Image: ...


def folder_name(text: str) -> str:
    """A file-system-safe folder name for a codec name or rate point ("SLIM w/o diffusion" -> "SLIM_w_o_diffusion")."""
    name = _SAFE.sub("_", str(text)).strip("._") or "_"
    return name[:120]


def rate_point_labels(models: Sequence[str]) -> List[str]:
    """Short labels for SLIM models given as paths or Hub ids: the last path component when that is unique.

    The label names the rate point in rows, plots and folders, and is how a resumed run recognises its
    finished rows, so it must not depend on where the run starts from.
    """
    short = [PurePath(str(m).rstrip("/\\")).name or str(m) for m in models]
    if len(set(short)) == len(short):
        return short
    return [str(m).strip("/\\").replace("\\", "/") for m in models]


def slim_rate_points(pipelines: Mapping[str, Any], rates: Optional[Sequence[float]] = None):
    """``(pipelines, rates)`` for :class:`SLIMCodec`: a fixed-rate pipeline is one rate point under its label; a
    variable-rate one is a point per rate of ``rates`` (default: each of its trained levels), labelled ``rate=R``
    (``LABEL rate=R`` when there are several models), so that one variable-rate model gives one curve.
    Raises :class:`ValueError` for a rate a model does not have, or ``rates`` with no variable-rate model."""
    points: Dict[str, Any] = {}
    point_rates: Dict[str, float] = {}
    if rates is not None and not any(p.num_rate_levels for p in pipelines.values()):
        raise ValueError("rates were given, but no model is variable-rate (each codes at the one rate it was trained for)")
    for label, pipe in pipelines.items():
        levels = pipe.num_rate_levels
        if not levels:
            points[label] = pipe
            continue
        for rate in rates if rates is not None else range(levels):
            value = pipe.resolve_rate(rate)
            key = f"rate={value:g}" if len(pipelines) == 1 else f"{label} rate={value:g}"
            if key in points:
                raise ValueError(f"rate {rate} is rate {value:g} (rates are rounded to 1/16 of a level), given twice")
            points[key], point_rates[key] = pipe, value
    return points, point_rates


@dataclass
class SLIMCodec:
    """SLIM pipelines as one codec: each pipeline (e.g. one trained per rate weight λr) is one rate point, and
    a variable-rate pipeline may be several (``rates``; :func:`slim_rate_points` builds both arguments).

    Args:
        pipelines: ``{rate point label: SLIMPipeline}``.
        rates: ``{rate point label: rate}`` for the points coded by a variable-rate pipeline at that rate.
        use_diffusion: ``False`` decodes ẑ with the VAE alone, the paper's "w/o diffusion" ablation.
        num_inference_steps, strength, guidance_scale: passed to ``SLIMPipeline.decompress``.
        seed: seed of the sampling noise (unless ``decode`` is given another). Every image gets a fresh generator
            with it, so its reconstruction does not depend on which images were decoded before it (resume,
            sharding).
        caption: sent instead of each image's own caption (``""`` sends none: what the caption adds).
    """

    pipelines: Mapping[str, Any]
    name: str = "SLIM"
    use_diffusion: bool = True
    num_inference_steps: int = 20
    strength: float = 1.0
    guidance_scale: float = 1.0
    seed: int = 0
    caption: Optional[str] = None
    suffix: str = ".slim"
    rates: Optional[Mapping[str, float]] = None

    @property
    def rate_points(self) -> List[str]:
        return list(self.pipelines)

    @property
    def stochastic(self) -> bool:
        """Decoding by diffusion draws noise; the VAE alone (``use_diffusion=False``) does not."""
        return self.use_diffusion

    def encode(self, image: Image.Image, rate_point: str, caption: Optional[str] = None) -> bytes:
        return self.encode_batch([image], rate_point, [caption])[0]

    def decode(self, data: bytes, rate_point: str, seed: Optional[int] = None) -> Image.Image:
        return self.decode_batch([data], rate_point, seed=seed)[0]

    def encode_batch(self, images: Sequence[Image.Image], rate_point: str, captions: Sequence[Optional[str]]) -> List[bytes]:
        pipe = self.pipelines[rate_point]
        rate = (self.rates or {}).get(rate_point)
        if self.caption is not None:
            captions = [self.caption] * len(images)
        if any(c is None for c in captions):  # the pipeline's captioner (or the empty caption) decides, per image
            return [pipe.compress(image, captions=c, rate=rate)[0].to_bytes() for image, c in zip(images, captions)]
        return [bs.to_bytes() for bs in pipe.compress(list(images), captions=list(captions), rate=rate)]

    def decode_batch(self, datas: Sequence[bytes], rate_point: str, seed: Optional[int] = None) -> List[Image.Image]:
        """Decode together; each image's noise comes from its own generator seeded with ``seed`` (default: the
        codec's), as alone."""
        import torch

        seed = self.seed if seed is None else seed
        out = self.pipelines[rate_point].decompress(
            list(datas),
            num_inference_steps=self.num_inference_steps,
            strength=self.strength,
            guidance_scale=self.guidance_scale,
            use_diffusion=self.use_diffusion,
            generator=[torch.Generator().manual_seed(seed) for _ in datas],
        )
        return list(out.images)
