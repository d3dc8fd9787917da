"""Tiny, seeded, offline components for tests, docs, benchmarks and CPU smoke runs.

This is the one factory of test-sized models in the project: nothing here touches the network, every
component is built from a config written in code and randomly initialised with a fixed seed.

Command line::

    python -m slim_diffusers.testing save-tiny-codec OUT_DIR
"""

import argparse
import os
import sys
from typing import Optional, Sequence, Tuple

import torch

from .models.compressor import SLIMCompressor
from .models.decompressor import SLIMDecompressor

TINY_CODEC_CONFIG = dict(
    latent_channels=4,
    hidden_channels=16,
    latent_codec_channels=32,
    hyper_channels=16,
    num_res_blocks=1,
)
TINY_DECOMPRESSOR_EXTRA = dict(groups=(4, 4, 8, 16), channel_context_channels=(16, 16))


def tiny_codec(seed: int = 0) -> Tuple[SLIMCompressor, SLIMDecompressor]:
    """A tiny compressor/decompressor pair in eval mode with CDF tables built, ready to code."""
    torch.manual_seed(seed)
    compressor = SLIMCompressor(num_downsamples=2, **TINY_CODEC_CONFIG)
    decompressor = SLIMDecompressor(num_upsamples=2, **TINY_CODEC_CONFIG, **TINY_DECOMPRESSOR_EXTRA)
    compressor.eval()
    decompressor.eval()
    decompressor.update(force=True)
    return compressor, decompressor


def structured_latents(
    batch: int = 1, height: int = 16, width: int = 24, seed: int = 0, image_dir: Optional[str] = None
) -> torch.Tensor:
    """Latent-like tensors with real image structure (not white noise), scaled like SD latents (std ≈ 1).

    Made from photographs when ``image_dir`` holds PNGs (the Kodak set in ``../shared/data/kodak``),
    else from smooth random fields.
    """
    gen = torch.Generator().manual_seed(seed)
    images = []
    if image_dir is not None and os.path.isdir(image_dir):
        import numpy as np
        from PIL import Image

        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
        for i in range(batch):
            img = Image.open(os.path.join(image_dir, names[(seed + i) % len(names)])).convert("RGB")
            img = img.resize((width, height), Image.BICUBIC)
            rgb = torch.from_numpy(np.array(img)).float().permute(2, 0, 1) / 127.5 - 1
            images.append(torch.cat([rgb, rgb.mean(0, keepdim=True) - rgb[2:3]]))
    else:
        for _ in range(batch):
            coarse = torch.randn(4, max(height // 4, 1), max(width // 4, 1), generator=gen)
            images.append(torch.nn.functional.interpolate(coarse[None], (height, width), mode="bicubic")[0])
    x = torch.stack(images)
    return x / x.std().clamp_min(1e-6)


def _save_tiny_codec(out_dir: str, seed: int) -> None:
    compressor, decompressor = tiny_codec(seed)
    compressor.save_pretrained(os.path.join(out_dir, "compressor"))
    decompressor.save_pretrained(os.path.join(out_dir, "decompressor"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slim_diffusers.testing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save-tiny-codec", help="write a tiny compressor/ and decompressor/ with save_pretrained")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "save-tiny-codec":
        _save_tiny_codec(args.out_dir, args.seed)
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
