"""Baseline codecs for the rate–accuracy comparison: Pillow's JPEG, WebP and AVIF, and CompressAI models.

Both implement the interface of :mod:`slim_diffusers.evaluation.codecs` and go through the same harness
as SLIM: their bytes are written to files and counted whole, headers included, as SLIM's are.
"""

import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from PIL import Image

from ..coding.bitstream import read_uvarint, write_uvarint
from .errors import CodecDataError, CodecUnavailableError


# ----------------------------------------------------------------------------------------------- Pillow
_PILLOW_FORMATS = {
    # name, file suffix, Pillow feature to check, encoder options that give the format its best rate
    "JPEG": ("JPEG", ".jpg", "jpg", {"optimize": True}),  # optimised Huffman tables: same pixels, fewer bytes
    "WEBP": ("WebP", ".webp", "webp", {"method": 6}),  # slowest, smallest lossy WebP
    "AVIF": ("AVIF", ".avif", "avif", {}),
}


def pillow_supports(format: str) -> bool:
    """Whether the installed Pillow can write ``format`` ("JPEG", "WEBP", "AVIF"; AVIF needs Pillow ≥ 11.3)."""
    from PIL import features

    entry = _PILLOW_FORMATS.get(format.upper())
    if entry is None:
        return False
    try:
        return bool(features.check(entry[2]))
    except ValueError:  # Pillow versions that do not know the feature at all
        return False


class PillowCodec:
    """A lossy format of Pillow over a quality sweep; each quality is a rate point.

    Args:
        format: ``"JPEG"``, ``"WEBP"`` or ``"AVIF"`` (case-insensitive).
        qualities: Pillow's ``quality`` values, 1–100.
        options: extra ``Image.save`` arguments; they replace the defaults (JPEG ``optimize=True``, WebP
            ``method=6``), which buy the fewest bytes for the same pixels so the baselines are not handicapped.
    """

    def __init__(
        self, format: str = "JPEG", qualities: Sequence[int] = (5, 10, 20, 40, 70), options: Optional[dict] = None
    ):
        key = format.upper()
        if key not in _PILLOW_FORMATS:
            raise ValueError(f"unknown Pillow format {format!r}; choose one of {sorted(_PILLOW_FORMATS)}")
        self.format = key
        self.name, self.suffix, _, defaults = _PILLOW_FORMATS[key]
        if not pillow_supports(key):
            from PIL import __version__

            raise CodecUnavailableError(
                f"the installed Pillow {__version__} cannot write {self.name}; upgrade Pillow "
                "(AVIF is built in from Pillow 11.3) or leave this format out"
            )
        qualities = [int(q) for q in qualities]
        if not qualities or any(not 1 <= q <= 100 for q in qualities) or len(set(qualities)) != len(qualities):
            raise ValueError(f"qualities must be distinct integers in 1…100, got {qualities}")
        self.qualities = qualities
        self.options = dict(defaults if options is None else options)

    @property
    def rate_points(self) -> List[int]:
        return list(self.qualities)

    def encode(self, image: Image.Image, rate_point: int, caption: Optional[str] = None) -> bytes:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=self.format, quality=int(rate_point), **self.options)
        return buffer.getvalue()

    def decode(self, data: bytes, rate_point: int) -> Image.Image:
        try:
            with Image.open(io.BytesIO(data), formats=[self.format]) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError) as err:
            raise CodecDataError(f"not a decodable {self.name} file ({err})") from None

    def __repr__(self) -> str:
        return f"PillowCodec({self.format!r}, qualities={self.qualities})"


# --------------------------------------------------------------------------------------------- CompressAI
def _read_uvarint(data: bytes, pos: int, field: str) -> Tuple[int, int]:
    return read_uvarint(data, pos, field, error=CodecDataError, what="CompressAI bitstream")


