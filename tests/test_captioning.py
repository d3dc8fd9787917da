import numpy as np
import PIL.Image
import pytest
import torch

from slim_diffusers import toy_world
from slim_diffusers.coding.bitstream import compress_caption
from slim_diffusers.semantics.captioning import (
    caption_bits,
    generate_captions,
    prepare_caption_inputs,
    suppress_non_roi,
    suppression_colour,
)
from slim_diffusers.semantics.roi import RoIMaskSizeError
from slim_diffusers.testing import tiny_blip2


@pytest.fixture(scope="module")
def blip2():
    return tiny_blip2(seed=0)


@pytest.fixture(scope="module")
def images():
    return [s.image for s in toy_world.samples(5, seed=0, size=48)]


def half_mask(size=48):
    mask = np.zeros((size, size), np.float32)
    mask[:, : size // 2] = 1  # the left half is the RoI
    return mask


def test_tiny_blip2_captions_batched_bounded_and_costed(blip2, images):
    model, processor = blip2
    out = generate_captions(model, processor, images, max_new_tokens=6, batch_size=2)
    assert len(out.captions) == 5 and all(isinstance(c, str) for c in out.captions)
    assert any(out.captions) and len(set(out.captions)) > 1  # the random model's captions depend on the image
    # the tiny tokenizer makes every letter and every space one token: 6 new tokens ≤ 6 characters
    assert all(len(c) <= 6 for c in out.captions)
    assert out.caption_bits == [8 * len(compress_caption(c)) for c in out.captions]
    assert caption_bits("") == 0 and caption_bits("a dog on grass") == 8 * len(compress_caption("a dog on grass"))
    single = [generate_captions(model, processor, image, max_new_tokens=6).captions[0] for image in images[:3]]
    assert single == out.captions[:3]
    longer = generate_captions(model, processor, images, max_new_tokens=12).captions
    assert max(len(c) for c in longer) > 6  # the bound is what cut them


def test_masks_change_what_the_captioner_sees(blip2, images):
    model, processor = blip2
    masks = [half_mask()] * len(images)
    plain = prepare_caption_inputs(processor, images)["pixel_values"]
    masked = prepare_caption_inputs(processor, images, masks)["pixel_values"]
    assert plain.shape == masked.shape == (5, 3, 32, 32)
    # processor normalises with the colour the non-RoI pixels were replaced by: they become ~0
    right, left = masked[..., 18:], masked[..., :14]
    assert right.abs().max() < 0.01 and plain[..., 18:].abs().mean() > 0.3
    torch.testing.assert_close(left, plain[..., :14], atol=0.02, rtol=0)

    blended = suppress_non_roi(images[0], np.full((48, 48), 0.25, np.float32), (0.0, 0.0, 0.0))[0]
    np.testing.assert_allclose(np.asarray(blended, np.float32), 0.25 * np.asarray(images[0], np.float32), atol=0.51)
    assert suppression_colour(processor) == pytest.approx(tuple(processor.image_processor.image_mean))

    with torch.no_grad():
        scores = [
            model.generate(pixel_values=pv, max_new_tokens=1, output_scores=True, return_dict_in_generate=True).scores[0]
            for pv in (plain, masked)
        ]
    assert (scores[0] - scores[1]).abs().amax() > 1e-3  # the language model got a different image
    captions = generate_captions(model, processor, images, masks).captions
    suppressed = suppress_non_roi(images, masks, suppression_colour(processor))
    assert captions == generate_captions(model, processor, suppressed).captions
    blank = generate_captions(model, processor, images, [np.zeros((48, 48), np.float32)] * 5).captions
    assert len(set(blank)) == 1  # nothing of the images is left to tell them apart


def test_prompt_is_not_part_of_the_caption(blip2, images):
    model, processor = blip2
    out = generate_captions(model, processor, images[:2], prompt="a photo of", max_new_tokens=5)
    assert all(not c.startswith("a photo of") and len(c) <= 5 for c in out.captions)


def test_mask_of_another_size_is_a_named_error(blip2, images):
    model, processor = blip2
    with pytest.raises(RoIMaskSizeError, match="32×48 but its image is 48×48"):
        generate_captions(model, processor, images[0], np.ones((48, 32), np.float32))
    with pytest.raises(ValueError, match="2 RoI masks for 1 images"):
        suppress_non_roi(images[0], [half_mask(), half_mask()])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_captions(model, processor, images[0], max_new_tokens=0)


def test_captioner_save_load_round_trip(blip2, images, tmp_path):
    from slim_diffusers.semantics.captioning import load_captioner

    model, processor = blip2
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_captioner(str(tmp_path))
    assert not any(p.requires_grad for p in loaded.parameters())
    masks = [half_mask()] * 2
    assert generate_captions(loaded, loaded_processor, images[:2], masks).captions == generate_captions(
        model, processor, images[:2], masks
    ).captions
    rgba = PIL.Image.new("RGBA", (48, 48), (10, 200, 30, 0))
    assert isinstance(generate_captions(model, processor, rgba).captions[0], str)
