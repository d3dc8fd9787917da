"""Build SLIM's training dataset: ``image``, ``label``, ``roi_mask``, ``caption`` (paper §3.2.1, supplementary §6).

From any image-classification dataset (``image`` + ``label``), each image gets its Grad-CAM RoI mask
(:mod:`slim_diffusers.semantics.roi`) and its RoI-focused BLIP-2 caption (:mod:`slim_diffusers.semantics.captioning`), both
computed in one batched ``Dataset.map`` pass. ``training/prepare_dataset.py`` is the command line around
:func:`build_dataset`; ``python -m slim_diffusers.testing save-tiny-dataset`` runs the same function with
tiny models on generated images.

Columns of the result (``save_to_disk``; what the training scripts read):

- ``image``: the source image, bytes as the source stored them (never re-encoded);
- ``label``: the source's class (a ``ClassLabel`` when the source has one), -1 when it has none;
- ``roi_mask``: 8-bit greyscale PNG at the image's size, weight = value / 255
  (:func:`slim_diffusers.semantics.roi.roi_mask_to_array` reads it back);
- ``caption``: the RoI-focused caption.

Work is split into chunks of ``chunk_size`` rows. Each chunk is written with ``save_to_disk`` into
``<output_dir>.chunks/chunk-NNNNN`` (first under a temporary name, then renamed, so a chunk directory
exists only when it is complete). A re-run after an interruption skips finished chunks and redoes only
the one it was in; a re-run of a finished build returns the saved dataset. The settings that decide the
content are written to ``build_config.json`` (in the chunk directory, and in the dataset once it is
complete); a re-run with other settings stops with :class:`BuildConfigMismatchError` instead of mixing
two datasets. ``datasets``' own cache files are not used for this: they are keyed by a hash of the map
function, which here closes over the models (slow to hash, and not stable across processes).

Chunks are spread over the processes of an Accelerate launch (``PartialState.split_between_processes``),
one model copy per process/GPU; with a plain ``python`` run there is one process and nothing to configure.
"""

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..semantics.captioning import DEFAULT_MAX_NEW_TOKENS, generate_captions
from ..semantics.roi import compute_roi_masks, roi_mask_to_image
from ..utils.file_utils import fsync_directory, fsync_tree, remove_tree, replace_directory, write_atomically

logger = logging.getLogger(__name__)

COLUMNS = ("image", "label", "roi_mask", "caption")
CONFIG_FILE = "build_config.json"


def _hub_cards_folder() -> Path:
    """The model and dataset card templates: ``slim_diffusers/hub_cards`` in an installed wheel (setup.py copies
    them there), the top-level ``hub_cards/`` of the checkout that is their one source otherwise."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "hub_cards"
    return installed if installed.is_dir() else package.parent / "hub_cards"


HUB_CARDS = _hub_cards_folder()

class BuildConfigMismatchError(ValueError):
    """The chunk directory of an interrupted build was made with other settings than this run's."""


@dataclass
class BuildConfig:
    """Everything that decides the content of the built dataset; a resumed build must match it."""

    source: str
    num_rows: int
    seed: int
    classifier: str
    captioner: str
    cam_target: str  # "label" (explain the ground truth) or "prediction" (explain the top prediction)
    max_caption_tokens: int = DEFAULT_MAX_NEW_TOKENS
    caption_prompt: Optional[str] = None
    chunk_size: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- source
def draw_samples(dataset, num_samples: Optional[int], seed: int):
    """``num_samples`` rows drawn uniformly without replacement with ``seed`` (all rows for ``None``/≤ 0).

    The drawn indices are sorted so the rows are read in storage order; training shuffles anyway.
    """
    n = len(dataset)
    if not num_samples or num_samples <= 0 or num_samples >= n:
        if num_samples and num_samples > n:
            logger.warning(f"asked for {num_samples} samples but the source has {n}; using all of them")
        return dataset
    indices = np.sort(np.random.default_rng(seed).choice(n, size=num_samples, replace=False))
    return dataset.select(indices.tolist())


