"""The toy world's contract: what decides the class, what the caption says, where the target is."""

import colorsys

import numpy as np
import pytest

from slim_diffusers import toy_world
from slim_diffusers.toy_world import (
    CLASS_NAMES,
    CLASSES,
    KINDS,
    VARIANTS,
    caption_for,
    kind_of,
    render,
    sample,
    samples,
    variant_of,
)


def chroma(pixels: np.ndarray) -> np.ndarray:
    """Chroma (max − min channel, in grey levels) of (N, 3) uint8 pixels."""
    rgb = pixels.astype(np.float32)
    return rgb.max(axis=1) - rgb.min(axis=1)


def test_classes_are_kind_times_variant():
    assert len(CLASSES) == len(CLASS_NAMES) == len(KINDS) * len(VARIANTS) >= 20
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    for label, (kind, variant) in enumerate(CLASSES):
        assert KINDS[kind_of(label)] == kind and VARIANTS[variant_of(label)] == variant
        assert CLASS_NAMES[label] == f"{variant} {kind}"
    assert [sample(i, seed=1, size=48).label for i in range(45)] == [i % len(CLASSES) for i in range(45)]


def test_caption_names_the_kind_and_never_the_markings():
    for label in range(len(CLASSES)):
        caption = caption_for(label)
        assert caption == f"a {KINDS[kind_of(label)]}"
        assert not any(variant in caption for variant in VARIANTS)
        assert sample(label, seed=2, size=48).caption == caption
    # all variants of a kind share the caption: it carries the kind, not the class
    assert len({caption_for(label) for label in range(len(CLASSES))}) == len(KINDS)


def test_everything_is_a_function_of_seed_index_and_size():
    a, b = sample(7, seed=3, size=64), sample(7, seed=3, size=64)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.object_mask, b.object_mask) and a.caption == b.caption and a.label == b.label
    assert not np.array_equal(np.asarray(a.image), np.asarray(sample(7, seed=4, size=64).image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(sample(7 + len(CLASSES), seed=3, size=64).image))
    batch = samples(3, seed=3, size=64, start=6)
    assert np.array_equal(np.asarray(batch[1].image), np.asarray(a.image))


@pytest.mark.parametrize("size", [32, 40, 48, 64, 96, 128])
def test_sizes(size):
    for item in samples(len(CLASSES), seed=5, size=size):
        assert item.image.mode == "RGB" and item.image.size == (size, size)
        assert item.object_mask.shape == item.distractor_mask.shape == (size, size)
        assert item.object_mask.dtype == np.float32 and set(np.unique(item.object_mask)) <= {0.0, 1.0}
        assert 0.02 < item.object_mask.mean() < 0.25  # the target is a fraction of the frame


def test_default_size_is_96():
    assert sample(0).image.size == (96, 96)


def test_mask_covers_the_one_saturated_object_and_distractors_are_present():
    for item in samples(40, seed=6):
        pixels = np.asarray(item.image).reshape(-1, 3)
        on = item.object_mask.reshape(-1) > 0.5
        distractor = item.distractor_mask.reshape(-1) > 0.5
        assert distractor.sum() > 0.02 * distractor.size  # at least one distractor shows
        assert not (on & distractor).any()
        # the target is the saturated object; distractors and background are desaturated
        assert np.median(chroma(pixels[on])) > 55
        assert np.median(chroma(pixels[distractor])) < 40 and np.median(chroma(pixels[~on])) < 40


def test_colour_does_not_decide_the_class():
    hues = []
    for i in range(24):
        item = render(0, np.random.default_rng([9, i]), 96)
        mean = np.asarray(item.image).reshape(-1, 3)[item.object_mask.reshape(-1) > 0.5].mean(axis=0) / 255
        hues.append(colorsys.rgb_to_hsv(*mean)[0])
    # one class, many hues: the twelve 30° sectors of the colour wheel are mostly visited
    assert len(set((np.array(hues) * 12).astype(int))) >= 6


def test_markings_tell_variants_apart_on_the_same_outline():
    """Same rng, same kind, different variant: only the pixels on the target change."""
    assert VARIANTS[0] == "plain"
    for kind in range(len(KINDS)):
        for seed in range(4):
            images = [render(kind * len(VARIANTS) + v, np.random.default_rng([11, seed]), 96) for v in range(len(VARIANTS))]
            check_only_the_target_changes(images)


def check_only_the_target_changes(images):
    mask = images[0].object_mask > 0.5
    # the mask grown by a pixel in all eight directions: the anti-aliased edge mixes in the markings too
    padded = np.pad(mask, 1)
    edge = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            edge |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    for other in images[1:]:
        assert np.array_equal(other.object_mask, images[0].object_mask)
        diff = np.abs(np.asarray(other.image, np.int16) - np.asarray(images[0].image, np.int16)).sum(axis=2)
        assert diff[~edge].max() == 0 and diff[mask].mean() > 10
        # markings are luminance detail (chroma alone would be subsampled away by every codec)
        luma = np.asarray(other.image.convert("L"), np.float32) - np.asarray(images[0].image.convert("L"), np.float32)
        assert luma[mask].std() > 4  # grey levels


def test_as_dataset_columns():
    ds = toy_world.as_dataset(3, seed=0, size=40, start=2)
    assert ds.column_names == ["image", "label", "object_mask", "caption"]
    assert ds.features["label"].names == list(CLASS_NAMES)
    assert ds["label"] == [2, 3, 4] and ds["caption"] == [caption_for(i) for i in (2, 3, 4)]
    assert np.asarray(ds[0]["object_mask"]).shape == (40, 40)
