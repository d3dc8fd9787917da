"""Build SLIM's training dataset: image, label, Grad-CAM RoI mask and RoI-focused BLIP-2 caption.

Paper §3.2.1 and supplementary §6: 3000 ImageNet training images drawn with a seed, masks from ResNet-50's
Grad-CAM for the ground-truth class, captions from BLIP-2 (OPT-2.7b) looking only at the RoI.

    python training/prepare_dataset.py --output_dir data/slim-train            # ImageNet-1k, 3000 images
    accelerate launch --multi_gpu --num_processes 4 training/prepare_dataset.py --output_dir data/slim-train
    torchrun --nproc_per_node 2 training/prepare_dataset.py ...                # CPU workers, no GPU
    python training/prepare_dataset.py --image_folder my_images/ --num_samples 0 --output_dir data/mine

The source is any ``datasets`` image-classification dataset (``--dataset_name``, a Hub name or a
directory written with ``save_to_disk``) or a local image folder (``--image_folder``; sub-folders are
classes). Model passes are spread over the processes of an Accelerate launch, one model copy per
process/GPU; a plain ``python`` run is one process and needs no ``accelerate config``. A build that was
interrupted resumes from its finished chunks when run again with the same flags. The result is written
with ``save_to_disk`` (``--train_data_dir`` of the training scripts) together with a dataset card
(``README.md`` from ``hub_cards/dataset_card.md``); ``--push_to_hub`` uploads both.

Tiny local models for CI and smoke runs: ``python -m slim_diffusers.testing save-tiny-roi-models DIR``
writes ``DIR/classifier`` and ``DIR/captioner`` to pass as ``--classifier_name_or_path`` and
``--captioner_name_or_path``.
"""

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.logging import get_logger

from slim_diffusers.semantics.captioning import DEFAULT_CAPTIONER, DEFAULT_MAX_NEW_TOKENS, caption_bits, load_captioner
from slim_diffusers.utils.file_utils import write_atomically
from slim_diffusers.semantics.roi import DEFAULT_ROI_CLASSIFIER, load_roi_classifier, roi_mask_to_array
from slim_diffusers.training.dataset_builder import (
    HUB_CARDS,
    BuildConfig,
    build_dataset,
    draw_samples,
    label_names,
    make_annotator,
    resolve_cam_target,
    standardise_columns,
)
from slim_diffusers.training.inputs import dataset_build_mistakes, exit_on_mistakes
from slim_diffusers.utils.distributed import use_cpu_workers

