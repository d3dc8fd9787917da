import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import yaml

from slim_diffusers import testing as factory
from slim_diffusers import toy_world
from slim_diffusers.semantics.captioning import generate_captions
from slim_diffusers.training.dataset_builder import (
    BuildConfig,
    BuildConfigMismatchError,
    build_dataset,
    make_annotator,
    resolve_cam_target,
)
from slim_diffusers.semantics.roi import compute_roi_masks, roi_mask_to_array
from slim_diffusers.testing import tiny_blip2, tiny_classifier

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "prepare_dataset.py"
HUB_SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "n>1B"}


def load_script(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare():
    return load_script("prepare_dataset", SCRIPT)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("roi_models")
    assert factory.main(["save-tiny-roi-models", str(path), "--image-size", "48"]) == 0
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An image folder with one sub-folder per class, images of several sizes."""
    root = tmp_path_factory.mktemp("folder")
    for i, sample in enumerate(toy_world.samples(7, seed=4, size=40)):
        folder = root / toy_world.CLASS_NAMES[sample.label].replace(" ", "_")
        folder.mkdir(exist_ok=True)
        image = sample.image if i % 3 else sample.image.resize((52, 36))
        image.save(folder / f"{i}.png")
    return root


def tiny_annotator(image_size=48):
    classifier, image_processor = tiny_classifier(seed=0, image_size=image_size)
    captioner, processor = tiny_blip2(seed=0)
    return make_annotator(classifier, image_processor, captioner, processor, use_labels=True)


def test_save_tiny_dataset_round_trips_with_the_training_columns(tmp_path):
    out = tmp_path / "tiny"
    assert factory.main(["save-tiny-dataset", str(out), "--num_images", "6", "--image_size", "40", "--batch_size", "4"]) == 0
    assert not (tmp_path / "tiny.chunks").exists()  # work files removed once the dataset is written
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["image", "label", "roi_mask", "caption"] and len(ds) == 6
    assert isinstance(ds.features["label"], datasets.ClassLabel) and isinstance(ds.features["roi_mask"], datasets.Image)
    assert ds["label"] == [i % len(toy_world.CLASS_NAMES) for i in range(6)]

    # built by the same machinery: the masks and captions are those of the tiny models on these images
    classifier, image_processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), seed=0, image_size=40)
    captioner, processor = tiny_blip2(seed=0)
    images = [row["image"] for row in ds]
    assert all(np.array_equal(np.asarray(a), np.asarray(s.image)) for a, s in zip(images, toy_world.samples(6, 0, 40)))
    masks = compute_roi_masks(classifier, image_processor, images, ds["label"]).masks
    for row, mask in zip(ds, masks):
        assert row["roi_mask"].mode == "L" and row["roi_mask"].size == row["image"].size
        np.testing.assert_allclose(roi_mask_to_array(row["roi_mask"]), mask[0].numpy(), atol=0.5 / 255 + 1e-5)
    assert ds["caption"] == generate_captions(captioner, processor, images, list(masks)).captions

    # what the training script reads from it
    from slim_diffusers.training.training_utils import make_transform

    batch = make_transform(32, no_roi=False)(ds[:2])
    assert batch["roi_mask"][0].shape == (1, 32, 32)
    assert 0 <= float(batch["roi_mask"][0].min()) and float(batch["roi_mask"][0].max()) <= 1
    assert float(batch["roi_mask"][0].max()) > 0.5  # read as weights, not as 0–255 grey levels clipped to 1
    assert float(batch["roi_mask"][0].mean()) < 0.9


def test_prepare_dataset_on_an_image_folder_with_a_card(tmp_path, models, image_folder, prepare):
    out = tmp_path / "slim-train"
    prepare.main([*map(str, ["--image_folder", image_folder, "--num_samples", 5, "--seed", 1,
                             "--classifier_name_or_path", models / "classifier", "--captioner_name_or_path",
                             models / "captioner", "--output_dir", out, "--batch_size", 2, "--chunk_size", 3,
                             "--max_caption_tokens", 4])])
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["image", "label", "roi_mask", "caption"] and len(ds) == 5
    assert all(row["roi_mask"].size == row["image"].size for row in ds)
    assert {row["image"].size for row in ds} <= {(40, 40), (52, 36)}
    assert all(len(c) <= 4 for c in ds["caption"])
    # the image bytes are the files' own bytes, stored in the dataset (no path to the folder)
    table = ds.data.table.column("image").to_pylist()
    assert all(cell["bytes"] and cell["bytes"][:8] == b"\x89PNG\r\n\x1a\n" for cell in table)

    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other"
    assert card.data.size_categories == ["n<1K"] and set(card.data.size_categories) <= HUB_SIZE_CATEGORIES
    assert card.data.task_categories == ["image-classification", "image-to-text"]
    assert card.data.source_datasets == ["original"]
    assert "5 images" in card.text and "top prediction" in card.text  # folder classes are not the classifier's
    metadata = yaml.safe_load(card.content.split("---")[1])
    assert metadata == card.data.to_dict()


def test_source_captions_are_kept_without_a_captioner(tmp_path, models, prepare):
    # the toy world's generator captions stand in for BLIP-2 in the toy reproduction
    source = tmp_path / "toy"
    toy_world.as_dataset(6, seed=4, size=40).save_to_disk(str(source))
    out = tmp_path / "slim-train"
    prepare.main([*map(str, ["--dataset_name", source, "--num_samples", 0, "--caption_column", "caption",
                             "--classifier_name_or_path", models / "classifier",
                             "--captioner_name_or_path", tmp_path / "no-such-captioner",  # never loaded
                             "--output_dir", out, "--batch_size", 3, "--chunk_size", 4])])
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["image", "label", "roi_mask", "caption"]
    assert ds["caption"] == [toy_world.caption_for(i % len(toy_world.CLASS_NAMES)) for i in range(6)]
    assert all(row["roi_mask"].size == (40, 40) for row in ds)

    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    assert "kept from the source's `caption` column" in card.text and "BLIP-2 caption" not in card.text
    with pytest.raises(ValueError, match="no caption column 'text'"):
        prepare.main([*map(str, ["--dataset_name", source, "--caption_column", "text", "--classifier_name_or_path",
                                 models / "classifier", "--output_dir", tmp_path / "other"])])


def test_resume_reuses_finished_chunks(tmp_path):
    source = toy_world.as_dataset(7, seed=5, size=32).select_columns(["image", "label"])
    config = BuildConfig(source="toy", num_rows=7, seed=0, classifier="tiny", captioner="tiny", cam_target="label",
                         chunk_size=3)
    annotate = tiny_annotator(image_size=32)
    reference = build_dataset(source, str(tmp_path / "reference"), config, annotate, batch_size=2)

    seen = []

    def interrupted(batch):
        if seen:  # the second chunk's first batch: the machine goes away
            raise KeyboardInterrupt
        seen.append(len(batch["image"]))
        return annotate(batch)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_dataset(source, str(out), config, interrupted, batch_size=3)
    chunks = tmp_path / "resumed.chunks"
    assert sorted(p.name for p in chunks.iterdir()) == ["build_config.json", "chunk-00000"]
    first_chunk_files = {p.name: p.stat().st_mtime_ns for p in (chunks / "chunk-00000").iterdir()}

    counted = []

    def counting(batch):
        counted.append(len(batch["image"]))
        return annotate(batch)

    with pytest.raises(BuildConfigMismatchError, match="max_caption_tokens: 20 there, 5 now"):
        build_dataset(source, str(out), BuildConfig(**{**config.to_dict(), "max_caption_tokens": 5}), counting)
    resumed = build_dataset(source, str(out), config, counting, batch_size=3, keep_chunks=True)
    assert sum(counted) == 4  # rows 3–6 only: the finished chunk was not redone
    assert {p.name: p.stat().st_mtime_ns for p in (chunks / "chunk-00000").iterdir()} == first_chunk_files
    assert resumed["caption"] == reference["caption"] and resumed["label"] == reference["label"]
    counted.clear()
    assert len(build_dataset(source, str(out), config, counting)) == 7 and not counted  # finished: nothing redone
    for a, b in zip(resumed["roi_mask"], reference["roi_mask"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_processes_split_the_work_and_match_one(tmp_path, models, prepare):
    source_dir = tmp_path / "source"
    toy_world.as_dataset(6, seed=6, size=48).save_to_disk(str(source_dir))
    common = ["--dataset_name", source_dir, "--num_samples", 0, "--classifier_name_or_path", models / "classifier",
              "--captioner_name_or_path", models / "captioner", "--chunk_size", 2, "--batch_size", 2]
    prepare.main([*map(str, common), "--output_dir", str(tmp_path / "one")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), *map(str, common),
           "--output_dir", str(tmp_path / "two")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(process 1)" in result.stderr  # the second process annotated chunks too
    one, two = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    assert one["caption"] == two["caption"] and one["label"] == two["label"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one["roi_mask"], two["roi_mask"]))
    assert "the ground-truth class" in (tmp_path / "one" / "README.md").read_text()  # toy classes = classifier's


def test_push_to_hub_uploads_the_card_before_the_data(tmp_path, models, prepare, monkeypatch, image_folder):
    import huggingface_hub
    from huggingface_hub import DatasetCard

    calls = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw)) or
                        huggingface_hub.RepoUrl(f"https://huggingface.co/datasets/{repo_id}"))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kw: calls.append(("card", repo_id, self)))
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: calls.append(("data", repo_id, len(self))))
    ds = prepare.main(["--image_folder", str(image_folder), "--num_samples", "3", "--output_dir", str(tmp_path / "out"),
                       "--classifier_name_or_path", str(models / "classifier"), "--captioner_name_or_path",
                       str(models / "captioner"), "--push_to_hub", "--hub_dataset_id", "me/slim-train", "--private"])
    assert [c[0] for c in calls] == ["create", "card", "data"]
    assert calls[0][2]["repo_type"] == "dataset" and calls[0][2]["private"] is True
    assert calls[1][1] == calls[2][1] == "me/slim-train" and calls[2][2] == len(ds) == 3
    assert 'load_dataset("me/slim-train"' in calls[1][2].text


@pytest.mark.parametrize("source", ["imagenet-1k", "/data/a: weird 'name'"])
def test_dataset_card_metadata_is_valid_yaml_for_any_source(prepare, source, tmp_path):
    from huggingface_hub import DatasetCard

    rows = datasets.Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (8, 8))] * 2, "label": [1, 2],
         "roi_mask": [PIL.Image.new("L", (8, 8), 128)] * 2, "caption": ["a dog", "a red: cat"]})
    config = BuildConfig(source=source, num_rows=2, seed=3, classifier="microsoft/resnet-50",
                         captioner="Salesforce/blip2-opt-2.7b", cam_target="label", caption_prompt='say "hi"')
    card = prepare.render_dataset_card(rows, config, "me/data: x")
    card.save(tmp_path / "README.md")
    loaded = DatasetCard.load(tmp_path / "README.md")
    expected_source = "original" if source.startswith("/") else "extended|imagenet-1k"
    assert loaded.data.source_datasets == [expected_source] and loaded.data.pretty_name == "SLIM training data (data: x)"
    assert "Mean mask weight (RoI share of the image): 0.502" in loaded.text
    assert prepare.size_category(999) == "n<1K" and prepare.size_category(3000) == "1K<n<10K"
    assert prepare.size_category(5_000_000_000) == "n>1B"


def test_cam_target_auto_explains_labels_only_in_the_classifiers_label_space():
    names = [f"class {i}" for i in range(200)]
    classifier, _ = tiny_classifier(num_labels=200, id2label=dict(enumerate(names)))
    assert resolve_cam_target("auto", names, classifier) == "label"
    respelled = names[:1] + ["CLASS  1"] + ["other"] + names[3:]  # case/spacing, and one name of 200 differs
    assert resolve_cam_target("auto", respelled, classifier) == "label"
    assert resolve_cam_target("auto", names[::-1], classifier) == "prediction"  # same names, other order
    assert resolve_cam_target("auto", names[:10], classifier) == "prediction"
    assert resolve_cam_target("auto", None, classifier) == "prediction"
    assert resolve_cam_target("label", None, classifier) == "label"
    with pytest.raises(ValueError, match="cam_target"):
        resolve_cam_target("gt", names, classifier)


def test_a_build_killed_at_a_chunk_or_at_the_final_write_resumes_to_the_same_rows(tmp_path, models, prepare):
    # killed (SIGKILL, tests/_die_at.py) while writing its second chunk, then while publishing the dataset over an
    # earlier build: each run again resumes, and the result has the rows of an uninterrupted build
    source_dir = tmp_path / "source"
    toy_world.as_dataset(6, seed=6, size=48).save_to_disk(str(source_dir))
    common = ["--dataset_name", source_dir, "--num_samples", 0, "--classifier_name_or_path", models / "classifier",
              "--captioner_name_or_path", models / "captioner", "--chunk_size", 2, "--batch_size", 2]
    prepare.main([*map(str, common), "--output_dir", str(tmp_path / "reference")])
    out = tmp_path / "built"
    earlier = toy_world.as_dataset(3, seed=9, size=48)
    earlier.save_to_disk(str(out))  # an earlier dataset at the output path: replaced whole or left whole

    def run(die_at=None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("SLIM_DIE_AT", None)
        if die_at:
            env["SLIM_DIE_AT"] = die_at
        cmd = [sys.executable, str(REPO / "tests" / "_die_at.py"), str(SCRIPT), *map(str, common), "--output_dir", str(out)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    killed = run("datasets.Dataset.save_to_disk+half:2:tmp-chunk")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "built.chunks").iterdir() if p.name.startswith("chunk-")) == ["chunk-00000"]
    assert datasets.load_from_disk(str(out))["label"] == earlier["label"]
    killed = run(f"slim_diffusers.utils.file_utils.replace_directory:1:{out}")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert datasets.load_from_disk(str(out))["label"] == earlier["label"]  # still the earlier build, whole
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    one, resumed = datasets.load_from_disk(str(tmp_path / "reference")), datasets.load_from_disk(str(out))
    assert one["caption"] == resumed["caption"] and one["label"] == resumed["label"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one["roi_mask"], resumed["roi_mask"]))
    assert not (tmp_path / "built.chunks").exists() and (out / "README.md").is_file()
