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


def _load_eval_dataset(name_or_dir: str, split: str):
    from pathlib import Path

    import datasets

    from .evaluation.errors import EvaluationSetupError

    if Path(name_or_dir).is_dir():
        ds = datasets.load_from_disk(name_or_dir)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise EvaluationSetupError(f"{name_or_dir} has splits {list(ds)}, not {split!r}; pick one with --split")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(name_or_dir, split=split)
    except (OSError, ValueError) as err:
        raise EvaluationSetupError(f"could not load the dataset {name_or_dir!r} (split {split!r}): {err}") from None


def _plugin_codecs(spec: str) -> list:
    """``--codec package.module:factory``: ``factory()`` returns a codec or a list of codecs."""
    import importlib

    from .evaluation.errors import EvaluationSetupError

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise EvaluationSetupError(f"--codec {spec!r}: expected MODULE:CALLABLE, e.g. my_codecs:make_codec")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise EvaluationSetupError(f"--codec {spec!r}: {err}") from None
    made = factory()
    return list(made) if isinstance(made, (list, tuple)) else [made]


def _cmd_evaluate(args) -> int:
    import time
    from datetime import timedelta
    from pathlib import Path

    from accelerate import PartialState

    from .utils.distributed import use_cpu_workers
    from .evaluation.baselines import CompressAICodec, PillowCodec
    from .evaluation.codecs import SLIMCodec, rate_point_labels
    from .evaluation.errors import EvaluationSetupError
    from .evaluation.harness import Classifier, Evaluation, Sample, latest_rows
    from .evaluation.report import write_report

    t0 = time.perf_counter()
    state = PartialState(
        cpu=use_cpu_workers(),
        # shards finish at different times: the barrier before the merge must outwait the slowest one
        timeout=timedelta(hours=args.merge_timeout_hours),
    )
    out_dir = Path(args.output_dir)

    ds = _load_eval_dataset(args.dataset, args.split)
    for column in (args.image_column, args.label_column):
        if column not in ds.column_names:
            raise EvaluationSetupError(f"the dataset has no column {column!r} (it has {ds.column_names})")
    n = len(ds) if args.num_samples is None else min(args.num_samples, len(ds))
    caption_column = args.caption_column if args.caption_column in ds.column_names else None

    # every codec and classifier is loaded (and may fail) before any image is coded
    codecs = []
    if len(set(args.model)) != len(args.model):
        raise EvaluationSetupError(f"--model lists a model twice: {args.model}")
    if args.model:
        from .pipelines.pipeline_slim import SLIMPipeline

        pipelines = {}
        for label, model in zip(rate_point_labels(args.model), args.model):
            try:
                pipe = SLIMPipeline.from_pretrained(model).to(state.device)
            except OSError as err:
                raise EvaluationSetupError(f"could not load the SLIM model {model!r}: {err}") from None
            pipe.set_progress_bar_config(disable=True)
            pipelines[label] = pipe
        slim = dict(num_inference_steps=args.steps, strength=args.strength, seed=args.seed)
        codecs.append(SLIMCodec(pipelines, name="SLIM", **slim))
        if args.no_diffusion_curve:
            codecs.append(SLIMCodec(pipelines, name="SLIM w/o diffusion", use_diffusion=False, **slim))
    codecs += [PillowCodec(fmt, qualities=args.qualities) for fmt in args.baselines]
    codecs += [CompressAICodec.from_zoo(arch, args.compressai_qualities) for arch in args.compressai]
    for spec in args.codec:
        codecs += _plugin_codecs(spec)
    if not codecs:
        raise EvaluationSetupError("nothing to evaluate: give --model, --baselines, --compressai or --codec")
    classifiers = [Classifier.from_pretrained(c, device=state.device) for c in args.classifiers]

    label_feature = ds.features[args.label_column]
    for clf in classifiers:
        if getattr(label_feature, "num_classes", clf.num_labels) != clf.num_labels:
            raise EvaluationSetupError(
                f"the dataset has {label_feature.num_classes} classes but {clf.name} outputs {clf.num_labels}; "
                "the classifier must be trained on the dataset's labels"
            )
    names = [c.name for c in codecs]
    anchor = args.anchor or ("JPEG" if "JPEG" in names else names[0])
    if anchor not in names:
        raise EvaluationSetupError(f"anchor codec {anchor!r} is not evaluated; choose one of {names}")

    shard = f".rank{state.process_index}" if state.num_processes > 1 else ""
    evaluation = Evaluation(out_dir, codecs, classifiers, shard=shard, keep_bitstreams=not args.discard_bitstreams)
    found = len(evaluation.done)

    def sample(i: int) -> Sample:
        item = ds[i]
        caption = item[caption_column] if caption_column else None
        return Sample(index=i, image=item[args.image_column], label=int(item[args.label_column]), caption=caption)

    with state.split_between_processes(list(range(n))) as mine:
        written = evaluation.run(sample(i) for i in mine)
    print(f"process {state.process_index}: {written} rows written, {found} found finished -> {evaluation.rows_path}")
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0

    keys = evaluation.keys(range(n))
    rows = latest_rows(out_dir, keys)
    clf_names = [c.name for c in classifiers]
    models = {label: model for label, model in zip(rate_point_labels(args.model), args.model)}
    report = write_report(out_dir, rows, clf_names, anchor, images=n, seconds=time.perf_counter() - t0,
                          expected_rows=len(keys), extra={"slim_models": models}, envelope=args.monotone_envelope)
    print((out_dir / "bd_rate.md").read_text(encoding="utf-8"))
    print(f"{'codec':<22}{'rate point':<24}{'images':>7}{'bpp':>9}  top-1 / top-5 (%)")
    for codec, points in report["codecs"].items():
        for point, e in points.items():
            accs = ", ".join(f"{Path(c).name} {e['top1'][c]:.1f}/{e['top5'][c]:.1f}" for c in clf_names)
            print(f"{codec:<22}{point[-23:]:<24}{e['images']:>7}{e['mean_bpp']:>9.4f}  {accs}")
    if not report["complete"]:
        print(f"warning: {report['rows']} of {len(keys)} rows present; run the same command again to finish",
              file=sys.stderr)
    print(f"summary.json, rate_accuracy.png, bd_rate.md -> {out_dir}")
    return 0


def _cmd_demo(args) -> int:
    import json
    from pathlib import Path

    import torch
    from PIL import Image

    from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation
    from .pipelines.pipeline_slim import SLIMPipeline

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
