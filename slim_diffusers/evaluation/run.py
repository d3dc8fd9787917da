"""The whole rate–accuracy evaluation as functions: what ``slim evaluate`` and the toy reproduction both run.

:func:`build_codecs` turns model paths and baseline names into codecs, :func:`run_evaluation` runs them over a
labelled dataset through the harness (:mod:`.harness`: real bytes, resumable, sharded over processes) and
writes the report (:mod:`.report`), and :func:`format_report` is the text ``slim evaluate`` prints.
"""

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .codecs import SLIMCodec, rate_point_labels, slim_rate_points
from .errors import EvaluationSetupError


def load_dataset_for_evaluation(name_or_dir: str, split: str):
    """A ``datasets.Dataset``: a directory written by ``save_to_disk`` (a ``DatasetDict`` picks ``split``) or a Hub
    dataset."""
    import datasets

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


def load_slim_pipelines(models: Sequence[str], device=None) -> Dict[str, Any]:
    """``{rate point label: SLIMPipeline}`` for SLIM models given as directories or Hub ids (one rate point each)."""
    from ..pipelines.pipeline_slim import SLIMPipeline

    if len(set(models)) != len(models):
        raise EvaluationSetupError(f"--model lists a model twice: {list(models)}")
    from ..errors import SLIMModelNotFoundError

    pipelines = {}
    for label, model in zip(rate_point_labels(models), models):
        try:
            pipe = SLIMPipeline.from_pretrained(model)
        except SLIMModelNotFoundError as err:  # one sentence naming the model
            raise EvaluationSetupError(str(err)) from None
        except OSError as err:
            raise EvaluationSetupError(f"could not load the SLIM model {model!r}: {err}") from None
        if device is not None:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        pipelines[label] = pipe
    return pipelines