logger = get_logger(__name__)
# the Hub's size buckets for the `size_categories` card field
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Build SLIM's training dataset (image, label, roi_mask, caption)")
    src = p.add_argument_group("source")
    src.add_argument("--dataset_name", default="imagenet-1k",
                     help="a datasets image-classification dataset on the Hub, or a directory written by save_to_disk")
    src.add_argument("--dataset_config", default=None, help="the dataset's configuration name, if it has several")
    src.add_argument("--split", default="train", help="split of the source (paper: ImageNet train)")
    src.add_argument("--image_folder", default=None,
                     help="a local folder of images instead of --dataset_name (sub-folders are classes)")
    src.add_argument("--image_column", default=None, help="default: 'image', 'img' or the first image column")
    src.add_argument("--label_column", default="label", help="'' when the source has no labels (label = -1)")
    src.add_argument("--num_samples", type=int, default=3000,
                     help="rows drawn uniformly without replacement (paper: 3000); 0 keeps every row")
    src.add_argument("--seed", type=int, default=0, help="seed of the draw")
    src.add_argument("--cache_dir", default=None, help="datasets cache directory")
    models = p.add_argument_group("models")
    models.add_argument("--classifier_name_or_path", default=DEFAULT_ROI_CLASSIFIER,
                        help="any AutoModelForImageClassification with a convolutional backbone (Grad-CAM)")
    models.add_argument("--captioner_name_or_path", default=DEFAULT_CAPTIONER, help="any Blip2ForConditionalGeneration")
    models.add_argument("--caption_column", default=None,
                        help="keep the source's captions from this column instead of running a captioner (for "
                             "sources that already hold RoI-focused captions)")
    models.add_argument("--captioner_dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: float16 on a GPU, float32 on the CPU (the classifier always runs in float32)")
    models.add_argument("--cam_target", default="auto", choices=["auto", "label", "prediction"],
                        help="class Grad-CAM explains; auto: the label when the dataset's classes are the "
                             "classifier's (ImageNet + an ImageNet classifier), else the top prediction")
    models.add_argument("--max_caption_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="bound on caption length")
    models.add_argument("--caption_prompt", default=None, help="optional text the caption continues, e.g. 'a photo of'")
    models.add_argument("--batch_size", type=int, default=8, help="images per model pass and process")
    out = p.add_argument_group("output")
    out.add_argument("--output_dir", default="data/slim-train", help="the dataset is written here with save_to_disk")
    out.add_argument("--chunk_size", type=int, default=256,
                     help="rows per resumable unit of work (saved under <output_dir>.chunks until the end)")
    out.add_argument("--keep_chunks", action="store_true", help="keep <output_dir>.chunks after the final write")
    out.add_argument("--license", default="other", help="licence id for the dataset card (images keep the source's terms)")
    out.add_argument("--push_to_hub", action="store_true", help="upload the dataset and its card to the Hub")
    out.add_argument("--hub_dataset_id", default=None, help="default: the output directory's name")
    out.add_argument("--hub_token", default=None, help="token for the Hub (gated sources such as imagenet-1k, pushing)")
    out.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.chunk_size < 1 or args.max_caption_tokens < 1:
        p.error("--batch_size, --chunk_size and --max_caption_tokens must be ≥ 1")
    exit_on_mistakes(p.prog, dataset_build_mistakes(args))  # before any model or dataset loads
    return args


# ---------------------------------------------------------------------------------------------- source
def load_source(args):
    """The source rows as ``image`` + ``label`` (drawn with the seed) and a name for the card."""
    import datasets

    if args.image_folder:
        ds = datasets.load_dataset("imagefolder", data_dir=args.image_folder, split=args.split, cache_dir=args.cache_dir)
        name = os.path.abspath(args.image_folder)
        label_column = args.label_column if args.label_column in ds.column_names else None
    elif os.path.isdir(args.dataset_name):
        ds = datasets.load_from_disk(args.dataset_name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[args.split]
        name, label_column = os.path.abspath(args.dataset_name), args.label_column or None
    else:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.split, cache_dir=args.cache_dir,
                                   token=args.hub_token)
        name, label_column = args.dataset_name, args.label_column or None
    ds = standardise_columns(ds, args.image_column, label_column, args.caption_column)
    return draw_samples(ds, args.num_samples, args.seed), name


# ----------------------------------------------------------------------------------------------- cards
def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>1B")


def dataset_stats(dataset) -> dict:
    captions = dataset["caption"]
    bits = [caption_bits(c) for c in captions] or [0]
    masks = dataset.select_columns(["roi_mask"])
    mask_mean = float(np.mean([roi_mask_to_array(row["roi_mask"]).mean() for row in masks])) if len(dataset) else 0.0
    return {"caption_bits_mean": float(np.mean(bits)), "caption_bits_max": int(max(bits)), "mask_mean": mask_mean}


def render_dataset_card(dataset, build: BuildConfig, repo_id: str, license: str = "other"):
    """The dataset card (``huggingface_hub.DatasetCard``) from ``hub_cards/dataset_card.md``.

    Values that go into the YAML header are JSON-quoted: a JSON string is a valid YAML scalar, so paths and
    names with colons or quotes cannot break the metadata.
    """
    from huggingface_hub import DatasetCard

    names = label_names(dataset)
    label_type = "class label" if names else "int"
    if names:
        label_note = f" ({len(names)} classes)"
    elif all(y == -1 for y in dataset["label"]):
        label_note = " (-1: the source has no labels)"
    else:
        label_note = ""
    cam_target = {"label": "the ground-truth class", "prediction": "the classifier's top prediction"}[build.cam_target]
    if build.captioner.startswith("column:"):
        caption_content = "the source's own caption"
        caption_note = f"kept from the source's `{build.captioner[len('column:'):]}` column; no captioner was run"
    else:
        prompt = f', continuing the prompt "{build.caption_prompt}"' if build.caption_prompt else ""
        caption_content = "BLIP-2 caption of the image with its non-RoI pixels suppressed"
        caption_note = (f"`{build.captioner}` on the image blended towards its normalisation mean outside the mask "
                        f"(`x' = M·x + (1 − M)·mean`), greedy decoding, at most {build.max_caption_tokens} new "
                        f"tokens{prompt}")
    # the Hub's convention: "extended|<dataset>" for data derived from a Hub dataset, "original" for new data
    hub_source = "original" if os.path.isabs(build.source) else f"extended|{build.source}"
    text = (HUB_CARDS / "dataset_card.md").read_text().format(
        pretty_name=json.dumps(f"SLIM training data ({Path(repo_id).name})"),
        license=json.dumps(license),
        size_category=json.dumps(size_category(len(dataset))),
        source_dataset=json.dumps(hub_source),
        title=repo_id,
        num_rows=len(dataset),
        source=build.source,
        label_type=label_type,
        label_note=label_note,
        seed=build.seed,
        classifier=build.classifier,
        cam_target=cam_target,
        caption_content=caption_content,
        caption_note=caption_note,
        repo_id=repo_id,
        **dataset_stats(dataset),
    )
    return DatasetCard(text)


# ------------------------------------------------------------------------------------------------ main
def partial_state() -> PartialState:
    """The processes of this run: one without a launcher, one per GPU or CPU worker with one
    (:func:`slim_diffusers.utils.distributed.use_cpu_workers` says which)."""
    return PartialState(cpu=use_cpu_workers())


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    state = partial_state()
    with state.main_process_first():  # one process downloads and caches the source, the others read it
        source, source_name = load_source(args)

    classifier, image_processor = load_roi_classifier(args.classifier_name_or_path, device=state.device)
    captioner = caption_processor = None
    if args.caption_column is None:
        dtype = args.captioner_dtype
        if dtype == "auto":
            dtype = "float16" if state.device.type == "cuda" else "float32"
        captioner, caption_processor = load_captioner(args.captioner_name_or_path, device=state.device,
                                                      torch_dtype=DTYPES[dtype])

    cam_target = resolve_cam_target(args.cam_target, label_names(source), classifier)
    if cam_target == "label" and any(y < 0 for y in source["label"]):
        raise ValueError("--cam_target label needs a label for every row; this source has rows without one")
    logger.info(f"{len(source)} rows from {source_name}; Grad-CAM explains the {cam_target}", main_process_only=True)
    build = BuildConfig(
        source=source_name,
        num_rows=len(source),
        seed=args.seed,
        classifier=args.classifier_name_or_path,
        captioner=f"column:{args.caption_column}" if args.caption_column else args.captioner_name_or_path,
        cam_target=cam_target,
        max_caption_tokens=args.max_caption_tokens,
        caption_prompt=args.caption_prompt,
        chunk_size=args.chunk_size,
    )
    annotate = make_annotator(classifier, image_processor, captioner, caption_processor, use_labels=cam_target == "label",
                              max_caption_tokens=args.max_caption_tokens, caption_prompt=args.caption_prompt)
    dataset = build_dataset(source, args.output_dir, build, annotate, batch_size=args.batch_size, state=state,
                            keep_chunks=args.keep_chunks)

    if state.is_main_process:
        output_dir = Path(args.output_dir)
        repo_id = args.hub_dataset_id or output_dir.name
        if args.push_to_hub:
            from huggingface_hub import create_repo

            repo_id = create_repo(repo_id, repo_type="dataset", exist_ok=True, private=args.private,
                                  token=args.hub_token).repo_id
        card = render_dataset_card(dataset, build, repo_id, args.license)
        write_atomically(output_dir / "README.md", str(card).encode("utf-8"))
        if args.push_to_hub:
            # the card goes first: datasets' push_to_hub keeps an existing card's text and adds its own
            # metadata (dataset_info, configs) to it, where it would otherwise write a bare card
            card.push_to_hub(repo_id, repo_type="dataset", token=args.hub_token)
            dataset.push_to_hub(repo_id, token=args.hub_token, private=args.private)
        pushed = f" and pushed them to {repo_id}" if args.push_to_hub else ""
        logger.info(f"wrote {len(dataset)} rows to {output_dir}{pushed}")
    state.wait_for_everyone()
    return dataset


if __name__ == "__main__":
    main()
