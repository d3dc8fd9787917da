"""Convert a saved SLIM pipeline's entropy model into an exact integer one (post-training conversion).

The decompressor's entropy networks become integer networks calibrated on a few dozen representative images
(:func:`slim_diffusers.coding.latents.convert_to_exact_entropy_model`); the pipeline then writes ``.slim``
version 2 files that decode to the same ``ŷ`` on every device. Only ``decompressor/`` changes: every other
component is kept byte for byte.

    python -m slim_diffusers.training.convert_exact MODEL_DIR OUT_DIR --calibration_images IMAGES_DIR
    python -m slim_diffusers.training.convert_exact MODEL_DIR --in_place --toy_world 32
    slim convert-exact MODEL_DIR OUT_DIR --calibration-images IMAGES_DIR        (the same, from the CLI)

Calibration images are image files or folders of them (``--calibration_images``), or seeded toy-world images
(``--toy_world N``, for the toy models). Training does the same at save time with ``--exact_entropy_model``.
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def calibration_image_files(paths: Sequence[Union[str, Path]], limit: Optional[int] = None) -> List[Path]:
    """Image files named by ``paths`` (files, or folders searched for images), sorted, at most ``limit``."""
    files: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder of calibration images")
    if not files:
        raise ValueError("no calibration images found; pass image files or folders holding them")
    return files[:limit] if limit else files


def toy_world_images(n: int, seed: int = 10_000, size: int = 96):
    """``n`` seeded toy-world images (a seed the toy training and tests do not use)."""
    from ..toy_world import samples

    return [s.image for s in samples(n, seed=seed, size=size)]


@torch.no_grad()
def convert_pipeline(pipe, images, config=None):
    """The exact decompressor of a loaded pipeline (needs its ``vae``, ``compressor``, ``decompressor``),
    calibrated on ``images`` (PIL images). The pipeline itself is not changed."""
    from ..coding.latents import convert_to_exact_entropy_model

    latents = pipe.encode_images(list(images))
    return convert_to_exact_entropy_model(pipe.compressor, pipe.decompressor, latents, config)


def convert_pipeline_folder(
    model_dir: Union[str, Path],
    out_dir: Optional[Union[str, Path]] = None,
    images=None,
    config=None,
    force: bool = False,
):
    """Convert the pipeline saved in ``model_dir``; write it to ``out_dir`` (a copy of ``model_dir`` whose
    ``decompressor/`` is the exact one), or, with ``out_dir=None``, replace ``model_dir/decompressor`` in place.
    ``images``: PIL images to calibrate on. Returns the exact decompressor."""
    from ..pipelines.pipeline_slim import SLIMPipeline

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file() or not (model_dir / "decompressor").is_dir():
        raise FileNotFoundError(f"{model_dir}: not a saved SLIM pipeline (no model_index.json or decompressor/)")
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.resolve() == model_dir.resolve():
            out_dir = None
        elif out_dir.exists() and any(out_dir.iterdir()) and not force:
            raise FileExistsError(f"{out_dir}: exists and is not empty; pass --force to overwrite it")
    pipe = SLIMPipeline.from_pretrained(str(model_dir), unet=None, controlnet=None, text_encoder=None, tokenizer=None)
    if pipe.decompressor.exact_entropy_model:
        raise ValueError(f"{model_dir}: its entropy model is already exact")
    exact = convert_pipeline(pipe, images, config)
    if out_dir is not None:
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
        target = out_dir / "decompressor"
    else:
        target = model_dir / "decompressor"
    # the float weights go: an exact model has other parameter names, and a stale file would be loaded instead
    for old in target.glob("diffusion_pytorch_model*"):
        old.unlink()
    exact.save_pretrained(str(target), safe_serialization=True)
    return exact


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a folder written by SLIMPipeline.save_pretrained (float entropy model)")
    p.add_argument("out_dir", nargs="?", default=None, help="where to write the converted pipeline (a copy)")
    p.add_argument("--in_place", "--in-place", action="store_true", help="replace MODEL_DIR/decompressor instead")
    p.add_argument("--calibration_images", "--calibration-images", nargs="+", default=None,
                   help="image files or folders to calibrate on (a few dozen representative images)")
    p.add_argument("--toy_world", "--toy-world", type=int, default=None, metavar="N",
                   help="calibrate on N seeded toy-world images instead (toy models)")
    p.add_argument("--num_calibration_images", "--num-calibration-images", type=int, default=64,
                   help="use at most this many of --calibration_images (default: 64)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    args = p.parse_args(argv)
    if (args.out_dir is None) != args.in_place:
        p.error("give OUT_DIR, or --in_place to convert MODEL_DIR itself")
    if (args.calibration_images is None) == (args.toy_world is None):
        p.error("give exactly one of --calibration_images and --toy_world")
    return args


def load_calibration_images(args):
    if args.toy_world is not None:
        return toy_world_images(args.toy_world)
    from PIL import Image

    images = []
    for path in calibration_image_files(args.calibration_images, args.num_calibration_images):
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def main(argv=None) -> int:
    args = parse_args(argv)
    images = load_calibration_images(args)
    exact = convert_pipeline_folder(args.model_dir, None if args.in_place else args.out_dir, images, force=args.force)
    where = Path(args.model_dir if args.in_place else args.out_dir) / "decompressor"
    print(f"exact integer entropy model (model {exact.fingerprint().hex()}), calibrated on {len(images)} images -> {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
