"""The ``slim`` command line: thin, as a codec's command line is (``cwebp``, ``avifenc``).

Every command checks all of its inputs (files, output folder, model name) before it loads a model, prints one
line per mistake on stderr and exits with status 2; anything unexpected is one line too, status 1, and
``--debug`` adds the traceback. Heavy libraries are imported inside each command, so ``slim --help`` and
``slim info`` start fast.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .utils.hub import ASSETS, BUNDLED_MODEL, toy_decode_settings, toy_model_path

# `--model toy` names the SLIM model bundled in the package (slim_diffusers/assets/toy/, what `slim demo` runs),
# decoded with its own settings (assets/toy/demo.json) unless --steps/--strength say otherwise. Hub repositories
# are named owner/name; a local folder called toy is `./toy`. `SLIMPipeline.from_pretrained("toy")` says the same.
DEFAULT_STEPS, DEFAULT_STRENGTH = 20, 1.0


class CLIError(Exception):
    """Mistakes in what a command was given: each message is printed as one line, and the exit status is 2."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


def _check_each(items: Sequence, check: Callable) -> list:
    """``check`` every item; report the mistakes of all of them at once (one line each), not only the first."""
    results, errors = [], []
    for item in items:
        try:
            results.append(check(item))
        except CLIError as err:
            errors.extend(err.messages)
    if errors:
        raise CLIError(*errors)
    return results


# ------------------------------------------------------------------------------------------------ inputs
def _check_image(path: str) -> Path:
    """An image file Pillow can read, of a size SLIM codes; only its header is read."""
    from PIL import Image, UnidentifiedImageError

    from .coding.bitstream import MAX_SIDE

    file = Path(path)
    if not file.exists():
        raise CLIError(f"{path}: no such file")
    if file.is_dir():
        raise CLIError(f"{path}: is a folder, not an image")
    try:
        with Image.open(file) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise CLIError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise CLIError(f"{path}: {err}") from None
    except OSError as err:
        raise CLIError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise CLIError(f"{path}: {width}×{height} pixels; SLIM codes images up to {MAX_SIDE}×{MAX_SIDE}")
    return file


def _check_slim_file(path: str, max_pixels: Optional[int] = None, limit: bool = True):
    """The parsed ``.slim`` file, refused (with its name) when malformed or, with ``limit``, larger than the
    decoding limit (``max_pixels``; ``None``: the library's default)."""
    from .coding.bitstream import SLIMBitstream, check_decode_limit
    from .errors import SLIMBitstreamError

    file = Path(path)
    if not file.exists():
        raise CLIError(f"{path}: no such file")
    if file.is_dir():
        raise CLIError(f"{path}: is a folder, not a .slim file")
    try:
        bitstream = SLIMBitstream.load(file)  # its messages begin with the path
        if limit:
            check_decode_limit(bitstream, max_pixels, name=str(path))
    except SLIMBitstreamError as err:
        raise CLIError(f"{type(err).__name__}: {err}") from None
    except OSError as err:
        raise CLIError(f"{path}: cannot read it ({err.strerror or err})") from None
    return bitstream


class _OutputFolder:
    """The folder a command writes into: checked before any model loads, created when the first file is written,
    and removed again (with the parents this command created) when the command fails before writing into it."""

    def __init__(self, path, force: bool = False):
        self.path, self.force = Path(path), force
        self._created: List[Path] = []
        if self.path.exists() and not self.path.is_dir():
            raise CLIError(f"{path}: exists and is not a folder")
        ancestor = self.path.absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise CLIError(f"{path}: cannot write into {ancestor}")

    def target(self, name: str) -> Path:
        """The path a file will be written to; an existing file is refused unless ``--force``."""
        path = self.path / name
        if path.exists() and not self.force:
            raise CLIError(f"{path}: exists; pass --force to overwrite it")
        return path

    def create(self) -> None:
        missing, folder = [], self.path.absolute()
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = missing + self._created  # innermost first

    def __enter__(self) -> "_OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for folder in self._created:
                try:
                    folder.rmdir()  # only if empty
                except OSError:
                    break


# ------------------------------------------------------------------------------------------------ models
@dataclass
class _Model:
    """A ``--model`` argument, resolved: what ``from_pretrained`` gets, and the model's own decoding settings."""

    name: str
    location: str
    decode: dict = field(default_factory=dict)


