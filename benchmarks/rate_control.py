"""Rate control: what a size target costs per image (codec encodes and time), and whether the search's rate is the
highest that fits on the exhaustive 1/16 grid.

Two codecs:

- ``bundled``: the bundled variable-rate toy model (``slim_diffusers/assets/toy/slim``, 7 levels: 97 grid rates) on
  the bundled 96×96 images, through ``SLIMPipeline.compress(target_bytes=…)`` (the VAE and caption once per call);
- ``sd512``: the default-size codec (M = 320, random weights, made variable-rate with 7 levels as
  benchmarks/codec_speed.py builds it) on the latent of a 512² image (4×64×64), searched with
  :func:`slim_diffusers.coding.rate_control.highest_fitting_rate` on the bytes of whole ``.slim`` files.

Per image, three targets at 25 %, 50 % and 75 % of the way from its rate-0 file to its top-rate file. On the first
``--exhaustive`` images of each, and on every image where a search found the bytes dipping (its window found a
fitting rate above the bisection's boundary, so it bisected on: more encodes than one bisection takes), every grid
rate is coded too, and the search's answer is checked against the highest fitting rate for every size the grid
reaches; the count of grid steps where the bytes go down is reported.
Results are appended to ``benchmarks/results/rate_control.txt`` with the date, the machine and the load average.

    python benchmarks/rate_control.py                       # both codecs, 2 threads
    python benchmarks/rate_control.py --codecs bundled --images 4 --exhaustive 1 --no-save   # a quick check
"""

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from machine_info import finish_results, load_average, machine

from slim_diffusers.coding.bitstream import RATE_STEPS, SLIMBitstream
from slim_diffusers.coding.latents import compress_latents
from slim_diffusers.coding.rate_control import RATE_SEARCH_WINDOW, highest_fitting_rate

RESULTS = Path(__file__).resolve().parent / "results" / "rate_control.txt"
ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
FRACTIONS = (0.25, 0.5, 0.75)


def _check_against_sweep(sizes, top) -> int:
    """Targets (every size the grid reaches) where the search's rate differs from the highest fitting one."""
    wrong = 0
    for budget in sorted(set(sizes)):
        best = max(u for u, s in enumerate(sizes) if s <= budget)
        wrong += highest_fitting_rate(lambda u: sizes[u], top, budget).units != best
    return wrong


def _bundled(args):
    from PIL import Image

    from slim_diffusers import SLIMPipeline

    pipe = SLIMPipeline.from_pretrained(str(ROOT / "slim_diffusers" / "assets" / "toy" / "slim"), unet=None,
                                        controlnet=None, text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    top = RATE_STEPS * (pipe.num_rate_levels - 1)
    paths = sorted((ROOT / "slim_diffusers" / "assets" / "images").glob("*.png"))[: args.images]
    cases = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        caption = "a " + path.stem.split("_")[1]
        low = pipe.compress(image, caption, rate=0)[0].num_bytes
        high = pipe.compress(image, caption)[0].num_bytes
        cases.append((lambda target, image=image, caption=caption: _timed_pipeline(pipe, image, caption, target),
                      low, high, lambda u, image=image, caption=caption: pipe.compress(image, caption,
                                                                                   rate=u / RATE_STEPS)[0].num_bytes))
    return "bundled toy model, 96×96 images, VAE + caption once per call", top, cases


def _timed_pipeline(pipe, image, caption, target):
    t0 = time.perf_counter()
    (bs,) = pipe.compress(image, caption, target_bytes=target)
    seconds = time.perf_counter() - t0
    assert bs.num_bytes <= target
    return pipe.last_rate_searches[0].encodes, seconds


def _sd512(args):
    from slim_diffusers import SLIMCompressor, SLIMDecompressor
    from slim_diffusers.testing import structured_latents

    levels = 7
    torch.manual_seed(0)
    compressor = SLIMCompressor(num_rate_levels=levels).eval()
    decompressor = SLIMDecompressor(num_rate_levels=levels).eval()
    decompressor.update(force=True)
    top = RATE_STEPS * (levels - 1)
    fingerprint = decompressor.fingerprint()
    cases = []
    for i in range(args.images_512):
        latent = structured_latents(1, 64, 64, seed=i, image_dir=str(KODAK) if KODAK.is_dir() else None)

        def size(u, latent=latent):
            (payload,) = compress_latents(compressor, decompressor, latent, u / RATE_STEPS)
            return SLIMBitstream(height=512, width=512, fingerprint=fingerprint, caption="a photo", payload=payload,
                                 rate=u / RATE_STEPS).num_bytes

        def search(target, size=size):
            t0 = time.perf_counter()
            result = highest_fitting_rate(size, top, target)
            return result.encodes, time.perf_counter() - t0

        cases.append((search, size(0), size(top), size))
    return "default-size codec (M=320, random weights, 7 levels), latent 4×64×64 of a 512² image", top, cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codecs", nargs="+", default=["bundled", "sd512"], choices=["bundled", "sd512"])
    parser.add_argument("--images", type=int, default=20, help="bundled images searched (default: all 20)")
    parser.add_argument("--images-512", type=int, default=2, help="512² latents searched")
    parser.add_argument("--exhaustive", type=int, default=2, help="images per codec also swept over the whole grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    header = [
        f"$ python benchmarks/rate_control.py --codecs {' '.join(args.codecs)} --images {args.images} "
        f"--images-512 {args.images_512} --exhaustive {args.exhaustive} --threads {args.threads}",
        f"date             {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine          {machine()}, torch {torch.__version__}, {args.threads} threads",
        f"load average     {load_average()} (1, 5, 15 min) at the start",
    ]
    print("\n".join(header), flush=True)
    lines = []
    with torch.no_grad():  # not inference_mode: the model fingerprint reads tensor versions
        for name in args.codecs:
            what, top, cases = (_bundled if name == "bundled" else _sd512)(args)
            encodes, seconds, sweep_seconds = [], [], []
            wrong = decreases = targets = dipped = 0
            one_bisection = 2 + (top - 1).bit_length() + RATE_SEARCH_WINDOW  # top, 0, bisection, window
            for k, (search, low, high, size) in enumerate(cases):
                dip = False
                for fraction in FRACTIONS:
                    n, t = search(int(low + fraction * (high - low)))
                    encodes.append(n)
                    seconds.append(t)
                    dip |= n > one_bisection
                dipped += dip
                if k < args.exhaustive or dip:
                    t0 = time.perf_counter()
                    sizes = [size(u) for u in range(top + 1)]
                    sweep_seconds.append(time.perf_counter() - t0)
                    decreases += sum(b < a for a, b in zip(sizes, sizes[1:]))
                    wrong += _check_against_sweep(sizes, top)
                    targets += len(set(sizes))
            lines += [
                f"{name}: {what}; grid of {top + 1} rates",
                f"  search           {len(encodes)} searches on {len(cases)} images: encodes per search mean "
                f"{statistics.mean(encodes):.1f}, max {max(encodes)}; time per search median "
                f"{statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}); {dipped} images "
                f"with a search that found the bytes dipping above its boundary",
                f"  exhaustive       {len(sweep_seconds)} images swept ({top + 1} encodes each): "
                + (f"median {statistics.median(sweep_seconds):.1f} s per image; bytes went down on {decreases} of "
                   f"{len(sweep_seconds) * top} grid steps; the search missed the highest fitting rate on {wrong} of "
                   f"{targets} targets (every size the grid reaches)" if sweep_seconds else "none"),
            ]
            print("\n".join(lines[-3:]), flush=True)
    finish_results(RESULTS, header, lines, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
