"""The ``slim`` command line. Heavy libraries are imported inside each command, so ``slim --help`` and
``slim info`` start fast."""

import argparse
import sys
from typing import Optional, Sequence


def _cmd_info(args) -> int:
    from .bitstream import SLIMBitstream, compress_caption
    from .errors import SLIMBitstreamError

    status = 0
    for path in args.files:
        try:
            bs = SLIMBitstream.load(path)
        except (SLIMBitstreamError, OSError) as err:
            print(f"{path}: error: {err}", file=sys.stderr)
            status = 1
            continue
        total = bs.num_bytes
        print(f"{path}")
        print(f"  format version   {bs.version}")
        print(f"  image size       {bs.width}×{bs.height}")
        print(f"  model            {bs.fingerprint.hex()}")
        print(f"  caption          {bs.caption!r} ({len(compress_caption(bs.caption))} bytes compressed)")
        print(f"  payload          {len(bs.payload)} bytes")
        print(f"  file             {total} bytes")
        print(f"  bits per pixel   {bs.bits_per_pixel:.4f}")
    return status


def _load_pipeline(model: str, sender_only: bool, device: Optional[str]):
    from .pipelines.pipeline_slim import SLIMPipeline

    kwargs = {}
    if sender_only:
        # a sender needs the VAE encoder and the codec, nothing of the diffusion decoder
        kwargs = dict(unet=None, controlnet=None, text_encoder=None, tokenizer=None)
    pipe = SLIMPipeline.from_pretrained(model, **kwargs)
    if device:
        pipe.to(device)
    return pipe


def _output_path(out_dir, source: str, suffix: str, force: bool):
    from pathlib import Path

    path = Path(out_dir) / (Path(source).stem + suffix)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    return path


def _atomic_save_image(image, path) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".slim-", suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _print_summary(bpps, total_bytes: int, out_dir) -> None:
    print(f"{len(bpps)} files, {total_bytes} bytes, mean {sum(bpps) / len(bpps):.4f} bpp -> {out_dir}")


def _cmd_compress(args) -> int:
    from pathlib import Path

    from PIL import Image
    from tqdm.auto import tqdm

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [_output_path(out_dir, f, ".slim", args.force) for f in args.images]  # refuse before any work
    if len(set(targets)) != len(targets):
        raise SystemExit("error: several inputs have the same file name stem; compress them into different folders")
    pipe = _load_pipeline(args.model, sender_only=True, device=args.device)
    total_bytes, bpps = 0, []
    for source, target in tqdm(list(zip(args.images, targets)), desc="compress", unit="img"):
        with Image.open(source) as image:
            image.load()
            (bs,) = pipe.compress(image, captions=args.caption)
        total_bytes += bs.save(target)
        bpps.append(bs.bits_per_pixel)
    _print_summary(bpps, total_bytes, out_dir)
    return 0


