"""What the training scripts are given, checked before anything loads or any folder is made.

A missing dataset folder, a model that is neither a folder nor available from the Hub (offline: not cached), or an
output path that is a file each get one line naming the flag, and the script exits with status 2 — as the ``slim``
command line does — instead of retrying the Hub for half a minute and ending in a traceback with an empty output
folder left behind.
"""

import sys
from pathlib import Path
from typing import List, Optional

from ..utils.hub import missing_dataset_reason, missing_model_reason

PREPARE = "training/prepare_dataset.py"


def saved_dataset_reason(flag: str, path: str, what_to_do: str) -> Optional[str]:
    """Why ``path`` is not a folder written by ``datasets``' ``save_to_disk`` (``None`` when it is one)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        return f"{flag} {path}: no such folder; {what_to_do}"
    if not folder.is_dir():
        return f"{flag} {path}: is a file, not a dataset folder; {what_to_do}"
    if not ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        return (f"{flag} {path}: not a dataset folder (no dataset_dict.json or state.json, which save_to_disk "
                f"writes); {what_to_do}")
    return None


def model_reason(flag: str, name: str, filename: str, hint: str) -> Optional[str]:
    reason = missing_model_reason(name, filename, "model", hint=hint)
    return None if reason is None else f"{flag} {reason}"


def output_reason(flag: str, path: str) -> Optional[str]:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        return f"{flag} {path}: exists and is not a folder"
    return None


def training_input_mistakes(args) -> List[str]:
    """One line per input of ``train_stage1.py``/``train_stage2.py`` that is not there."""
    mistakes = []
    if args.train_data_dir is not None:
        mistakes.append(saved_dataset_reason(
            "--train_data_dir", args.train_data_dir,
            f"build it with python {PREPARE} --output_dir {args.train_data_dir}"))
    else:
        mistakes.append(missing_dataset_reason(args.dataset_name, "--dataset_name",
                                               hint=f"; pass a folder built by {PREPARE} with --train_data_dir"))
    stage1_source = ("a Stable Diffusion 2.1 checkpoint (a folder, or a Hub id such as "
                     "stabilityai/stable-diffusion-2-1-base) or a saved SLIM pipeline")
    # a Stable Diffusion folder loads by its components' subfolders (from_stable_diffusion), with or without the
    # model_index.json a full checkpoint has
    components_only = (Path(args.pretrained_model_name_or_path) / "unet" / "config.json").is_file()
    if not components_only:
        mistakes.append(model_reason(
            "--pretrained_model_name_or_path", args.pretrained_model_name_or_path, "model_index.json",
            f"pass {stage1_source}" if args.stage == 1 else f"pass the output_dir of stage 1, or {stage1_source}"))
    if args.stage == 2:
        mistakes.append(model_reason("--classifier_name_or_path", args.classifier_name_or_path, "config.json",
                                     "pass a folder written by save_pretrained of an image classifier"))
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not Path(resume).is_dir():
        mistakes.append(f"--resume_from_checkpoint {resume}: no such folder (a checkpoint-N folder, or 'latest')")
    mistakes.append(output_reason("--output_dir", args.output_dir))
    return [m for m in mistakes if m]


def exit_on_mistakes(prog: str, mistakes: List[str]) -> None:
    """Print each mistake as one line on stderr and exit with status 2 (argparse's status for bad arguments)."""
    if mistakes:
        for mistake in mistakes:
            print(f"{prog}: error: {' '.join(mistake.split())}", file=sys.stderr)
        sys.exit(2)


def dataset_build_mistakes(args) -> List[str]:
    """One line per input of ``prepare_dataset.py`` that is not there."""
    mistakes = []
    if args.image_folder:
        folder = Path(args.image_folder).expanduser()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "no such folder"
            mistakes.append(f"--image_folder {args.image_folder}: {what} (a folder of images, one sub-folder per class)")
    elif Path(args.dataset_name).expanduser().is_dir():
        mistakes.append(saved_dataset_reason("--dataset_name", args.dataset_name,
                                             "pass a folder written by save_to_disk, or a Hub dataset name"))
    else:
        mistakes.append(missing_dataset_reason(
            args.dataset_name, "--dataset_name", args.cache_dir,
            hint="; pass a folder written by save_to_disk, or --image_folder with your own images"))
    tiny = " (tiny local ones for smoke runs: python -m slim_diffusers.testing save-tiny-roi-models DIR)"
    mistakes.append(model_reason("--classifier_name_or_path", args.classifier_name_or_path, "config.json",
                                 "pass a folder written by save_pretrained of an image classifier" + tiny))
    if args.caption_column is None:
        mistakes.append(model_reason("--captioner_name_or_path", args.captioner_name_or_path, "config.json",
                                     "pass a folder written by save_pretrained of a BLIP-2 model, or --caption_column "
                                     "to keep the source's captions" + tiny))
    mistakes.append(output_reason("--output_dir", args.output_dir))
    return [m for m in mistakes if m]