def _could_be_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _resolve_model(name: str) -> _Model:
    """Check a ``--model`` argument without loading it: ``toy``, a folder holding a saved SLIM pipeline, or a Hub id."""
    if name == BUNDLED_MODEL:
        if Path(name).is_dir():
            print(f"note: --model {name} is the bundled toy model; write ./{name} for the folder {name}", file=sys.stderr)
        return _Model(name, str(toy_model_path()), toy_decode_settings())
    path = Path(name).expanduser()
    what = "a SLIM model is a folder written by SLIMPipeline.save_pretrained"
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise CLIError(f"no SLIM model at {name} (the folder has no model_index.json; {what})")
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (ValueError, AttributeError):
            raise CLIError(f"no SLIM model at {name} (its model_index.json is not valid JSON)") from None
        if class_name != "SLIMPipeline":
            raise CLIError(f"no SLIM model at {name} (its model_index.json describes a {class_name}; {what})")
        return _Model(name, str(path))
    if path.exists():
        raise CLIError(f"no SLIM model at {name} (it is a file; {what})")
    if not _could_be_hub_id(name):
        raise CLIError(f"no SLIM model at {name} (no such folder)")
    from .utils.hub import missing_model_reason

    # a Hub id is looked up now (the local cache, or one request), not after the dataset and the other models load
    if missing_model_reason(name, "model_index.json", "SLIM model") is not None:
        raise CLIError(_hub_failure(name))
    return _Model(name, name)


def _hub_failure(name: str) -> str:
    from huggingface_hub import constants

    why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if constants.HF_HUB_OFFLINE
           else "no such model, or the Hub cannot be reached")
    return (f"no SLIM model at {name}: no such folder here, and it could not be fetched from the Hugging Face Hub "
            f"({why}); for a model on this machine pass its folder, e.g. --model ./my-slim, or --model "
            f"{BUNDLED_MODEL} for the bundled toy model")


def _quiet_loading() -> None:
    """No progress bars for loading weights from disk (downloads keep huggingface_hub's)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _load_pipeline(model: _Model, sender_only: bool, device: Optional[str]):
    import diffusers

    from . import SLIMPipeline

    _quiet_loading()
    kwargs = {}
    if sender_only:
        # a sender (or a decoder without diffusion) needs the VAE and the codec, nothing of the diffusion decoder
        kwargs = dict(unet=None, controlnet=None, text_encoder=None, tokenizer=None)
    local = Path(model.location).is_dir()
    verbosity = diffusers.utils.logging.get_verbosity()
    if not local:  # a failed Hub look-up is reported in one line below, not in diffusers' several
        diffusers.utils.logging.set_verbosity_error()
    try:
        pipe = SLIMPipeline.from_pretrained(model.location, **kwargs)
    except (OSError, ValueError):
        if local:
            raise  # a local model that fails to load says why itself
        raise CLIError(_hub_failure(model.name)) from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _decode_settings(args, model: _Model) -> dict:
    """``num_inference_steps`` and ``strength``: the command line's, else the model's own, else the pipeline's."""
    steps = getattr(args, "steps", None)
    strength = getattr(args, "strength", None)
    return {
        "num_inference_steps": steps if steps is not None else model.decode.get("num_inference_steps", DEFAULT_STEPS),
        "strength": strength if strength is not None else model.decode.get("strength", DEFAULT_STRENGTH),
    }


def _check_fingerprints(files: Sequence[str], bitstreams: Sequence, pipe, model: _Model) -> None:
    from .coding.bitstream import check_entropy_model, check_rate
    from .errors import SLIMModelMismatchError

    expected = pipe.decompressor.fingerprint()
    kinds = []
    for f, bs in zip(files, bitstreams):
        try:
            check_entropy_model(bs, pipe.decompressor.exact_entropy_model, name=f"{f}")
            check_rate(bs, pipe.decompressor.num_rate_levels, name=f"{f}")
        except SLIMModelMismatchError as err:
            kinds.append(f"SLIMModelMismatchError: {err}")
    if kinds:
        raise CLIError(*kinds)
    errors = [
        f"SLIMModelMismatchError: {f}: written by model {bs.fingerprint.hex()}, but --model {model.name} is model "
        f"{expected.hex()}; decode it with the model that wrote it"
        for f, bs in zip(files, bitstreams)
        if bs.fingerprint != expected
    ]
    if errors:
        raise CLIError(*errors)


def _resolve_rate(pipe, rate: Optional[float], model: _Model) -> Optional[float]:
    """``--rate`` checked against the loaded model (a fixed-rate model takes none; a variable-rate one a level)."""
    try:
        return pipe.resolve_rate(rate)
    except ValueError as err:
        raise CLIError(f"--rate {rate:g}: {err} (--model {model.name})") from None


