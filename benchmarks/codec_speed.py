"""Codec speed: default-size SLIM compressor/decompressor on the latent of a 512² image (4×64×64).

Times ``compress_latents`` (analysis transforms + entropy coding into bytes) and ``decompress_latents``
(entropy decoding + synthesis) on CPU with a fixed thread count, and reports the bytes written and the
parameter counts. Weights are random (no trained checkpoint can be downloaded here); speed does not
depend on them, bytes do. Side by side, runs interleaved: the floating-point entropy model and its exact
(integer) conversion (``SLIMDecompressor(exact_entropy_model=True)``, calibrated on another latent).

    python benchmarks/codec_speed.py                 # default config, 2 threads, float and exact
    python benchmarks/codec_speed.py --tiny          # the tiny test config (CI smoke run)
    python benchmarks/codec_speed.py --no-exact      # the float entropy model only

Targets: encode ≤ 100 ms and decode ≤ 100 ms on 2 CPU cores (issue: codec core); the exact entropy model
decodes in at most 1.25× the float model's time (issue: exact entropy model).
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
from slim_diffusers.testing import exact_codec, structured_latents, tiny_codec

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny test config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="latent height and width (64 = 512² image)")
    parser.add_argument("--no-exact", action="store_true", help="time the float entropy model only")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        compressor, decompressor = tiny_codec()
    else:
        compressor, decompressor = SLIMCompressor().eval(), SLIMDecompressor().eval()
        decompressor.update(force=True)
    latents = structured_latents(1, args.size, args.size, image_dir=str(KODAK) if KODAK.is_dir() else None)
    models = {"float": decompressor}
    if not args.no_exact:  # calibrated on another latent of the same size
        models["exact"] = exact_codec(compressor, decompressor, args.size, args.size, num_latents=1)

    enc = {name: [] for name in models}
    dec = {name: [] for name in models}
    payloads = {}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(3):  # warm-up: allocator, oneDNN kernel selection, int8 GEMM checks, CDF list cache
                decompress_latents(m, compress_latents(compressor, m, latents), latents.shape)
        for _ in range(args.repeats):  # interleaved, so that other work on the machine hits both alike
            for name, m in models.items():
                t0 = time.perf_counter()
                payloads[name] = compress_latents(compressor, m, latents)
                t1 = time.perf_counter()
                decoded = decompress_latents(m, payloads[name], latents.shape)
                t2 = time.perf_counter()
                enc[name].append(t1 - t0)
                dec[name].append(t2 - t1)
                assert decoded.shape == latents.shape

    count = lambda m: sum(p.numel() for p in m.parameters())
    print(f"config           {'tiny' if args.tiny else 'default'} (M={decompressor.config.latent_codec_channels}, "
          f"N={decompressor.config.hyper_channels}, groups={list(decompressor.config.groups)})")
    print(f"latent           4×{args.size}×{args.size} (image {8 * args.size}²), random weights")
    print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads")
    for name in models:
        label = "" if len(models) == 1 else f" ({name})"
        print(f"encode median{label:<8} {1000 * statistics.median(enc[name]):.1f} ms  "
              f"(min {1000 * min(enc[name]):.1f}, n={args.repeats})")
        print(f"decode median{label:<8} {1000 * statistics.median(dec[name]):.1f} ms  "
              f"(min {1000 * min(dec[name]):.1f}, n={args.repeats})")
    if "exact" in models:
        ratio = lambda t: statistics.median(t["exact"]) / statistics.median(t["float"])
        print(f"exact ÷ float    encode {ratio(enc):.2f}×, decode {ratio(dec):.2f}× (target: decode ≤ 1.25×)")
    print("payload bytes    " + ", ".join(f"{name} {len(p[0])}" for name, p in payloads.items()))
    print(f"parameters       compressor {count(compressor):,}, decompressor {count(decompressor):,} "
          f"(of which g_s {count(decompressor.g_s):,})")


if __name__ == "__main__":
    main()
