"""Codec speed: default-size SLIM compressor/decompressor on the latent of a 512² image (4×64×64).

Times ``compress_latents`` (analysis transforms + entropy coding into bytes) and ``decompress_latents``
(entropy decoding + synthesis) on CPU with a fixed thread count, and reports the bytes written and the
parameter counts. Weights are random (no trained checkpoint can be downloaded here); speed does not
depend on them, bytes do.

    python benchmarks/codec_speed.py                 # default config, 2 threads
    python benchmarks/codec_speed.py --tiny          # the tiny test config (CI smoke run)

Target (issue: codec core): encode ≤ 100 ms and decode ≤ 100 ms on 2 CPU cores.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from slim_diffusers import SLIMCompressor, SLIMDecompressor
from slim_diffusers.coding.latents import compress_latents, decompress_latents
from slim_diffusers.testing import structured_latents, tiny_codec

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny test config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="latent height and width (64 = 512² image)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        compressor, decompressor = tiny_codec()
    else:
        compressor, decompressor = SLIMCompressor().eval(), SLIMDecompressor().eval()
        decompressor.update(force=True)
    latents = structured_latents(1, args.size, args.size, image_dir=str(KODAK) if KODAK.is_dir() else None)

    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator, oneDNN kernel selection, CDF list cache
            payloads = compress_latents(compressor, decompressor, latents)
            decompress_latents(decompressor, payloads, latents.shape)
        enc, dec = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            payloads = compress_latents(compressor, decompressor, latents)
            t1 = time.perf_counter()
            decoded = decompress_latents(decompressor, payloads, latents.shape)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    assert decoded.shape == latents.shape

    count = lambda m: sum(p.numel() for p in m.parameters())
    print(f"config           {'tiny' if args.tiny else 'default'} (M={decompressor.config.latent_codec_channels}, "
          f"N={decompressor.config.hyper_channels}, groups={list(decompressor.config.groups)})")
    print(f"latent           4×{args.size}×{args.size} (image {8 * args.size}²), random weights")
    print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads")
    print(f"encode median    {1000 * statistics.median(enc):.1f} ms  (min {1000 * min(enc):.1f}, n={args.repeats})")
    print(f"decode median    {1000 * statistics.median(dec):.1f} ms  (min {1000 * min(dec):.1f}, n={args.repeats})")
    print(f"payload bytes    {len(payloads[0])}")
    print(f"parameters       compressor {count(compressor):,}, decompressor {count(decompressor):,} "
          f"(of which g_s {count(decompressor.g_s):,})")


if __name__ == "__main__":
    main()