def _write_png(path: Path, image) -> None:
    from .utils.file_utils import write_atomically

    write_atomically(path, lambda f: image.save(f, format="PNG"))


def _progress(items: list, desc: str):
    """A progress bar over ``items``; the package's warnings meanwhile (an empty caption sent, a short decoding
    schedule) are printed on lines of their own above it, not appended to the bar's line."""
    import logging

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("slim_diffusers")]):
        yield from tqdm(items, desc=desc, unit="img")


def _print_summary(bpps, total_bytes: int, out_dir) -> None:
    print(f"{len(bpps)} files, {total_bytes} bytes, mean {sum(bpps) / len(bpps):.4f} bpp -> {out_dir}")


# ------------------------------------------------------------------------------------------------ commands
def _cmd_info(args) -> int:
    from .coding.bitstream import compress_caption

    errors = []
    for path in args.files:
        try:
            bs = _check_slim_file(path, limit=False)  # a header is printed whatever size it claims
        except CLIError as err:
            errors.extend(err.messages)
            continue
        print(f"{path}")
        print(f"  format version   {bs.version} ({bs.entropy_model})")
        rate = "one fixed rate (a fixed-rate model)" if bs.rate is None else (
            f"{bs.rate:g} (a variable-rate model's level; 0 = the fewest bits)")
        print(f"  rate             {rate}")
        print(f"  image size       {bs.width}×{bs.height}")
        print(f"  model            {bs.fingerprint.hex()}")
        print(f"  caption          {bs.caption!r} ({len(compress_caption(bs.caption))} bytes compressed)")
        print(f"  payload          {len(bs.payload)} bytes")
        print(f"  file             {bs.num_bytes} bytes")
        print(f"  bits per pixel   {bs.bits_per_pixel:.4f}")
    if errors:
        raise CLIError(*errors)
    return 0


def _cmd_convert_exact(args) -> int:
    model = _resolve_model(args.model)
    if not Path(model.location).is_dir():
        raise CLIError(f"{args.model}: convert-exact converts a model folder on this machine; download it first")
    if (args.output_dir is None) != args.in_place:
        raise CLIError("give OUT_DIR, or --in-place to convert the model folder itself")
    if (args.calibration_images is None) == (args.toy_world is None):
        raise CLIError("give exactly one of --calibration-images and --toy-world")
    if args.output_dir is not None:
        out = Path(args.output_dir)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
            raise CLIError(f"{out}: exists and is not an empty folder; pass --force to write into it")
    if args.calibration_images is not None:
        from .training.convert_exact import calibration_image_files

        try:
            files = calibration_image_files(args.calibration_images, args.num_calibration_images)
        except (FileNotFoundError, ValueError) as err:
            raise CLIError(str(err)) from None
        _check_each([str(f) for f in files], _check_image)

    from .training.convert_exact import convert_pipeline_folder, load_calibration_images

    _quiet_loading()
    images = load_calibration_images(args)
    exact = convert_pipeline_folder(model.location, None if args.in_place else args.output_dir, images, force=args.force)
    where = Path(model.location if args.in_place else args.output_dir)
    print(f"{where}: exact integer entropy model {exact.fingerprint().hex()} (calibrated on {len(images)} images); "
          f"its files are .slim version {3 if exact.num_rate_levels else 2}")
    return 0


def _cmd_compress(args) -> int:
    sources = _check_each(args.images, _check_image)
    out = _OutputFolder(args.output_dir, force=args.force)
    if len({s.stem for s in sources}) != len(sources):
        raise CLIError("several inputs have the same file name stem; compress them into different folders")
    targets = _check_each([s.stem + ".slim" for s in sources], out.target)
    model = _resolve_model(args.model)

    from PIL import Image
    from tqdm.auto import tqdm

    from .errors import SLIMTargetSizeError

    pipe = _load_pipeline(model, sender_only=True, device=args.device)
    size = _size_target(pipe, args, model)
    rate = None if size else _resolve_rate(pipe, args.rate, model)  # a size target chooses the rate

    def read(source):
        with Image.open(source) as image:
            image.load()
        return image

    total_bytes, bpps, errors = 0, [], []
    with out:
        if args.target_mean:  # one budget for all the images: they are coded together
            bitstreams = pipe.compress([read(s) for s in sources], captions=args.caption, **size)
            jobs = list(zip(sources, targets, bitstreams))
        else:
            jobs = list(zip(sources, targets, [None] * len(sources)))
        for source, target, bs in _progress(jobs, desc="compress"):
            if bs is None:
                try:
                    (bs,) = pipe.compress(read(source), captions=args.caption, rate=rate, **size)
                except SLIMTargetSizeError as err:  # too small for this image: the other images go on
                    errors.append(f"SLIMTargetSizeError: {source}: {err}")
                    continue
            out.create()
            total_bytes += bs.save(target)
            bpps.append(bs.bits_per_pixel)
            if size:
                tqdm.write(f"{source}: rate {bs.rate:g}, {bs.num_bytes} bytes, {bs.bits_per_pixel:.4f} bpp")
    if bpps:
        _print_summary(bpps, total_bytes, out.path)
    if errors:
        raise CLIError(*errors)
    return 0