def _cmd_decompress(args) -> int:
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from .bitstream import SLIMBitstream

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [_output_path(out_dir, f, ".png", args.force) for f in args.files]
    bitstreams = [SLIMBitstream.load(f) for f in args.files]  # every file is checked before any model loads
    pipe = _load_pipeline(args.model, sender_only=False, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    total_bytes, bpps = 0, []
    for bs, target in tqdm(list(zip(bitstreams, targets)), desc="decompress", unit="img"):
        image = pipe.decompress(
            bs,
            num_inference_steps=args.steps,
            strength=args.strength,
            use_diffusion=not args.no_diffusion,
            generator=generator,
        ).images[0]
        _atomic_save_image(image, target)
        total_bytes += bs.num_bytes
        bpps.append(bs.bits_per_pixel)
    _print_summary(bpps, total_bytes, out_dir)
    return 0


def _cmd_inspect(args) -> int:
    from pathlib import Path

    import torch

    from .bit_allocation import bit_allocation, draw_bit_allocation
    from .bitstream import SLIMBitstream

    bs = SLIMBitstream.load(args.file)
    target = Path(args.output)
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    pipe = _load_pipeline(args.model, sender_only=args.no_diffusion, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    image = pipe.decompress(bs, num_inference_steps=args.steps, use_diffusion=not args.no_diffusion,
                            generator=torch.Generator().manual_seed(args.seed)).images[0]
    s = pipe.vae_scale_factor
    bits = bit_allocation(pipe.decompressor, bs.payload, (-(-bs.height // s), -(-bs.width // s)))
    total = float(bits.sum())
    draw_bit_allocation(image, bits, target, title=f"{Path(args.file).name}: {bs.num_bytes} bytes, {bs.bits_per_pixel:.4f} bpp")
    print(f"{args.file}: payload {len(bs.payload)} bytes, entropy model {total / 8:.1f} bytes over "
          f"{bits.shape[0]}×{bits.shape[1]} positions (max {float(bits.max()):.1f} bits) -> {target}")
    return 0


def _cmd_demo(args) -> int:
    from pathlib import Path

    import torch
    from PIL import Image

    from .testing import tiny_pipeline

    assets = Path(__file__).resolve().parent / "assets" / "images"
    sources = sorted(assets.glob("*.png")) + [Path(p) for p in args.images]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.model:
        from .pipelines.pipeline_slim import SLIMPipeline

        pipe, which = SLIMPipeline.from_pretrained(args.model), args.model
    else:
        pipe, which = tiny_pipeline(seed=0), "tiny pipeline with random weights (no trained model bundled yet)"
    pipe.set_progress_bar_config(disable=True)
    print(f"model: {which}")
    print(f"{'file':<28}{'size':>10}{'bytes':>8}{'bpp':>9}  caption")
    total, bpps = 0, []
    for source in sources:
        with Image.open(source) as image:
            image.load()
        # bundled images are named after their content ("red_circle.png" -> "a red circle")
        caption = args.caption if args.caption is not None else "a " + source.stem.replace("_", " ")
        (bs,) = pipe.compress(image, captions=caption)
        size = bs.save(out_dir / f"{source.stem}.slim")
        decoded = pipe.decompress(
            bs, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0)
        ).images[0]
        decoded.save(out_dir / f"{source.stem}.png")
        total += size
        bpps.append(bs.bits_per_pixel)
        print(f"{source.name:<28}{f'{image.width}x{image.height}':>10}{size:>8}{bs.bits_per_pixel:>9.4f}  {bs.caption}")
    print(f"{len(bpps)} images, {total} bytes, mean {sum(bpps) / len(bpps):.4f} bpp; .slim files and decoded PNGs in {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slim", description="SLIM: low-bitrate image compression for machines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print the header and bits per pixel of .slim files")
    p.add_argument("files", nargs="+", help=".slim files")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("compress", help="compress images into .slim files")
    p.add_argument("images", nargs="+", help="image files (any mode and size Pillow reads)")
    p.add_argument("--model", required=True, help="a saved SLIM pipeline: Hub id or local directory")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the .slim files")
    p.add_argument("--caption", default=None, help="caption to send with every image (default: none)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--force", action="store_true", help="overwrite existing .slim files")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("decompress", help="decode .slim files into PNG images")
    p.add_argument("files", nargs="+", help=".slim files")
    p.add_argument("--model", required=True, help="the SLIM pipeline that wrote the files: Hub id or directory")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the PNG images")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    p.add_argument("--strength", type=float, default=1.0, help="1 = sample from noise; <1 = start from noised ẑ")
    p.add_argument("--no-diffusion", action="store_true", help="decode ẑ with the VAE directly (ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--force", action="store_true", help="overwrite existing PNG files")
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser("inspect", help="draw the bit allocation of a .slim file over its decoded image")
    p.add_argument("file", help="a .slim file")
    p.add_argument("--model", required=True, help="the SLIM pipeline that wrote it")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-diffusion", action="store_true", help="draw over ẑ decoded by the VAE alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo", help="compress and decode the bundled images (offline)")
    p.add_argument("images", nargs="*", help="more images to include")
    p.add_argument("--model", default=None, help="a saved SLIM pipeline (default: the bundled one)")
    p.add_argument("-o", "--output-dir", default="demo_output")
    p.add_argument("--caption", default=None, help="caption for every image (default: from the file name)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default: 4)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # SLIMBitstreamError and SLIMModelMismatchError are ValueErrors
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