def plugin_codecs(spec: str) -> list:
    """``package.module:factory``: ``factory()`` returns a codec or a list of codecs."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise EvaluationSetupError(f"--codec {spec!r}: expected MODULE:CALLABLE, e.g. my_codecs:make_codec")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise EvaluationSetupError(f"--codec {spec!r}: {err}") from None
    made = factory()
    return list(made) if isinstance(made, (list, tuple)) else [made]


def build_codecs(
    models: Sequence[str] = (),
    num_inference_steps: int = 20,
    strength: float = 1.0,
    seed: int = 0,
    no_diffusion_curve: bool = False,
    baselines: Sequence[str] = (),
    qualities: Sequence[int] = (2, 5, 10, 20, 40, 70),
    compressai: Sequence[str] = (),
    compressai_qualities: Sequence[int] = (1, 2, 3, 4),
    plugins: Sequence[str] = (),
    device=None,
    rates: Optional[Sequence[float]] = None,
) -> list:
    """Every codec of an evaluation, loaded (and failing) before any image is coded: SLIM with one rate point per
    fixed-rate model and one per rate of a variable-rate model (``rates``, default: its trained levels; one model
    gives one curve), and the same bitstreams decoded without diffusion, Pillow formats over ``qualities``,
    CompressAI zoo models, and plugged-in codecs."""
    from .baselines import CompressAICodec, PillowCodec

    codecs: list = []
    if rates is not None and not models:
        raise EvaluationSetupError("--rates sweeps the rates of a variable-rate SLIM model: give it with --model")
    if models:
        pipelines = load_slim_pipelines(models, device)  # its errors name the model, not --rates
        try:
            pipelines, point_rates = slim_rate_points(pipelines, rates)
        except ValueError as err:
            raise EvaluationSetupError(f"--rates: {err}" if rates is not None else str(err)) from None
        slim = dict(num_inference_steps=num_inference_steps, strength=strength, seed=seed, rates=point_rates)
        codecs.append(SLIMCodec(pipelines, name="SLIM", **slim))
        if no_diffusion_curve:
            codecs.append(SLIMCodec(pipelines, name="SLIM w/o diffusion", use_diffusion=False, **slim))
    codecs += [PillowCodec(fmt, qualities=qualities) for fmt in baselines]
    codecs += [CompressAICodec.from_zoo(arch, compressai_qualities) for arch in compressai]
    for spec in plugins:
        codecs += plugin_codecs(spec)
    if not codecs:
        raise EvaluationSetupError("nothing to evaluate: give --model, --baselines, --compressai or --codec")
    return codecs


@dataclass
class EvaluationRun:
    """What one process of :func:`run_evaluation` did; ``report`` is the summary (main process only)."""

    rows_path: Path
    rows_written: int
    rows_found: int
    report: Optional[dict] = None


def run_evaluation(
    out_dir,
    dataset,
    codecs: Sequence[Any],
    classifiers: Sequence[Any],
    *,
    image_column: str = "image",
    label_column: str = "label",
    caption_column: Optional[str] = "caption",
    num_samples: Optional[int] = None,
    anchor: Optional[str] = None,
    envelope: bool = False,
    keep_bitstreams: bool = True,
    batch_size: int = 1,
    state=None,
    extra: Optional[dict] = None,
    seeds: Optional[Sequence[int]] = None,
) -> EvaluationRun:
    """Encode, write, decode and classify every image with every codec and rate point; write the report.

    Args:
        out_dir: where ``rows*.jsonl``, ``bitstreams/``, ``summary.json``, ``rate_accuracy.png`` and ``bd_rate.md`` go.
        dataset: a labelled ``datasets.Dataset``; the classifiers' class indices must be its labels.
        codecs: objects with the :class:`~slim_diffusers.evaluation.codecs.Codec` interface (:func:`build_codecs`).
        classifiers: :class:`~slim_diffusers.evaluation.harness.Classifier` objects.
        caption_column: captions SLIM sends, when the dataset has this column.
        num_samples: the first N images (default: all).
        anchor: the BD-rate table's reference codec (default JPEG when evaluated, else the first codec).
        envelope: compare BD deltas on each curve's monotone envelope.
        batch_size: images coded, decoded and classified together (codecs with batch methods; see
            :meth:`~slim_diffusers.evaluation.harness.Evaluation.run`).
        state: an Accelerate ``PartialState``: its processes share the images, each appending to its own rows file,
            and the main process writes the report. ``None``: one process.
        extra: more fields for ``summary.json``.
        seeds: decode every file of a stochastic codec (SLIM with diffusion) once per seed; each rate point's
            accuracy is then the mean over images and seeds, with an interval over both
            (:func:`~slim_diffusers.evaluation.report.seed_interval`). ``None``: one decode with the codec's seed.

    Running it again resumes: finished rows are kept, the rest is evaluated.
    """
    from .harness import Evaluation, Sample, latest_rows
    from .report import write_report

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise EvaluationSetupError(f"the dataset has no column {column!r} (it has {dataset.column_names})")
    n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    caption_column = caption_column if caption_column in dataset.column_names else None
    label_feature = dataset.features[label_column]
    for clf in classifiers:
        if getattr(label_feature, "num_classes", clf.num_labels) != clf.num_labels:
            raise EvaluationSetupError(
                f"the dataset has {label_feature.num_classes} classes but {clf.name} outputs {clf.num_labels}; "
                "the classifier must be trained on the dataset's labels"
            )
    names = [c.name for c in codecs]
    anchor = anchor or ("JPEG" if "JPEG" in names else names[0] if names else None)
    if anchor not in names:
        raise EvaluationSetupError(f"anchor codec {anchor!r} is not evaluated; choose one of {names}")

    several = state is not None and state.num_processes > 1
    shard = f".rank{state.process_index}" if several else ""
    evaluation = Evaluation(out_dir, codecs, classifiers, shard=shard, keep_bitstreams=keep_bitstreams, seeds=seeds)
    found = len(evaluation.done)

    def sample(i: int) -> Sample:
        item = dataset[i]
        caption = item[caption_column] if caption_column else None
        return Sample(index=i, image=item[image_column], label=int(item[label_column]), caption=caption)

    indices = list(range(n))
    if several:
        with state.split_between_processes(indices) as mine:
            written = evaluation.run((sample(i) for i in mine), batch_size=batch_size)
        state.wait_for_everyone()
        if not state.is_main_process:  # the main process merges this process's rows into rows.jsonl
            return EvaluationRun(out_dir / "rows.jsonl", written, found)
    else:
        written = evaluation.run((sample(i) for i in indices), batch_size=batch_size)

    rows_path = merge_row_shards(out_dir)  # the other processes have finished (the barrier above)
    keys = evaluation.keys(indices)
    rows = latest_rows(out_dir, keys)
    if evaluation.seeds is not None:
        extra = {**(extra or {}), "seeds": evaluation.seeds}
    report = write_report(out_dir, rows, [c.name for c in classifiers], anchor, images=n,
                          seconds=time.perf_counter() - t0, expected_rows=len(keys), extra=extra, envelope=envelope)
    return EvaluationRun(rows_path, written, found, report)


def merge_row_shards(out_dir) -> Path:
    """Merge the processes' ``rows.rank<i>.jsonl`` (and an earlier ``rows.jsonl``) into ``rows.jsonl``; returns it.

    One row per key, the last written winning, as :func:`~.harness.latest_rows` reads them. The merged file is
    written whole (:func:`~slim_diffusers.utils.file_utils.write_atomically`) before any shard is removed, so an
    interruption leaves either the shards or the merged file (or both: the same rows twice, read once). Only the
    main process calls it, after every process has finished writing."""
    from ..utils.file_utils import write_atomically
    from .harness import latest_rows

    out_dir = Path(out_dir)
    merged = out_dir / "rows.jsonl"
    shards = sorted(out_dir.glob("rows.rank*.jsonl"))
    if shards:
        rows = latest_rows(out_dir)
        write_atomically(merged, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
        for shard in shards:
            shard.unlink()
    return merged


def format_report(report: dict, out_dir) -> str:
    """The BD-rate table and one line per codec and rate point (bits per pixel, top-1/top-5 per classifier; with
    several decoding seeds, the top-1 interval over seeds and images in brackets)."""
    out_dir = Path(out_dir)
    classifiers = report["classifiers"]
    lines = [(out_dir / "bd_rate.md").read_text(encoding="utf-8"),
             f"{'codec':<22}{'rate point':<24}{'images':>7}{'bpp':>9}  top-1 / top-5 (%)"]
    for codec, points in report["codecs"].items():
        for point, e in points.items():
            accs = []
            for c in classifiers:
                ci = e.get("top1_seed_ci", {}).get(c)
                spread = f" [{ci[0]:.1f}, {ci[1]:.1f}] over {len(e['seeds'])} seeds" if ci else ""
                accs.append(f"{Path(c).name} {e['top1'][c]:.1f}{spread}/{e['top5'][c]:.1f}")
            lines.append(f"{codec:<22}{point[-23:]:<24}{e['images']:>7}{e['mean_bpp']:>9.4f}  {', '.join(accs)}")
    return "\n".join(lines)