def _size_target(pipe, args, model: _Model) -> dict:
    """``--target-bytes`` / ``--target-bpp`` (``--target-mean``) as ``compress`` arguments, checked against the
    loaded model."""
    from .errors import SLIMRateControlError

    size = {k: v for k, v in (("target_bytes", args.target_bytes), ("target_bpp", args.target_bpp)) if v is not None}
    if args.target_mean:
        size["target_mean"] = True
    try:
        pipe.check_size_target(args.rate, size.get("target_bytes"), size.get("target_bpp"), args.target_mean)
    except SLIMRateControlError as err:
        option = {"target_bytes": "--target-bytes", "target_bpp": "--target-bpp"}
        message = str(err)
        for name, flag in option.items():
            message = message.replace(f"{name}=", flag)
        message = message.replace("target_mean=True", "--target-mean").replace("rate=", "--rate")
        raise CLIError(f"SLIMRateControlError: {message} (--model {model.name})") from None
    return size


def _cmd_decompress(args) -> int:
    bitstreams = _check_each(args.files, lambda f: _check_slim_file(f, args.max_pixels))
    out = _OutputFolder(args.output_dir, force=args.force)
    targets = _check_each([Path(f).stem + ".png" for f in args.files], out.target)
    if len(set(targets)) != len(targets):
        raise CLIError("several inputs have the same file name stem; decode them into different folders")
    model = _resolve_model(args.model)

    import torch

    from .errors import SLIMBitstreamError

    pipe = _load_pipeline(model, sender_only=args.no_diffusion, device=args.device)
    _check_fingerprints(args.files, bitstreams, pipe, model)
    settings = _decode_settings(args, model)
    generator = torch.Generator().manual_seed(args.seed)
    total_bytes, bpps, errors = 0, [], []
    with out:
        for path, bs, target in _progress(list(zip(args.files, bitstreams, targets)), desc="decompress"):
            try:
                image = pipe.decompress(bs, use_diffusion=not args.no_diffusion, generator=generator,
                                        max_pixels=args.max_pixels, **settings).images[0]
            except SLIMBitstreamError as err:  # a payload found corrupt while decoding: the other files go on
                errors.append(f"{type(err).__name__}: {path}: {err}")
                continue
            out.create()
            _write_png(target, image)
            total_bytes += bs.num_bytes
            bpps.append(bs.bits_per_pixel)
    if bpps:
        _print_summary(bpps, total_bytes, out.path)
    if errors:
        raise CLIError(*errors)
    return 0


def _cmd_inspect(args) -> int:
    bs = _check_slim_file(args.file, args.max_pixels)
    target = Path(args.output)
    out = _OutputFolder(target.parent, force=args.force)
    out.target(target.name)
    model = _resolve_model(args.model)

    import torch

    from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation

    pipe = _load_pipeline(model, sender_only=args.no_diffusion, device=args.device)
    _check_fingerprints([args.file], [bs], pipe, model)
    with out:
        image = pipe.decompress(bs, use_diffusion=not args.no_diffusion, max_pixels=args.max_pixels,
                                generator=torch.Generator().manual_seed(args.seed), **_decode_settings(args, model)).images[0]
        bits, stride = bitstream_bit_allocation(pipe, bs)
        total = float(bits.sum())
        out.create()
        per_pixel = draw_bit_allocation(image, bits, target, stride=stride,
                                        title=f"{Path(args.file).name}: {bs.num_bytes} bytes, {bs.bits_per_pixel:.4f} bpp")
    print(f"{args.file}: payload {len(bs.payload)} bytes, entropy model {total / 8:.1f} bytes over "
          f"{bits.shape[0]}×{bits.shape[1]} positions of {stride}×{stride} pixels ({per_pixel.sum() / 8:.1f} bytes "
          f"inside the image, the rest on padding; max {float(bits.max()):.1f} bits) -> {target}")
    return 0


