"""Regenerate the golden files of the bundled toy model: ``python tests/golden/update_golden.py``.

Run it only when the bytes or pixels are meant to change (a retrained bundled model, a new format version)
and say so in the commit: the golden test exists to catch every change that was not meant.

The bytes are exact on every machine. The pixels come from floating-point networks (the VAE decoder, the UNet and
the control module), whose results differ in their last bits between CPU kernels: the digests hold on the machines
that wrote them, and elsewhere a decode must match the reference PNGs written beside the files
(``<name>.png`` with diffusion, ``<name>_without_diffusion.png``) within :data:`PIXEL_TOLERANCE`.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ASSETS = REPO / "slim_diffusers" / "assets"
MODEL = ASSETS / "toy" / "slim"
IMAGES = ASSETS / "images"
FILES = HERE / "bundled_toy"
RECORD = HERE / "bundled_toy.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image) -> str:
    array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return sha256(array.tobytes() + str(array.shape).encode())


# how far a decode on another CPU may be from the reference PNG: no pixel channel more than MAX levels off, and at
# most FRACTION of them off at all. Measured on one machine (2026-12-05) against the PNGs it wrote, decoding with
# torch's AVX2 or default kernels instead of AVX-512, or on one thread instead of two: at most 1 level, on at most
# 0.007 % of the channels; a changed model, coder or decode setting moves far more
PIXEL_TOLERANCE = {"max": 4, "fraction": 0.005}


def pixel_difference(image, reference: Path) -> dict:
    """How ``image`` differs from the reference PNG: the largest channel difference and the fraction that differ."""
    from PIL import Image

    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    with Image.open(reference) as ref:
        b = np.asarray(ref.convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return {"max": 255, "fraction": 1.0}
    diff = np.abs(a - b)
    return {"max": int(diff.max()), "fraction": float((diff > 0).mean())}


def matches_reference(image, digest: str, reference: Path) -> tuple:
    """(whether ``image`` is the golden decode: its digest, or within PIXEL_TOLERANCE of the reference, how far)."""
    if pixels_sha256(image) == digest:
        return True, {"max": 0, "fraction": 0.0}
    d = pixel_difference(image, reference)
    return d["max"] <= PIXEL_TOLERANCE["max"] and d["fraction"] <= PIXEL_TOLERANCE["fraction"], d


def caption_of(path: Path) -> str:
    """The demo's caption of a bundled image: the toy world's caption of its class (the kind only)."""
    from slim_diffusers.toy_world import caption_for_class_name

    return caption_for_class_name(path.stem.replace("_", " "))


def decode_settings() -> dict:
    decode = json.loads((ASSETS / "toy" / "demo.json").read_text())["decode"]
    return {k: v for k, v in decode.items() if k in ("num_inference_steps", "strength", "seed")}


def decoded(pipe, data: bytes, settings: dict, use_diffusion: bool):
    kwargs = {k: v for k, v in settings.items() if k != "seed"}
    generator = torch.Generator().manual_seed(settings.get("seed", 0))
    return pipe.decompress(data, generator=generator, use_diffusion=use_diffusion, **kwargs).images[0]


def main() -> int:
    from PIL import Image

    from slim_diffusers import SLIMPipeline

    torch.set_num_threads(2)
    pipe = SLIMPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    settings = decode_settings()
    FILES.mkdir(exist_ok=True)
    record = {"model": str(MODEL.relative_to(REPO)), "decode": settings, "files": {}}
    for path in sorted(IMAGES.glob("*.png")):
        with Image.open(path) as image:
            (bitstream,) = pipe.compress(image, captions=caption_of(path))
        data = bitstream.to_bytes()
        (FILES / f"{path.stem}.slim").write_bytes(data)
        with_diffusion, without = decoded(pipe, data, settings, True), decoded(pipe, data, settings, False)
        with_diffusion.save(FILES / f"{path.stem}.png")
        without.save(FILES / f"{path.stem}_without_diffusion.png")
        record["files"][path.stem] = {
            "image": path.name,
            "caption": caption_of(path),
            "slim_sha256": sha256(data),
            "pixels_sha256": pixels_sha256(with_diffusion),
            "pixels_without_diffusion_sha256": pixels_sha256(without),
        }
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(record['files'])} golden files -> {FILES}, {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