class CompressAICodec:
    """CompressAI image models (``compress``/``decompress`` API); each model is a rate point.

    The bitstream is a small header (image size, latent shape, stream lengths as LEB128 varints) followed
    by the model's entropy-coded strings, so the file alone decodes.

    Args:
        models: ``{rate point: CompressAI model}``, e.g. ``{q: compressai.zoo.cheng2020_anchor(q, pretrained=True)}``
            or any :class:`compressai.models.CompressionModel`, trained or not. Their CDF tables are built
            (``update()``) if missing.
        name: the curve's name.
        pad_to: images are replicate-padded to a multiple of this (64 suits every zoo model).
        device: where the models run. Entropy coding is exact only when both ends use the same kind of
            device; the harness does both ends in one process.
    """

    suffix = ".cai"

    def __init__(self, models: Mapping[Any, Any], name: str = "CompressAI", pad_to: int = 64, device: str = "cpu"):
        if not models:
            raise ValueError("CompressAICodec needs at least one model")
        self.models: Dict[Any, Any] = {}
        for point, model in models.items():
            model = model.to(device).eval()
            model.update()  # builds CDF tables only where they are missing
            self.models[point] = model
        self.name, self.pad_to, self.device = name, int(pad_to), device

    @classmethod
    def from_zoo(
        cls,
        architecture: str,
        qualities: Sequence[int],
        metric: str = "mse",
        name: Optional[str] = None,
        download: bool = True,
        device: str = "cpu",
    ) -> "CompressAICodec":
        """Pretrained models of ``compressai.zoo`` (e.g. ``"bmshj2018-hyperprior"``, ``"cheng2020-anchor"``).

        Weights come from torch hub's cache (``$TORCH_HOME/hub/checkpoints``); with ``download=True`` a missing
        file is fetched from CompressAI's server. Raises :class:`CodecUnavailableError` when they cannot be had.
        """
        import os
        from urllib.parse import urlparse

        import torch
        from compressai.zoo import image as zoo
        from compressai.zoo import image_models

        if architecture not in image_models:
            raise ValueError(f"unknown CompressAI model {architecture!r}; choose one of {sorted(image_models)}")
        urls = zoo.model_urls.get(architecture, {}).get(metric, {})
        missing = [q for q in qualities if q not in urls]
        if missing:
            raise CodecUnavailableError(
                f"CompressAI publishes no pretrained {architecture} ({metric}) for quality {missing}; "
                f"available: {sorted(urls)}"
            )
        models = {}
        for quality in qualities:
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(urls[quality]).path))
            if not download and not os.path.isfile(cached):
                raise CodecUnavailableError(
                    f"no weights for CompressAI {architecture} quality {quality} at {cached}; download them once "
                    "with network access (or copy the file there), or leave this baseline out"
                )
            try:
                models[quality] = image_models[architecture](
                    quality=quality, metric=metric, pretrained=True, progress=False
                )
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                raise CodecUnavailableError(
                    f"could not load the weights of CompressAI {architecture} quality {quality} ({err}); "
                    f"without network access put {os.path.basename(cached)} into {os.path.dirname(cached)}"
                ) from None
        return cls(models, name=name or architecture, device=device)

    @property
    def rate_points(self) -> List[Any]:
        return list(self.models)

    def encode(self, image: Image.Image, rate_point: Any, caption: Optional[str] = None) -> bytes:
        import numpy as np
        import torch
        import torch.nn.functional as F

        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.pad_to, 0, (-h) % self.pad_to), mode="replicate")
        with torch.no_grad():
            out = self.models[rate_point].compress(x)
        header = bytearray()
        for value in (h, w, len(out["shape"]), *out["shape"], len(out["strings"])):
            write_uvarint(int(value), header)
        body = bytearray()
        for strings in out["strings"]:
            (string,) = strings  # one image per call
            write_uvarint(len(string), body)
            body += string
        return bytes(header + body)

    def _parse(self, data: bytes):
        data = bytes(data)
        h, pos = _read_uvarint(data, 0, "height")
        w, pos = _read_uvarint(data, pos, "width")
        ndim, pos = _read_uvarint(data, pos, "latent dimensions")
        if not (1 <= h <= 1 << 16 and 1 <= w <= 1 << 16 and 1 <= ndim <= 4):
            raise CodecDataError(f"corrupt CompressAI bitstream: image {h}×{w}, latent of {ndim} dimensions")
        shape = []
        for _ in range(ndim):
            size, pos = _read_uvarint(data, pos, "latent shape")
            shape.append(size)
        count, pos = _read_uvarint(data, pos, "stream count")
        strings = []
        for _ in range(count):
            length, pos = _read_uvarint(data, pos, "stream length")
            if pos + length > len(data):
                raise CodecDataError("truncated CompressAI bitstream: a stream is longer than the bytes present")
            strings.append(data[pos : pos + length])
            pos += length
        if pos != len(data):
            raise CodecDataError(f"corrupt CompressAI bitstream: {len(data) - pos} bytes after the last stream")
        return h, w, shape, strings

    def decode(self, data: bytes, rate_point: Any) -> Image.Image:
        return self.decode_batch([data], rate_point)[0]

    def decode_batch(self, datas, rate_point: Any) -> List[Image.Image]:
        """Decode together the streams of one latent shape (the synthesis runs once for all of them)."""
        import numpy as np
        import torch

        parsed = [self._parse(d) for d in datas]
        groups: Dict[tuple, List[int]] = {}
        for i, (_, _, shape, strings) in enumerate(parsed):
            groups.setdefault((tuple(shape), len(strings)), []).append(i)
        images: List[Optional[Image.Image]] = [None] * len(parsed)
        for (shape, count), members in groups.items():
            strings = [[parsed[i][3][k] for i in members] for k in range(count)]
            with torch.no_grad():
                x_hat = self.models[rate_point].decompress(strings, list(shape))["x_hat"]
            for j, i in enumerate(members):
                h, w = parsed[i][0], parsed[i][1]
                pixels = x_hat[j, :, :h, :w].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                images[i] = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8))
        return images

    def __repr__(self) -> str:
        return f"CompressAICodec({self.name!r}, rate_points={self.rate_points})"