def _cmd_evaluate(args) -> int:
    models = [_resolve_model(m) for m in args.model]
    # the bundled model brings its own decoding settings; several models are decoded alike, so they apply only
    # when every model is the bundled one
    own = models[0] if models and all(m.name == BUNDLED_MODEL for m in models) else _Model("", "")
    settings = _decode_settings(args, own)
    _quiet_loading()

    from datetime import timedelta

    from accelerate import PartialState

    from .evaluation.codecs import rate_point_labels
    from .evaluation.harness import Classifier
    from .evaluation.run import build_codecs, format_report, load_dataset_for_evaluation, run_evaluation
    from .utils.distributed import use_cpu_workers

    # shards finish at different times: the barrier before the merge must outwait the slowest one
    state = PartialState(cpu=use_cpu_workers(), timeout=timedelta(hours=args.merge_timeout_hours))
    dataset = load_dataset_for_evaluation(args.dataset, args.split)
    codecs = build_codecs(
        models=[m.location for m in models], num_inference_steps=settings["num_inference_steps"],
        strength=settings["strength"], seed=args.seed,
        no_diffusion_curve=args.no_diffusion_curve, baselines=args.baselines, qualities=args.qualities,
        compressai=args.compressai, compressai_qualities=args.compressai_qualities, plugins=args.codec,
        device=state.device, rates=args.rates,
    )
    classifiers = [Classifier.from_pretrained(c, device=state.device) for c in args.classifiers]
    run = run_evaluation(
        args.output_dir, dataset, codecs, classifiers, image_column=args.image_column, label_column=args.label_column,
        caption_column=args.caption_column, num_samples=args.num_samples, anchor=args.anchor,
        envelope=args.monotone_envelope, keep_bitstreams=not args.discard_bitstreams, batch_size=args.batch_size,
        state=state, seeds=args.seeds,
        extra={"slim_models": dict(zip(rate_point_labels([m.location for m in models]), args.model))},
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
    bundled = sorted((ASSETS / "images").glob("*.png"))
    sources = bundled + _check_each(args.images, _check_image)
    out = _OutputFolder(args.output_dir, force=args.force)
    if out.path.is_dir() and any(out.path.iterdir()) and not args.force:
        # as every command: files already there are not replaced unless asked
        raise CLIError(f"{args.output_dir}: exists and is not empty; pass --force to write the demo's files over it, "
                       "or -o another folder")
    model = _resolve_model(args.model)
    classifier_dir = Path(args.classifier) if args.classifier else (
        ASSETS / "toy" / "classifier" if args.model == BUNDLED_MODEL else None)
    if classifier_dir is not None and not (classifier_dir / "config.json").is_file():
        raise CLIError(f"no classifier at {classifier_dir} (a folder written by save_pretrained)")
    decode = _decode_settings(args, model)

    import torch
    from PIL import Image

    from .coding.bit_allocation import bitstream_bit_allocation, draw_bit_allocation
    from .coding.bitstream import MAX_SIDE
    from .toy_world import caption_for_class_name

    pipe = _load_pipeline(model, sender_only=False, device=None)
    rate = _resolve_rate(pipe, args.rate, model)
    classifier = None
    if classifier_dir is not None:
        from .evaluation.harness import Classifier

        classifier = Classifier.from_pretrained(str(classifier_dir))
    names = classifier.model.config.id2label if classifier else {}
    print(f"model: {model.name} ({model.location})" if model.name != model.location else f"model: {model.name}")
    coded_at = "" if rate is None else f"; rate {rate:g} of levels 0…{pipe.num_rate_levels - 1}"
    print(f"classifier: {classifier_dir if classifier else 'none'}; decoding: {decode}{coded_at}")
    print(f"{'file':<22}{'size':>8}{'bytes':>7}{'bpp':>8}  {'true class':<18}{'decoded as':<18}caption")
    total, bpps, correct, kind_correct, labelled = 0, [], 0, 0, 0
    with out:
        out.create()
        for source in sources:
            with Image.open(source) as image:
                image.load()
            # bundled images are named after their class ("striped_star.png" -> "striped star"); their caption is
            # the toy world's: the object's kind only ("a star"), as a RoI-focused BLIP-2 caption would say it
            true = source.stem.replace("_", " ") if source in bundled else ""
            caption = args.caption if args.caption is not None else caption_for_class_name(true)
            (bs,) = pipe.compress(image, captions=caption, rate=rate)
            size = bs.save(out.path / f"{source.stem}.slim")
            # the demo decodes what it just coded from the user's own images: no decoding limit beyond the format's
            decoded = pipe.decompress(bs, generator=torch.Generator().manual_seed(0), max_pixels=MAX_SIDE * MAX_SIDE,
                                      **decode).images[0]
            _write_png(out.path / f"{source.stem}.png", decoded)
            bits, stride = bitstream_bit_allocation(pipe, bs)
            draw_bit_allocation(decoded, bits, out.path / f"{source.stem}_bits.png", stride=stride,
                                title=f"{source.name}: {size} bytes, {bs.bits_per_pixel:.3f} bpp")
            predicted = names.get(classifier.top5(decoded)[0], "?") if classifier else "-"
            if true and classifier:
                labelled += 1
                correct += predicted == true
                # the kind is what the caption names: the same caption means the same kind ("a star")
                kind_correct += caption_for_class_name(predicted) == caption_for_class_name(true)
            total += size
            bpps.append(bs.bits_per_pixel)
            shown = f"{image.width}x{image.height}"
            print(f"{source.name:<22}{shown:>8}{size:>7}{bs.bits_per_pixel:>8.4f}  {true or '-':<18}{predicted:<18}{caption!r}")
    print(f"{len(bpps)} images, {total} bytes, mean {sum(bpps) / len(bpps):.4f} bpp"
          + (f"; {correct}/{labelled} bundled images decoded as their class, {kind_correct}/{labelled} as their "
             "kind (what the caption names)" if labelled else ""))
    print(f"-> {out.path}: .slim files, decoded PNGs and bit-allocation maps (*_bits.png)")
    return 0


def _cmd_app(args) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise CLIError('the web demo needs gradio: pip install -e ".[app]" (or pip install "slim-diffusers[app]")')
    _resolve_model(args.model)  # a wrong --model is one line before anything loads
    if args.classifier and not (Path(args.classifier) / "config.json").is_file():
        raise CLIError(f"no classifier at {args.classifier} (a folder written by save_pretrained)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: nothing is sent anywhere

    from .app import build_demo, launch

    page = build_demo(args.model, classifier=args.classifier, device=args.device,
                      max_image_pixels=args.max_image_pixels)
    launch(page, host=args.host, port=args.port)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _number(text: str, accept: Callable[[float], bool], expected: str) -> float:
    """``text`` as a number that ``accept`` takes (a word or NaN never is), else argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _rate(text: str) -> float:
    return _number(text, lambda v: 0 <= v < float("inf"), "a rate level, a number ≥ 0")


def _positive_number(text: str) -> float:
    return _number(text, lambda v: 0 < v < float("inf"), "a positive number")


def _strength(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "a number in (0, 1]")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported in one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command (`slim --debug decompress ...`, `slim decompress ... --debug`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the traceback too")
    parser = _Parser(prog="slim", description="SLIM: low-bitrate image compression for machines",
                                     epilog="Exit status: 0 done, 2 a mistake in the inputs or a named error (one "
                                     "line each on stderr), 1 anything else, 130 interrupted.")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = (f"the SLIM model: a folder written by SLIMPipeline.save_pretrained, a Hub id (owner/name), or "
                  f"`{BUNDLED_MODEL}` for the bundled toy model")
    steps_help = f"denoising steps (default: {DEFAULT_STEPS}, or the bundled model's own with --model {BUNDLED_MODEL})"
    strength_help = (f"1 = sample from noise; < 1 = start from the noised transmitted latent (default: "
                     f"{DEFAULT_STRENGTH:g}, or the bundled model's own with --model {BUNDLED_MODEL})")
    rate_help = ("variable-rate models: the rate level, 0 (the fewest bits) to the model's highest level (the most "
                 "bits, the default); fractions interpolate between trained levels")
    max_pixels_help = ("refuse files claiming images of more pixels (default: 4096×4096 = 16777216; see "
                       "slim_diffusers.coding.bitstream.MAX_IMAGE_PIXELS)")

    p = sub.add_parser("info", parents=[common], help="print the header and bits per pixel of .slim files")
    p.add_argument("files", nargs="+", help=".slim files")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert-exact", parents=[common],
                       help="convert a model's entropy model into an exact integer one (bit-identical decoding "
                       "on every device; writes .slim version 2, or 3 for a variable-rate model)")
    p.add_argument("model", help=f"a folder written by SLIMPipeline.save_pretrained, or `{BUNDLED_MODEL}`")
    p.add_argument("output_dir", nargs="?", default=None, help="folder for the converted copy of the model")
    p.add_argument("--in-place", dest="in_place", action="store_true", help="replace the model's decompressor instead")
    p.add_argument("--calibration-images", dest="calibration_images", nargs="+", default=None,
                   help="image files or folders of representative images to calibrate on")
    p.add_argument("--num-calibration-images", dest="num_calibration_images", type=_positive_int, default=64,
                   help="use at most this many calibration images (default: 64)")
    p.add_argument("--toy-world", dest="toy_world", type=_positive_int, default=None, metavar="N",
                   help="calibrate on N seeded toy-world images instead (for toy models)")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.set_defaults(func=_cmd_convert_exact)

    p = sub.add_parser("compress", parents=[common], help="compress images into .slim files")
    p.add_argument("images", nargs="+", help="image files (any mode and size Pillow reads)")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("-o", "--output-dir", required=True, help="folder for the .slim files")
    p.add_argument("--caption", default=None, help="caption to send with every image (default: none)")
    rate_or_size = p.add_mutually_exclusive_group()
    rate_or_size.add_argument("--rate", type=_rate, default=None, help=rate_help)
    rate_or_size.add_argument("--target-bytes", dest="target_bytes", type=_positive_int, default=None, metavar="N",
                              help="variable-rate models: each file (header and caption included) at most N bytes, "
                              "at the highest rate that fits")
    rate_or_size.add_argument("--target-bpp", dest="target_bpp", type=_positive_number, default=None, metavar="X",
                              help="variable-rate models: each file at most X bits per pixel, at the highest rate "
                              "that fits")
    p.add_argument("--target-mean", dest="target_mean", action="store_true",
                   help="with --target-bpp: the mean over the images is at most X (the images are coded together "
                   "and the bits go where they are needed)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--force", action="store_true", help="overwrite existing .slim files")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("decompress", parents=[common], help="decode .slim files into PNG images")
    p.add_argument("files", nargs="+", help=".slim files")
    p.add_argument("--model", required=True, help=model_help + "; it must be the model that wrote the files")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the PNG images")
    p.add_argument("--steps", type=_positive_int, default=None, help=steps_help)
    p.add_argument("--strength", type=_strength, default=None, help=strength_help)
    p.add_argument("--no-diffusion", action="store_true", help="decode ẑ with the VAE directly (ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help=max_pixels_help)
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--force", action="store_true", help="overwrite existing PNG files")
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="rate–accuracy evaluation of SLIM and baselines on a labelled dataset",
        description="Compress, decode and classify every image with every codec and rate point, writing the bytes to "
        "OUT_DIR/bitstreams; rows go to OUT_DIR/rows*.jsonl, results to summary.json, rate_accuracy.png and "
        "bd_rate.md. Run it again to resume; run it under `accelerate launch` to shard the images.",
    )
    p.add_argument("--model", nargs="*", default=[],
                   help=f"SLIM pipelines (Hub ids, directories, or `{BUNDLED_MODEL}`): one rate point each, or one per "
                   "rate of a variable-rate model")
    p.add_argument("--rates", nargs="+", type=_rate, default=None,
                   help="the rates a variable-rate model is evaluated at, as one curve (default: its trained levels)")
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
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"SLIM denoising steps (default: {DEFAULT_STEPS}; the bundled model's own with --model {BUNDLED_MODEL})")
    p.add_argument("--strength", type=_strength, default=None,
                   help=f"SLIM decoding strength (default: {DEFAULT_STRENGTH:g}; the bundled model's own with --model {BUNDLED_MODEL})")
    seed_or_seeds = p.add_mutually_exclusive_group()
    seed_or_seeds.add_argument("--seed", type=int, default=0,
                               help="seed of SLIM's sampling noise, the same for every image")
    seed_or_seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                               help="decode every SLIM file once per seed (e.g. --seeds 0 1 2): accuracy is the mean "
                               "over images and seeds, with a 95%% interval over both")
    p.add_argument("--discard-bitstreams", action="store_true", help="delete each file once measured and decoded")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images decoded and classified together (faster; the bytes are the same)")
    p.add_argument("--merge-timeout-hours", type=float, default=48.0,
                   help="how long finished processes wait for the others before the merge (default: 48)")
    p.add_argument("-o", "--output-dir", required=True)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("inspect", parents=[common], help="draw the bit allocation of a .slim file over its decoded image")
    p.add_argument("file", help="a .slim file")
    p.add_argument("--model", required=True, help=model_help + "; it must be the model that wrote the file")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--steps", type=_positive_int, default=None, help=steps_help)
    p.add_argument("--strength", type=_strength, default=None, help=strength_help)
    p.add_argument("--no-diffusion", action="store_true", help="draw over ẑ decoded by the VAE alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pixels", type=_positive_int, default=None, help=max_pixels_help)
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo", parents=[common],
                       help="compress, decode and classify the bundled images with the bundled toy model (offline)")
    p.add_argument("images", nargs="*", help="more images to include (sent without a caption unless --caption)")
    p.add_argument("--model", default=BUNDLED_MODEL, help=f"the SLIM model (default: {BUNDLED_MODEL}, the bundled one)")
    p.add_argument("--classifier", default=None,
                   help="classifier of the decoded images (default: the bundled toy one with the bundled model)")
    p.add_argument("-o", "--output-dir", default="demo_output")
    p.add_argument("--caption", default=None, help="caption for every image (default: bundled images' class names)")
    p.add_argument("--rate", type=_rate, default=None, help=rate_help)
    p.add_argument("--steps", type=_positive_int, default=None, help=steps_help)
    p.add_argument("--strength", type=_strength, default=None, help=strength_help)
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder (replacing the demo's files)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("app", parents=[common],
                       help="serve the web demo (Gradio; needs the app extra): compress, decode and inspect in a browser")
    p.add_argument("--model", default=BUNDLED_MODEL, help=f"the SLIM model (default: {BUNDLED_MODEL}, the bundled one)")
    p.add_argument("--classifier", default=None,
                   help="classifier shown on the original and the reconstruction (default: the bundled toy one with "
                   "the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_positive_int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--max-image-pixels", dest="max_image_pixels", type=_positive_int, default=1024 * 1024,
                   help="refuse uploaded images of more pixels (default: 1048576 = 1024×1024)")
    p.set_defaults(func=_cmd_app)
    return parser


def _configure_runtime() -> None:
    """Process settings for the command line, made before torch is imported."""
    # OpenMP's idle worker threads spin for a while before they sleep; on a machine where anything else runs they
    # take the cores from the threads that have work, and `slim demo` ran 7× slower beside one busy process
    # (README "Threads"). Passive waiting costs nothing measurable when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import warnings

    # raised by torchvision, which CompressAI imports; nothing a user of this command can act on
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def _answering_ctrl_c(func: Callable, args):
    """``func(args)`` in a worker thread, the main thread only waiting for it, so that Ctrl-C is answered at once.

    Python runs its SIGINT handler in the main thread between two bytecodes; a torch operation in flight holds it
    until it returns, and on the CPU one attention over the latent of a 4000×3000 image takes over a minute. The
    worker is a daemon thread: on Ctrl-C the process ends (status 130) without waiting for it. Files are written
    atomically, so none is left half-written."""
    import threading

    outcome: dict = {}

    def work():
        try:
            outcome["value"] = func(args)
        except BaseException as err:  # noqa: BLE001 — handed to the main thread, which reports it
            outcome["error"] = err

    worker = threading.Thread(target=work, name=f"slim {args.command}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        # the worker cannot be stopped from here, and a thread inside torch does not survive the interpreter's exit
        # (C++ aborts it): the process ends now, as the interrupted command it is
        print("slim: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    _configure_runtime()
    try:
        return _answering_ctrl_c(args.func, args)
    except KeyboardInterrupt:
        print("slim: interrupted", file=sys.stderr)
        return 130
    except CLIError as err:
        for message in err.messages:
            print(f"error: {_one_line(message)}", file=sys.stderr)
        return 2
    except ValueError as err:  # the package's named errors (SLIMBitstreamError, EvaluationSetupError, ...) say what to do
        _traceback(debug)
        print(f"error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # files the checks could not foresee (a full disk, permissions changed meanwhile)
        _traceback(debug)
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{_one_line(err.strerror or err)}", file=sys.stderr)
        return 2 if err.filename else 1
    except Exception as err:  # noqa: BLE001 — the command line's last word: one line, not a traceback
        _traceback(debug)
        hint = "" if debug else " (run again with --debug for the traceback)"
        print(f"error: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
