"""Exact entropy model: what the post-training conversion costs in rate (payload bytes actually written).

For each model, the float entropy model and its exact (integer) conversion code the same latents; the
conversion is calibrated on other latents. Bytes, not timings: it can run beside other work.

- ``tiny``: the seeded tiny codec (``slim_diffusers.testing.tiny_codec``), random weights, on latent-like
  tensors made from the Kodak photographs (64×96 and 96×64 latents, a 768×512 image);
- ``default``: the seeded default-size codec (M=320, N=192), random weights, on the same latents;
- ``toy``: the bundled trained toy SLIM on held-out toy-world images (96², through its VAE).

    python benchmarks/exact_entropy_rate.py                   # all three
    python benchmarks/exact_entropy_rate.py --models tiny     # quick

Target (issue: exact entropy model): payload within 1% of the float entropy model.
"""

import argparse
from pathlib import Path

import torch

from slim_diffusers import SLIMCompressor, SLIMDecompressor
from slim_diffusers.coding.latents import compress_latents, convert_to_exact_entropy_model
from slim_diffusers.testing import structured_latents, tiny_codec

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"
TOY = REPO / "slim_diffusers" / "assets" / "toy" / "slim"


def kodak_latents(n: int, start: int):
    image_dir = str(KODAK) if KODAK.is_dir() else None
    return [structured_latents(1, *((64, 96) if i % 2 == 0 else (96, 64)), seed=i, image_dir=image_dir)
            for i in range(start, start + n)]


def toy_latents(n: int, seed: int):
    from slim_diffusers import SLIMPipeline
    from slim_diffusers.toy_world import samples

    pipe = SLIMPipeline.from_pretrained(str(TOY), unet=None, controlnet=None, text_encoder=None, tokenizer=None)
    return pipe, pipe.encode_images([s.image for s in samples(n, seed=seed, size=96)])


def measure(name, compressor, decompressor, test, calibration):
    exact = convert_to_exact_entropy_model(compressor, decompressor, calibration)
    float_bytes = sum(len(compress_latents(compressor, decompressor, x)[0]) for x in test)
    exact_bytes = sum(len(compress_latents(compressor, exact, x)[0]) for x in test)
    print(f"{name:<44}{len(test):>6}{float_bytes:>12}{exact_bytes:>12}{100 * (exact_bytes / float_bytes - 1):>+9.2f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "default", "toy"], choices=["tiny", "default", "toy"])
    parser.add_argument("--test", type=int, default=12, help="latents (Kodak photographs 0-11) or toy images coded")
    parser.add_argument("--calibration", type=int, default=8, help="other latents (photographs 12-19) or toy images to calibrate on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model (calibration: other latents)':<44}{'items':>6}{'float B':>12}{'exact B':>12}{'Δ':>10}")
    with torch.inference_mode(False), torch.no_grad():
        if "tiny" in args.models:
            compressor, decompressor = tiny_codec(0)
            measure("tiny seeded (M=32), Kodak latents", compressor, decompressor,
                    kodak_latents(args.test, 0), kodak_latents(args.calibration, 12))
        if "default" in args.models:
            torch.manual_seed(0)
            compressor, decompressor = SLIMCompressor().eval(), SLIMDecompressor().eval()
            decompressor.update(force=True)
            measure("default-size seeded (M=320), Kodak latents", compressor, decompressor,
                    kodak_latents(args.test, 0), kodak_latents(args.calibration, 12))
        if "toy" in args.models:
            pipe, test = toy_latents(args.test, seed=2024)
            _, calibration = toy_latents(args.calibration, seed=10_000)
            measure("bundled toy (trained), toy-world 96²", pipe.compressor, pipe.decompressor, test, calibration)


if __name__ == "__main__":
    main()