def standardise_columns(
    dataset, image_column: Optional[str] = None, label_column: Optional[str] = "label", caption_column: Optional[str] = None
):
    """Keep only ``image`` (a ``datasets.Image``) and ``label`` (-1 where the source has no labels), and
    ``caption`` when the source's captions are to be kept (``caption_column``)."""
    import datasets

    columns = dataset.column_names
    if image_column is None:
        found = [c for c in columns if isinstance(dataset.features[c], datasets.Image)]
        image_column = "image" if "image" in columns else "img" if "img" in columns else (found[0] if found else None)
    if image_column not in columns:
        raise ValueError(f"no image column {image_column!r} in the source (columns: {columns}); pass --image_column")
    if label_column is not None and label_column not in columns:
        raise ValueError(f"no label column {label_column!r} in the source (columns: {columns}); pass --label_column")
    if caption_column is not None and caption_column not in columns:
        raise ValueError(f"no caption column {caption_column!r} in the source (columns: {columns})")
    keep = [image_column] + ([label_column] if label_column else []) + ([caption_column] if caption_column else [])
    dataset = dataset.select_columns(keep)
    if caption_column and caption_column != "caption":
        dataset = dataset.rename_column(caption_column, "caption")
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if label_column and label_column != "label":
        dataset = dataset.rename_column(label_column, "label")
    if not label_column:
        dataset = dataset.add_column("label", [-1] * len(dataset))
    if not isinstance(dataset.features["image"], datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset


def label_names(dataset) -> Optional[List[str]]:
    import datasets

    feature = dataset.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def resolve_cam_target(cam_target: str, dataset_label_names: Optional[List[str]], classifier) -> str:
    """``"auto"``: explain the ground-truth label when the dataset's classes are the classifier's.

    That is the paper's setting (ImageNet with an ImageNet classifier). The class lists must have the same
    length and agree, in order, on at least 99 % of the names (case and spacing aside), so that a few
    differently spelled names do not matter but another label set does. For other sources (an image
    folder, another label set) the label indexes other classes, so the top prediction is explained.
    """
    if cam_target in ("label", "prediction"):
        return cam_target
    if cam_target != "auto":
        raise ValueError(f"cam_target must be 'auto', 'label' or 'prediction', got {cam_target!r}")
    id2label = getattr(classifier.config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    if not dataset_label_names or len(names) != len(dataset_label_names):
        return "prediction"

    def norm(name: str) -> str:
        return " ".join(str(name).lower().split())

    agree = sum(norm(a) == norm(b) for a, b in zip(names, dataset_label_names))
    return "label" if agree >= 0.99 * len(names) else "prediction"


# ------------------------------------------------------------------------------------------ annotate
def make_annotator(
    classifier,
    image_processor,
    captioner,
    caption_processor,
    use_labels: bool,
    max_caption_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    caption_prompt: Optional[str] = None,
) -> Callable[[dict], dict]:
    """The batched ``Dataset.map`` function: ``{"image", "label"}`` → ``{"roi_mask", "caption"}``.

    Without a ``captioner`` it returns the masks only: the captions are the source's own (its ``caption``
    column, see :func:`standardise_columns`).
    """

    def annotate(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        labels = [int(y) for y in batch["label"]] if use_labels else None
        masks = compute_roi_masks(classifier, image_processor, images, labels, batch_size=len(images)).masks
        masks = list(masks)  # one (1, H, W) mask per image, whatever the sizes
        stored = {"roi_mask": [roi_mask_to_image(m) for m in masks]}
        if captioner is None:
            return stored
        stored["caption"] = generate_captions(
            captioner,
            caption_processor,
            images,
            masks,
            prompt=caption_prompt,
            max_new_tokens=max_caption_tokens,
            batch_size=len(images),
        ).captions
        return stored

    return annotate


# --------------------------------------------------------------------------------------------- build
def _chunk_dir(work_dir: Path, index: int) -> Path:
    return work_dir / f"chunk-{index:05d}"


def _check_or_write_config(work_dir: Path, config: BuildConfig, write: bool) -> None:
    path = work_dir / CONFIG_FILE
    wanted = config.to_dict()
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            keys = [k for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
            diff = ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in keys)
            raise BuildConfigMismatchError(
                f"{work_dir} holds chunks of a build with other settings ({diff}); re-run with the same settings "
                f"to resume it, or delete {work_dir} to start over"
            )
    elif write:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(wanted, indent=2).encode())


def build_dataset(
    source,
    output_dir: str,
    config: BuildConfig,
    annotate: Callable[[dict], dict],
    batch_size: int = 8,
    state=None,
    keep_chunks: bool = False,
):
    """Annotate ``source`` (columns ``image``, ``label``) chunk by chunk and save the result to ``output_dir``.

    Args:
        source: a ``datasets.Dataset`` with the rows to annotate (already drawn, see :func:`draw_samples`).
        output_dir: where the final dataset is written with ``save_to_disk`` (replaced when it exists).
        config: the settings that decide the content; ``config.num_rows`` must be ``len(source)``.
        annotate: the batched map function, see :func:`make_annotator`.
        batch_size: images per model pass.
        state: an ``accelerate.PartialState``; ``None`` creates one (one process without a launcher).
        keep_chunks: keep ``<output_dir>.chunks`` after the final dataset is written.

    Returns:
        the built dataset, loaded from ``output_dir`` (on every process).
    """
    import datasets
    from accelerate import PartialState
    from datasets.table import embed_table_storage

    state = state or PartialState()
    if config.num_rows != len(source):
        raise ValueError(f"config.num_rows is {config.num_rows} but the source has {len(source)} rows")
    if config.chunk_size < 1 or batch_size < 1:
        raise ValueError("chunk_size and batch_size must be ≥ 1")
    output_dir = Path(output_dir)
    work_dir = output_dir.with_name(output_dir.name + ".chunks")
    done = output_dir / CONFIG_FILE
    if done.is_file() and json.loads(done.read_text()) == config.to_dict():
        logger.info(f"{output_dir} is already built with these settings; nothing to do")
        if state.is_main_process and not keep_chunks and work_dir.exists():
            remove_tree(work_dir)  # a run killed after publishing the dataset, before removing its chunks
        state.wait_for_everyone()
        return datasets.load_from_disk(str(output_dir))
    if state.is_main_process:
        _check_or_write_config(work_dir, config, write=True)
    state.wait_for_everyone()
    _check_or_write_config(work_dir, config, write=False)

    num_chunks = -(-len(source) // config.chunk_size)
    pending = [k for k in range(num_chunks) if not _chunk_dir(work_dir, k).is_dir()]
    if len(pending) < num_chunks and state.is_main_process:
        logger.info(f"resuming: {num_chunks - len(pending)} of {num_chunks} chunks already built in {work_dir}")
    annotation_features = datasets.Features({"roi_mask": datasets.Image()})
    if "caption" not in source.column_names:  # else the source's captions are kept
        annotation_features["caption"] = datasets.Value("string")
    fingerprint = datasets.fingerprint.Hasher.hash(config.to_dict())
    with state.split_between_processes(pending) as mine:
        for k in mine:
            rows = source.select(range(k * config.chunk_size, min((k + 1) * config.chunk_size, len(source))))
            # image bytes are copied as stored (local files embedded), never decoded and re-encoded
            rows = rows.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)
            annotations = rows.map(
                annotate,
                batched=True,
                batch_size=batch_size,
                remove_columns=rows.column_names,
                features=annotation_features,
                keep_in_memory=True,
                new_fingerprint=f"slim-roi-{fingerprint}-{k}",  # no hashing of the models in the closure
                desc=f"chunk {k + 1}/{num_chunks} (process {state.process_index})",
            )
            part = datasets.concatenate_datasets([rows, annotations], axis=1)
            final, tmp = _chunk_dir(work_dir, k), work_dir / f"tmp-chunk-{k:05d}-{state.process_index}"
            shutil.rmtree(tmp, ignore_errors=True)  # what a killed attempt at this chunk left
            part.save_to_disk(str(tmp))
            fsync_tree(tmp)  # on disk before its name says it is complete
            os.replace(tmp, final)
            fsync_directory(work_dir)
    state.wait_for_everyone()

    if state.is_main_process:
        parts = [datasets.load_from_disk(str(_chunk_dir(work_dir, k))) for k in range(num_chunks)]
        full = datasets.concatenate_datasets(parts).select_columns(list(COLUMNS))
        tmp = output_dir.with_name(output_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        full.save_to_disk(str(tmp))
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))  # marks the build as complete
        del parts, full  # release the memory-mapped chunk files before they are removed
        fsync_tree(tmp)
        replace_directory(tmp, output_dir)  # the earlier dataset or this one at every instant, never a mix
        if not keep_chunks:
            remove_tree(work_dir)
    state.wait_for_everyone()
    return datasets.load_from_disk(str(output_dir))
