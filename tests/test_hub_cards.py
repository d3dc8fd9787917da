"""The card templates live in the checkout's top-level ``hub_cards/`` and ship inside the wheel: an installed
(non-editable) package renders both cards with valid Hub metadata, and the model card's ``model-index``
carries the validation results it lists."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# run by the installed package, from a folder where the checkout is not importable; prepare_dataset.py is the
# checkout's script, importing the installed package as a user's copy of the script would
RENDER = r'''
import importlib.util, json, sys
from pathlib import Path
from types import SimpleNamespace

import datasets, PIL.Image
from huggingface_hub import DatasetCard, ModelCard

import slim_diffusers
from slim_diffusers.training import training_utils
from slim_diffusers.training.dataset_builder import HUB_CARDS, BuildConfig

out = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("prepare_dataset", sys.argv[2])
prepare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare)

args = SimpleNamespace(pretrained_model_name_or_path="stabilityai/stable-diffusion-2-1-base", dataset_name="me/slim-train",
                       train_data_dir=None, hub_model_id="me/slim", stage=2, lambda_rate=0.5, lambda_guide=1.0,
                       lambda_diffusion=1.0, lambda_roi=1.0, lambda_task=0.1, no_roi=False, unet_lora_rank=0)
(out / "model").mkdir()
(out / "model-unvalidated").mkdir()
training_utils.write_model_card(args, out / "model", {"val/bpp": 0.0412, "val/bytes": 1350.0}, 500)
training_utils.write_model_card(args, out / "model-unvalidated", {}, 500)

rows = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))] * 2, "label": [1, 2],
                                   "roi_mask": [PIL.Image.new("L", (8, 8), 128)] * 2, "caption": ["a dog", "a cat"]})
build = BuildConfig(source="imagenet-1k", num_rows=2, seed=0, classifier="microsoft/resnet-50",
                    captioner="Salesforce/blip2-opt-2.7b", cam_target="label")
prepare.render_dataset_card(rows, build, "me/slim-train", license="other").save(out / "dataset.md")
print(json.dumps({"package": slim_diffusers.__file__, "hub_cards": str(HUB_CARDS)}))
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built into a wheel from a copy of the checkout and installed without its dependencies (they come
    from this environment's site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    for name in ("slim_diffusers", "hub_cards"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("slim_diffusers-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return tmp / "site"


def test_installed_wheel_renders_valid_model_and_dataset_cards(installed, tmp_path):
    import json

    from huggingface_hub import DatasetCard, ModelCard

    assert sorted(p.name for p in (ROOT / "hub_cards").glob("*.md")) == ["dataset_card.md", "model_card.md"]
    assert not (ROOT / "slim_diffusers" / "hub_cards").exists(), "hub_cards/ at the top level is the one source"
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RENDER, str(tmp_path), str(ROOT / "training" / "prepare_dataset.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(where["package"]).is_relative_to(installed)
    assert Path(where["hub_cards"]) == installed / "slim_diffusers" / "hub_cards"

    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-image"
    assert card.data.license == "apache-2.0" and "slim-diffusers" in card.data.tags
    assert card.data.base_model == "stabilityai/stable-diffusion-2-1-base" and card.data.datasets == ["me/slim-train"]
    # the model-index claims exactly what the card's table lists
    claimed = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert claimed == {"val/bpp": 0.0412, "val/bytes": 1350.0}
    assert all(r.dataset_type == "me/slim-train" and r.task_type == "image-to-image" for r in card.data.eval_results)
    assert card.data.model_name == "me/slim"
    assert "| val/bpp | 0.0412 |" in card.text and "| val/bytes | 1350.0000 |" in card.text
    unvalidated = ModelCard.load(tmp_path / "model-unvalidated" / "README.md")
    assert unvalidated.data.eval_results is None and "model-index" not in unvalidated.content

    dataset = DatasetCard.load(tmp_path / "dataset.md")
    assert dataset.data.license == "other" and dataset.data.task_categories == ["image-classification", "image-to-text"]
    assert dataset.data.source_datasets == ["extended|imagenet-1k"] and "slim-diffusers" in dataset.data.tags
    assert 'load_dataset("me/slim-train"' in dataset.text and "{" not in dataset.data.pretty_name
