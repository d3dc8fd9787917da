"""The training scripts check what they are given before anything loads: offline, a model or dataset that is not
there is one line per mistake, status 2, no traceback, at once (no Hub retries), and no output folder is made."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slim_diffusers.testing import tiny_pipeline

REPO = Path(__file__).resolve().parents[2]
STAGE1 = str(REPO / "training" / "train_stage1.py")
STAGE2 = str(REPO / "training" / "train_stage2.py")
PREPARE = str(REPO / "training" / "prepare_dataset.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A saved tiny SLIM pipeline, a saved dataset folder (columns do not matter before loading), a folder that is
    no dataset, and a file."""
    import datasets

    root = tmp_path_factory.mktemp("inputs")
    tiny_pipeline(seed=0).save_pretrained(root / "model")
    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(str(root / "data"))
    (root / "not-a-dataset").mkdir()
    (root / "file").write_text("x")
    return root


CASES = {
    "stage 1, Hub model offline": (
        STAGE1, ["--pretrained_model_name_or_path", "stabilityai/stable-diffusion-2-1-base", "--train_data_dir", "data"],
        ["--pretrained_model_name_or_path stabilityai/stable-diffusion-2-1-base: no such folder, and HF_HUB_OFFLINE is set"]),
    "stage 1, no dataset folder": (
        STAGE1, ["--pretrained_model_name_or_path", "model", "--train_data_dir", "data/slim-train"],
        ["--train_data_dir data/slim-train: no such folder; build it with python training/prepare_dataset.py"]),
    "stage 1, not a dataset folder": (
        STAGE1, ["--pretrained_model_name_or_path", "model", "--train_data_dir", "not-a-dataset"],
        ["--train_data_dir not-a-dataset: not a dataset folder"]),
    "stage 1, output is a file": (
        STAGE1, ["--pretrained_model_name_or_path", "model", "--train_data_dir", "data", "--output_dir", "file"],
        ["--output_dir file: exists and is not a folder"]),
    "stage 1, Hub dataset offline": (
        STAGE1, ["--pretrained_model_name_or_path", "model", "--dataset_name", "me/slim-train"],
        ["--dataset_name me/slim-train: no such folder, and HF_HUB_OFFLINE is set"]),
    "stage 2, everything missing": (
        STAGE2, ["--pretrained_model_name_or_path", "slim-stage1", "--train_data_dir", "data/slim-train"],
        ["--train_data_dir data/slim-train: no such folder",
         "--pretrained_model_name_or_path slim-stage1: no such folder, and HF_HUB_OFFLINE is set",
         "--classifier_name_or_path microsoft/resnet-50: no such folder, and HF_HUB_OFFLINE is set"]),
    "prepare_dataset, defaults offline": (
        PREPARE, [],
        ["--dataset_name imagenet-1k: no such folder, and HF_HUB_OFFLINE is set",
         "--classifier_name_or_path microsoft/resnet-50: no such folder, and HF_HUB_OFFLINE is set",
         "--captioner_name_or_path Salesforce/blip2-opt-2.7b: no such folder, and HF_HUB_OFFLINE is set"]),
    "prepare_dataset, no image folder": (
        PREPARE, ["--image_folder", "photos", "--classifier_name_or_path", "model/vae", "--caption_column", "caption"],
        ["--image_folder photos: no such folder"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_missing_inputs_fail_at_once_in_one_line_each(inputs, name, tmp_path):
    script, argv, expected = CASES[name]
    # the datasets cache is empty, as on a fresh machine; the run's own output folder must not appear
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    before = set(os.listdir(inputs))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, script, *argv, *(["--output_dir", "out"] * ("--output_dir" not in argv))],
                            cwd=inputs, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    lines = [line for line in result.stderr.splitlines() if "warn" not in line.lower()]  # torchvision's import warning
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == len(expected), result.stderr
    for line, text in zip(lines, expected):
        assert ": error: " in line and text in line, result.stderr
    assert set(os.listdir(inputs)) == before  # no output folder, no data/ made
    assert seconds < 120  # the imports, not half a minute of Hub retries per model (generous on a loaded machine)
