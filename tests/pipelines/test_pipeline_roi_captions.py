"""SLIMPipeline with the optional RoI classifier and captioner: RoI-focused captions when none are given."""

import json

import pytest
import torch

from slim_diffusers import SLIMPipeline, toy_world
from slim_diffusers.semantics.captioning import generate_captions
from slim_diffusers.semantics.roi import compute_roi_masks
from slim_diffusers.testing import tiny_pipeline

ROI_COMPONENTS = ("roi_classifier", "roi_image_processor", "captioner", "caption_processor")


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(seed=0, with_roi_captioner=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def images():
    return [s.image for s in toy_world.samples(3, seed=0, size=40)]


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("roi_pipe")
    pipe.save_pretrained(path)
    return path


def test_compress_without_captions_writes_roi_focused_captions(pipe, images, caplog):
    bitstreams = pipe.compress(images)
    assert not caplog.records  # both parts loaded: nothing to warn about
    masks = compute_roi_masks(pipe.roi_classifier, pipe.roi_image_processor, images).masks
    expected = generate_captions(pipe.captioner, pipe.caption_processor, images, list(masks)).captions
    assert [bs.caption for bs in bitstreams] == expected
    assert any(expected)
    whole = generate_captions(pipe.captioner, pipe.caption_processor, images).captions
    assert whole != expected  # the masks changed what was captioned
    # given captions win over the captioner
    assert [bs.caption for bs in pipe.compress(images, captions="a cat")] == ["a cat"] * 3
    assert pipe.caption_images(images, roi_masks=list(masks)).captions == expected
    assert all(len(c) <= 3 for c in pipe.caption_images(images, max_new_tokens=3).captions)


def test_save_load_round_trip_with_roi_components(pipe, images, saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["roi_classifier"] == ["transformers", "ResNetForImageClassification"]
    assert index["captioner"] == ["transformers", "Blip2ForConditionalGeneration"]
    loaded = SLIMPipeline.from_pretrained(saved)
    assert type(loaded.caption_processor).__name__ == "Blip2Processor"
    assert type(loaded.roi_image_processor).__name__ == pipe.roi_image_processor.__class__.__name__
    assert loaded.compress(images) == pipe.compress(images)
    torch.testing.assert_close(loaded.roi_masks(images).masks, pipe.roi_masks(images).masks)


def test_sender_without_the_roi_classifier_captions_whole_images(saved, images, pipe, caplog):
    sender = SLIMPipeline.from_pretrained(saved, roi_classifier=None, roi_image_processor=None, unet=None, controlnet=None)
    assert sender.roi_classifier is None and sender.captioner is not None
    caplog.clear()
    bitstreams = sender.compress(images)
    assert "captioning whole images" in caplog.text
    caplog.clear()
    sender.compress(images[:1])
    assert not caplog.records  # warned once
    assert [bs.caption for bs in bitstreams] == generate_captions(pipe.captioner, pipe.caption_processor, images).captions
    with pytest.raises(ValueError, match="roi_classifier"):
        sender.roi_masks(images)


def test_pipeline_without_roi_components_keeps_the_empty_caption(saved, images, tmp_path, caplog):
    plain = SLIMPipeline.from_pretrained(saved, captioner=None, caption_processor=None)
    caplog.clear()
    assert [bs.caption for bs in plain.compress(images)] == [""] * 3
    assert "empty caption" in caplog.text
    # a pipeline saved before these components existed loads without them
    tiny_pipeline(seed=0).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    for name in ROI_COMPONENTS:
        index.pop(name, None)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    old = SLIMPipeline.from_pretrained(tmp_path)
    assert all(getattr(old, name) is None for name in ROI_COMPONENTS)
    with pytest.raises(ValueError, match="captioner"):
        old.caption_images(images)
