"""Large images: time and peak memory of coding and decoding 1024², 2048² and 4096² images on the CPU.

Each case runs in a fresh process (peak RSS is per process), with the bundled toy model
(``slim_diffusers/assets/toy/slim``, VAE stride 4, trained at 64²):

- ``no-diffusion``: compress, then decode with ``use_diffusion=False`` (entropy decoding, g_s, VAE decoder);
- ``diffusion``: the same with the bundled model's own decoding settings (``assets/toy/demo.json``);
- ``codec-sd``: the default-size codec (M = 320, random weights) alone on the latent Stable Diffusion's VAE gives
  the image (stride 8: 4096² → 4×512×512), to see what the entropy coder costs at SD's scale.

Every stage's wall time and the peak resident memory while it ran (sampled every 5 ms) are reported, after a
warm-up on a small input; the VAE is tiled as the pipeline decides by default (from 512² pixels on). A case that runs past ``--timeout`` is recorded
as such. Results are appended to ``benchmarks/results/large_images.txt`` with the date, the machine, the
thread count and the load average before and after the run: numbers taken on a busy machine say so.

    python benchmarks/large_images.py                              # 1024 2048 4096, every mode, 2 threads
    python benchmarks/large_images.py --sizes 256 512 --no-save    # a quick check
    python benchmarks/large_images.py --sizes 512 1024 --modes no-diffusion --vae-tiling off   # the VAE untiled
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from machine_info import finish_results, load_average, machine

RESULTS = Path(__file__).resolve().parent / "results" / "large_images.txt"
MODES = ("no-diffusion", "diffusion", "codec-sd")


# ------------------------------------------------------------------------------------------- one case
class _Stages:
    """Wall time and peak RSS (MiB) of each stage of one run, sampled by a background thread."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.rows = {}

    def rss(self) -> float:
        return self._process.memory_info().rss / 2**20

    @contextmanager
    def stage(self, name: str):
        peak, stop = [self.rss()], threading.Event()

        def sample():
            while not stop.wait(0.005):
                peak[0] = max(peak[0], self.rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
            self.rows[name] = {"seconds": round(seconds, 3), "peak_rss_mib": round(max(peak[0], self.rss()), 1)}


def _toy_image(size: int):
    """A bundled toy image scaled up to ``size``² (what the toy world looks like, at a size it never saw)."""
    from PIL import Image

    import slim_diffusers

    source = Path(slim_diffusers.__file__).parent / "assets" / "images" / "striped_star.png"
    with Image.open(source) as image:
        return image.convert("RGB").resize((size, size), Image.BICUBIC)


def run_case(size: int, mode: str, threads: int, vae_tiling: str = "auto") -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    stages = _Stages()
    out = {"size": size, "mode": mode, "rss_after_import_mib": round(stages.rss(), 1)}
    with torch.no_grad():  # not inference_mode: the codec caches its CDF tables by tensor version
        if mode == "codec-sd":
            from slim_diffusers import SLIMCompressor, SLIMDecompressor
            from slim_diffusers.coding.latents import compress_latents, decompress_latents
            from slim_diffusers.testing import structured_latents

            torch.manual_seed(0)
            compressor, decompressor = SLIMCompressor().eval(), SLIMDecompressor().eval()
            decompressor.update(force=True)
            latents = structured_latents(1, size // 8, size // 8)
            _, z_size = decompressor.code_shapes(size // 8, size // 8)
            out["symbols"] = decompressor.entropy_coder.num_symbols(z_size)
            warm_up = structured_latents(1, 16, 16)  # first-call costs (CDF lists, kernel choice) are not size's
            decompress_latents(decompressor, compress_latents(compressor, decompressor, warm_up), warm_up.shape)
            out["rss_after_load_mib"] = round(stages.rss(), 1)
            with stages.stage("entropy encode"):
                (payload,) = compress_latents(compressor, decompressor, latents)
            with stages.stage("entropy decode"):
                decompress_latents(decompressor, [payload], latents.shape)
            out["payload_bytes"] = len(payload)
        else:
            from slim_diffusers import SLIMBitstream, SLIMPipeline
            from slim_diffusers import toy_decode_settings, toy_model_path
            from slim_diffusers.coding.latents import compress_latents

            pipe = SLIMPipeline.from_pretrained(toy_model_path())
            pipe.set_progress_bar_config(disable=True)
            if vae_tiling == "off":
                pipe.disable_vae_tiling()
            image = _toy_image(size)
            pipe(_toy_image(64), captions="", use_diffusion=False)  # first-call costs are not the size's
            out["rss_after_load_mib"] = round(stages.rss(), 1)
            with stages.stage("VAE encode"):
                (latent,) = pipe.encode_images([image])
            rate = pipe.resolve_rate(None)  # a variable-rate model's highest level, as pipe.compress codes by default
            with stages.stage("entropy encode"):
                (payload,) = compress_latents(pipe.compressor, pipe.decompressor, latent, rate)
            # what pipe.compress(image, captions=...) returns, from the stages timed above
            bs = SLIMBitstream(size, size, pipe.decompressor.fingerprint(), "a star", payload,
                               exact_entropy_model=pipe.decompressor.exact_entropy_model, rate=rate)
            _, z_size = pipe.decompressor.code_shapes(*latent.shape[-2:])
            out["symbols"] = pipe.decompressor.entropy_coder.num_symbols(z_size)
            with stages.stage("entropy decode"):
                (control,) = pipe.decode_latents_from_bitstreams([bs])
            decoded = control
            if mode == "diffusion":
                settings = toy_decode_settings()
                out["decode_settings"] = settings
                with stages.stage("diffusion"):
                    decoded = pipe.denoise(control, [bs.caption], settings["num_inference_steps"], settings["strength"],
                                           1.0, 1.0, 0.0, torch.Generator().manual_seed(0), None, None, [])
            with stages.stage("VAE decode"):
                pixels = pipe.decode_latents(decoded, bs)
            assert tuple(pixels.shape[-2:]) == (size, size)
            out["payload_bytes"] = len(payload)
            out["file_bytes"] = bs.num_bytes
            out["vae_tiling"] = vae_tiling if vae_tiling == "off" else f"auto, {pipe.vae_tile_size()} px tiles"
    out["stages"] = stages.rows
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


# ------------------------------------------------------------------------------------------- the run
def _format(result: dict) -> str:
    if "error" in result:
        return f"{result['size']:>5}²  {result['mode']:<13} {result['error']}"
    tiling = f"  VAE tiling {result['vae_tiling']}" if "vae_tiling" in result else ""
    stages = "  ".join(f"{name} {row['seconds']:.2f} s / {row['peak_rss_mib']:.0f} MiB" for name, row in result["stages"].items())
    total = sum(row["seconds"] for row in result["stages"].values())
    return (f"{result['size']:>5}²  {result['mode']:<13} total {total:8.2f} s  peak RSS {result['peak_rss_mib']:7.0f} MiB "
            f"(after loading {result['rss_after_load_mib']:.0f})  symbols {result['symbols']:,}  "
            f"payload {result['payload_bytes']} B{tiling}\n          {stages}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="image sides in pixels")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one case may run (default: 3600)")
    parser.add_argument("--vae-tiling", choices=("auto", "off"), default="auto",
                        help="the pipeline's default (tiles from 512² pixels on), or never tile (for comparison)")
    parser.add_argument("--no-save", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    parser.add_argument("--case", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)  # one case, in a child
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1], args.threads, args.vae_tiling)))
        return 0

    import torch

    header = [
        f"$ python benchmarks/large_images.py --sizes {' '.join(map(str, args.sizes))} --modes {' '.join(args.modes)} "
        f"--threads {args.threads} --vae-tiling {args.vae_tiling}",
        f"date             {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine          {machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}",
        f"load average     {load_average()} (1, 5, 15 min) at the start",
    ]
    print("\n".join(header), flush=True)
    lines = []
    # as the command line does (README "Command line"): spinning OpenMP threads would measure the machine's load
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    for size in args.sizes:
        for mode in args.modes:
            command = [sys.executable, __file__, "--case", str(size), mode, "--threads", str(args.threads),
                       "--vae-tiling", args.vae_tiling]
            try:
                child = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
                if child.returncode == 0:
                    result = json.loads(child.stdout.strip().splitlines()[-1])
                else:
                    tail = " ".join(child.stderr.strip().splitlines()[-1:])
                    result = {"size": size, "mode": mode, "error": f"failed (status {child.returncode}): {tail}"}
            except subprocess.TimeoutExpired:
                result = {"size": size, "mode": mode, "error": f"not finished after {args.timeout:.0f} s"}
            lines.append(_format(result))
            print(lines[-1], flush=True)
    finish_results(RESULTS, header, lines, save=not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
