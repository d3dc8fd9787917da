"""The ``slim`` command line. Heavy libraries are imported inside each command, so ``slim --help`` and
``slim info`` start fast."""

import argparse
import sys
from typing import Optional, Sequence

from .utils.file_utils import write_atomically


def _cmd_info(args) -> int:
    from .coding.bitstream import SLIMBitstream, compress_caption
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
    from . import SLIMPipeline

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

    from .coding.bitstream import SLIMBitstream

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
        write_atomically(target, lambda f: image.save(f, format="PNG"))
        total_bytes += bs.num_bytes
        bpps.append(bs.bits_per_pixel)
    _print_summary(bpps, total_bytes, out_dir)
    return 0


def _cmd_inspect(args) -> int:
    from pathlib import Path

    import torch

    from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation
    from .coding.bitstream import SLIMBitstream

    bs = SLIMBitstream.load(args.file)
    target = Path(args.output)
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    pipe = _load_pipeline(args.model, sender_only=args.no_diffusion, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    image = pipe.decompress(bs, num_inference_steps=args.steps, use_diffusion=not args.no_diffusion,
                            generator=torch.Generator().manual_seed(args.seed)).images[0]
    bits, stride = bitstream_bit_allocation(pipe, bs)
    total = float(bits.sum())
    per_pixel = draw_bit_allocation(image, bits, target, stride=stride,
                                    title=f"{Path(args.file).name}: {bs.num_bytes} bytes, {bs.bits_per_pixel:.4f} bpp")
    print(f"{args.file}: payload {len(bs.payload)} bytes, entropy model {total / 8:.1f} bytes over "
          f"{bits.shape[0]}×{bits.shape[1]} positions of {stride}×{stride} pixels ({per_pixel.sum() / 8:.1f} bytes "
          f"inside the image, the rest on padding; max {float(bits.max()):.1f} bits) -> {target}")
    return 0


def _cmd_evaluate(args) -> int:
    from datetime import timedelta
    from pathlib import Path

    from accelerate import PartialState

    from .evaluation.codecs import rate_point_labels
    from .evaluation.harness import Classifier
    from .evaluation.run import build_codecs, format_report, load_dataset_for_evaluation, run_evaluation
    from .utils.distributed import use_cpu_workers

    # shards finish at different times: the barrier before the merge must outwait the slowest one
    state = PartialState(cpu=use_cpu_workers(), timeout=timedelta(hours=args.merge_timeout_hours))
    dataset = load_dataset_for_evaluation(args.dataset, args.split)
    codecs = build_codecs(
        models=args.model, num_inference_steps=args.steps, strength=args.strength, seed=args.seed,
        no_diffusion_curve=args.no_diffusion_curve, baselines=args.baselines, qualities=args.qualities,
        compressai=args.compressai, compressai_qualities=args.compressai_qualities, plugins=args.codec,
        device=state.device,
    )
    classifiers = [Classifier.from_pretrained(c, device=state.device) for c in args.classifiers]
    run = run_evaluation(
        args.output_dir, dataset, codecs, classifiers, image_column=args.image_column, label_column=args.label_column,
        caption_column=args.caption_column, num_samples=args.num_samples, anchor=args.anchor,
        envelope=args.monotone_envelope, keep_bitstreams=not args.discard_bitstreams, batch_size=args.batch_size,
        state=state,
        extra={"slim_models": dict(zip(rate_point_labels(args.model), args.model))},
    )
    print(f"process {state.process_index}: {run.rows_written} rows written, {run.rows_found} found finished "
          f"-> {run.rows_path}")
    if run.report is None:
        return 0
    print(format_report(run.report, args.output_dir))
    if not run.report["complete"]:
        print(f"warning: {run.report['rows']} rows present, fewer than a complete run has; run the same command "
              "again to finish", file=sys.stderr)
    print(f"summary.json, rate_accuracy.png, bd_rate.md -> {Path(args.output_dir)}")
    return 0


def _cmd_demo(args) -> int:
    import json
    from pathlib import Path

    import torch
    from PIL import Image

    from . import SLIMPipeline
    from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation

    assets = Path(__file__).resolve().parent / "assets"
    bundled = sorted((assets / "images").glob("*.png"))
    sources = bundled + [Path(p) for p in args.images]
    model = Path(args.model) if args.model else assets / "toy" / "slim"
    classifier_dir = Path(args.classifier) if args.classifier else assets / "toy" / "classifier"
    settings_file = assets / "toy" / "demo.json"
    decode = json.loads(settings_file.read_text())["decode"] if settings_file.is_file() and not args.model else {}
    decode = {k: v for k, v in decode.items() if k in ("num_inference_steps", "strength")}
    if args.steps is not None:
        decode["num_inference_steps"] = args.steps
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    pipe = SLIMPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    classifier = None
    if classifier_dir.is_dir():
        from .evaluation.harness import Classifier

        classifier = Classifier.from_pretrained(str(classifier_dir))
    names = classifier.model.config.id2label if classifier else {}
    print(f"model: {model}")
    print(f"classifier: {classifier_dir if classifier else 'none'}; decoding: {decode or 'pipeline defaults'}")
    print(f"{'file':<22}{'size':>8}{'bytes':>7}{'bpp':>8}  {'true class':<16}{'decoded as':<16}caption")
    total, bpps, correct, labelled = 0, [], 0, 0
    for source in sources:
        with Image.open(source) as image:
            image.load()
        # bundled images are named after their class ("red_circle.png" -> "red circle"); the caption names it
        # too, as the generator's captions do in the toy world (they stand in for BLIP-2)
        true = source.stem.replace("_", " ") if source in bundled else ""
        caption = args.caption if args.caption is not None else (f"a {true}" if true else "")
        (bs,) = pipe.compress(image, captions=caption)
        size = bs.save(out_dir / f"{source.stem}.slim")
        decoded = pipe.decompress(bs, generator=torch.Generator().manual_seed(0), **decode).images[0]
        decoded.save(out_dir / f"{source.stem}.png")
        bits, stride = bitstream_bit_allocation(pipe, bs)
        draw_bit_allocation(decoded, bits, out_dir / f"{source.stem}_bits.png", stride=stride,
                            title=f"{source.name}: {size} bytes, {bs.bits_per_pixel:.3f} bpp")
        predicted = names.get(classifier.top5(decoded)[0], "?") if classifier else "-"
        if true and classifier:
            labelled += 1
            correct += predicted == true
        total += size
        bpps.append(bs.bits_per_pixel)
        shown = f"{image.width}x{image.height}"
        print(f"{source.name:<22}{shown:>8}{size:>7}{bs.bits_per_pixel:>8.4f}  {true or '-':<16}{predicted:<16}{caption!r}")
    print(f"{len(bpps)} images, {total} bytes, mean {sum(bpps) / len(bpps):.4f} bpp"
          + (f"; {correct}/{labelled} bundled images decoded as their class" if labelled else ""))
    print(f"-> {out_dir}: .slim files, decoded PNGs and bit-allocation maps (*_bits.png)")
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

    p = sub.add_parser(
        "evaluate",
        help="rate–accuracy evaluation of SLIM and baselines on a labelled dataset",
        description="Compress, decode and classify every image with every codec and rate point, writing the bytes to "
        "OUT_DIR/bitstreams; rows go to OUT_DIR/rows*.jsonl, results to summary.json, rate_accuracy.png and "
        "bd_rate.md. Run it again to resume; run it under `accelerate launch` to shard the images.",
    )
    p.add_argument("--model", nargs="*", default=[],
                   help="SLIM pipelines (Hub ids or directories), one rate point each")
    p.add_argument("--dataset", required=True, help="a Hub dataset name or a directory written by save_to_disk")
    p.add_argument("--split", default="validation", help="split of the dataset (default: validation)")
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--caption-column", default="caption",
                   help="captions SLIM sends, when the dataset has this column (else, or with `none`, the pipeline's "
                   "captioner writes them if it has one)")
    p.add_argument("--classifiers", nargs="+", default=["microsoft/resnet-50", "facebook/convnext-tiny-224"],
                   help="image classifiers (Hub ids or directories) whose class indices are the dataset's labels")
    p.add_argument("--num-samples", "--num_samples", type=int, default=None, help="first N images (default: all)")
    p.add_argument("--baselines", nargs="*", default=["jpeg", "webp"], help="Pillow formats: jpeg webp avif")
    p.add_argument("--qualities", nargs="+", type=int, default=[2, 5, 10, 20, 40, 70], help="Pillow quality sweep")
    p.add_argument("--compressai", nargs="*", default=[], help="CompressAI zoo models, e.g. bmshj2018-hyperprior")
    p.add_argument("--compressai-qualities", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--codec", action="append", default=[], metavar="MODULE:CALLABLE",
                   help="plug in codecs: CALLABLE() returns a codec or a list of them (repeatable)")
    p.add_argument("--no-diffusion-curve", action="store_true", help="add SLIM decoded without diffusion (ablation)")
    p.add_argument("--anchor", default=None, help="codec of the BD-rate table's reference (default: JPEG)")
    p.add_argument("--monotone-envelope", action="store_true",
                   help="compare BD deltas on each curve's monotone envelope (drop points that gain no accuracy "
                   "over a cheaper point); saturated accuracy curves otherwise have no BD-rate")
    p.add_argument("--steps", type=int, default=20, help="SLIM denoising steps (default: 20)")
    p.add_argument("--strength", type=float, default=1.0, help="SLIM decoding strength (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of SLIM's sampling noise, the same for every image")
    p.add_argument("--discard-bitstreams", action="store_true", help="delete each file once measured and decoded")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images decoded and classified together (faster; the bytes are the same)")
    p.add_argument("--merge-timeout-hours", type=float, default=48.0,
                   help="how long finished processes wait for the others before the merge (default: 48)")
    p.add_argument("-o", "--output-dir", required=True)
    p.set_defaults(func=_cmd_evaluate)

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

    p = sub.add_parser("demo", help="compress, decode and classify the bundled images with the bundled toy model (offline)")
    p.add_argument("images", nargs="*", help="more images to include (sent without a caption unless --caption)")
    p.add_argument("--model", default=None, help="a saved SLIM pipeline (default: the bundled toy model)")
    p.add_argument("--classifier", default=None, help="classifier of the decoded images (default: the bundled toy one)")
    p.add_argument("-o", "--output-dir", default="demo_output")
    p.add_argument("--caption", default=None, help="caption for every image (default: bundled images' class names)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the bundled model's setting)")
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
